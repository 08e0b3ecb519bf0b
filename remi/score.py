"""The in-memory piece of music that every part of `remi` speaks: notes, tempos, meters, in ticks.

A `Score` is what the MIDI reader produces, what the REMI encoder consumes, what the decoder
returns and what the music metrics measure. It is plain data (numpy + tuples), no mido.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

# Column layout of `Score.notes`.
START, END, PITCH, VELOCITY = 0, 1, 2, 3

# The MIDI writer behind `Score.to_midifile`: `remi.midi_io` (the one module that imports mido)
# installs it when it is imported, and `import remi` imports it. This leaf module stays free of
# any MIDI library, and `remi.midi_io` depends on it, never the other way round.
_midi_writer: Callable[["Score", int], Any] | None = None


def install_midi_writer(writer: Callable[["Score", int], Any]) -> None:
    global _midi_writer
    _midi_writer = writer


@dataclass(frozen=True)
class Tempo:
    tick: int
    bpm: float  # quarter notes per minute


@dataclass(frozen=True)
class TimeSignature:
    tick: int
    numerator: int
    denominator: int


@dataclass(frozen=True)
class KeySignature:
    tick: int
    key: str  # as MIDI/mido spell it: "C", "F#m", "Bb", ...


@dataclass
class Score:
    """One piano stream.

    notes: int64 array (N, 4) with columns START, END, PITCH, VELOCITY, in ticks, sorted by
    (start, pitch, end). `end >= start` (zero-length notes are allowed on input).
    tempos / time_signatures / key_signatures are sorted by tick; an empty tempo list means
    120 bpm, an empty time-signature list means 4/4 (the MIDI defaults).
    pedals: sustain-pedal (CC64) intervals as (start_tick, end_tick), sorted.
    """

    ticks_per_beat: int
    notes: np.ndarray
    tempos: list[Tempo] = field(default_factory=list)
    time_signatures: list[TimeSignature] = field(default_factory=list)
    key_signatures: list[KeySignature] = field(default_factory=list)
    pedals: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        notes = np.asarray(self.notes, dtype=np.int64)
        if notes.size == 0:
            notes = notes.reshape(0, 4)
        if notes.ndim != 2 or notes.shape[1] != 4:
            raise ValueError(f"Score.notes must have shape (N, 4), got {notes.shape}")
        self.notes = notes

    @classmethod
    def from_notes(
        cls,
        notes: Iterable[Sequence[int]],
        ticks_per_beat: int = 480,
        tempos: Iterable[Tempo] = (),
        time_signatures: Iterable[TimeSignature] = (),
        **kwargs,
    ) -> "Score":
        """Build from (start, end, pitch, velocity) rows in any order; sorts them."""
        arr = np.asarray(list(notes), dtype=np.int64).reshape(-1, 4)
        return cls(
            ticks_per_beat=ticks_per_beat,
            notes=sort_notes(arr),
            tempos=sorted(tempos, key=lambda t: t.tick),
            time_signatures=sorted(time_signatures, key=lambda t: t.tick),
            **kwargs,
        )

    def __len__(self) -> int:
        return int(self.notes.shape[0])

    @property
    def end_tick(self) -> int:
        return int(self.notes[:, END].max()) if len(self) else 0

    def seconds(self) -> float:
        """Length of the piece in seconds, following the tempo map (120 bpm before the first tempo)."""
        return ticks_to_seconds(self.end_tick, self.ticks_per_beat, self.tempos)

    def to_midifile(self, program: int = 0):
        """This score as a `mido.MidiFile`: type 1, track 0 tempo/meter/key, track 1 the notes on
        channel 0 with General MIDI `program` (0: acoustic grand piano); see
        `remi.midi_io.score_to_midifile`."""
        if _midi_writer is None:
            raise RuntimeError("Score.to_midifile needs remi.midi_io; `import remi` installs it")
        return _midi_writer(self, program)

    def to_midi(self, path: str | Path, program: int = 0) -> Path:
        """Write this score as a Standard MIDI File at `path` (see `to_midifile`); returns the path."""
        path = Path(path)
        self.to_midifile(program).save(str(path))
        return path


def sort_notes(notes: np.ndarray) -> np.ndarray:
    """Sort (N, 4) note rows by start, then pitch, then end (the canonical order); exact ties
    in those three are ordered by velocity, so the order never depends on the input order."""
    if len(notes) == 0:
        return notes.reshape(0, 4)
    order = np.lexsort((notes[:, VELOCITY], notes[:, END], notes[:, PITCH], notes[:, START]))
    return notes[order]


def merge_unisons(notes: np.ndarray) -> np.ndarray:
    """Rows sorted by onset then pitch (columns 0 and 2) -> one row per (onset, pitch), keeping the
    largest column 1 (an end tick, or a duration bin) and column 3 (a velocity, or its bin).
    Serves Score notes and the encoder's grid alike: both put those fields in those columns."""
    if len(notes) < 2:
        return notes
    same = (notes[1:, 0] == notes[:-1, 0]) & (notes[1:, 2] == notes[:-1, 2])
    if not same.any():
        return notes
    first = np.flatnonzero(np.concatenate([[True], ~same]))
    merged = notes[first].copy()
    merged[:, 1] = np.maximum.reduceat(notes[:, 1], first)
    merged[:, 3] = np.maximum.reduceat(notes[:, 3], first)
    return merged


def next_onset_of_pitch(onsets: np.ndarray, pitches: np.ndarray) -> np.ndarray:
    """For each note, the onset of the next note of its pitch (int64 max where none follows)."""
    order = np.lexsort((onsets, pitches))  # by pitch, then onset
    nxt = np.full(len(onsets), np.iinfo(np.int64).max)
    same = pitches[order[1:]] == pitches[order[:-1]]
    nxt[order[:-1][same]] = onsets[order[1:]][same]
    return nxt


def one_voice_per_pitch(notes: np.ndarray) -> np.ndarray:
    """Sorted (N, 4) note rows -> the same music with no two notes of one pitch sounding at once.

    A MIDI channel cannot carry two sounding notes of one pitch: a writer emits on, on, off, off
    and each reader pairs them its own way. So, the project's one rule (the encoder applies it to
    the quantized grid, `remi.encode.one_voice_per_pitch_grid`; the decoder to whatever ids a model
    produced):
    - notes of one pitch with one onset become one note: the longest end, the loudest velocity;
    - a note still sounding when its pitch is struck again ends at that onset.
    Returns rows in the canonical order (`sort_notes`); the input is not modified.
    """
    if len(notes) < 2:
        return notes
    notes = merge_unisons(sort_notes(notes))
    nxt = next_onset_of_pitch(notes[:, START], notes[:, PITCH])
    if not np.any(notes[:, END] > nxt):
        return notes
    out = notes.copy()
    out[:, END] = np.minimum(out[:, END], nxt)
    return out  # ends changed, (start, pitch) did not: still in canonical order


def bar_starts(score: Score, until: int, min_count: int = 0) -> np.ndarray:
    """Ticks at which bars start, from 0 through the first bar start after `until` (and at
    least `min_count` of them). The one bar grid of the project: tokenizer, metrics and plots.

    A time signature takes effect at the first bar line at or after its tick, the REMI encoder's
    rule (it delays a mid-bar change to the next bar line); no time signature means 4/4.
    """
    tpb = score.ticks_per_beat
    sigs = sorted(score.time_signatures, key=lambda t: t.tick)
    num, den, i, tick, starts = 4, 4, 0, 0, []
    while True:
        while i < len(sigs) and sigs[i].tick <= tick:
            num, den, i = sigs[i].numerator, sigs[i].denominator, i + 1
        starts.append(tick)
        if tick > until and len(starts) >= min_count:
            return np.asarray(starts, dtype=np.int64)
        tick += max(1, tpb * 4 * num // den)


def ticks_to_seconds(tick: int, ticks_per_beat: int, tempos: Sequence[Tempo]) -> float:
    seconds, last_tick, bpm = 0.0, 0, 120.0
    for t in tempos:
        if t.tick >= tick:
            break
        seconds += (t.tick - last_tick) / ticks_per_beat * 60.0 / bpm
        last_tick, bpm = t.tick, t.bpm
    return seconds + (tick - last_tick) / ticks_per_beat * 60.0 / bpm
