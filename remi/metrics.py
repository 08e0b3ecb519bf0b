"""Music metrics over `Score` notes: the original work's listening judgements as numbers.

Pure numpy functions (no torch, no mido). Each per-piece metric takes one `Score` and returns a
float, NaN where it is undefined (a piece with one onset has no inter-onset interval); the
set-level helpers ignore NaNs. Times are in ticks unless a name says beats, bars or seconds;
a beat is a quarter note (`ticks_per_beat`), a bar follows the time signature in force (4/4
when the score states none).

- silence:      leading_silence_beats, longest_gap_bars (and, over a set, long_gap_share)
- slamming:     notes_per_onset, big_chord_share, polyphony
- rapid taps:   ioi_beats (the distribution), short_ioi_share, notes_per_second
- coherence:    pitch_class_entropy, scale_consistency, groove_consistency, pitch_range,
                velocity_spread
- distance:     overlap_area (Yang & Lerch's overlapping area of two smoothed distributions)
- continuation: continuation_consistency (prompt bars vs the bars that follow)

`python -m remi.metrics key-accuracy [PATH...]` measures Krumhansl–Schmuckler key finding
against the key signatures that MIDI files state (see `key_accuracy`).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np

from .keys import DEFAULT_PROFILE, find_key, key_agrees, pitch_class_profile, stated_key
from .score import END, PITCH, START, VELOCITY, Score, bar_starts, ticks_to_seconds

NAN = float("nan")

# A gap this long (in bars) is a "long pause" in the original work's sense.
LONG_GAP_BARS = 2.0
# An onset with this many notes or more is a slammed chord.
BIG_CHORD_NOTES = 6
# Onsets closer than this (in beats) are rapid taps: a 32nd note is 1/8 of a quarter-note beat,
# in ticks `ticks_per_beat / 8`, so the threshold follows the piece's own tempo.
SHORT_IOI_BEATS = 1 / 8
# Grid for groove consistency: onset positions per beat (12 holds 16ths and 8th-note triplets).
GROOVE_STEPS_PER_BEAT = 12


# ---------------------------------------------------------------------------------------------
# Bars


def bar_lengths_at(score: Score, ticks) -> np.ndarray:
    """Ticks in the bar that contains each of `ticks` (on the bar grid of `bar_starts`), built once."""
    ticks = np.asarray(ticks, dtype=np.int64).reshape(-1)
    starts = bar_starts(score, int(ticks.max()) if len(ticks) else 0)
    i = np.searchsorted(starts, ticks, side="right") - 1
    return starts[i + 1] - starts[i]


def bar_length_at(score: Score, tick: int) -> int:
    """Ticks in the bar that contains `tick`."""
    return int(bar_lengths_at(score, [tick])[0])


def split_at_bar(score: Score, n_bars: int) -> tuple[Score, Score, int]:
    """(notes starting in the first n bars, notes starting later, the tick where bar n+1 starts)."""
    split = int(bar_starts(score, 0, min_count=n_bars + 1)[n_bars])
    head = score.notes[score.notes[:, START] < split]
    tail = score.notes[score.notes[:, START] >= split]
    return _with_notes(score, head), _with_notes(score, tail), split


def truncate_bars(score: Score, n_bars: int) -> Score:
    """The notes that start within the first n bars."""
    return split_at_bar(score, n_bars)[0]


def _with_notes(score: Score, notes: np.ndarray) -> Score:
    return Score(
        ticks_per_beat=score.ticks_per_beat,
        notes=notes,
        tempos=list(score.tempos),
        time_signatures=list(score.time_signatures),
        key_signatures=list(score.key_signatures),
        pedals=list(score.pedals),
    )


# ---------------------------------------------------------------------------------------------
# Silence


def leading_silence_beats(score: Score) -> float:
    """Beats before the first note starts."""
    if len(score) == 0:
        return NAN
    return float(score.notes[:, START].min()) / score.ticks_per_beat


def gaps(score: Score) -> list[tuple[int, int]]:
    """(start, end) ticks of every stretch inside the piece during which no note sounds."""
    if len(score) == 0:
        return []
    order = np.argsort(score.notes[:, START], kind="stable")
    starts = score.notes[order, START]
    # Latest end among the notes started so far: silence begins there if the next starts later.
    sounding_until = np.maximum.accumulate(score.notes[order, END])
    idx = np.nonzero(starts[1:] > sounding_until[:-1])[0]
    return [(int(sounding_until[i]), int(starts[i + 1])) for i in idx]


def longest_gap_bars(score: Score) -> float:
    """Longest silence between the first note and the last, in bars (0 when there is none)."""
    if len(score) == 0:
        return NAN
    silences = np.asarray(gaps(score), dtype=np.int64).reshape(-1, 2)
    if not len(silences):
        return 0.0
    return float(((silences[:, 1] - silences[:, 0]) / bar_lengths_at(score, silences[:, 0])).max())


# ---------------------------------------------------------------------------------------------
# Chord slamming


def onset_sizes(score: Score) -> np.ndarray:
    """Number of notes that start at each distinct onset tick, in time order."""
    return np.unique(score.notes[:, START], return_counts=True)[1]


def notes_per_onset(score: Score) -> float:
    sizes = onset_sizes(score)
    return float(sizes.mean()) if len(sizes) else NAN


def big_chord_share(score: Score, min_notes: int = BIG_CHORD_NOTES) -> float:
    """Share of onsets at which `min_notes` or more notes start together."""
    sizes = onset_sizes(score)
    return float((sizes >= min_notes).mean()) if len(sizes) else NAN


def polyphony(score: Score) -> float:
    """Mean number of notes sounding at once, over the time during which any note sounds."""
    notes = score.notes[score.notes[:, END] > score.notes[:, START]]
    if len(notes) == 0:
        return NAN
    ticks = np.concatenate([notes[:, START], notes[:, END]])
    steps = np.concatenate([np.ones(len(notes)), -np.ones(len(notes))])
    order = np.argsort(ticks, kind="stable")
    ticks, sounding = ticks[order], np.cumsum(steps[order])
    dt = np.diff(ticks)  # sounding[i] notes sound from ticks[i] to ticks[i + 1]
    active = sounding[:-1] > 0
    return float((sounding[:-1] * dt)[active].sum() / dt[active].sum())


def max_polyphony(score: Score) -> float:
    notes = score.notes[score.notes[:, END] > score.notes[:, START]]
    if len(notes) == 0:
        return NAN
    # Ends sort before starts at the same tick: a note released as the next one starts is legato.
    events = sorted([(int(s), 1) for s in notes[:, START]] + [(int(e), -1) for e in notes[:, END]])
    return float(np.cumsum([d for _, d in events]).max())


# ---------------------------------------------------------------------------------------------
# Rapid taps


def ioi_beats(score: Score) -> np.ndarray:
    """Inter-onset intervals between successive distinct onsets, in beats."""
    onsets = np.unique(score.notes[:, START])
    return np.diff(onsets) / score.ticks_per_beat


def short_ioi_share(score: Score, below_beats: float = SHORT_IOI_BEATS) -> float:
    """Share of inter-onset intervals shorter than a 32nd note (1/8 beat) at the piece's tempo."""
    iois = ioi_beats(score)
    return float((iois < below_beats - 1e-9).mean()) if len(iois) else NAN


def median_ioi_beats(score: Score) -> float:
    iois = ioi_beats(score)
    return float(np.median(iois)) if len(iois) else NAN


def notes_per_second(score: Score) -> float:
    """Notes per second from the first onset to the last note's end, following the tempo map."""
    if len(score) == 0:
        return NAN
    first = int(score.notes[:, START].min())
    seconds = ticks_to_seconds(score.end_tick, score.ticks_per_beat, score.tempos) - ticks_to_seconds(
        first, score.ticks_per_beat, score.tempos
    )
    return float(len(score) / seconds) if seconds > 0 else NAN


# ---------------------------------------------------------------------------------------------
# Coherence


def pitch_class_entropy(score: Score) -> float:
    """Shannon entropy (bits) of the pitch-class note counts: 0 for one pitch class, log2 12 max."""
    hist = pitch_class_profile(score, "count")
    if hist.sum() == 0:
        return NAN
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum() + 0.0)


# Pitch classes of the C major scale; a natural minor scale holds the notes of its relative
# major, so the 12 rotations cover every major and minor scale.
_MAJOR_SCALE = np.zeros(12, dtype=bool)
_MAJOR_SCALE[[0, 2, 4, 5, 7, 9, 11]] = True


def scale_consistency(score: Score) -> float:
    """Share of notes that lie in the best-matching major/minor scale (1 for a major scale)."""
    hist = pitch_class_profile(score, "count")
    if hist.sum() == 0:
        return NAN
    in_scale = max(hist[np.roll(_MAJOR_SCALE, k)].sum() for k in range(12))
    return float(in_scale / hist.sum())


def groove_consistency(score: Score, steps_per_beat: int = GROOVE_STEPS_PER_BEAT) -> float:
    """1 - mean Hamming distance between the onset patterns of successive bars (Wu & Yang 2020).

    Each bar (from the first note's bar to the last onset's bar, empty bars included) becomes a
    binary vector over a grid of `steps_per_beat` positions per beat; the distance of two bars
    is the share of grid positions on which they differ. 1 = every bar has the same rhythm.
    """
    if len(score) == 0:
        return NAN
    onsets = np.unique(score.notes[:, START])
    starts = bar_starts(score, int(onsets[-1]))
    bar = np.searchsorted(starts, onsets, side="right") - 1
    first, last = int(bar[0]), int(bar[-1])
    if last == first:
        return NAN
    step = score.ticks_per_beat / steps_per_beat
    lengths = np.diff(starts)[first : last + 1]
    width = int(round(lengths.max() / step))
    pattern = np.zeros((last - first + 1, width), dtype=bool)
    pos = np.minimum(np.round((onsets - starts[bar]) / step).astype(int), width - 1)
    pattern[bar - first, pos] = True
    hamming = (pattern[1:] != pattern[:-1]).mean(axis=1)
    return float(1.0 - hamming.mean())


def pitch_range(score: Score) -> float:
    """Semitones between the lowest and the highest note."""
    if len(score) == 0:
        return NAN
    return float(score.notes[:, PITCH].max() - score.notes[:, PITCH].min())


def velocity_spread(score: Score) -> float:
    """Standard deviation of the note velocities."""
    if len(score) == 0:
        return NAN
    return float(score.notes[:, VELOCITY].std())


# ---------------------------------------------------------------------------------------------
# All per-piece metrics, and sets of pieces

# name -> (function, short label for tables and plots)
PIECE_METRICS: dict[str, tuple[Callable[[Score], float], str]] = {
    "leading_silence_beats": (leading_silence_beats, "leading silence (beats)"),
    "longest_gap_bars": (longest_gap_bars, "longest gap (bars)"),
    "notes_per_onset": (notes_per_onset, "notes per onset"),
    "big_chord_share": (big_chord_share, f"onsets with >= {BIG_CHORD_NOTES} notes"),
    "polyphony": (polyphony, "polyphony (notes sounding)"),
    "short_ioi_share": (short_ioi_share, "IOIs < 32nd note"),
    "median_ioi_beats": (median_ioi_beats, "median IOI (beats)"),
    "notes_per_second": (notes_per_second, "notes per second"),
    "pitch_class_entropy": (pitch_class_entropy, "pitch-class entropy (bits)"),
    "scale_consistency": (scale_consistency, "scale consistency"),
    "groove_consistency": (groove_consistency, "groove consistency"),
    "pitch_range": (pitch_range, "pitch range (semitones)"),
    "velocity_spread": (velocity_spread, "velocity spread (std)"),
}


def piece_metrics(score: Score) -> dict[str, float]:
    """Every per-piece metric of one score, plus its note count."""
    out = {name: fn(score) for name, (fn, _) in PIECE_METRICS.items()}
    out["n_notes"] = float(len(score))
    return out


def summarize(pieces: Sequence[dict[str, float]]) -> dict[str, float]:
    """Set-level figures: the mean of each metric over pieces (NaNs skipped), the share of
    pieces with a gap >= LONG_GAP_BARS, and the share of pieces with no notes at all."""
    out: dict[str, float] = {}
    if not pieces:
        return out
    for name in pieces[0]:
        out[name] = nanmean([p.get(name, NAN) for p in pieces])
    gaps_ = [p["longest_gap_bars"] for p in pieces if "longest_gap_bars" in p]
    out["long_gap_share"] = float(np.mean([g >= LONG_GAP_BARS for g in gaps_])) if gaps_ else NAN
    out["empty_share"] = float(np.mean([p.get("n_notes", 1.0) == 0 for p in pieces]))
    return out


def nanmean(values: Iterable[float]) -> float:
    """Mean of the finite values (None, NaN and inf skipped); NaN when none is left."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if len(arr) else NAN


# ---------------------------------------------------------------------------------------------
# Distance to real music


def gaussian_kde(values: np.ndarray, bandwidth: float) -> Callable[[np.ndarray], np.ndarray]:
    """A Gaussian kernel density estimate with a fixed bandwidth, as a function of x."""
    values = np.asarray(values, dtype=float)

    def pdf(x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=float)[:, None] - values[None, :]) / bandwidth
        return np.exp(-0.5 * z**2).sum(axis=1) / (len(values) * bandwidth * math.sqrt(2 * math.pi))

    return pdf


def scott_bandwidth(values: np.ndarray) -> float:
    """Scott's rule: std * n^(-1/5) (0 for a constant set)."""
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1) * len(values) ** (-0.2)) if len(values) > 1 else 0.0


def _densities(a: Sequence[float], b: Sequence[float], grid_points: int):
    """(x, density of a, density of b) on one grid, or None if either sample has no finite value.

    Each sample becomes a Gaussian KDE (Scott's bandwidth). A constant sample borrows the other's
    bandwidth, and two constant samples use 5% of the span between them, so that identical
    constants coincide and distinct constants barely touch.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return None
    ha, hb = scott_bandwidth(a), scott_bandwidth(b)
    span = max(a.max(), b.max()) - min(a.min(), b.min())
    fallback = 0.05 * span if span > 0 else 1.0
    ha = ha or hb or fallback
    hb = hb or ha
    lo = min(a.min() - 5 * ha, b.min() - 5 * hb)
    hi = max(a.max() + 5 * ha, b.max() + 5 * hb)
    x = np.linspace(lo, hi, grid_points)
    return x, gaussian_kde(a, ha)(x), gaussian_kde(b, hb)(x)


def _integral(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.trapezoid(y, x) if hasattr(np, "trapezoid") else np.trapz(y, x))


def overlap_area(a: Sequence[float], b: Sequence[float], grid_points: int = 2048) -> float:
    """Overlapping area of the smoothed distributions of two samples (Yang & Lerch 2020).

    The integral of the pointwise minimum of the two densities (`_densities`): 1 for identical
    distributions, 0 for disjoint ones. NaN/inf values are dropped; NaN if either sample is then
    empty.
    """
    d = _densities(a, b, grid_points)
    if d is None:
        return NAN
    x, pa, pb = d
    return min(1.0, _integral(np.minimum(pa, pb), x))


# The generated density is floored at this share of its peak before the log, so a real value the
# model never produces costs a large but finite divergence (MGEval's KDEs face the same zero).
KL_FLOOR = 1e-6


def kl_divergence(real: Sequence[float], generated: Sequence[float], grid_points: int = 2048) -> float:
    """KL(real || generated) in nats between the same smoothed distributions `overlap_area` uses
    (MGEval; Lehmkuhl et al. 2025 report it beside the overlap): 0 for identical distributions,
    larger as the model puts less probability where real pieces lie. Both densities are
    renormalised on the grid; NaN if either sample has no finite value."""
    d = _densities(real, generated, grid_points)
    return NAN if d is None else _kl(*d)


def _kl(x: np.ndarray, p: np.ndarray, q: np.ndarray) -> float:
    p = p / _integral(p, x)
    q = np.maximum(q, KL_FLOOR * q.max()) if q.max() > 0 else np.full_like(q, KL_FLOOR)
    q = q / _integral(q, x)
    mask = p > 0
    return max(0.0, _integral(np.where(mask, p * np.log(np.where(mask, p, 1.0) / q), 0.0), x))


def overlap_and_kl(real: Sequence[float], generated: Sequence[float], grid_points: int = 2048) -> tuple[float, float]:
    """(overlap_area, kl_divergence(real, generated)) from one pair of density estimates."""
    d = _densities(real, generated, grid_points)
    if d is None:
        return NAN, NAN
    x, p, q = d
    return min(1.0, _integral(np.minimum(p, q), x)), _kl(x, p, q)


def kl_divergences(
    generated: Sequence[dict[str, float]], real: Sequence[dict[str, float]], names: Iterable[str] | None = None
) -> dict[str, float]:
    """kl_divergence(real, generated) of each metric's values (the argument order of overlap_areas)."""
    names = list(names if names is not None else PIECE_METRICS)
    return {n: kl_divergence([p.get(n, NAN) for p in real], [p.get(n, NAN) for p in generated]) for n in names}


def overlap_areas(
    generated: Sequence[dict[str, float]], real: Sequence[dict[str, float]], names: Iterable[str] | None = None
) -> dict[str, float]:
    """overlap_area of each metric's values over generated pieces vs over real pieces."""
    names = list(names if names is not None else PIECE_METRICS)
    return {
        n: overlap_area([p.get(n, NAN) for p in generated], [p.get(n, NAN) for p in real]) for n in names
    }


# ---------------------------------------------------------------------------------------------
# Continuation consistency


def beats_per_minute(score: Score, start: int, end: int) -> float:
    """Average tempo over [start, end) ticks: beats elapsed / minutes elapsed."""
    if end <= start:
        return NAN
    tpb, tempos = score.ticks_per_beat, score.tempos
    minutes = (ticks_to_seconds(end, tpb, tempos) - ticks_to_seconds(start, tpb, tempos)) / 60
    return float((end - start) / tpb / minutes)


def continuation_consistency(score: Score, prompt_bars: int, total_bars: int | None = None) -> dict[str, float]:
    """How well the bars after the first `prompt_bars` keep the prompt's key, tempo and texture.

    `score` holds prompt and continuation in one piece (a sampled continuation, or the real
    piece the prompt came from); `total_bars` cuts it to that many bars first (so a real piece
    is compared over as many bars as the model generated).

    key_agree:           1 if the Krumhansl–Schmuckler keys of the two parts share a signature
                         (relative major/minor agree), else 0
    key_same:            1 if they are the same key (tonic and mode)
    tempo_ratio:         average bpm of the continuation / of the prompt
    density_ratio:       notes per beat of the continuation / of the prompt (each part's span
                         runs from its first bar to the end of the bar of its last onset)
    pitch_range_overlap: |intersection| / |union| of the two parts' [lowest, highest] pitches
    All NaN when either part is empty.
    """
    if total_bars is not None:
        score = truncate_bars(score, total_bars)
    head, tail, split = split_at_bar(score, prompt_bars)
    out = dict(key_agree=NAN, key_same=NAN, tempo_ratio=NAN, density_ratio=NAN, pitch_range_overlap=NAN)
    if len(head) == 0 or len(tail) == 0:
        return out
    k_head, k_tail = find_key(head), find_key(tail)
    out["key_agree"] = float(key_agrees(k_tail, k_head))
    out["key_same"] = float(k_tail == k_head)
    starts = bar_starts(score, int(tail.notes[:, START].max()))
    tail_end = int(starts[np.searchsorted(starts, int(tail.notes[:, START].max()), side="right")])
    out["tempo_ratio"] = beats_per_minute(score, split, tail_end) / beats_per_minute(score, 0, split)
    density_head = len(head) / (split / score.ticks_per_beat)
    density_tail = len(tail) / ((tail_end - split) / score.ticks_per_beat)
    out["density_ratio"] = density_tail / density_head
    out["pitch_range_overlap"] = pitch_range_overlap(head, tail)
    return out


def pitch_range_overlap(a: Score, b: Score) -> float:
    """|intersection| / |union| of two scores' [lowest, highest] pitches, in semitones counted
    inclusively (NaN when either has no notes)."""
    if len(a) == 0 or len(b) == 0:
        return NAN
    pa, pb = a.notes[:, PITCH], b.notes[:, PITCH]
    inter = max(0, min(pa.max(), pb.max()) - max(pa.min(), pb.min()) + 1)
    return float(inter / (max(pa.max(), pb.max()) - min(pa.min(), pb.min()) + 1))


# ---------------------------------------------------------------------------------------------
# Key-finding accuracy against stated key signatures


def key_accuracy(scores: Iterable[tuple[str, Score]], profiles: str = DEFAULT_PROFILE) -> dict:
    """Share of scores stating a key signature whose Krumhansl–Schmuckler key has that signature.

    Scores without a key_signature event are skipped (counted in `skipped`). Returns
    {"accuracy", "n", "agree", "skipped", "misses": [(name, stated, found), ...]}.
    """
    n = agree = skipped = 0
    misses: list[tuple[str, str, str]] = []
    for name, score in scores:
        stated = stated_key(score)
        found = find_key(score, profiles=profiles)
        if stated is None or found is None:
            skipped += 1
            continue
        n += 1
        if key_agrees(found, stated):
            agree += 1
        else:
            misses.append((name, stated.name, found.name))
    return {"accuracy": agree / n if n else NAN, "n": n, "agree": agree, "skipped": skipped, "misses": misses}
