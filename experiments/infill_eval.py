"""The infilling part of `experiments/evaluate.py --infill`: does the model use the bars after?

For each real piece of at least 12 bars: bars 1-4 are the prefix, 5-8 the middle, 9-12 the suffix
(the piece's opening, as the continuation evaluation takes its prompt there). The model reads the
layout `pianolm.infill` builds (prefix and suffix trimmed by whole bars, farthest first, where they
do not fit its context; the pieces whose middle alone does not fit are counted and left out).

- `bits_with_context`: bits per note of the real middle given prefix and suffix;
- `bits_prefix_only`: the same tokens given only the same prefix, as continuation sees them;
  `bits_gain` their per-piece difference (prefix only minus with context) with a 95% bootstrap
  interval over pieces: above 0 when the model uses the bars after;
- for an infilled middle and, as the baseline, a continuation of the prefix by 4 bars (both
  sampled under the REMI grammar mask, which infilling always uses): key agreement of the new middle with
  the surrounding bars (the real prefix and suffix), its note density over the real middle's, the
  overlap of its pitch range with the real middle's, and the mean-pitch distance in semitones
  across the two joins (last prefix bar to first middle bar, last middle bar to first suffix bar);
  `real` gives the same figures for the real middle, the reference;
- `infilled_minus_continued`: each of those figures as the per-piece difference, infilled minus
  continued, over the pieces where both exist, with its mean, 95% bootstrap interval and count
  (key_agree above 0: infilling agrees more with the bars around; join_after below 0: a smaller
  jump into the bars after than the continuation's).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch

from model.generate import Sampler
from model.gpt import GPT
from pianolm import infill as inf
from pianolm.errors import InputError
from pianolm.generate import Sampling, sample_ids
from remi import metrics as M
from remi.bars import count_bars, cut_bars
from remi.keys import find_key, key_agrees
from remi.score import PITCH, START, Score, bar_starts

PREFIX_BARS, MIDDLE_BARS, SUFFIX_BARS = 4, 4, 4
FIGURES = ("key_agree", "density_ratio", "pitch_range_overlap", "join_before", "join_after")
BOOTSTRAP_RESAMPLES = 2000


def bits_given(gpt: GPT, context: Sequence[int], target: Sequence[int]) -> float:
    """Summed -log2 p(target | context) of the target tokens, in one forward pass."""
    seq = torch.tensor([list(context) + list(target)], dtype=torch.long, device=next(gpt.parameters()).device)
    with torch.no_grad():
        logits = gpt(seq[:, :-1])
    logp = torch.log_softmax(logits[0, len(context) - 1:].double(), dim=-1)
    picked = logp.gather(1, seq[0, len(context):, None]).sum()
    return float(-picked / math.log(2))


def _notes_in(score: Score, lo: int, hi: int) -> Score:
    n = score.notes
    return dataclasses.replace(score, notes=n[(n[:, START] >= lo) & (n[:, START] < hi)])


def _mean_pitch(score: Score) -> float:
    return float(score.notes[:, PITCH].mean()) if len(score) else M.NAN


def figures(tok, ids: Sequence[int], real_middle: Score) -> dict[str, float]:
    """The middle (bars 5-8) of a 12-bar piece `ids` against its surroundings and the real middle."""
    score = tok.decode_score(list(ids))
    t = bar_starts(score, 0, min_count=PREFIX_BARS + MIDDLE_BARS + SUFFIX_BARS + 1)
    a, b = PREFIX_BARS, PREFIX_BARS + MIDDLE_BARS
    middle = _notes_in(score, t[a], t[b])
    around = dataclasses.replace(score, notes=np.concatenate([_notes_in(score, t[0], t[a]).notes,
                                                              _notes_in(score, t[b], t[b + SUFFIX_BARS]).notes]))
    k_mid, k_around = find_key(middle), find_key(around)
    bar = lambda i: _notes_in(score, t[i], t[i + 1])  # noqa: E731
    return {
        "key_agree": float(key_agrees(k_mid, k_around)) if k_mid and k_around else M.NAN,
        "density_ratio": len(middle) / len(real_middle) if len(real_middle) else M.NAN,
        "pitch_range_overlap": M.pitch_range_overlap(middle, real_middle),
        "join_before": abs(_mean_pitch(bar(a - 1)) - _mean_pitch(bar(a))),
        "join_after": abs(_mean_pitch(bar(b - 1)) - _mean_pitch(bar(b))),
    }


def _continuation(gpt: GPT, tok, prefix: Sequence[int], seed: int, draw: dict) -> list[int]:
    """The prefix continued by MIDDLE_BARS bars under the grammar mask (as the middle is infilled),
    cut to those bars; a piece that ended sooner is filled with empty bars, so the suffix that
    follows keeps its bar numbers."""
    s = Sampling(temperature=draw["sampler"].temperature, top_k=draw["sampler"].top_k, top_p=draw["sampler"].top_p,
                 min_p=draw["sampler"].min_p, grammar=True, max_new_tokens=draw["max_new_tokens"], max_bars=MIDDLE_BARS)
    row, _ = sample_ids(gpt, tok, list(prefix), 1, s, torch.Generator().manual_seed(seed), continue_bars=True,
                        threads=draw["threads"])[0]
    ids, bars = cut_bars(tok, row, PREFIX_BARS + MIDDLE_BARS)
    return ids + [tok.bar_id] * (PREFIX_BARS + MIDDLE_BARS - bars)


def _one_piece(gpt: GPT, tok, ids: list[int], seed: int, draw: dict) -> dict | None:
    """Every figure of one piece, or None when it is too short or its middle does not fit."""
    total = PREFIX_BARS + MIDDLE_BARS + SUFFIX_BARS
    if count_bars(tok, ids) < total:
        return None
    seg = cut_bars(tok, ids, total)[0]
    try:
        p = inf.plan(tok, seg, (PREFIX_BARS + 1, PREFIX_BARS + MIDDLE_BARS), gpt.config.block_size)
    except InputError:
        return {"fits": False}
    s_id = tok.infill_ids[0]
    middle = seg[p.start:p.end]
    notes = tok.count_notes(middle)
    real_score = tok.decode_score(seg)
    t = bar_starts(real_score, 0, min_count=total + 1)
    real_middle = _notes_in(real_score, t[PREFIX_BARS], t[PREFIX_BARS + MIDDLE_BARS])
    with_ctx = bits_given(gpt, p.context, middle)
    prefix_only = bits_given(gpt, p.context[:p.context.index(s_id)], middle)
    filled, _ = inf.infill_rows(gpt, tok, p, 1, draw["sampler"], torch.Generator().manual_seed(seed),
                                threads=draw["threads"])[0]
    cont = _continuation(gpt, tok, seg[:p.start], seed, draw) + seg[p.end:]
    return {"fits": True, "notes": notes, "context_bars": count_bars(tok, p.context),
            "bits_with_context": with_ctx / notes if notes else M.NAN,
            "bits_prefix_only": prefix_only / notes if notes else M.NAN,
            "infilled": figures(tok, filled, real_middle), "continuation": figures(tok, cont, real_middle),
            "real": figures(tok, seg, real_middle), "ids": {"infilled": filled, "continuation": cont, "real": seg}}


def bootstrap_mean(values: Sequence[float], seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> list[float]:
    """[2.5th, 97.5th] percentile of the mean of `values` (NaN dropped) over resampled pieces."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if len(v) < 2:
        return [M.NAN, M.NAN]
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (resamples, len(v)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def evaluate_infill(gpt: GPT, tok, pieces: Sequence[tuple], seed: int = 0, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                    max_new_tokens: int = 2048, threads: int | None = None) -> dict:
    """evaluate.py's `infill` block over `pieces` ((file, ids) pairs), and the generated ids."""
    if tok.infill_ids is None:
        raise SystemExit("evaluate --infill: this checkpoint's tokenizer has no Infill tokens: it was trained "
                         "without infilling (data.infill_share=0)")
    draw = {"sampler": Sampler(temperature, top_k, top_p, min_p), "max_new_tokens": max_new_tokens,
            "threads": threads}
    rows, files, too_short, too_long = [], [], 0, 0
    for i, (f, ids) in enumerate(pieces):
        r = _one_piece(gpt, tok, ids, seed + 1 + i, draw)
        if r is None:
            too_short += 1
        elif not r["fits"]:
            too_long += 1
        else:
            rows.append(r)
            files.append(getattr(f, "name", str(f)))
    gain = [r["bits_prefix_only"] - r["bits_with_context"] for r in rows]
    out = {
        "pieces": len(rows), "too_short": too_short, "middle_too_long": too_long,
        "bars": [PREFIX_BARS, MIDDLE_BARS, SUFFIX_BARS],
        "mean_context_bars": M.nanmean(r["context_bars"] for r in rows),
        "bits_with_context": M.nanmean(r["bits_with_context"] for r in rows),
        "bits_prefix_only": M.nanmean(r["bits_prefix_only"] for r in rows),
        "bits_gain": M.nanmean(gain), "bits_gain_ci95": bootstrap_mean(gain, seed),
        "per_piece": {"file": files, "bits_with_context": [r["bits_with_context"] for r in rows],
                      "bits_prefix_only": [r["bits_prefix_only"] for r in rows]},
    }
    for part in ("infilled", "continuation", "real"):
        out[part] = {k: M.nanmean(r[part][k] for r in rows) for k in FIGURES}
        out["per_piece"][part] = {k: [r[part][k] for r in rows] for k in FIGURES}
    out["infilled_minus_continued"] = {k: paired_difference(out["per_piece"]["infilled"][k],
                                                            out["per_piece"]["continuation"][k], seed)
                                       for k in FIGURES}
    out["_ids"] = [r["ids"] for r in rows]
    return out


def paired_difference(a: Sequence[float], b: Sequence[float], seed: int = 0) -> dict:
    """Per-piece a - b over the pieces where both are finite: its mean, a 95% bootstrap interval
    and the number of pieces (key_agree: above 0 means infilling agrees more; join_*: below 0
    means smaller jumps than the continuation's)."""
    d = [x - y for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    return {"mean": M.nanmean(d), "ci95": bootstrap_mean(d, seed), "n": len(d)}


def render_infill_text(r: dict) -> str:
    lines = [f"infilling ({r['pieces']} pieces; {r['too_short']} under 12 bars, {r['middle_too_long']} whose middle "
             f"does not fit; {r['mean_context_bars']:.1f} bars of context on average):",
             f"  bits/note of the real middle: {r['bits_with_context']:.4f} with both sides, "
             f"{r['bits_prefix_only']:.4f} with the prefix only; gain {r['bits_gain']:.4f} "
             f"(95% CI {r['bits_gain_ci95'][0]:.4f} .. {r['bits_gain_ci95'][1]:.4f})",
             f"  {'':<22}{'infilled':>10}{'continued':>11}{'real':>8}"]
    diff = r.get("infilled_minus_continued", {})
    if diff:
        lines[-1] += f"  {'infilled - continued (95% CI, pieces)':>40}"
    for k in FIGURES:
        line = f"  {k:<22}{r['infilled'][k]:>10.3f}{r['continuation'][k]:>11.3f}{r['real'][k]:>8.3f}"
        if k in diff:
            d = diff[k]
            line += f"  {d['mean']:>+13.3f} ({d['ci95'][0]:+.3f} .. {d['ci95'][1]:+.3f}, {d['n']})"
        lines.append(line)
    return "\n".join(lines)
