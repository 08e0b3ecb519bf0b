"""Decoding speed at batch 1, 4 and 48, side by side in one run: the new path (`engine="auto"`: the
compiled decoder of `model/fused_decode.py` up to `FUSED_MAX_ROWS` rows, the NumPy decoder beyond),
the NumPy decoder (`model/cpu_decode.py`, `engine="numpy"`), the torch path (`engine="torch"`) and
Hugging Face's `GPT2LMHeadModel.generate` with the same weights (written by `model.hf.export_hf`,
what `python -m pianolm export` writes, and read back by transformers); quiet and with a second
2-thread torch job spinning on the same cores; plus the grammar mask's cost per token.

    python benchmarks/bench_decode.py --rounds 2     # the recipe's shape (4 x 256, context 512, coarse vocab)
    python benchmarks/bench_decode.py --ckpt outputs/recipe/checkpoints/last.ckpt   # + real-time factor on sampled piano
    python benchmarks/bench_decode.py --threads 1 2 --batches 1 4 48 --new-tokens 500

First it prints the fused decoder's first-call time in a fresh process: with an empty numba cache
(compiling) and again with the cache that run wrote (loading machine code from disk). For each
(load, threads, batch) it prints tokens/s of each path (median of `--rounds`, the paths
timed in turn each round so a load spike hits all) and the ratios; every path runs on `threads`
threads. Sampling is at temperature 1 from BOS with a fixed seed, no EOS, so every row runs
`--new-tokens` steps: the same work for all. With `--ckpt` (a real model and tokenizer) it also
prints the real-time factor of batch 1: seconds of music the sampled ids decode to, per second
of compute. Any weights do for timing (docs/sampling.md has the table).

    python benchmarks/bench_decode.py --floor        # only the floor below, then exit

`--floor` times, on one thread, what a batch-1 token cannot go under on this machine: a plain sum
over as many float32 bytes as the model's weights, and one matrix-vector product over them (numba,
the fused decoder's flags); and the grammar's own work a step: `make_allowed`'s callable replayed
over ids a masked generation made, and the sampling step with and without its mask.
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import torch

from model import GPT, GPTConfig
from model.generate import Sampler, generate

ROOT = Path(__file__).resolve().parents[1]


def spin(threads: int, stop) -> None:
    """The second job: 2-thread fp32 matmuls until told to stop (a training run's load)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    while not stop.is_set():
        for _ in range(20):
            a = (a @ b).tanh_()


@contextlib.contextmanager
def second_job(active: bool, threads: int = 2):
    if not active:
        yield
        return
    stop = mp.Event()
    proc = mp.Process(target=spin, args=(threads, stop), daemon=True)
    proc.start()
    time.sleep(1.0)  # let it reach its loop
    try:
        yield
    finally:
        stop.set()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()


def load_model(args) -> tuple[GPT, object]:
    """The checkpoint's model and tokenizer, or random weights of the recipe's shape with the
    rounds' tokenizer (conf/tokenizer/coarse.yaml: any weights do for timing)."""
    if args.ckpt:
        from pianolm.checkpoint import load_checkpoint

        tok, gpt, _ = load_checkpoint(args.ckpt)
        return gpt.eval(), tok
    import remi

    tok = remi.Tokenizer.from_yaml(ROOT / "conf" / "tokenizer" / "coarse.yaml")
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd, pad_vocab_multiple=64)
    return GPT(config).eval(), tok


def hf_from(gpt: GPT):
    """transformers' GPT2LMHeadModel reading what `model.hf.export_hf` wrote for our weights."""
    import transformers

    from model.hf import export_hf

    with tempfile.TemporaryDirectory() as d:
        export_hf(gpt, d)
        hf = transformers.GPT2LMHeadModel.from_pretrained(d, attn_implementation="sdpa").eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf


def paths(gpt: GPT, hf, batch: int, new: int, bos: int, threads: int) -> dict:
    """The four decoders, each making `batch` rows of `new` tokens from BOS at temperature 1."""
    idx = torch.full((batch, 1), bos, dtype=torch.long)

    def ours(engine):
        return lambda: generate(gpt, idx, new, Sampler(temperature=1.0), generator=torch.Generator().manual_seed(0),
                                engine=engine, threads=threads)

    def theirs():
        torch.manual_seed(0)
        with torch.no_grad():
            return hf.generate(idx, max_new_tokens=new, min_new_tokens=new, do_sample=True, top_k=0,
                               temperature=1.0, use_cache=True)

    return {"new (auto)": ours("auto"), "numpy": ours("numpy"), "torch": ours("torch"), "HF generate": theirs}


FIRST_CALL = """
import time, torch
t = time.perf_counter()
from model import GPT, GPTConfig
from model.generate import generate
gpt = GPT(GPTConfig(vocab_size=201, block_size=64, n_layer=2, n_head=4, n_embd=64)).eval()
t0 = time.perf_counter()
generate(gpt, torch.zeros(1, 1, dtype=torch.long), 2, engine="fused")
print(time.perf_counter() - t0)
"""


def first_call_seconds() -> tuple[float, float]:
    """Seconds of the first fused `generate` of a fresh process (import of model.generate excluded,
    numba's import included): with an empty numba cache, then with the cache that run wrote."""
    import os
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "OMP_NUM_THREADS": "1"}
        return tuple(float(subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, cwd=ROOT, check=True,
                                          capture_output=True, text=True).stdout.split()[-1]) for _ in range(2))


def timed_runs(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds of each function in each of `rounds` rounds, after one warm-up call each; the order
    turns by one each round, so no path always runs right after another. In the fixed order
    `auto` at batch 48, which is the NumPy decoder there, came out 0.79-0.99x the NumPy column in
    six runs, always the first path after Hugging Face's; alone, the two alternating measured the
    same (4,551 vs 4,466 tokens/s)."""
    times = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    keys = list(fns)
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    return times


def timed(fns: dict, rounds: int) -> dict:
    """Median seconds of each function over `rounds` (`timed_runs`)."""
    return {k: statistics.median(v) for k, v in timed_runs(fns, rounds).items()}


def grammar_cost(gpt: GPT, tok, new: int, rounds: int) -> tuple[float, float, float]:
    """Seconds per token at batch 1 without and with the REMI grammar mask (`pianolm.generate`),
    medians over rounds, and the median of the rounds' ratios: each round times the two back to
    back, so the ratio is not moved by this VM's speed drifting between rounds (at least 9)."""
    from pianolm.generate import make_allowed

    idx = torch.tensor([[tok.bos_id]])

    def run(grammar: bool):
        # no EOS: every run makes `new` tokens (the grammar keeps EOS possible, so it is not stopped on)
        mask = make_allowed(tok, 1, grammar=grammar, max_bars=None, continue_bars=False) if grammar else None
        return lambda: generate(gpt, idx, new, Sampler(temperature=1.0), allowed=mask,
                                generator=torch.Generator().manual_seed(0), threads=1)

    times = timed_runs({"plain": run(False), "grammar": run(True)}, max(rounds, 9))
    ratio = statistics.median(g / p for p, g in zip(times["plain"], times["grammar"]))
    return statistics.median(times["plain"]) / new, statistics.median(times["grammar"]) / new, ratio


def floor(gpt: GPT, tok, new: int, rounds: int) -> None:
    """Print the batch-1 floor and the grammar's own work a step (see the module docstring)."""
    import numpy as np
    from numba import njit

    from model.sampling import next_token
    from pianolm.generate import make_allowed

    @njit(fastmath={"reassoc", "contract"})
    def stream(a):
        s = np.float32(0)
        for i in range(a.shape[0]):
            s += a[i]
        return s

    @njit(fastmath={"reassoc", "contract"})
    def matvec(w, h, y):
        for j in range(w.shape[0]):
            a = np.float32(0)
            for i in range(w.shape[1]):
                a += w[j, i] * h[i]
            y[j] = a

    n = sum(p.numel() for p in gpt.parameters()) // 256 * 256
    a = np.random.default_rng(0).random(n, dtype=np.float32)
    w, h = a.reshape(-1, 256), np.ones(256, np.float32)
    y = np.empty(w.shape[0], np.float32)
    t = timed_runs({"sum": lambda: stream(a), "matvec": lambda: matvec(w, h, y)}, 100 * rounds)
    for k, v in t.items():
        print(f"floor  {k:>6} over {a.nbytes / 1e6:.2f} MB of float32: median {statistics.median(v) * 1e6:.0f} us, "
              f"best {min(v) * 1e6:.0f} us ({a.nbytes / statistics.median(v) / 1e9:.0f} GB/s median)", flush=True)
    ids = generate(gpt, torch.tensor([[tok.bos_id]]), new, Sampler(temperature=1.0),
                   allowed=make_allowed(tok, 1, grammar=True, max_bars=None, continue_bars=False),
                   generator=torch.Generator().manual_seed(0), threads=1)
    logits = torch.randn(1, tok.vocab_size)

    def replay():
        allowed = make_allowed(tok, 1, grammar=True, max_bars=None, continue_bars=False)
        return [allowed(ids[:, :k]) for k in range(1, ids.shape[1])]

    masks = replay()
    steps = len(masks)
    g = torch.Generator().manual_seed(0)
    t = timed_runs({"callable": replay,
                    "masked": lambda: [next_token(logits, 1.0, allowed=m, generator=g) for m in masks],
                    "plain": lambda: [next_token(logits, 1.0, generator=g) for _ in masks]}, rounds)
    us = {k: statistics.median(v) / steps * 1e6 for k, v in t.items()}
    print(f"grammar's own work a step ({steps} steps): the callable {us['callable']:.1f} us; sampling "
          f"{us['masked']:.1f} us masked vs {us['plain']:.1f} us plain", flush=True)


def real_time_factor(gpt: GPT, tok, new: int) -> float:
    """Seconds of music per second of compute, batch 1, sampled from BOS at temperature 1."""
    t = time.perf_counter()
    out = generate(gpt, torch.tensor([[tok.bos_id]]), new, Sampler(temperature=1.0), eos_id=tok.eos_id,
                   generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - t
    return tok.decode_score(out[0].tolist()).seconds() / seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default=None, help="a checkpoint (its weights and tokenizer; default: random weights)")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--block-size", type=int, default=512)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 48])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--new-tokens", type=int, default=500, help="per row (HF generate stops at the context: keep it under block_size)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-load", action="store_true", help="skip the runs beside a second 2-thread job")
    p.add_argument("--no-hf", action="store_true", help="skip Hugging Face's generate (transformers not installed)")
    p.add_argument("--no-compile", action="store_true", help="skip the fused decoder's first-call times")
    p.add_argument("--floor", action="store_true", help="only the batch-1 floor and the grammar's own work a step")
    args = p.parse_args(argv)
    if args.floor:
        torch.set_num_threads(1)
        gpt, tok = load_model(args)
        floor(gpt, tok, args.new_tokens, args.rounds)
        return 0
    if not args.no_compile:
        cold, warm = first_call_seconds()
        print(f"fused decoder's first call in a fresh process: {cold:.1f} s compiling (empty numba cache), "
              f"{warm:.2f} s from the disk cache", flush=True)
    gpt, tok = load_model(args)
    hf = None if args.no_hf else hf_from(gpt)
    print(f"model: {gpt.config.n_layer} x {gpt.config.n_embd}, context {gpt.config.block_size}, vocab "
          f"{gpt.config.vocab_size}; {args.new_tokens} new tokens per row; median of {args.rounds} rounds")
    for load in ([False] if args.no_load else [False, True]):
        name = "busy " if load else "quiet"
        with second_job(load):
            for threads in args.threads:
                torch.set_num_threads(threads)  # Hugging Face's; ours are told by threads=
                for batch in args.batches:
                    fns = paths(gpt, hf, batch, args.new_tokens, tok.bos_id, threads)
                    if hf is None:
                        fns.pop("HF generate")
                    tps = {k: batch * args.new_tokens / v for k, v in timed(fns, args.rounds).items()}
                    cells = "   ".join(f"{k} {v:7.0f}" for k, v in tps.items())
                    ratios = "   ".join(f"new/{k.split()[0]} {tps['new (auto)'] / v:.2f}x"
                                       for k, v in tps.items() if k != "new (auto)")
                    print(f"{name}  threads {threads}  batch {batch:>2}:  {cells}  tok/s   {ratios}", flush=True)
            plain, grammar, ratio = grammar_cost(gpt, tok, args.new_tokens, args.rounds)
            print(f"{name}  threads 1  batch  1:  grammar mask {grammar * 1e6:.0f} us/token vs {plain * 1e6:.0f} "
                  f"without (medians); median of paired rounds {ratio:.2f}x", flush=True)
            if args.ckpt:
                print(f"{name}  rule     batch  1:  real-time factor {real_time_factor(gpt, tok, args.new_tokens):.1f} "
                      "s of music per s of compute", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
