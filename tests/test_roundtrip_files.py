"""Exact through files: for every MIDI file under ../shared/midi and each of the fine, coarse and
miditok tokenizers, encode -> decode -> MIDI bytes -> encode gives the same ids, and three
independent readers (ours, mido, symusic) read those bytes to the same notes: the decoded ones.

That holds because no id sequence describes two sounding notes of one pitch
(`remi.score.one_voice_per_pitch`): a MIDI channel cannot carry them, and readers pair their
note-ons and note-offs differently. The property test checks the decoder side for any ids.
"""
from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remi import MidiReadError, Tokenizer, read_midi
from remi.midi_io import midifile_to_bytes, read_midi_mido
from remi.score import END, PITCH, START, one_voice_per_pitch
from tests.conftest import shared_midi_files

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("fine", "coarse", "miditok")
TOKS = {n: Tokenizer.from_yaml(ROOT / f"conf/tokenizer/{n}.yaml") for n in NAMES}
REAL = shared_midi_files()


def symusic_notes(data: bytes) -> np.ndarray:
    import symusic

    sc = symusic.Score.from_midi(data)
    rows = [(n.time, n.time + n.duration, n.pitch, n.velocity) for t in sc.tracks for n in t.notes]
    return _sorted(np.asarray(rows, dtype=np.int64).reshape(-1, 4))


def _sorted(notes: np.ndarray) -> np.ndarray:
    return notes[np.lexsort((notes[:, 3], notes[:, 1], notes[:, 2], notes[:, 0]))]


def overlapping_same_pitch(notes: np.ndarray) -> int:
    """How many notes start while an earlier note of their pitch still sounds (or at its onset)."""
    order = np.lexsort((notes[:, START], notes[:, PITCH]))
    n = notes[order]
    same = n[1:, PITCH] == n[:-1, PITCH]
    return int(np.count_nonzero(same & (n[1:, START] < n[:-1, END])))


def check_file(path: str) -> list[str]:
    """Every problem with one file, as text (empty: exact in all three configs)."""
    try:
        score = read_midi(path)
    except MidiReadError:
        return []  # unreadable input is the reader's business (tests/test_midi_read.py)
    problems = []
    for name, tok in TOKS.items():
        ids = tok.encode(score)
        decoded = tok.decode_score(ids).notes
        data = midifile_to_bytes(tok.decode(ids))
        again = read_midi(data)
        if tok.encode(again) != ids:
            problems.append(f"{name}: ids differ after writing and reading {path}")
        for reader, notes in (("ours", again.notes), ("mido", read_midi_mido(data).notes),
                              ("symusic", symusic_notes(data))):
            if not np.array_equal(_sorted(notes), _sorted(decoded)):
                problems.append(f"{name}: {reader} reads other notes than were written for {path}")
        if overlapping_same_pitch(decoded):
            problems.append(f"{name}: decoded notes of one pitch overlap in {path}")
    return problems


@pytest.mark.slow
@pytest.mark.shared_midi
@pytest.mark.skipif(not REAL, reason="../shared/midi is absent")
def test_every_real_file_is_exact_through_a_midi_file():
    pytest.importorskip("symusic")
    with mp.get_context("fork").Pool(2) as pool:
        problems = [p for ps in pool.imap_unordered(check_file, [str(p) for p in REAL], chunksize=8) for p in ps]
    assert not problems, f"{len(problems)} problems, first: {problems[:5]}"
    assert len(REAL) > 2900  # the whole tree, not a sample (2,961 files on 2026-11-29)


# ---- the decoder never writes an overlap, whatever the ids ---------------------------------

def _group_ids(tok: Tokenizer) -> dict[str, list[int]]:
    by_type: dict[str, list[int]] = {}
    for i, t in enumerate(tok.vocab.tokens):
        by_type.setdefault(t.split("_")[0], []).append(i)
    return by_type


@st.composite
def adversarial_ids(draw, tok: Tokenizer):
    """Bars and positions with many notes of few pitches, long durations, repeated onsets."""
    g = _group_ids(tok)
    pitches = draw(st.lists(st.sampled_from(g["Pitch"]), min_size=1, max_size=3))
    ids: list[int] = []
    for _ in range(draw(st.integers(1, 30))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            ids += [g["Bar"][0]] + ([draw(st.sampled_from(g["TimeSig"]))] if "TimeSig" in g and draw(st.booleans()) else [])
        elif kind == 1:
            ids.append(draw(st.sampled_from(g["Position"])))
        else:
            ids += [draw(st.sampled_from(pitches)), draw(st.sampled_from(g["Velocity"])),
                    draw(st.sampled_from(g["Duration"][-8:] if draw(st.booleans()) else g["Duration"]))]
    return ids


@settings(max_examples=80, deadline=None)
@given(data=st.data(), name=st.sampled_from(NAMES))
def test_any_ids_decode_to_a_file_without_same_pitch_overlaps(data, name):
    tok = TOKS[name]
    ids = data.draw(st.one_of(adversarial_ids(tok), st.lists(st.integers(0, tok.vocab_size - 1), max_size=300)))
    decoded = tok.decode_score(ids).notes
    assert overlapping_same_pitch(decoded) == 0
    data_bytes = midifile_to_bytes(tok.decode(ids))
    for notes in (read_midi(data_bytes).notes, read_midi_mido(data_bytes).notes):
        np.testing.assert_array_equal(_sorted(notes), _sorted(decoded))


def test_one_voice_rule_on_hand_built_notes():
    notes = np.array([
        [0, 480, 60, 70],     # re-struck at 240: ends there
        [240, 960, 60, 90],
        [240, 300, 60, 100],  # same onset and pitch as the row above: merged (longest, loudest)
        [0, 100, 64, 80],     # ends before the next 64: untouched
        [100, 200, 64, 80],
    ])
    out = one_voice_per_pitch(notes)
    assert out.tolist() == [[0, 240, 60, 70], [0, 100, 64, 80], [100, 200, 64, 80], [240, 960, 60, 100]]
    assert one_voice_per_pitch(out).tolist() == out.tolist()  # idempotent


def test_encoder_gives_a_restruck_note_the_longest_duration_that_fits():
    from remi import Score

    tok = TOKS["coarse"]
    tpq = 480
    # A whole note at 0 re-struck a dotted quarter later, plus two copies of one note at beat 3.
    score = Score.from_notes([(0, 4 * tpq, 60, 80), (tpq * 3 // 2, 2 * tpq, 60, 80),
                              (3 * tpq, 3 * tpq + 10, 67, 40), (3 * tpq, 4 * tpq, 67, 100)], ticks_per_beat=tpq)
    toks = tok.tokens(tok.encode(score, add_special=False))
    notes = [toks[i:i + 3] for i, t in enumerate(toks) if t.startswith("Pitch_")]
    assert notes == [["Pitch_60", "Velocity_79", "Duration_1.2.4"],   # 1.5 beats: ends at the re-strike
                     ["Pitch_60", "Velocity_79", "Duration_0.2.4"],
                     ["Pitch_67", "Velocity_103", "Duration_1.0.4"]]  # one note: longest, loudest
