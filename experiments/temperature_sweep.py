"""The original work's "too low: boring; too high: chaotic", as numbers: one checkpoint sampled
from scratch at several temperatures, each set measured against the same real pieces.

    python experiments/temperature_sweep.py CKPT --real FOLDER [--temperatures 0.6 0.8 1.0 1.2 1.5]
                                            [--n 16] [--seed 0] [--out DIR]

Per temperature: every metric's overlapping area with the real pieces (the evaluation of
`experiments/evaluate.py`, without continuations), the grammar error rate and the empty pieces;
`--out` writes `temperature_sweep.json` and `temperature_sweep.png` (overlap per metric, and the
grammar error rate, against temperature).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from experiments.evaluate import KEY_METRICS, evaluate, load_model, real_files


def sweep(gpt, tok, files, temperatures: Sequence[float], n: int, seed: int, bars: int,
          max_new_tokens: int, continuations: bool = False, keep_prompt: bool = False,
          min_p: float | None = None) -> list[dict]:
    rows = []
    for t in temperatures:
        r = evaluate(gpt, tok, files, n=n, seed=seed, bars=bars, temperature=t,
                     max_new_tokens=max_new_tokens, continuations=continuations, likelihood=False,
                     keep_prompt=keep_prompt, min_p=min_p)
        rows.append({"temperature": t, "grammar_error_rate": r["grammar_error_rate"],
                     "canonical_error_rate": r["canonical_error_rate"], "empty_pieces": r["empty_pieces"],
                     "overlap": {k: v["overlap"] for k, v in r["metrics"].items()},
                     "mean": {k: v["mean"] for k, v in r["metrics"].items()},
                     "real_mean": {k: v["real_mean"] for k, v in r["metrics"].items()},
                     "continuation": r["continuation"] if continuations else None})
    return rows


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = [r["temperature"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    for k in KEY_METRICS:
        a.plot(temps, [r["overlap"][k] for r in rows], marker="o", label=k)
    a.axhline(0.7, color="grey", linestyle="--", linewidth=1)
    a.set_xlabel("temperature")
    a.set_ylabel("overlapping area with real pieces")
    a.set_ylim(0, 1)
    a.legend(fontsize=7)
    b.plot(temps, [100 * r["grammar_error_rate"] for r in rows], marker="o", color="crimson")
    b.set_xlabel("temperature")
    b.set_ylabel("grammar errors (% of tokens)")
    fig.suptitle("sampling temperature: boring <-> chaotic")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python experiments/temperature_sweep.py", description=__doc__.split("\n")[0])
    p.add_argument("ckpt")
    p.add_argument("--real", required=True, metavar="FOLDER")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.6, 0.8, 1.0, 1.2, 1.5])
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bars", type=int, default=16)
    p.add_argument("--max-pieces", type=int, default=48)
    p.add_argument("--max-new-tokens", type=int, default=2048)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--continuations", action="store_true", help="also continue each real piece (key agreement per T)")
    p.add_argument("--keep-prompt", action="store_true", help="pin each prompt in every window (evaluate.py --keep-prompt)")
    p.add_argument("--min-p", type=float, default=None, help="min-p filter at every temperature")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy machine)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from model.sampling import check_temperature

    for t in args.temperatures:
        try:
            check_temperature(t)
        except ValueError as e:
            p.error(f"--temperatures: {e}")
    tok, gpt, _ = load_model(args.ckpt)
    rows = sweep(gpt, tok, real_files(args.real, args.max_pieces), args.temperatures, args.n, args.seed,
                 args.bars, args.max_new_tokens, args.continuations, args.keep_prompt,
                 args.min_p)
    print(f"{'T':>5}{'grammar err':>13}{'empty':>7}{'key agree':>10}  " + "".join(f"{k[:12]:>13}" for k in KEY_METRICS))
    for r in rows:
        key = r["continuation"]["key_agree"] if r["continuation"] else float("nan")
        print(f"{r['temperature']:>5.2f}{r['grammar_error_rate']:>13.4%}{r['empty_pieces']:>7}{key:>10.3f}  "
              + "".join(f"{r['overlap'][k]:>13.3f}" for k in KEY_METRICS))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "temperature_sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
        plot(rows, args.out / "temperature_sweep.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
