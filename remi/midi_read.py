"""A lean Standard MIDI File reader: bytes -> `Score`, with no message objects (the hot path).

All tracks of a type 0/1 file are merged into one piano stream; channel 10 (index 9, drums) is
dropped. Note pairing: a note-on with velocity 0 is a note-off; a note-off closes the EARLIEST
still-open note of that (track, channel, pitch) (first in, first out, as symusic does); note-offs
with nothing open are ignored, and notes still open at the end of their track are dropped.
Sustain pedal (CC64 >= 64 down, < 64 up) becomes Score.pedals intervals (union over channels).
Type 2 and SMPTE-timed files raise `MidiReadError`; so does anything structurally broken.
"""
from __future__ import annotations

import os
from array import array
from collections import defaultdict, deque
from pathlib import Path

import numpy as np

from .score import KeySignature, Score, Tempo, TimeSignature, sort_notes

DRUM_CHANNEL = 9
_MAJOR_KEYS = {-7: "Cb", -6: "Gb", -5: "Db", -4: "Ab", -3: "Eb", -2: "Bb", -1: "F", 0: "C",
               1: "G", 2: "D", 3: "A", 4: "E", 5: "B", 6: "F#", 7: "C#"}
_MINOR_KEYS = {-7: "Abm", -6: "Ebm", -5: "Bbm", -4: "Fm", -3: "Cm", -2: "Gm", -1: "Dm", 0: "Am",
               1: "Em", 2: "Bm", 3: "F#m", 4: "C#m", 5: "G#m", 6: "D#m", 7: "A#m"}
# Bytes of data that follow a channel status (high nibble 0x8..0xE).
_DATA_LEN = {0x80: 2, 0x90: 2, 0xA0: 2, 0xB0: 2, 0xC0: 1, 0xD0: 1, 0xE0: 2}
MAX_FILE_BYTES = 256 * 1024 * 1024


class MidiReadError(ValueError):
    """The one error type for MIDI input the tokenizer cannot read; the message names file and reason."""

    def __init__(self, source: str, reason: str):
        self.source, self.reason = source, reason
        super().__init__(f"cannot read MIDI {source}: {reason}")


def read_midi(src: str | Path | bytes | bytearray | memoryview, name: str | None = None) -> Score:
    """Parse a MIDI file (path or bytes) into a Score. Raises MidiReadError, and nothing else,
    for input that is not a readable type 0/1 MIDI file."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, source = bytes(src), name or "<bytes>"
    else:
        source = name or str(src)
        try:
            with open(src, "rb") as f:
                size = os.fstat(f.fileno()).st_size  # checked first: read() would allocate the cap
                if size > MAX_FILE_BYTES:
                    raise MidiReadError(source, f"file larger than {MAX_FILE_BYTES} bytes ({size})")
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise MidiReadError(source, f"cannot open file ({e.strerror or e})") from None
    if len(data) > MAX_FILE_BYTES:
        raise MidiReadError(source, f"file larger than {MAX_FILE_BYTES} bytes")
    try:
        return _parse(data, source)
    except MidiReadError:
        raise
    except MemoryError:
        # numpy's _ArrayMemoryError is a MemoryError too. By the time we get here the parse's
        # arrays are freed, so building the error below has room again.
        pass
    except (IndexError, ValueError, OverflowError) as e:
        raise MidiReadError(source, f"malformed data ({type(e).__name__}: {e})") from None
    raise MidiReadError(source, f"out of memory reading {len(data)} bytes of MIDI (too many notes for this process)")


def _parse(data: bytes, source: str) -> Score:
    if len(data) == 0:
        raise MidiReadError(source, "empty file")
    if len(data) < 14 or data[:4] != b"MThd":
        raise MidiReadError(source, "not a Standard MIDI File (no 'MThd' header)")
    hlen = int.from_bytes(data[4:8], "big")
    if hlen < 6 or 8 + hlen > len(data):
        raise MidiReadError(source, f"bad header length {hlen}")
    fmt = int.from_bytes(data[8:10], "big")
    ntracks = int.from_bytes(data[10:12], "big")
    division = int.from_bytes(data[12:14], "big")
    if fmt == 2:
        raise MidiReadError(source, "MIDI type 2 (independent sequences) is not supported; convert to type 1")
    if fmt not in (0, 1):
        raise MidiReadError(source, f"unknown MIDI format {fmt}")
    if division & 0x8000:
        raise MidiReadError(source, "SMPTE time division is not supported; re-save with ticks per beat")
    if division == 0:
        raise MidiReadError(source, "ticks per beat is 0 in the header")

    # Notes as a flat int64 array of (start, end, pitch, velocity): 32 bytes a note, where a list
    # of tuples took ~150 (a 60 MB file peaked at 2.6 GB).
    notes = array("q")
    tempos: list[tuple[int, int]] = []          # (tick, microseconds per quarter)
    time_sigs: list[tuple[int, int, int]] = []
    keys: list[tuple[int, str]] = []
    pedal_events: list[tuple[int, int, bool]] = []  # (tick, channel, down)
    pos = 8 + hlen
    n = len(data)
    found = 0
    while pos + 8 <= n and found < ntracks:
        cid = data[pos:pos + 4]
        clen = int.from_bytes(data[pos + 4:pos + 8], "big")
        start = pos + 8
        end = start + clen
        if cid != b"MTrk":
            pos = end  # unknown chunk: skip (the spec says readers must)
            continue
        if end > n:
            raise MidiReadError(source, f"track {found} is truncated ({clen} bytes declared, {n - start} present)")
        _parse_track(data, start, end, found, source, notes, tempos, time_sigs, keys, pedal_events)
        found += 1
        pos = end
    if found == 0:
        raise MidiReadError(source, "no MTrk track chunk")

    arr = np.frombuffer(notes, dtype=np.int64).reshape(-1, 4) if notes else np.zeros((0, 4), np.int64)
    tempos.sort(key=lambda t: t[0])  # stable: at one tick, later tracks' changes come last
    time_sigs.sort(key=lambda t: t[0])
    keys.sort(key=lambda t: t[0])
    return Score(
        ticks_per_beat=division,
        notes=sort_notes(arr),
        tempos=[Tempo(t, 60_000_000 / m) for t, m in tempos],
        time_signatures=[TimeSignature(t, nn, dd) for t, nn, dd in time_sigs],
        key_signatures=[KeySignature(t, k) for t, k in keys],
        pedals=_pedal_intervals(pedal_events),
    )


def _parse_track(data, i, end, track, source, notes, tempos, time_sigs, keys, pedal_events) -> None:
    """One MTrk chunk, data[i:end]: paired notes to `notes`, CC64 to `pedal_events`, tempos, meters
    and keys (`_system_event`) to theirs. Every MIDI event of a corpus passes through this loop."""
    tick = 0
    status = 0
    # channel*128+pitch -> FIFO of start*128+velocity. A deque: closing the earliest open note is
    # O(1) (list.pop(0) made 10^6 overlapping notes of one pitch take 68 s).
    open_notes: defaultdict[int, deque] = defaultdict(deque)
    extend_notes = notes.extend
    while i < end:
        # delta time (variable-length quantity, at most 4 bytes)
        b = data[i]
        i += 1
        delta = b & 0x7F
        if b & 0x80:
            b = data[i]; i += 1
            delta = (delta << 7) | (b & 0x7F)
            if b & 0x80:
                b = data[i]; i += 1
                delta = (delta << 7) | (b & 0x7F)
                if b & 0x80:
                    b = data[i]; i += 1
                    delta = (delta << 7) | (b & 0x7F)
                    if b & 0x80:
                        raise MidiReadError(source, f"track {track}: delta time longer than 4 bytes at byte {i}")
        tick += delta
        b = data[i]
        if b & 0x80:
            i += 1
            if b < 0xF0:
                status = b
            else:
                status = 0  # system messages cancel running status
                i = _system_event(data, i, end, b, tick, track, source, tempos, time_sigs, keys)
                continue
        elif status == 0:
            raise MidiReadError(source, f"track {track}: data byte 0x{b:02x} without a status byte at byte {i}")
        hi = status & 0xF0
        if hi == 0x90 or hi == 0x80:
            pitch = data[i] & 0x7F
            vel = data[i + 1] & 0x7F
            i += 2
            ch = status & 0x0F
            if ch == DRUM_CHANNEL:
                continue
            key = (ch << 7) | pitch
            if hi == 0x90 and vel:
                open_notes[key].append(tick << 7 | vel)
            elif q := open_notes.get(key):  # a note-off closes the earliest open note, if any
                sv = q.popleft()
                extend_notes((sv >> 7, tick, pitch, sv & 0x7F))
        elif hi == 0xB0:
            if data[i] == 64 and (status & 0x0F) != DRUM_CHANNEL:
                pedal_events.append((tick, status & 0x0F, (data[i + 1] & 0x7F) >= 64))
            i += 2
        else:
            i += _DATA_LEN[hi]
    if i > end:
        raise MidiReadError(source, f"track {track}: last event runs past the end of the track")


def _system_event(data, i, end, b, tick, track, source, tempos, time_sigs, keys) -> int:
    """The system event whose status byte `b` came just before data[i]: a meta event's tempo,
    meter or key goes to its list; a sysex or system common message is skipped. Returns where
    the next event starts: `end` after End of Track (whatever follows it in the chunk is ignored)."""
    if b == 0xFF:
        mtype = data[i]
        length, i = _varlen(data, i + 1)
        if i + length > end:
            raise MidiReadError(source, f"track {track}: meta event runs past the end of the track")
        if mtype == 0x2F:
            return end
        if mtype == 0x51 and length == 3:
            mspq = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2]
            if mspq > 0:
                tempos.append((tick, mspq))
        elif mtype == 0x58 and length >= 2:
            if data[i] > 0 and data[i + 1] < 16:
                time_sigs.append((tick, data[i], 1 << data[i + 1]))
        elif mtype == 0x59 and length == 2:
            sf = data[i] - 256 if data[i] > 127 else data[i]
            key = (_MINOR_KEYS if data[i + 1] else _MAJOR_KEYS).get(sf)
            if key is not None:
                keys.append((tick, key))
        return i + length
    if b in (0xF0, 0xF7):
        length, i = _varlen(data, i)
        return i + length
    # other system common/real-time bytes carry fixed data sizes
    return i + {0xF1: 1, 0xF2: 2, 0xF3: 1}.get(b, 0)


def _varlen(data: bytes, i: int) -> tuple[int, int]:
    value = 0
    for _ in range(4):
        b = data[i]
        i += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return value, i
    raise ValueError(f"variable-length quantity longer than 4 bytes at byte {i}")


def _pedal_intervals(events: list[tuple[int, int, bool]]) -> list[tuple[int, int]]:
    """CC64 events -> sorted, merged (down_tick, up_tick) intervals; a pedal still down at the
    end of the file is dropped (its release time is unknown)."""
    if not events:
        return []
    events.sort(key=lambda e: e[0])
    down_at: dict[int, int] = {}
    raw = []
    for tick, ch, down in events:
        if down:
            down_at.setdefault(ch, tick)
        elif ch in down_at:
            start = down_at.pop(ch)
            if tick > start:
                raw.append((start, tick))
    raw.sort()
    merged: list[tuple[int, int]] = []
    for s, e in raw:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged
