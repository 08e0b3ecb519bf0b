"""Hostile MIDI files built as raw bytes (fast, no per-event Python objects), shared by the
hardening tests and `benchmarks/bench_hostile.py`."""
from __future__ import annotations

import struct


def _file(body: bytes, tpq: int = 480) -> bytes:
    """A type 0 file with one track holding `body` (events) then end-of-track."""
    body += b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpq) + b"MTrk" + struct.pack(">I", len(body)) + body


def overlapping_notes(n: int, pitch: int = 60) -> bytes:
    """n note-ons of one pitch one tick apart, then n note-offs one tick apart: note i sounds
    from tick i to tick n + i (each off closes the earliest open note). ~6 bytes a note."""
    p = bytes([pitch])
    on = b"\x01" + p + b"\x40"
    off = b"\x01" + p + b"\x00"  # running status note-on, velocity 0 = note-off
    return _file(b"\x00\x90" + p + b"\x40" + on * (n - 1) + off * n)


def many_time_signatures(n: int) -> bytes:
    """n time-signature events cycling 4/4, 3/4, 6/8, 4/4 ... a few ticks apart (most land
    inside a bar, are delayed to the next bar line and collide there), then one note."""
    sigs = [(4, 2), (3, 2), (6, 3), (2, 2), (5, 2)]  # (numerator, log2 denominator)
    events = bytearray()
    for i in range(n):
        num, den = sigs[i % len(sigs)]
        events += bytes([7 if i else 0, 0xFF, 0x58, 4, num, den, 24, 8])
    events += b"\x00\x90\x3c\x40\x60\x80\x3c\x00"
    return _file(bytes(events))


def note_pairs(n: int, step: int = 1) -> bytes:
    """n short notes one after another, each `step` ticks long with `step` ticks of rest after
    it (1..127, at 480 ticks per quarter), pitches cycling over the keyboard: the most notes per
    byte a file can hold (6 bytes a note with running status). step=1 packs 30 notes into one
    position of the finest grid (1/8 beat); step=60 (eighth-beat notes a quarter beat apart)
    gives each note a position of its own, as in played music."""
    if not 1 <= step <= 127:
        raise ValueError(f"note_pairs: step must be 1..127 ticks (one byte of delta time), got {step}")
    body = bytearray(b"\x00\x90\x3c\x40" + bytes([step]) + b"\x3c\x00")
    pattern = b"".join(bytes([step, 21 + k % 88, 64, step, 21 + k % 88, 0]) for k in range(88))
    reps, rest = divmod(n - 1, 88)
    body += pattern * reps + pattern[: 6 * rest]
    return _file(bytes(body))


def alternating_meters(n: int, tpq: int = 480) -> bytes:
    """n time signatures, one per bar, each on the bar line the one before it ends (so every
    one of them survives preprocessing): 3/4, 6/8, 4/4, 3/8, 2/4, 12/8 in turn (all in the
    coarse and fine vocabularies), so the
    denominator changes at every bar (every bar is its own meter section for onset snapping and
    duration bins), with one note at the start of every bar."""
    sigs = [(3, 2), (6, 3), (4, 2), (3, 3), (2, 2), (12, 3)]  # (numerator, log2 denominator)
    events = bytearray()
    delta = 0
    for i in range(n):
        num, den = sigs[i % len(sigs)]
        events += _vlq(delta) + bytes([0xFF, 0x58, 4, num, den, 24, 8])
        events += b"\x00\x90\x3c\x40" + _vlq(tpq // 2) + b"\x80\x3c\x00"
        delta = tpq * 4 * num // (1 << den) - tpq // 2
    return _file(bytes(events), tpq)


def _vlq(value: int) -> bytes:
    """A MIDI variable-length quantity."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))
