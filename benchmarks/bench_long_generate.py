"""Generation past the context window at cache speed: tokens/s inside the window vs 2x and 4x it.

`GPT.generate` decodes with a key-value cache. When the window fills, it moves on by `stride`
tokens, recomputes the cache once for the tokens it keeps and goes on cached (model/window.py).
This prints, for batch 1 and 8 and side by side in the same rounds:

  inside   `block_size - 1` new tokens from one: the window never moves (the reference)
  2x, 4x   `2 * block_size - 1` and `4 * block_size - 1` new tokens with the stride given
  4x (s)   the same as 4x with a second stride, `--compare-stride` (default a quarter of the window)
  stride 1 `block_size + block_size // 4` new tokens with the exact sliding window (one full
           recomputation per token past the window), the behaviour the strided window replaces

and each one's cost per token against inside the window (1.00x = as fast; the target for 4x is
at most 1.5x). With `--grammar` every step also goes through sample.py's grammar mask
(`pianolm.generate.make_allowed`, with the default tokenizer's vocabulary), as sample.py runs it; the
training callback and the ablation's sampling call the same `GPT.generate`.

    python benchmarks/bench_long_generate.py --threads 1                  # 4 x 256, context 512
    python benchmarks/bench_long_generate.py --threads 1 --grammar
    python benchmarks/bench_long_generate.py --device cuda --n-layer 12 --n-embd 768 --n-head 12 --block-size 1024

Weights are random: the cost of a step does not depend on them (EOS is never used, so every
row runs to the end). Every round runs every case once, in turn; a case's figure is its best
round (the one least disturbed by other work on a shared machine), and the range shows the
per-round ratios against inside the window.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from model import GPT, GPTConfig  # noqa: E402
from model.window import check_stride  # noqa: E402


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=512, help="ignored with --grammar (the tokenizer's)")
    ap.add_argument("--stride", type=int, default=None, help="default: model.window.default_stride")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (best of); each runs every case once")
    ap.add_argument("--grammar", action="store_true", help="every step through sample.py's grammar mask")
    ap.add_argument("--compare-stride", type=int, default=None,
                    help="a second stride for the 4x case (default block_size // 4; 0 leaves it out)")
    ap.add_argument("--skip-stride-one", action="store_true", help="leave out the exact sliding window")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tok = None
    if args.grammar:
        import remi
        from pianolm.generate import make_allowed

        tok = remi.Tokenizer()
        args.vocab = tok.vocab_size
    config = GPTConfig(vocab_size=args.vocab, block_size=args.block_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd, dropout=0.0)
    torch.manual_seed(0)
    gpt = GPT(config).to(device).eval()
    block = config.block_size
    stride = check_stride(args.stride, block)
    print(f"# {args.n_layer} layers x {args.n_embd}, context {block}, vocab {config.vocab_size}, stride {stride}, "
          f"{args.device}, {args.threads} threads, grammar mask {'on' if args.grammar else 'off'}, "
          f"torch {torch.__version__}, best of {args.rounds} rounds")

    cases = {"inside": (block - 1, stride), "2x": (2 * block - 1, stride), "4x": (4 * block - 1, stride)}
    other = block // 4 if args.compare_stride is None else args.compare_stride
    if other and other != stride:
        cases[f"4x (stride {other})"] = (4 * block - 1, check_stride(other, block))
    if not args.skip_stride_one:
        cases["stride 1"] = (block + block // 4, 1)

    print("batch,case,new_tokens,stride,tokens_per_s,cost_per_token_vs_inside,rounds_range")
    for B in args.batches:
        def run(n: int, s: int) -> None:
            allowed = (make_allowed(tok, 1, grammar=True, max_bars=None, continue_bars=False)
                       if tok is not None else None)
            idx = torch.full((B, 1), tok.bos_id if tok is not None else 0, dtype=torch.long, device=device)
            out = gpt.generate(idx, n, temperature=1.0, allowed=allowed, stride=s,
                               generator=torch.Generator(device=device).manual_seed(0))
            assert out.shape == (B, 1 + n)

        run(32, stride)  # warm-up
        times = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, (n, s) in cases.items():
                times[name].append(timed(lambda: run(n, s), device) / n)  # seconds per step
        inside = min(times["inside"])
        for name, (n, s) in cases.items():
            per_step = min(times[name])
            ratios = sorted(t / i for t, i in zip(times[name], times["inside"]))
            print(f"{B},{name},{n},{s},{B / per_step:.0f},{per_step / inside:.2f}x,"
                  f"{ratios[0]:.2f}-{ratios[-1]:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
