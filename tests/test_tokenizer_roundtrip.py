"""Round trips: decode(encode(x)) == quantize(x) note for note, and encode(decode(ids)) == ids,
on every readable real file and on generated scores (hypothesis)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remi import MidiReadError, Score, Tempo, TimeSignature, Tokenizer, read_midi
from remi.midi_io import midifile_to_bytes
from tests.conftest import shared_midi_files

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("fine", "coarse", "miditok", "coarse+key")
TOKS = {n: Tokenizer.from_yaml(ROOT / f"conf/tokenizer/{n}.yaml") for n in NAMES[:3]}
# the recipe's tokenizer: coarse with a Key token in every bar (tokenizer.key_tokens=true)
TOKS["coarse+key"] = Tokenizer(dataclasses.replace(TOKS["coarse"].config, key_tokens=True))
REAL = shared_midi_files()


def assert_round_trip(tok: Tokenizer, score: Score, label: str = "") -> list[int]:
    ids = tok.encode(score)
    q = tok.quantize(score)
    d = tok.decode_score(ids)
    np.testing.assert_array_equal(d.notes, q.notes, err_msg=label)
    assert tok.encode(d) == ids, label
    assert tok.token_errors(ids) == 0.0, label
    assert tok.count_notes(ids) == len(q), label
    return ids


@pytest.mark.skipif(not REAL, reason="../shared/midi is absent")
@pytest.mark.parametrize("name", NAMES)
def test_a_spread_of_real_files_round_trips(name):
    """Every 50th real file (about 60, from every corpus): the fast tier's share of the test below."""
    assert_real_files_round_trip(TOKS[name], REAL[::50])


@pytest.mark.slow  # ~3,000 files x 4 tokenizers: about 220 CPU-seconds (55 each)
@pytest.mark.shared_midi
@pytest.mark.skipif(not REAL, reason="../shared/midi is absent")
@pytest.mark.parametrize("name", NAMES)
def test_every_readable_real_file_round_trips(name):
    assert_real_files_round_trip(TOKS[name], REAL)


def assert_real_files_round_trip(tok: Tokenizer, paths: list[Path]) -> None:
    done = 0
    for path in paths:
        try:
            score = read_midi(path)
        except MidiReadError:
            continue
        ids = assert_round_trip(tok, score, str(path))
        # Quantization keeps every in-range note but for notes of one pitch that land on one
        # onset, which become one (the one-voice-per-pitch rule): never more notes, and at least
        # one per distinct (onset, pitch) of the quantized grid.
        lo, hi = tok.config.pitch_range
        in_range = int(((score.notes[:, 2] >= lo) & (score.notes[:, 2] <= hi)).sum())
        q = tok.quantize(score).notes
        assert tok.count_notes(ids) <= in_range, path
        assert tok.count_notes(ids) == len(np.unique(q[:, [0, 2]], axis=0)), path
        done += 1
    assert done >= len(paths) - 1


@pytest.mark.skipif(not REAL, reason="../shared/midi is absent")
def test_decoded_midifile_reads_back_as_the_quantized_score():
    tok = TOKS["coarse"]
    for path in REAL[::25]:
        score = read_midi(path)
        ids = tok.encode(score)
        back = read_midi(midifile_to_bytes(tok.decode(ids)))
        q = tok.quantize(score).notes
        # No id sequence describes two sounding notes of one pitch, so every file reads back.
        assert not _has_same_pitch_overlap(q), path
        np.testing.assert_array_equal(back.notes, q, err_msg=str(path))
        assert tok.encode(back) == ids


def _has_same_pitch_overlap(notes: np.ndarray) -> bool:
    for p in np.unique(notes[:, 2]):
        n = notes[notes[:, 2] == p]
        if np.any(n[1:, 0] < n[:-1, 1]):
            return True
    return False


def test_sustain_pedal_extend_holds_notes_until_release():
    score = Score.from_notes([(0, 100, 60, 80), (400, 500, 62, 80), (960, 1000, 64, 80)], ticks_per_beat=480,
                             pedals=[(50, 1440)])
    fine, mt = TOKS["fine"], TOKS["miditok"]
    assert fine.config.sustain_pedal == "extend" and mt.config.sustain_pedal == "ignore"
    q = fine.quantize(score).notes
    tpq = fine.ticks_per_beat
    assert q[:, 1].tolist() == [3 * tpq] * 3  # all held to the pedal release at beat 3
    assert mt.quantize(score).notes[:, 1].max() < mt.ticks_per_beat * 3  # ignore: released at once


def test_leading_silence_trim_keeps_exactly_one_empty_bar():
    notes = [(480 * 4 * 5 + 240, 480 * 4 * 5 + 480, 60, 80)]  # bar 5, half a beat in
    score = Score.from_notes(notes, ticks_per_beat=480, tempos=[Tempo(0, 90.0), Tempo(480 * 4 * 2, 150.0)])
    coarse = TOKS["coarse"]
    toks = coarse.tokens(coarse.encode(score))
    assert toks[1:4] == ["Bar_None", "TimeSig_4/4", "Position_0"]
    assert toks.count("Bar_None") == 2 and toks[5:8] == ["Bar_None", "TimeSig_4/4", "Position_2"]
    assert toks[4].startswith("Tempo_1")  # the tempo in force at the cut (150), not the first
    kept = TOKS["fine"].tokens(TOKS["fine"].encode(score))
    assert kept.count("Bar_None") == 6


def test_empty_bar_cap_bounds_long_silences():
    tpq = 480
    score = Score.from_notes([(0, 10, 60, 80), (tpq * 4 * 1000, tpq * 4 * 1000 + 10, 62, 80)], ticks_per_beat=tpq)
    for name, tok in TOKS.items():
        toks = tok.tokens(tok.encode(score))
        assert toks.count("Bar_None") == tok.config.max_empty_bars + 2, name
        assert_round_trip(tok, score, name)


# ---- property-based -------------------------------------------------------------------------

METERS = [(4, 4), (3, 4), (6, 8), (5, 4), (7, 8), (12, 8), (2, 4), (3, 8)]


@st.composite
def scores(draw):
    tpq = draw(st.sampled_from([96, 120, 384, 480, 1000]))
    n = draw(st.integers(0, 40))
    horizon = tpq * 4 * draw(st.integers(1, 40))
    rows = []
    for _ in range(n):
        s = draw(st.integers(0, horizon))
        length = draw(st.one_of(st.just(0), st.integers(1, tpq * 2), st.integers(tpq * 10, tpq * 40)))
        p = draw(st.integers(0, 127))
        v = draw(st.integers(1, 127))
        rows.append((s, s + length, p, v))
        if draw(st.booleans()):  # a chord note at the same onset
            rows.append((s, s + length, min(127, p + draw(st.integers(1, 12))), v))
    tempos = [Tempo(draw(st.integers(0, horizon)), draw(st.floats(20, 400))) for _ in range(draw(st.integers(0, 4)))]
    ts = [TimeSignature(draw(st.integers(0, horizon)), *draw(st.sampled_from(METERS)))
          for _ in range(draw(st.integers(0, 3)))]
    return Score.from_notes(rows, ticks_per_beat=tpq, tempos=tempos, time_signatures=ts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(score=scores(), name=st.sampled_from(NAMES))
def test_generated_scores_round_trip(score, name):
    assert_round_trip(TOKS[name], score, name)


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.integers(0, len(TOKS["coarse"].vocab) - 1), max_size=300))
def test_decode_never_raises_on_in_vocabulary_ids(ids):
    tok = TOKS["coarse"]
    score = tok.decode_score(ids)
    assert len(score) <= tok.count_notes(ids)
    assert np.all(score.notes[:, 1] > score.notes[:, 0]) if len(score) else True
    tok.decode(ids)  # the mido writer accepts whatever decode produced
    assert 0.0 <= tok.token_errors(ids) <= 1.0


@settings(max_examples=150, deadline=None)
@given(ids=st.lists(st.one_of(st.integers(0, min(len(t.vocab) for t in TOKS.values()) - 1),
                             st.sampled_from([4, 5, 8, 12])), max_size=200),  # Bar and TimeSigs, often
       name=st.sampled_from(NAMES))
def test_vectorised_decoder_equals_the_token_by_token_reference(ids, name):
    from remi.decode import ids_to_score, ids_to_score_loop

    vocab = TOKS[name].vocab
    a, b = ids_to_score(ids, vocab), ids_to_score_loop(ids, vocab)
    np.testing.assert_array_equal(a.notes, b.notes)
    assert a.tempos == b.tempos and a.time_signatures == b.time_signatures


def test_sustain_pedal_extension_stops_at_a_restrike_of_the_same_pitch():
    from remi.encode import extend_by_pedal

    notes = np.array([[0, 100, 60, 80], [300, 400, 60, 80], [0, 50, 64, 80], [2000, 2100, 60, 80]])
    out = extend_by_pedal(notes, [(10, 1000)])
    assert out[:, 1].tolist() == [300, 1000, 1000, 2100]  # cut at the re-strike; held; held; after pedal
