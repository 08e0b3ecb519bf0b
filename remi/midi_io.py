"""The one module of `remi` that imports mido: Score -> mido.MidiFile (the writer), MidiFile ->
bytes, and a slow mido-based reader that the tests use to cross-check `remi.midi_read`."""
from __future__ import annotations

import gc
import io
from contextlib import contextmanager
from pathlib import Path

import mido
import numpy as np

from .midi_read import DRUM_CHANNEL, MidiReadError, _pedal_intervals
from .score import KeySignature, Score, Tempo, TimeSignature, install_midi_writer, sort_notes

# A Standard MIDI File stores a delta time in at most 4 bytes of 7 bits; mido writes longer ones,
# which readers (ours included) refuse.
MAX_DELTA = 0x0FFFFFFF


@contextmanager
def gc_paused():
    """Pause the cyclic garbage collector while allocating many acyclic objects: collections
    triggered by allocation would rescan every object alive in the process, so their cost
    grows with whatever else the caller holds (e.g. a corpus of token lists)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def score_to_midifile(score: Score, program: int = 0) -> mido.MidiFile:
    """A type 1 file: track 0 holds tempo/meter/key, track 1 the notes (channel 0, `program`).

    At one tick, note-offs are written before note-ons, so a re-struck pitch reads back as two
    notes. Zero-length notes are written with length 0 (a reader may drop them)."""
    tpq = int(score.ticks_per_beat)
    meta: list[tuple[int, int, mido.MetaMessage]] = []
    for t in score.time_signatures:
        meta.append((t.tick, 0, mido.MetaMessage("time_signature", numerator=t.numerator,
                                                 denominator=t.denominator, time=0)))
    for t in score.tempos:
        meta.append((t.tick, 1, mido.MetaMessage("set_tempo", tempo=max(1, min(0xFFFFFF, round(60_000_000 / t.bpm))),
                                                 time=0)))
    for k in score.key_signatures:
        meta.append((k.tick, 2, mido.MetaMessage("key_signature", key=k.key, time=0)))
    meta.sort(key=lambda m: (m[0], m[1]))
    conductor = mido.MidiTrack(_split_long_deltas(_delta(meta)))
    # Notes and pedal as one numpy event table sorted by (tick, kind): offs (kind 0) before ons
    # (kind 1) at a tick.
    notes = score.notes
    pedals = np.asarray(score.pedals, dtype=np.int64).reshape(-1, 2)
    ticks = np.concatenate([notes[:, 1], notes[:, 0], pedals[:, 1], pedals[:, 0]])
    kinds = np.concatenate([np.zeros(len(notes), np.int64), np.ones(len(notes), np.int64),
                            np.zeros(len(pedals), np.int64), np.full(len(pedals), 2, np.int64)])
    status = np.concatenate([np.full(len(notes), 0x80), np.full(len(notes), 0x90),
                             np.full(2 * len(pedals), 0xB0)]).astype(np.int64)
    data1 = np.concatenate([notes[:, 2], notes[:, 2], np.full(2 * len(pedals), 64)]).astype(np.int64)
    data2 = np.concatenate([np.zeros(len(notes), np.int64), np.clip(notes[:, 3], 1, 127),
                            np.zeros(len(pedals), np.int64), np.full(len(pedals), 127)])
    order = np.lexsort((kinds, ticks))
    deltas = np.diff(np.concatenate([[0], ticks[order]]))
    st, d1, d2, dt = status[order], data1[order], data2[order], deltas
    names = np.where(st == 0x90, "note_on", "note_off").tolist()
    # Messages are built without mido's per-field checks (values are valid by construction):
    # mido's checks would cost more than all the rest of decoding. mido's own copy/bytes/save
    # work on them; the decode tests read every written file back.
    # The cyclic GC is paused while we allocate: these objects form no cycles, and collections
    # triggered by allocation would rescan every message still alive (quadratic-ish in a batch).
    new, M = mido.Message.__new__, mido.Message
    with gc_paused():
        msgs = [(m := new(M)).__dict__.update(type=k, channel=0, note=a, velocity=b, time=t) or m
                for k, a, b, t in zip(names, d1.tolist(), d2.tolist(), dt.tolist())]
    for i in np.nonzero(st == 0xB0)[0].tolist():  # sustain pedal (rare): control_change fields
        msgs[i] = mido.Message("control_change", control=64, value=int(d2[i]), time=int(dt[i]))
    msgs.insert(0, mido.Message("program_change", program=program, time=0))
    msgs.append(mido.MetaMessage("end_of_track", time=0))
    if len(dt) and int(dt.max()) > MAX_DELTA:
        msgs = _split_long_deltas(msgs)
    piano = mido.MidiTrack(msgs)
    return mido.MidiFile(type=1, ticks_per_beat=tpq, tracks=[conductor, piano])


def _write(score: Score, program: int = 0) -> mido.MidiFile:
    with gc_paused():
        return score_to_midifile(score, program)


install_midi_writer(_write)  # Score.to_midifile / Score.to_midi


def _delta(events: list[tuple[int, int, object]]) -> list:
    out, last = [], 0
    for tick, _, msg in events:
        out.append(msg.copy(time=int(tick - last)))
        last = tick
    out.append(mido.MetaMessage("end_of_track", time=0))
    return out


def _split_long_deltas(msgs: list) -> list:
    """Messages whose delta time exceeds MAX_DELTA get empty text events before them, each
    carrying MAX_DELTA ticks (e.g. a decoded piece of ten million empty bars): every reader
    skips text events, so the file reads back with the same ticks."""
    out = []
    for m in msgs:
        t = m.time
        while t > MAX_DELTA:
            out.append(mido.MetaMessage("text", text="", time=MAX_DELTA))
            t -= MAX_DELTA
        out.append(m if t == m.time else m.copy(time=t))
    return out


def midifile_to_bytes(mid: mido.MidiFile) -> bytes:
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()


def is_midifile(obj) -> bool:
    return isinstance(obj, mido.MidiFile)


def read_midi_mido(path: str | Path | bytes) -> Score:
    """Reference reader through mido's message objects, same merging and pairing rules as
    `remi.midi_read.read_midi` (slow; for cross-checking only). A path or the file's bytes."""
    source = "<bytes>" if isinstance(path, (bytes, bytearray)) else str(path)
    try:
        if isinstance(path, (bytes, bytearray)):
            mid = mido.MidiFile(file=io.BytesIO(path), clip=True)
        else:
            mid = mido.MidiFile(str(path), clip=True)
    except Exception as e:  # mido raises many types; the contract is one
        raise MidiReadError(source, f"mido: {e}") from None
    if mid.type == 2:
        raise MidiReadError(source, "MIDI type 2 (independent sequences) is not supported; convert to type 1")
    notes, tempos, ts, keys = [], [], [], []
    pedal_events = []
    for track in mid.tracks:
        tick = 0
        open_notes: dict[tuple[int, int], list] = {}
        for msg in track:
            tick += msg.time
            if msg.type == "end_of_track":
                break
            if msg.type in ("note_on", "note_off"):
                if msg.channel == DRUM_CHANNEL:
                    continue
                key = (msg.channel, msg.note)
                if msg.type == "note_on" and msg.velocity > 0:
                    open_notes.setdefault(key, []).append((tick, msg.velocity))
                elif open_notes.get(key):
                    s, v = open_notes[key].pop(0)
                    notes.append((s, tick, msg.note, v))
            elif msg.type == "control_change" and msg.control == 64 and msg.channel != DRUM_CHANNEL:
                pedal_events.append((tick, msg.channel, msg.value >= 64))
            elif msg.type == "set_tempo" and msg.tempo > 0:
                tempos.append((tick, msg.tempo))
            elif msg.type == "time_signature":
                ts.append((tick, msg.numerator, msg.denominator))
            elif msg.type == "key_signature":
                keys.append((tick, msg.key))

    tempos.sort(key=lambda t: t[0])
    ts.sort(key=lambda t: t[0])
    keys.sort(key=lambda t: t[0])
    return Score(
        ticks_per_beat=mid.ticks_per_beat,
        notes=sort_notes(np.array(notes, dtype=np.int64).reshape(-1, 4)),
        tempos=[Tempo(t, 60_000_000 / m) for t, m in tempos],
        time_signatures=[TimeSignature(t, n, d) for t, n, d in ts],
        key_signatures=[KeySignature(t, k) for t, k in keys],
        pedals=_pedal_intervals(pedal_events),
    )
