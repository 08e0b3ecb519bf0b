"""The lean reader (remi.midi_read) against mido, and its rules on small hand-made files."""
from __future__ import annotations

import numpy as np
import pytest

from remi import MidiReadError, read_midi
from remi.midi_io import read_midi_mido
from tests.conftest import shared_midi_files
from tests.midi_bytes import midi_file, note_events, tempo, time_sig, track

REAL = shared_midi_files()


@pytest.mark.skipif(not REAL, reason="../shared/midi is absent")
def test_lean_reader_equals_mido_reader_on_a_spread_of_real_files():
    """Every 50th real file (about 60, from every corpus): the fast tier's share of the test below."""
    assert_reads_equal_mido(REAL[::50])


@pytest.mark.slow  # mido parses ~110 MB of MIDI in Python: about 215 CPU-seconds
@pytest.mark.shared_midi
@pytest.mark.skipif(not REAL, reason="../shared/midi is absent")
def test_lean_reader_equals_mido_reader_on_every_real_file():
    assert_reads_equal_mido(REAL)


def assert_reads_equal_mido(paths) -> None:
    compared = 0
    for path in paths:
        try:
            ref = read_midi_mido(path)
        except MidiReadError:
            continue  # mido rejects e.g. the corrupted-controller file; ours may still read it
        got = read_midi(path)
        assert got.ticks_per_beat == ref.ticks_per_beat, path
        np.testing.assert_array_equal(got.notes, ref.notes, err_msg=str(path))
        assert got.tempos == ref.tempos, path
        assert got.time_signatures == ref.time_signatures, path
        assert got.key_signatures == ref.key_signatures, path
        assert got.pedals == ref.pedals, path
        compared += 1
    assert compared >= len(paths) - 2


def test_type0_and_type1_merge_and_drop_drums():
    piano = note_events([(0, 480, 60, 80)], channel=0)
    other = note_events([(240, 720, 64, 90)], channel=3)
    drums = note_events([(0, 10, 36, 100)], channel=9)
    t1 = midi_file([track([tempo(0, 100)]), track(piano), track(other + drums)], tpq=480)
    s = read_midi(t1)
    assert s.notes.tolist() == [[0, 480, 60, 80], [240, 720, 64, 90]]
    assert s.tempos[0].tick == 0 and abs(s.tempos[0].bpm - 100) < 1e-6
    # The same content as one type 0 track reads the same.
    merged = sorted(piano + other + drums + [tempo(0, 100)], key=lambda e: e[0])
    s0 = read_midi(midi_file([track(merged)], fmt=0))
    np.testing.assert_array_equal(s0.notes, s.notes)


def test_velocity_zero_is_note_off_and_overlaps_pair_first_in_first_out():
    ev = [(0, b"\x90\x3c\x40"), (100, b"\x90\x3c\x50"), (200, b"\x3c\x00"),  # running status, vel 0
          (300, b"\x80\x3c\x00"), (400, b"\x80\x3c\x00")]  # the last off has nothing open
    s = read_midi(midi_file([track(ev)]))
    assert s.notes.tolist() == [[0, 200, 60, 64], [100, 300, 60, 80]]


def test_pedal_intervals_key_and_time_signatures():
    ev = [(0, b"\xff\x59\x02\xfd\x01"),  # 3 flats, minor
          time_sig(0, 3, 4), (0, b"\xb0\x40\x7f"), (100, b"\xb0\x40\x00"),
          (200, b"\xb0\x40\x40"), (300, b"\xb1\x40\x7f"), (400, b"\xb0\x40\x00"), (500, b"\xb1\x40\x10")]
    s = read_midi(midi_file([track(ev)]))
    assert [k.key for k in s.key_signatures] == ["Cm"]
    assert [(t.numerator, t.denominator) for t in s.time_signatures] == [(3, 4)]
    assert s.pedals == [(0, 100), (200, 500)]  # channels 0 and 1 overlap -> one union interval


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"RIFF" + bytes(20), "MThd"),
        (midi_file([track([])], fmt=2), "type 2"),
        (b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\xe7\x28" + track([]), "SMPTE"),
        (midi_file([track([])], tpq=0), "ticks per beat is 0"),
        (midi_file([track(note_events([(0, 10, 60, 64)]))])[:-6], "truncated"),
        (midi_file([]), "no MTrk"),
    ],
)
def test_unreadable_files_raise_the_one_error_naming_file_and_reason(data, reason):
    with pytest.raises(MidiReadError) as e:
        read_midi(data, name="bad.mid")
    assert "bad.mid" in str(e.value) and reason in str(e.value)


def test_missing_path_is_a_read_error(tmp_path):
    with pytest.raises(MidiReadError, match="nothere.mid"):
        read_midi(tmp_path / "nothere.mid")
