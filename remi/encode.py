"""Score -> quantized grid -> REMI ids, vectorised with numpy.

Quantization follows MidiTok 3.x REMI step by step (so `conf/tokenizer/miditok.yaml` reproduces
its tokens): time signatures outside the vocabulary are dropped and each one is delayed to the next
bar line; the piece is resampled to `res * max_denominator / 4` ticks per quarter (onsets and
durations rounded half up, separately; durations at least one tick); onsets are snapped to the grid
of their meter section; velocities, durations and tempos (in microseconds per quarter) go to the
closest bin, ties to the higher bin. Then our own two additions: the leading-silence trim and the
cap on consecutive empty bars (both remove whole bars, so in-bar positions are unchanged).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import TokenizerConfig
from .keys import best_key, duration_profile
from .score import END, PITCH, START, VELOCITY, Score, Tempo, TimeSignature, merge_unisons, next_onset_of_pitch, sort_notes
from .vocab import BAR, DEFAULT_TIME_SIGNATURE, DURATION, KEY, POSITION, TEMPO, Vocab, closest_index
from .vocab import PITCH as PITCH_T
from .vocab import VELOCITY as VELOCITY_T


@dataclass
class Grid:
    """A score quantized onto the token grid (ticks at `tpq` per quarter).

    notes: (N, 4) int64 columns onset tick, duration-bin index, pitch, velocity-bin index;
        sorted by (onset, pitch, duration, velocity).
    tempos: (T, 2) int64 tick, tempo-bin index; one per tick, first at tick 0 (when tempos used).
    time_sigs: (K, 3) int64 tick, numerator, denominator; first at tick 0, each on a bar line.
        An array, not a list of tuples: a hostile file may change meter in every bar, and every
        step below handles the meters in one vectorised pass.
    """

    tpq: int
    notes: np.ndarray
    tempos: np.ndarray
    time_sigs: np.ndarray


class Bars:
    """The bar grid implied by a time-signature list: bar index <-> bar start tick, in O(#TS)."""

    def __init__(self, time_sigs: np.ndarray, tpq: int, res: int):
        t = np.array(time_sigs, dtype=np.int64).reshape(-1, 3)
        self.starts = t[:, 0]
        self.lengths = tpq * 4 * t[:, 1] // t[:, 2]
        self.ticks_per_pos = tpq * 4 // t[:, 2] // res
        bars_in = (self.starts[1:] - self.starts[:-1]) // self.lengths[:-1]
        self.first_bar = np.concatenate([[0], np.cumsum(bars_in)]).astype(np.int64)

    def section_of_tick(self, ticks: np.ndarray) -> np.ndarray:
        return np.maximum(np.searchsorted(self.starts, ticks, side="right") - 1, 0)

    def bar_of_tick(self, ticks: np.ndarray) -> np.ndarray:
        s = self.section_of_tick(ticks)
        return self.first_bar[s] + (ticks - self.starts[s]) // self.lengths[s]

    def section_of_bar(self, bars: np.ndarray) -> np.ndarray:
        return np.maximum(np.searchsorted(self.first_bar, bars, side="right") - 1, 0)

    def bar_start(self, bars: np.ndarray) -> np.ndarray:
        s = self.section_of_bar(bars)
        return self.starts[s] + (bars - self.first_bar[s]) * self.lengths[s]


def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5).astype(np.int64)


def _ticks_per_bar(tpq: int, num: int, den: int) -> int:
    return tpq * 4 * num // den


def _preprocess_time_signatures(ts: list[list[int]], tpq: int) -> list[list[int]]:
    """Delay each time signature to the next bar line, drop repeats (MidiTok's rules).

    One pass that appends to `out` (the signatures kept so far) and pops only its last entry, so
    the cost is linear: deleting inside the list made 4·10^5 signatures take ~10 s."""
    out: list[list[int]] = []
    ticks_per_bar = _ticks_per_bar(tpq, ts[0][1], ts[0][2])
    previous_tick = 0
    for cur in ts:
        if out and cur[1:] == out[-1][1:]:
            continue  # a repeat of the meter in force
        if out and cur[0] < out[-1][0]:
            cur[0] = out[-1][0]
        bar_offset, rest = divmod(cur[0] - previous_tick, ticks_per_bar)
        if rest > 0:
            cur[0] = previous_tick + (bar_offset + 1) * ticks_per_bar
        ticks_per_bar = _ticks_per_bar(tpq, cur[1], cur[2])
        previous_tick = cur[0]
        if out and cur[0] == out[-1][0]:
            out.pop()  # two signatures on one bar line: the later one wins
            if out and cur[1:] == out[-1][1:]:
                # ... and it repeats the one before: the meter never changed here
                ticks_per_bar = _ticks_per_bar(tpq, out[-1][1], out[-1][2])
                previous_tick = out[-1][0]
                continue
        out.append(cur)
    if not out or out[0][0] != 0:
        out.insert(0, [0, *DEFAULT_TIME_SIGNATURE])
    return out


def _preprocess_time_signature_array(ts: np.ndarray, tpq: int) -> np.ndarray:
    """`_preprocess_time_signatures` on a (K, 3) int64 array. Signatures that its rules would
    keep as they are (the first at tick 0, each later one a different meter on a bar line of the
    one before it: what real files and a meter change in every bar hold) are checked in one
    vectorised pass and returned unchanged; anything else goes through the loop."""
    if len(ts) > 1:
        gaps = ts[1:, 0] - ts[:-1, 0]
        bar = tpq * 4 * ts[:-1, 1] // ts[:-1, 2]
        changed = (ts[1:, 1] != ts[:-1, 1]) | (ts[1:, 2] != ts[:-1, 2])
        if ts[0, 0] == 0 and np.all((gaps > 0) & (gaps % bar == 0) & changed):
            return ts
    return np.array(_preprocess_time_signatures(ts.tolist(), tpq), dtype=np.int64).reshape(-1, 3)


def _sections(ts: np.ndarray, end: int, value) -> np.ndarray:
    """(K, 2) [section end tick, value(denominator)] with equal successive values merged (a run
    of equal values keeps the end of its last section). `ts` is (K, 3) tick, numerator,
    denominator; `value` maps the int64 array of denominators to an array."""
    values = np.asarray(value(ts[:, 2]), dtype=np.int64)
    ends = np.append(ts[1:, 0], end + 1)
    last_of_run = np.append(values[1:] != values[:-1], True)
    return np.stack([ends[last_of_run], values[last_of_run]], axis=1)


def _snap_sorted(times: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Snap ascending ticks to the grid of their meter section (MidiTok `_adjust_time_to_tpb`):
    section k holds the ticks in [end of section k-1, end of section k) (the last section also
    everything after it) and its grid starts at the end of section k-1. One vectorised pass, so
    a meter change in every bar costs no more than one meter. (Only the ends before the last are
    searched: they are meter changes, ascending; the last end is the piece's end tick + 1, which
    a meter change after the last note can exceed.)"""
    k = np.searchsorted(factors[:-1, 0], times, side="right")
    step = factors[k, 1]
    grid_start = np.concatenate([[0], factors[:-1, 0]])[k]
    snapped = np.round((times - grid_start) / step).astype(np.int64) * step + grid_start
    return np.where(step != 1, snapped, times)


def extend_by_pedal(notes: np.ndarray, pedals: list[tuple[int, int]]) -> np.ndarray:
    """Notes released while the sustain pedal is down sound until it lifts, or until the same
    pitch is struck again (a piano string is re-struck, not doubled), never shorter than played."""
    if not pedals or len(notes) == 0:
        return notes
    p = np.asarray(pedals, dtype=np.int64).reshape(-1, 2)
    ends = notes[:, END]
    k = np.searchsorted(p[:, 0], ends, side="right") - 1
    inside = (k >= 0) & (ends < p[np.maximum(k, 0), 1])
    held = np.where(inside, p[np.maximum(k, 0), 1], ends)
    nxt = next_onset_of_pitch(notes[:, START], notes[:, PITCH])
    out = notes.copy()
    out[:, END] = np.maximum(ends, np.minimum(held, nxt))
    return out


def quantize_grid(score: Score, vocab: Vocab) -> Grid:
    """Score (any ticks per beat) -> Grid. Pure; never mutates `score`."""
    cfg = vocab.config
    notes = _notes_to_quantize(score, cfg)

    # 1. Time signatures in the vocabulary decide the resampled resolution.
    ts = _vocab_time_signatures(score, vocab)
    tpq = vocab.res * int(ts[:, 2].max()) // 4
    factor = tpq / int(score.ticks_per_beat)

    # 2. Resample (onset and duration rounded separately, as symusic's resample(min_dur=1)).
    starts = _round_half_up(notes[:, START] * factor)
    durs = np.maximum(_round_half_up((notes[:, END] - notes[:, START]) * factor), 1)
    ts[:, 0] = (ts[:, 0] * factor).astype(np.int64)  # truncated, not rounded (MidiTok)
    tempo_changes = score.tempos if cfg.use_tempos else []
    t_ticks = _round_half_up(np.array([t.tick for t in tempo_changes], dtype=np.float64) * factor)
    mspq = np.array([round(60_000_000 / t.bpm) for t in tempo_changes], dtype=np.float64)
    if cfg.use_time_signatures:
        ts = _preprocess_time_signature_array(ts, tpq)

    # 3. Onsets and tempo changes onto the Positions of their bars.
    end_tick = int((starts + durs).max()) if len(starts) else 0
    starts, t_ticks = _to_positions(starts, t_ticks, ts, tpq, vocab.res, end_tick)

    # 4. Bins: velocity, duration (per meter: a beat is tpq*4/den ticks), tempo.
    vel_idx = closest_index(vocab.velocities, notes[:, VELOCITY])
    dur_idx = _duration_bins(starts, durs, ts, end_tick, tpq, vocab)
    tempos = _tempo_bins(t_ticks, mspq, vocab) if cfg.use_tempos else np.zeros((0, 2), dtype=np.int64)

    grid_notes = np.stack([starts, dur_idx, notes[:, PITCH], vel_idx], axis=1).astype(np.int64)
    # Canonical order at one position: pitch, then duration, then velocity. MidiTok keeps the
    # pre-quantization onset order instead; ours is what makes encode(decode(ids)) == ids hold.
    grid_notes = grid_notes[np.lexsort((grid_notes[:, 3], grid_notes[:, 1], grid_notes[:, 2], grid_notes[:, 0]))]
    grid = Grid(tpq=tpq, notes=grid_notes.reshape(-1, 4), tempos=tempos.astype(np.int64).reshape(-1, 2),
                time_sigs=ts)
    if cfg.leading_silence == "trim":
        grid = _trim_leading(grid, vocab)
    # Last, once every onset is final: the empty-bar cap moves onsets closer together.
    return one_voice_per_pitch_grid(_cap_empty_bars(grid, vocab), vocab)


def _notes_to_quantize(score: Score, cfg: TokenizerConfig) -> np.ndarray:
    """The score's notes inside the pitch range, onsets ascending, and (`sustain_pedal: extend`)
    held by the pedal; still in the score's own ticks."""
    notes = score.notes
    lo, hi = cfg.pitch_range
    notes = notes[(notes[:, PITCH] >= lo) & (notes[:, PITCH] <= hi)]
    if len(notes) > 1 and np.any(notes[1:, START] < notes[:-1, START]):
        notes = sort_notes(notes)  # a hand-built Score may be unsorted; the steps below need onsets ascending
    if cfg.sustain_pedal == "extend":
        notes = extend_by_pedal(notes, score.pedals)
    return notes


def _vocab_time_signatures(score: Score, vocab: Vocab) -> np.ndarray:
    """(K, 3) int64 tick, numerator, denominator: the score's meters that the vocabulary holds
    (only 4/4 without `use_time_signatures`), led by 4/4 at tick 0 when no kept meter starts there."""
    if vocab.config.use_time_signatures:
        allowed = set(vocab.time_signatures)
        ts = [[t.tick, t.numerator, t.denominator] for t in score.time_signatures
              if (t.numerator, t.denominator) in allowed]
        if not ts or ts[0][0] != 0:
            ts.insert(0, [0, *DEFAULT_TIME_SIGNATURE])
    else:
        ts = [[0, *DEFAULT_TIME_SIGNATURE]]
    return np.array(ts, dtype=np.int64)


def _to_positions(starts: np.ndarray, t_ticks: np.ndarray, ts: np.ndarray, tpq: int, res: int,
                  end_tick: int) -> tuple[np.ndarray, np.ndarray]:
    """Ascending onsets and tempo ticks moved onto a Position of their bar (resampled ticks).

    When meters of different denominators mix, each is first snapped to its meter's grid. A
    Position token can only say which grid step of its bar an event is on; onsets between steps
    (possible when the widest denominator's meter was dropped) go down to their step, as
    MidiTok's tokens put them. Tempos that land on one tick then collapse (`_tempo_bins`)."""
    if np.any(ts[:, 2] != ts[0, 2]):
        factors = _sections(ts, end_tick, lambda d: tpq // (res * d // 4))
        starts = _snap_sorted(starts, factors)
        if len(t_ticks):
            t_ticks = _snap_sorted(t_ticks, factors)
    bars = Bars(ts, tpq, res)
    starts = _floor_to_position(starts, bars)
    if len(t_ticks):
        t_ticks = _floor_to_position(t_ticks, bars)
    return starts, t_ticks


def _duration_bins(starts: np.ndarray, durs: np.ndarray, ts: np.ndarray, end_tick: int, tpq: int,
                   vocab: Vocab) -> np.ndarray:
    """(N,) duration-bin index of each note, binned in beats of the meter at its onset.

    Onsets are ascending; each note takes the beat length of its section (the last section also
    takes any onset past its end), one closest_index per distinct beat length."""
    dur_idx = np.zeros(len(starts), dtype=np.int64)
    tpb_sections = _sections(ts, end_tick, lambda d: tpq * 4 // d)
    sec = np.searchsorted(tpb_sections[:-1, 0], starts, side="right")  # as in _snap_sorted
    tpb_of_note = tpb_sections[sec, 1]
    for tpb in np.unique(tpb_of_note).tolist():
        m = tpb_of_note == tpb
        dur_idx[m] = closest_index(vocab.duration_ticks(tpb), durs[m])
    return dur_idx


def _tempo_bins(t_ticks: np.ndarray, mspq: np.ndarray, vocab: Vocab) -> np.ndarray:
    """(T, 2) tick, tempo-bin index: the last change at each tick, and the default tempo at
    tick 0 until the first change."""
    if not len(t_ticks):
        return np.array([[0, vocab.default_tempo_index]], dtype=np.int64)
    t_idx = vocab.tempo_mspq_order[closest_index(vocab.tempo_mspq_sorted, mspq)]
    keep = np.append(t_ticks[1:] != t_ticks[:-1], True)  # last change at a tick wins
    tempos = np.stack([t_ticks[keep], t_idx[keep]], axis=1)
    if tempos[0, 0] != 0:
        tempos = np.vstack([[0, vocab.default_tempo_index], tempos])
    return tempos


def _beat_ticks(grid: Grid, onsets: np.ndarray) -> np.ndarray:
    """(N,) ticks per beat of the meter in force at each onset (a beat is tpq*4/den ticks)."""
    ts_ticks, dens = grid.time_sigs[:, 0], grid.time_sigs[:, 2]
    return grid.tpq * 4 // dens[np.maximum(np.searchsorted(ts_ticks, onsets, side="right") - 1, 0)]


def grid_durations(grid: Grid, vocab: Vocab, notes: np.ndarray | None = None) -> np.ndarray:
    """(N,) length in grid ticks of each note of `notes` (default: the grid's), by the meter at its onset."""
    notes = grid.notes if notes is None else notes
    tpb = _beat_ticks(grid, notes[:, 0])
    dur = np.empty(len(notes), dtype=np.int64)
    for t in np.unique(tpb).tolist():
        m = tpb == t
        dur[m] = vocab.duration_ticks(int(t))[notes[m, 1]]
    return dur


def one_voice_per_pitch_grid(grid: Grid, vocab: Vocab) -> Grid:
    """`remi.score.one_voice_per_pitch` on the token grid, so that no id sequence the encoder
    writes describes two sounding notes of one pitch (a MIDI file could not carry them back):
    - notes of one pitch at one onset become one: the longest duration bin, the loudest velocity bin;
    - a note still sounding when its pitch starts again ends there: its duration becomes the
      longest bin that fits before that onset. Positions and the shortest duration are both one
      grid step, so one always fits; the note is dropped only if none does (kept for safety).
    """
    if len(grid.notes) < 2:
        return grid
    # Sorted by (onset, pitch, duration, velocity): columns as merge_unisons expects.
    notes = merge_unisons(grid.notes)
    dur = grid_durations(grid, vocab, notes)
    nxt = next_onset_of_pitch(notes[:, 0], notes[:, 2])
    over = np.flatnonzero(notes[:, 0] + dur > nxt)
    if len(over) == 0:
        return grid if notes is grid.notes else Grid(grid.tpq, notes, grid.tempos, grid.time_sigs)
    notes = notes.copy()
    keep = np.ones(len(notes), dtype=bool)
    tpb = _beat_ticks(grid, notes[:, 0])
    tables = {int(t): vocab.duration_ticks(int(t)) for t in np.unique(tpb[over])}
    for i in over.tolist():
        fit = int(np.searchsorted(tables[int(tpb[i])], nxt[i] - notes[i, 0], side="right")) - 1
        if fit < 0:
            keep[i] = False
        else:
            notes[i, 1] = fit
    return Grid(grid.tpq, notes[keep], grid.tempos, grid.time_sigs)


def _floor_to_position(ticks: np.ndarray, bars: Bars) -> np.ndarray:
    sec = bars.section_of_tick(ticks)
    step = bars.ticks_per_pos[sec]
    return bars.starts[sec] + (ticks - bars.starts[sec]) // step * step


def _trim_leading(grid: Grid, vocab: Vocab) -> Grid:
    """More than one empty bar before the first note -> exactly one (whole bars removed)."""
    if len(grid.notes) == 0:
        return grid
    bars = Bars(grid.time_sigs, grid.tpq, vocab.res)
    b0 = int(bars.bar_of_tick(grid.notes[:1, 0])[0])
    if b0 < 2:
        return grid
    cut = int(bars.bar_start(np.array([b0 - 1]))[0])
    # Meter and tempo in force at the cut move to tick 0; earlier changes vanish.
    ts = grid.time_sigs
    in_force = ts[ts[:, 0] <= cut][-1]
    later = ts[ts[:, 0] > cut] - [cut, 0, 0]
    ts = np.concatenate([[[0, in_force[1], in_force[2]]], later]).astype(np.int64)
    tempos = grid.tempos
    if len(tempos):
        k = int(np.searchsorted(tempos[:, 0], cut, side="right")) - 1
        tempos = tempos[k:].copy()
        tempos[:, 0] = np.maximum(tempos[:, 0] - cut, 0)
    notes = grid.notes.copy()
    notes[:, 0] -= cut
    return Grid(grid.tpq, notes, tempos, ts)


def _cap_empty_bars(grid: Grid, vocab: Vocab) -> Grid:
    """Remove the bars beyond `max_empty_bars` from every run of bars holding no event at all."""
    cap = vocab.config.max_empty_bars
    bars = Bars(grid.time_sigs, grid.tpq, vocab.res)
    ticks = np.concatenate([grid.notes[:, 0], grid.tempos[:, 0], grid.time_sigs[:, 0]])
    occupied = np.unique(bars.bar_of_tick(ticks))
    gaps = np.diff(occupied) - 1
    big = np.nonzero(gaps > cap)[0]
    if len(big) == 0:
        return grid
    cut_from = bars.bar_start(occupied[big] + 1 + cap)
    cut_to = bars.bar_start(occupied[big + 1])
    shift_after = np.concatenate([[0], np.cumsum(cut_to - cut_from)])

    def shift(t: np.ndarray) -> np.ndarray:
        return t - shift_after[np.searchsorted(cut_to, t, side="right")]

    notes = grid.notes.copy()
    notes[:, 0] = shift(notes[:, 0])
    tempos = grid.tempos.copy()
    tempos[:, 0] = shift(tempos[:, 0])
    ts = grid.time_sigs.copy()
    ts[:, 0] = shift(ts[:, 0])
    return Grid(grid.tpq, notes, tempos, ts)


def grid_to_ids(grid: Grid, vocab: Vocab) -> np.ndarray:
    """Grid -> REMI base ids (no BOS/EOS), as an int64 array.

    Events are time signatures, tempos and notes, stably sorted by tick (in that order at one
    tick). Before an event at a new tick come the Bar tokens up to its bar (each followed by the
    TimeSig in force in that bar, then, with `key_tokens`, the piece's Key), then a Position (not
    for a time signature, whose token is the TimeSig after its Bar), then the event's own tokens.
    """
    use_ts = vocab.config.use_time_signatures
    key = None
    if vocab.config.key_tokens and len(grid.notes):
        key = best_key(duration_profile(grid.notes[:, 2], grid_durations(grid, vocab))).index
    first = vocab.first
    times, kinds, payload = _sorted_events(grid, use_ts)
    if len(times) == 0:
        return np.zeros(0, dtype=np.int64)

    # Where each event's tokens go: its Bars (nb of them, w tokens each), its Position, its own.
    bars = Bars(grid.time_sigs, grid.tpq, vocab.res)
    bar_idx = bars.bar_of_tick(times)
    nb = np.diff(np.concatenate([[-1], bar_idx]))
    prev_kind = np.concatenate([[-1], kinds[:-1]])
    new_tick = np.concatenate([[True], times[1:] != times[:-1]])
    need_pos = (kinds != 0) & (new_tick | (prev_kind == 0))
    w = (2 if use_ts else 1) + (key is not None)
    ev_len = np.choose(kinds, [0, 1, 3])
    lengths = nb * w + need_pos + ev_len
    offs = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()), dtype=np.int64)
    _write_bars(out, offs, nb, w, grid, bars, vocab, key)

    pos_at = offs + nb * w
    sec = bars.section_of_tick(times)
    pos_val = (times - bars.bar_start(bar_idx)) // bars.ticks_per_pos[sec]
    out[pos_at[need_pos]] = first[POSITION] + pos_val[need_pos]

    ev_at = pos_at + need_pos
    is_tempo = kinds == 1
    out[ev_at[is_tempo]] = first[TEMPO] + payload[is_tempo]
    is_note = kinds == 2
    at = ev_at[is_note]
    nts = grid.notes[payload[is_note]]
    out[at] = first[PITCH_T] + nts[:, 2] - vocab.config.pitch_range[0]
    out[at + 1] = first[VELOCITY_T] + nts[:, 3]
    out[at + 2] = first[DURATION] + nts[:, 1]
    return out


def _sorted_events(grid: Grid, use_ts: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grid's events stably sorted by tick (time signatures, tempos, notes at one tick), as
    three (E,) arrays: tick; kind (0 time signature, 1 tempo, 2 note); payload (the time
    signature's row, the tempo-bin index, the note's row)."""
    ts_ticks = grid.time_sigs[:, 0] if use_ts else np.zeros(0, np.int64)
    times = np.concatenate([ts_ticks, grid.tempos[:, 0], grid.notes[:, 0]])
    kinds = np.concatenate([np.zeros(len(ts_ticks), np.int8), np.ones(len(grid.tempos), np.int8),
                            np.full(len(grid.notes), 2, np.int8)])
    payload = np.concatenate([np.arange(len(ts_ticks)), grid.tempos[:, 1], np.arange(len(grid.notes))])
    order = np.argsort(times, kind="stable")
    return times[order], kinds[order], payload[order]


def _write_bars(out: np.ndarray, offs: np.ndarray, nb: np.ndarray, w: int, grid: Grid, bars: Bars,
                vocab: Vocab, key: int | None) -> None:
    """Bars 0..last into `out`, each owned by the first event at or after it: the `nb[e]` bars
    of event e start at `offs[e]`, `w` tokens each (Bar; the TimeSig in force with
    `use_time_signatures`; the Key when `key` is not None)."""
    n_bars = int(nb.sum())
    bar_ev = np.repeat(np.arange(len(nb)), nb)
    k = np.arange(n_bars) - np.repeat(np.cumsum(nb) - nb, nb)
    bar_pos = offs[bar_ev] + k * w
    out[bar_pos] = vocab.first[BAR]
    if vocab.config.use_time_signatures:
        meters, which = np.unique(grid.time_sigs[:, 1:], axis=0, return_inverse=True)
        ts_ids = np.array([vocab.timesig_id(nn, d) for nn, d in meters.tolist()], dtype=np.int64)[which.reshape(-1)]
        out[bar_pos + 1] = ts_ids[bars.section_of_bar(np.arange(n_bars))]
    if key is not None:
        out[bar_pos + w - 1] = vocab.first[KEY] + key


def grid_to_score(grid: Grid, vocab: Vocab) -> Score:
    """The Score a Grid stands for, at the vocabulary's ticks per beat (what decode returns)."""
    tpq = vocab.ticks_per_beat
    scale = tpq // grid.tpq
    notes = grid.notes
    n = len(notes)
    out = np.empty((n, 4), dtype=np.int64)
    out[:, START] = notes[:, 0] * scale
    if n:
        # Duration in ticks depends on the meter in force at the onset (beat = tpq*4/den).
        dens = grid.time_sigs[:, 2]
        starts_ts = grid.time_sigs[:, 0] * scale
        sec = np.maximum(np.searchsorted(starts_ts, out[:, START], side="right") - 1, 0)
        table = {int(d): vocab.duration_ticks(tpq * 4 // int(d)) for d in set(dens.tolist())}
        dur = np.empty(n, dtype=np.int64)
        for d, tab in table.items():
            m = dens[sec] == d
            dur[m] = tab[notes[m, 1]]
        out[:, END] = out[:, START] + dur
    out[:, PITCH] = notes[:, 2]
    out[:, VELOCITY] = vocab.velocities[notes[:, 3]] if n else 0
    tempos = [Tempo(int(t) * scale, float(vocab.tempos[i])) for t, i in grid.tempos]
    ts = [TimeSignature(t * scale, nn, d) for t, nn, d in grid.time_sigs.tolist()]
    return Score(ticks_per_beat=tpq, notes=sort_notes(out), tempos=tempos, time_signatures=ts)
