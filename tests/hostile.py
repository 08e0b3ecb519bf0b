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


def note_pairs(n: int) -> bytes:
    """n short notes one after another, pitches cycling over the keyboard: the most notes per
    byte a file can hold (6 bytes a note with running status)."""
    body = bytearray(b"\x00\x90\x3c\x40\x01\x3c\x00")
    pattern = b"".join(bytes([1, 21 + k % 88, 64, 1, 21 + k % 88, 0]) for k in range(88))
    reps, rest = divmod(n - 1, 88)
    body += pattern * reps + pattern[: 6 * rest]
    return _file(bytes(body))
