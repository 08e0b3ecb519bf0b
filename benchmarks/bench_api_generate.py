"""Generation through the Python API vs through sample.py's call, side by side: tokens/s and ratio.

    python benchmarks/bench_api_generate.py --threads 1
    python benchmarks/bench_api_generate.py --device cuda --n-layer 12 --n-embd 768 --n-head 12

The same model (random weights, the coarse tokenizer's vocabulary), seed, batch and settings
(grammar on, conf/sample.yaml's defaults otherwise) through:

  generate_batch   `pianolm.generate.generate_batch(gpt, tok, prompt, n, cfg, ...)`, the call
                   sample.py made before it became a command line over the API (config in, ids out)
  PianoLM.generate `pianolm.PianoLM.generate(n=..., bars=None, ...)`: the same sampling path plus
                   the API's checks and the decoding of every piece to a remi.Score
  + tempo/meter/key the same with `tempo=100, meter="3/4", key="D minor"` (pianolm.control's
                   forced start, ban mask and key bias on every step)

The first two draw the same ids (checked and printed); the third draws others. A batch runs one
model step per position until its last row ends (EOS or max_new_tokens), so a case's rate is in
steps (the longest row's new tokens: one forward pass and one mask for every row each) per second.
Every round runs each case `--repeat` times, in turn; a case's figure is its best round (the one
least disturbed by other work on a shared machine). The ratio is each case's time per step against
generate_batch's (1.00x: as fast).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]

import remi
from model import GPT, GPTConfig
from pianolm import PianoLM
from pianolm.generate import Prompt, generate_batch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--n", type=int, default=4, help="pieces per call (one batch)")
    ap.add_argument("--tokens", type=int, default=256, help="max_new_tokens")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5, help="calls per case in each round (timed together)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    tok = remi.Tokenizer.from_yaml(ROOT / "conf" / "tokenizer" / "coarse.yaml")
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                        n_head=args.n_head, n_embd=args.n_embd)).to(device).eval()
    lm = PianoLM(tok, gpt, device=str(device))
    lm.batch_size = args.n
    cfg = OmegaConf.load(ROOT / "conf" / "sample.yaml")
    cfg.max_new_tokens, cfg.batch_size = args.tokens, args.n
    prompt = Prompt(name="sample", ids=[tok.bos_id])

    def via_sample_py() -> list[list[int]]:
        gen = torch.Generator(device=device).manual_seed(args.seed)
        return [ids for ids, _ in generate_batch(gpt, tok, prompt, args.n, cfg, 1.0, gen, str(device))]

    def via_api(**fixed) -> list[list[int]]:
        lm.generate(n=args.n, bars=None, seed=args.seed, max_new_tokens=args.tokens, **fixed)
        return [r["ids"] for r in lm.last]

    cases = {"generate_batch": via_sample_py, "PianoLM.generate": via_api,
             "+ tempo/meter/key": lambda: via_api(tempo=100, meter="3/4", key="D minor")}
    best: dict[str, tuple[float, int]] = {}
    ids: dict[str, list[list[int]]] = {}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            for _ in range(args.repeat):
                out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t
            new = args.repeat * (max(len(r) for r in out) - 1)  # steps: the longest row's ids after BOS
            if name not in best or dt / new < best[name][0] / best[name][1]:
                best[name] = (dt, new)
            ids[name] = out

    same = ids["generate_batch"] == ids["PianoLM.generate"]
    ref = best["generate_batch"][0] / best["generate_batch"][1]
    print(f"device {device}, threads {args.threads}, GPT {args.n_layer}x{args.n_embd}, context {args.block_size}, "
          f"batch {args.n}, max_new_tokens {args.tokens}, grammar on, best of {args.rounds} rounds "
          f"of {args.repeat} calls each")
    print(f"{'path':<20} {'steps':>7} {'seconds':>8} {'steps/s':>9} {'time/step':>10}")
    for name, (dt, new) in best.items():
        print(f"{name:<20} {new:>7} {dt:>8.3f} {new / dt:>9.1f} {dt / new / ref:>10.2f}x")
    print(f"generate_batch and PianoLM.generate drew the same ids: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
