"""REMI base ids -> Score. Total on in-vocabulary ids: anything malformed is skipped, never raised.

Reading rules (the inverse of `remi.encode`): Bar starts the next bar (the first Bar starts bar 0
at tick 0); a TimeSig right after it sets the meter from that bar on; Position moves inside the
current bar; Tempo applies at the current tick; Pitch Velocity Duration is a note at the current
tick (a Pitch not followed by Velocity and Duration is dropped, with its partial group). Special
tokens are ignored, except EOS, which ends the piece. Unknown ids raise ValueError. Notes of one
pitch never overlap in the result (`remi.score.one_voice_per_pitch`), whatever the ids say, so
the written MIDI file reads back the same in every reader.
"""
from __future__ import annotations

import numpy as np

from .score import Score, Tempo, TimeSignature, one_voice_per_pitch, sort_notes
from .vocab import BAR, DEFAULT_TIME_SIGNATURE, DURATION, PITCH, POSITION, SPECIAL, TEMPO, TIMESIG, VELOCITY, Vocab


def check_ids(ids, vocab: Vocab, size: int | None = None) -> np.ndarray:
    """A flat sequence of token ids -> int64 array, every id an integer in [0, size) (`size`
    defaults to the base vocabulary; a BPE tokenizer passes its own). Anything else is a
    ValueError naming the first bad id and its index: floats (even 5.0), strings, bools, None,
    and integers too large for int64 are refused rather than converted. So is `ids` itself when
    it is not a sequence (None, a bare int)."""
    size = len(vocab) if size is None else size
    if isinstance(ids, np.ndarray) or hasattr(ids, "__len__"):
        seq = ids
    else:
        try:
            it = iter(ids)
        except TypeError:  # None, a bare int: not a sequence at all
            raise ValueError(f"token ids must be a flat sequence of ints (a list, tuple or array), got "
                             f"{type(ids).__name__} {ids!r:.40}") from None
        seq = list(it)
    arr = np.asarray(seq)
    if arr.size == 0 and arr.ndim == 1:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"token ids must be a flat sequence of ints, got an array of shape {arr.shape}")
    if arr.dtype.kind not in "iu" or (arr.dtype.kind == "u" and arr.dtype.itemsize == 8):
        # numpy turned them into floats, strings or objects: find the first bad one as given
        for k, i in enumerate(seq.tolist() if isinstance(seq, np.ndarray) else seq):
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < size:
                what = "is not an integer" if isinstance(i, bool) or not isinstance(i, (int, np.integer)) else \
                    f"is out of the vocabulary (size {size})"
                raise ValueError(f"token id {i!r} at index {k} {what}")
    arr = arr.astype(np.int64, copy=False)
    bad = np.nonzero((arr < 0) | (arr >= size))[0]
    if len(bad):
        raise ValueError(
            f"token id {int(arr[bad[0]])} at index {int(bad[0])} is out of the vocabulary (size {size}); "
            "were these ids made by a tokenizer with another config or BPE?"
        )
    return arr


def ids_to_score(ids, vocab: Vocab) -> Score:
    """Vectorised decoding; same result as `ids_to_score_loop`, the token-by-token reference."""
    arr = check_ids(ids, vocab)
    tpq = vocab.ticks_per_beat
    eos = np.nonzero(arr == vocab.special_id("EOS"))[0]
    if len(eos):
        arr = arr[: eos[0]]
    types = vocab.types[arr]
    vals = vocab.values[arr]
    n = len(arr)
    idx = np.arange(n)

    # Meter in force at each token: the last TimeSig at or before it (4/4 before any).
    ts_num = np.array([4] + [nn for nn, _ in vocab.time_signatures], dtype=np.int64)
    ts_den = np.array([4] + [dd for _, dd in vocab.time_signatures], dtype=np.int64)
    is_ts = types == TIMESIG
    last_ts = np.maximum.accumulate(np.where(is_ts, idx, -1)) if n else idx
    meter = np.where(last_ts >= 0, np.where(is_ts[np.maximum(last_ts, 0)], vals[np.maximum(last_ts, 0)] + 1, 0), 0)
    tpb = tpq * 4 // ts_den[meter]           # ticks per beat at each token
    bar_len = tpb * ts_num[meter]

    # Bar k starts where bar k-1 started plus the length of the meter in force at Bar k's token
    # (the meter of bar k-1); the first Bar starts at tick 0.
    bar_at = np.nonzero(types == BAR)[0]
    step = np.where(np.arange(len(bar_at)) > 0, bar_len[bar_at], 0)
    bar_tick = np.cumsum(step)
    # Current tick at each token: set by the last Bar (its start) or Position (start + offset).
    is_pos = types == POSITION
    bar_of = np.searchsorted(bar_at, idx, side="right") - 1     # last Bar at or before each token
    start_of = np.where(bar_of >= 0, bar_tick[np.maximum(bar_of, 0)] if len(bar_at) else 0, 0)
    anchor_tick = np.where(is_pos, start_of + vals * (tpb // vocab.res), start_of)
    anchor = np.maximum.accumulate(np.where(is_pos | (types == BAR), idx, -1)) if n else idx
    tick = np.where(anchor >= 0, anchor_tick[np.maximum(anchor, 0)], 0)

    # Notes: a Pitch directly followed by Velocity and Duration.
    g = np.nonzero((types[:-2] == PITCH) & (types[1:-1] == VELOCITY) & (types[2:] == DURATION))[0] if n > 2 else idx[:0]
    starts = tick[g]
    durs = np.zeros(len(g), dtype=np.int64)
    for t in np.unique(tpb[g]) if len(g) else ():
        m = tpb[g] == t
        durs[m] = vocab.duration_ticks(int(t))[vals[g[m] + 2]]
    notes = np.stack([starts, starts + durs, vocab.config.pitch_range[0] + vals[g],
                      vocab.velocities[vals[g + 1]]], axis=1) if len(g) else np.zeros((0, 4), np.int64)

    tempo_at = np.nonzero(types == TEMPO)[0]
    tempos = [Tempo(int(t), float(vocab.tempos[v])) for t, v in zip(tick[tempo_at].tolist(), vals[tempo_at].tolist())]
    time_sigs: list[TimeSignature] = []
    prev = None
    for i in np.nonzero(is_ts)[0].tolist():
        cur = vocab.time_signatures[vals[i]]
        if cur != prev:  # a repeated TimeSig (the one after every Bar) is no change
            b = bar_of[i]
            time_sigs.append(TimeSignature(int(bar_tick[b]) if b >= 0 else 0, *cur))
            prev = cur
    return Score(ticks_per_beat=tpq, notes=one_voice_per_pitch(sort_notes(notes.astype(np.int64))), tempos=tempos,
                 time_signatures=time_sigs)


def ids_to_score_loop(ids, vocab: Vocab) -> Score:
    """Token-by-token reference decoder (kept for the equivalence test and as documentation)."""
    arr = check_ids(ids, vocab)
    tpq = vocab.ticks_per_beat
    res = vocab.res
    types = vocab.types[arr].tolist()
    vals = vocab.values[arr].tolist()
    eos = vocab.special_id("EOS")
    lo = vocab.config.pitch_range[0]
    velocities = vocab.velocities.tolist()
    tempos_bpm = vocab.tempos.tolist()
    dur_tables: dict[int, list[int]] = {}

    def meter(num: int, den: int):
        tpb = tpq * 4 // den
        if tpb not in dur_tables:
            dur_tables[tpb] = vocab.duration_ticks(tpb).tolist()
        return tpb * num, tpb // res, dur_tables[tpb]

    num, den = DEFAULT_TIME_SIGNATURE
    bar_len, tpp, durs = meter(num, den)
    bar = -1
    bar_tick = 0
    tick = 0
    notes: list[tuple[int, int, int, int]] = []
    tempos: list[Tempo] = []
    time_sigs: list[TimeSignature] = []
    ts_list = vocab.time_signatures
    n = len(types)
    i = 0
    while i < n:
        t = types[i]
        if t == PITCH:
            if i + 2 < n and types[i + 1] == VELOCITY and types[i + 2] == DURATION:
                notes.append((tick, tick + durs[vals[i + 2]], lo + vals[i], velocities[vals[i + 1]]))
                i += 3
                continue
        elif t == POSITION:
            tick = bar_tick + vals[i] * tpp
        elif t == BAR:
            bar += 1
            if bar > 0:
                bar_tick += bar_len
            tick = bar_tick
        elif t == TIMESIG:
            nn, dd = ts_list[vals[i]]
            if (nn, dd) != (num, den) or not time_sigs:
                num, den = nn, dd
                bar_len, tpp, durs = meter(num, den)
                time_sigs.append(TimeSignature(bar_tick, num, den))
        elif t == TEMPO:
            tempos.append(Tempo(tick, tempos_bpm[vals[i]]))
        elif t == SPECIAL and arr[i] == eos:
            break
        i += 1
    note_arr = np.array(notes, dtype=np.int64).reshape(-1, 4)
    return Score(ticks_per_beat=tpq, notes=one_voice_per_pitch(sort_notes(note_arr)), tempos=tempos, time_signatures=time_sigs)


def count_notes(ids, vocab: Vocab) -> int:
    arr = check_ids(ids, vocab)
    return int(np.count_nonzero(vocab.types[arr] == PITCH))
