"""Tiny raw-bytes MIDI writer for tests (no mido): lets tests build odd and broken files exactly."""
from __future__ import annotations

import struct


def varlen(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"negative delta time {n}: events must be in time order")
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def track(events: list[tuple[int, bytes]], end: bool = True) -> bytes:
    """events: (absolute tick, raw message bytes) in time order."""
    body, last = bytearray(), 0
    for tick, msg in sorted(events, key=lambda e: e[0]):
        body += varlen(tick - last) + msg
        last = tick
    if end:
        body += b"\x00\xff\x2f\x00"
    return b"MTrk" + struct.pack(">I", len(body)) + bytes(body)


def midi_file(tracks: list[bytes], tpq: int = 480, fmt: int = 1) -> bytes:
    return b"MThd" + struct.pack(">IHHH", 6, fmt, len(tracks), tpq) + b"".join(tracks)


def note_events(notes, channel: int = 0) -> list[tuple[int, bytes]]:
    """(start, end, pitch, velocity) rows -> note-on/off events sorted by tick (offs first)."""
    ev = []
    for s, e, p, v in notes:
        ev.append((s, 1, bytes([0x90 | channel, p, v])))
        ev.append((e, 0, bytes([0x80 | channel, p, 0])))
    ev.sort(key=lambda x: (x[0], x[1]))
    return [(t, m) for t, _, m in ev]


def tempo(tick: int, bpm: float) -> tuple[int, bytes]:
    return tick, b"\xff\x51\x03" + round(60_000_000 / bpm).to_bytes(3, "big")


def time_sig(tick: int, num: int, den: int) -> tuple[int, bytes]:
    return tick, b"\xff\x58\x04" + bytes([num, den.bit_length() - 1, 24, 8])
