"""The table behind `data.infill_share` (docs/training.md, "Infilling") from evaluate.py's outputs.

    python experiments/infill_table.py SHARE=DIR[,DIR...] [SHARE=DIR[,DIR...] ...]

Each DIR is an `experiments/evaluate.py --out` folder (its evaluation.json), one per seed, all
evaluated on the same test pieces with the same settings; `bash experiments/infill_sweep.sh` makes
them. Prints one markdown row per run and, per share, the mean over seeds with the seed spread
(min..max), for the left-to-right figures (test bits per note, the mean of evaluate.py's 9 key
overlaps and each of them, syntax errors, key agreement of continuations) and, where the run was
evaluated with --infill, the infilling figures (bits of the real middle with both sides and with
the prefix only, the per-piece gain with its 95% bootstrap interval; key agreement and the pitch
jump at the second join, infilled against continued, with the paired interval).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from experiments.evaluate import KEY_METRICS


def load(folder: str) -> dict:
    path = Path(folder) / "evaluation.json"
    if not path.is_file():
        raise SystemExit(f"infill_table: {path} does not exist: run experiments/evaluate.py --out {folder} first")
    return json.loads(path.read_text())


def left_to_right(r: dict) -> dict[str, float]:
    overlaps = {k: r["metrics"][k]["overlap"] for k in KEY_METRICS}
    return {"bits_per_note": r["bits_per_note"], "mean_overlap": float(np.mean(list(overlaps.values()))),
            "grammar_error_rate": r["grammar_error_rate"], "key_agree": r["continuation"]["key_agree"],
            **{f"overlap_{k}": v for k, v in overlaps.items()}}


def parse(argv: list[str]) -> list[tuple[str, list[str]]]:
    groups = []
    for arg in argv:
        share, sep, dirs = arg.partition("=")
        if not sep or not dirs:
            raise SystemExit(f"infill_table: {arg!r} is not SHARE=DIR[,DIR...] (e.g. 0.5=experiments/results/infill/s0.5-seed0)")
        groups.append((share, dirs.split(",")))
    if not groups:
        raise SystemExit(__doc__)
    return groups


def fmt(values: list[float], digits: int, pct: bool = False) -> str:
    v = np.asarray(values, dtype=float) * (100 if pct else 1)
    unit = "%" if pct else ""
    if len(v) == 1:
        return f"{v[0]:.{digits}f}{unit}"
    return f"{v.mean():.{digits}f}{unit} ({v.min():.{digits}f}..{v.max():.{digits}f})"


def ci(d: dict, digits: int = 2) -> str:
    return f"{d['mean']:+.{digits}f} [{d['ci95'][0]:+.{digits}f}, {d['ci95'][1]:+.{digits}f}]"


def main(argv: list[str]) -> None:
    groups = parse(argv)
    print("| share | run | test bits/note | mean of 9 overlaps | syntax errors | key agree (continuation) |"
          " middle bits: with context / prefix only | gain [95% CI] | key agree: infilled / continued, diff [CI] |"
          " join after (semitones): infilled / continued, diff [CI] |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    per_share = []
    for share, dirs in groups:
        runs = [(d, load(d)) for d in dirs]
        figs = [left_to_right(r) for _, r in runs]
        for (d, r), f in zip(runs, figs):
            row = [share, Path(d).name, f"{f['bits_per_note']:.3f}", f"{f['mean_overlap']:.3f}",
                   f"{100 * f['grammar_error_rate']:.2f}%", f"{f['key_agree']:.3f}"]
            if "infill" in r:
                i = r["infill"]
                diff = i["infilled_minus_continued"]
                row += [f"{i['bits_with_context']:.3f} / {i['bits_prefix_only']:.3f}",
                        f"{i['bits_gain']:+.3f} [{i['bits_gain_ci95'][0]:+.3f}, {i['bits_gain_ci95'][1]:+.3f}]",
                        f"{i['infilled']['key_agree']:.3f} / {i['continuation']['key_agree']:.3f}, {ci(diff['key_agree'])}",
                        f"{i['infilled']['join_after']:.2f} / {i['continuation']['join_after']:.2f}, {ci(diff['join_after'])}"]
            else:
                row += ["n/a"] * 4
            print("| " + " | ".join(row) + " |")
        per_share.append((share, figs))
    print("\nPer share, mean over seeds (min..max):\n")
    keys = ["bits_per_note", "mean_overlap", "grammar_error_rate", "key_agree"] + [f"overlap_{k}" for k in KEY_METRICS]
    print("| figure | " + " | ".join(f"share {s} ({len(f)} seeds)" for s, f in per_share) + " |")
    print("| --- |" + " --- |" * len(per_share))
    for k in keys:
        cells = [fmt([f[k] for f in figs], 2 if k == "grammar_error_rate" else 3, pct=k == "grammar_error_rate")
                 for _, figs in per_share]
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
