"""How models open a piece from scratch: the bars before the first note, over many draws.

    python experiments/openings.py LABEL=CKPT [LABEL=CKPT ...] [--data LABEL=SHARD_DIR ...]
        [--n 1000] [--temperature 0.9] [--seed 0] [--max-new-tokens 96] [--threads 1] [--json OUT]

An evaluation samples 48 pieces from scratch per run, too few to tell whether an opening of
several empty bars is a habit of the model or one unlucky draw. This draws `n` openings the way
`evaluate.py` samples (from BOS, grammar constraint off, one temperature and seed) and counts, in
base ids (BPE expanded), the Bar tokens before the first Pitch: 1 is a note in the first bar,
1 + k is k empty bars first. `--data` counts the same over a shard folder's train split, what the
models learned from. Each share comes with its Wilson 95% interval. For each model without BPE it
also gives `next_bar_after_empty_bars`: the probability that bar 1, 2, 3 holds nothing when every
bar before it held nothing (from bar 2 on, a context the trimmed training songs never show).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

import remi
from remi.shards import load_split, read_manifest

THRESHOLDS = (2, 3, 5)   # bars before the first note: at least 1, 2 and 4 empty bars first


def bars_before_first_note(base_ids: Sequence[int], tok: remi.Tokenizer) -> int | None:
    """Bar tokens before the first Pitch token of base ids, or None when there is no Pitch."""
    ids = np.asarray(base_ids)
    lo, hi = tok.pitch_id_range
    pitches = np.flatnonzero((ids >= lo) & (ids <= hi))
    if len(pitches) == 0:
        return None
    return int(np.count_nonzero(ids[:pitches[0]] == tok.bar_id))


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """The Wilson score interval of a share k / n ([0, 1] when n is 0)."""
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def summarize(counts: Iterable[int | None]) -> dict:
    """n, openings without a note in reach, the histogram, and the share opening with at least
    2, 3 and 5 bars before the first note (of those with a note) with Wilson intervals."""
    counts = list(counts)
    found = [c for c in counts if c is not None]
    hist = np.bincount(found) if found else np.zeros(0, dtype=np.int64)
    shares = {}
    for t in THRESHOLDS:
        k = sum(c >= t for c in found)
        shares[f"at_least_{t}_bars"] = {"count": k, "share": k / len(found) if found else None,
                                        "ci95": wilson(k, len(found))}
    return {"n": len(counts), "no_note": len(counts) - len(found), "max_bars": max(found) if found else None,
            "histogram": {str(b): int(c) for b, c in enumerate(hist) if c}, "shares": shares}


def model_openings(ckpt: str | Path, n: int, temperature: float, seed: int, max_new_tokens: int,
                   threads: int | None, batch_size: int = 100) -> tuple[list[int | None], list[float]]:
    """`n` openings sampled from BOS by one checkpoint, each as bars before its first note, and
    `next_bar_after_empty_bars` of the model."""
    import pianolm
    from pianolm.generate import Sampling

    m = pianolm.load(ckpt, threads=threads)
    tok = m.tokenizer
    s = Sampling(temperature=temperature, grammar=False, max_new_tokens=max_new_tokens)
    rows = m.sample_ids([tok.bos_id], n, s, seed=seed, batch_size=batch_size)
    return [bars_before_first_note(tok.base_ids(ids), tok) for ids, _ in rows], next_bar_after_empty_bars(m)


def next_bar_after_empty_bars(m, k_max: int = 3, time_signature: str = "TimeSig_4/4") -> list[float] | None:
    """P(bar k holds nothing | BOS and k - 1 bars that held nothing), k = 1..k_max, at T 1: the
    probability of Bar right after the context `BOS (Bar TimeSig)^k`. None with BPE: there a
    context cut right after a TimeSig is tokenized unlike the same bars inside a song (the merges
    join the TimeSig with what follows it), so the model's probability at that cut says nothing
    about how it opens a piece."""
    import torch

    tok = m.tokenizer
    if tok.bpe is not None:
        return None
    bar_ts = [tok.bar_id] + tok.ids_from_tokens([time_signature])
    out = []
    for k in range(1, k_max + 1):
        with torch.no_grad():
            logits = m.model(torch.tensor([[tok.bos_id] + bar_ts * k]))[0, -1]
        out.append(float(torch.softmax(logits.float(), dim=-1)[tok.bar_id]))
    return out


def data_openings(shard_dir: str | Path, head: int = 512) -> list[int | None]:
    """Every train song's opening in a shard folder (its manifest's tokenizer expands BPE)."""
    tok = remi.Tokenizer.from_dict(read_manifest(shard_dir)["tokenizer"], source=str(shard_dir))
    split = load_split(shard_dir, "train", expect_hash=tok.hash)
    offsets = np.asarray(split.offsets)
    return [bars_before_first_note(tok.base_ids(split.tokens[a:min(b, a + head)]), tok)
            for a, b in zip(offsets[:-1], offsets[1:])]


def labelled(spec: str, what: str) -> tuple[str, str]:
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise SystemExit(f"{what} {spec!r}: write LABEL=PATH, e.g. round3=runs/round3-seed0/checkpoints/last.ckpt")
    if not Path(path).exists():
        raise SystemExit(f"{what} {spec!r}: {path} does not exist")
    return label, path


def table(results: dict[str, dict]) -> str:
    head = "| openings | n | no note | " + " | ".join(f">= {t} bars before the first note" for t in THRESHOLDS)
    lines = [head + " | most |", "|---" * (len(THRESHOLDS) + 4) + "|"]
    for label, r in results.items():
        cells = []
        for t in THRESHOLDS:
            c = r["shares"][f"at_least_{t}_bars"]
            share = "–" if c["share"] is None else f"{c['share']:.4f}"
            cells.append(f"{c['count']} ({share}) [{c['ci95'][0]:.4f}, {c['ci95'][1]:.4f}]")
        lines.append(f"| {label} | {r['n']} | {r['no_note']} | " + " | ".join(cells) + f" | {r['max_bars']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", help="LABEL=CKPT: a checkpoint (or run folder's last.ckpt)")
    p.add_argument("--data", action="append", default=[], help="LABEL=SHARD_DIR: a shard folder's train songs")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the figures here")
    a = p.parse_args(argv)
    if not a.models and not a.data:
        p.error("name at least one LABEL=CKPT or --data LABEL=SHARD_DIR")
    results = {}
    for spec in a.data:
        label, path = labelled(spec, "--data")
        results[label] = {"source": path, **summarize(data_openings(path))}
    for spec in a.models:
        label, path = labelled(spec, "model")
        counts, next_bar = model_openings(path, a.n, a.temperature, a.seed, a.max_new_tokens, a.threads)
        results[label] = {"source": path, "temperature": a.temperature, "seed": a.seed,
                          "max_new_tokens": a.max_new_tokens, **summarize(counts),
                          "next_bar_after_empty_bars": next_bar}
    print(table(results))
    for label, r in results.items():
        if r.get("next_bar_after_empty_bars"):
            print(f"{label}: P(bar 1, 2, 3 holds nothing | every bar before it held nothing) = "
                  + ", ".join(f"{p:.4f}" for p in r["next_bar_after_empty_bars"]))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
