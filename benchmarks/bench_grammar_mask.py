"""The grammar mask's cost per generated token at 256 and 2,048 tokens: the incremental automaton
(`pianolm.generate.make_allowed`, what sample.py runs) against re-reading each row's whole prefix
(`remi.Tokenizer.allowed_next` at every step, how sampling worked before), side by side.

    python benchmarks/bench_grammar_mask.py                 # batch 4, best of 3 rounds
    python benchmarks/bench_grammar_mask.py --lengths 256 2048 8192 --peer-max 2048

No model: the rows are grammar-valid random walks (fixed seed), and each case calls the mask once
per step, exactly as `GPT.generate` does, for every step from the first to the last. The figure
is microseconds per row and step; "flat" is the cost per step at each length over the first
length's (1.00x = no growth with the sequence). The whole-prefix peer grows linearly.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

import remi
from pianolm.generate import make_allowed


def random_walks(tok: remi.Tokenizer, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """(batch, length) grammar-valid rows: BOS, then ids drawn uniformly from what the grammar allows."""
    rng = np.random.default_rng(seed)
    special = np.zeros(tok.vocab_size, dtype=bool)
    special[[tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id]] = True
    rows = []
    for _ in range(batch):
        state, row = tok.grammar_state([tok.bos_id]), [tok.bos_id]
        while len(row) < length:
            choices = np.flatnonzero(tok.allowed_after_state(state) & ~special)
            t = int(rng.choice(choices))
            state.step(t)
            row.append(t)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


def whole_prefix_mask(tok: remi.Tokenizer):
    """The peer: the same mask rules, the grammar read from each row's whole prefix every step."""
    not_special = np.ones(tok.vocab_size, dtype=bool)
    not_special[[tok.bos_id, tok.pad_id, tok.mask_id]] = False

    def allowed(ids: torch.Tensor) -> torch.Tensor:
        rows = ids.cpu().numpy()
        masks = np.stack([tok.allowed_next(row.tolist()) & not_special for row in rows])
        if rows.shape[1] == 1:
            masks[:, tok.eos_id] = False
        return torch.from_numpy(masks)

    return allowed


def per_step(make, walks: torch.Tensor, n: int) -> float:
    """Seconds per row and step to ask the mask for every step of the first n tokens."""
    allowed = make()
    t = time.perf_counter()
    for k in range(1, n + 1):
        allowed(walks[:, :k])
    return (time.perf_counter() - t) / (n * walks.shape[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 2048])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peer-max", type=int, default=2048, help="longest length the whole-prefix peer runs")
    args = ap.parse_args(argv)

    tok = remi.Tokenizer()
    walks = random_walks(tok, args.batch, max(args.lengths) + 1)
    ours = lambda: make_allowed(tok, 1, grammar=True, max_bars=None, continue_bars=False)  # noqa: E731
    peer = lambda: whole_prefix_mask(tok)  # noqa: E731
    best: dict[tuple[str, int], float] = {}
    for _ in range(args.rounds):
        for n in args.lengths:
            for name, make in (("incremental", ours), ("whole prefix", peer)):
                if name == "whole prefix" and n > args.peer_max:
                    continue
                s = per_step(make, walks, n)
                best[name, n] = min(best.get((name, n), s), s)
    print(f"# grammar mask, vocab {tok.vocab_size}, batch {args.batch}, best of {args.rounds} rounds, "
          f"torch {torch.__version__}")
    print("tokens,incremental_us_per_step,flat_vs_first,whole_prefix_us_per_step,whole_prefix_vs_incremental")
    first = best["incremental", args.lengths[0]]
    for n in args.lengths:
        inc = best["incremental", n]
        peer_s = best.get(("whole prefix", n))
        peer_txt = f"{1e6 * peer_s:.1f},{peer_s / inc:.1f}x" if peer_s else "-,-"
        print(f"{n},{1e6 * inc:.1f},{inc / first:.2f}x,{peer_txt}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
