"""REMI base ids -> Score. Total on in-vocabulary ids: anything malformed is skipped, never raised.

Reading rules (the inverse of `remi.encode`): Bar starts the next bar (the first Bar starts bar 0
at tick 0); a TimeSig right after it sets the meter from that bar on; Position moves inside the
current bar; Tempo applies at the current tick; Pitch Velocity Duration is a note at the current
tick (a Pitch not followed by Velocity and Duration is dropped, with its partial group). Special
tokens are ignored, except EOS, which ends the piece. Unknown ids raise ValueError.
"""
from __future__ import annotations

import numpy as np

from .score import Score, Tempo, TimeSignature, sort_notes
from .vocab import (BAR, DEFAULT_TIME_SIGNATURE, DURATION, PITCH, POSITION, SPECIAL, TEMPO, TIMESIG,
                    VELOCITY, Vocab)


def check_ids(ids, vocab: Vocab) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        try:
            arr = np.asarray([int(i) for i in ids], dtype=np.int64)
        except (TypeError, ValueError):
            raise ValueError(f"token ids must be a flat sequence of ints, got {type(ids).__name__}") from None
    arr = arr.astype(np.int64, copy=False)
    bad = np.nonzero((arr < 0) | (arr >= len(vocab)))[0]
    if len(bad):
        raise ValueError(
            f"token id {int(arr[bad[0]])} at index {int(bad[0])} is out of the vocabulary (size {len(vocab)}); "
            "were these ids made by a tokenizer with another config or BPE?"
        )
    return arr


def ids_to_score(ids, vocab: Vocab) -> Score:
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
    return Score(ticks_per_beat=tpq, notes=sort_notes(note_arr), tempos=tempos, time_signatures=time_sigs)


def count_notes(ids, vocab: Vocab) -> int:
    arr = check_ids(ids, vocab)
    return int(np.count_nonzero(vocab.types[arr] == PITCH))
