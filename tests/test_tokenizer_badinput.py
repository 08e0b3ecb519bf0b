"""Bad input: every case either encodes or raises MidiReadError naming the file and the reason,
within bounded time (pytest-timeout) and with a bounded token stream (no runaway Bar tokens)."""
from __future__ import annotations

import random
import struct
from pathlib import Path

import numpy as np
import pytest

from remi import MidiReadError, Tokenizer, read_midi
from tests.conftest import shared_midi_files
from tests.midi_bytes import midi_file, note_events, tempo, track

ROOT = Path(__file__).resolve().parents[1]
TOK = Tokenizer.from_yaml(ROOT / "conf/tokenizer/coarse.yaml")
REAL = shared_midi_files("tegridy-piano")[:12] + shared_midi_files("miditok-tests/one-track")[:4]


def encode_or_read_error(data: bytes, name: str) -> list[int] | None:
    """The contract: ids, or MidiReadError naming `name`; any other exception fails the test."""
    try:
        score = read_midi(data, name=name)
    except MidiReadError as e:
        assert name in str(e) and e.reason
        return None
    ids = TOK.encode(score)
    bars = ids.count(TOK.bar_id)
    events = len(score) + len(score.tempos) + len(score.time_signatures) + 1
    assert bars <= events * (TOK.config.max_empty_bars + 1) + 1, f"{name}: runaway Bar stream ({bars} bars)"
    assert TOK.token_errors(ids) == 0.0
    return ids


@pytest.mark.timeout(120)
@pytest.mark.skipif(not REAL, reason="../shared/midi is absent")
def test_truncated_and_bit_flipped_real_files():
    rng = random.Random(0)
    outcomes = {"ids": 0, "error": 0}
    for path in REAL:
        data = path.read_bytes()
        for cut in (0, 4, 13, 14, 22, len(data) // 3, len(data) - 5, len(data) - 1):
            outcomes["ids" if encode_or_read_error(data[:cut], f"{path.name}[:{cut}]") else "error"] += 1
        for k in range(6):
            flipped = bytearray(data)
            for _ in range(rng.choice([1, 3, 20])):
                i = rng.randrange(len(flipped))
                flipped[i] ^= 1 << rng.randrange(8)
            outcomes["ids" if encode_or_read_error(bytes(flipped), f"{path.name}~flip{k}") else "error"] += 1
    assert outcomes["ids"] > 0 and outcomes["error"] > 0  # both paths exercised


@pytest.mark.timeout(60)
def test_random_bytes_and_header_only_garbage():
    rng = np.random.default_rng(1)
    for k in range(200):
        body = rng.integers(0, 256, rng.integers(0, 400), dtype=np.uint8).tobytes()
        head = b"" if k % 2 else b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk" + struct.pack(">I", len(body))
        encode_or_read_error(head + body, f"random{k}")


def test_empty_file_and_zero_ticks_per_beat(tmp_path):
    p = tmp_path / "empty.mid"
    p.write_bytes(b"")
    with pytest.raises(MidiReadError, match=r"empty\.mid.*empty file"):
        TOK.encode(p)
    with pytest.raises(MidiReadError, match="ticks per beat is 0"):
        TOK.encode(midi_file([track(note_events([(0, 10, 60, 64)]))], tpq=0))


@pytest.mark.timeout(30)
def test_delta_time_of_2_pow_28_ticks_is_capped():
    huge = 2**28 - 1  # the largest 4-byte variable-length delta
    notes = [(0, 240, 60, 80), (huge, huge + 240, 62, 80)]
    ids = encode_or_read_error(midi_file([track([tempo(0, 120)] + note_events(notes))], tpq=96), "huge-delta.mid")
    assert ids is not None and TOK.count_notes(ids) == 2
    assert ids.count(TOK.bar_id) == TOK.config.max_empty_bars + 2


@pytest.mark.timeout(120)
def test_a_million_notes_encode_in_bounded_time():
    n = 1_000_000
    pitches = (np.arange(n) % 88 + 21).astype(np.uint8)
    # Each note: delta 3, note-on, pitch, 80; delta 3, note-off, pitch, 0 (8 bytes, no running status).
    ev = np.empty((n, 8), dtype=np.uint8)
    ev[:, 0], ev[:, 1], ev[:, 2], ev[:, 3] = 3, 0x90, pitches, 80
    ev[:, 4], ev[:, 5], ev[:, 6], ev[:, 7] = 3, 0x80, pitches, 0
    body = ev.tobytes() + b"\x00\xff\x2f\x00"
    data = b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x00\x60MTrk" + struct.pack(">I", len(body)) + body
    ids = encode_or_read_error(data, "million.mid")
    assert TOK.count_notes(ids) == n
