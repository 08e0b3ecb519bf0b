"""Music metrics on hand-built note lists whose answers are known."""
from __future__ import annotations

import math

import numpy as np
import pytest

from remi import metrics as M
from remi.score import Score, Tempo, TimeSignature

TPB = 480
BAR = 4 * TPB  # 4/4


def score(rows, **kw):
    return Score.from_notes(rows, ticks_per_beat=TPB, **kw)


def scale(pitches, start=0, beat=TPB, vel=80):
    return [(start + i * beat, start + (i + 1) * beat, p, vel) for i, p in enumerate(pitches)]


C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]


# --- silence -----------------------------------------------------------------------------------


def test_leading_silence_in_beats():
    assert M.leading_silence_beats(score(scale(C_MAJOR, start=3 * TPB))) == 3.0
    assert M.leading_silence_beats(score(scale(C_MAJOR))) == 0.0


def test_three_bar_gap_reports_three_bars():
    # Bar 1 full of notes, bars 2-4 silent, bar 5 again.
    rows = scale([60, 62, 64, 65]) + scale([67, 69, 71, 72], start=4 * BAR)
    assert M.longest_gap_bars(score(rows)) == 3.0
    assert M.gaps(score(rows)) == [(BAR, 4 * BAR)]


def test_gap_is_measured_from_the_latest_release_not_the_last_onset():
    # A long note held over a short one: no silence until the long note ends at 2 bars.
    rows = [(0, 2 * BAR, 48, 80), (TPB, 2 * TPB, 60, 80), (3 * BAR, 3 * BAR + TPB, 60, 80)]
    assert M.longest_gap_bars(score(rows)) == 1.0


def test_gap_in_bars_follows_time_signature():
    # 3/4: a bar is 3 beats, so a 6-beat silence is 2 bars.
    rows = [(0, TPB, 60, 80), (7 * TPB, 8 * TPB, 60, 80)]
    s = score(rows, time_signatures=[TimeSignature(0, 3, 4)])
    assert M.longest_gap_bars(s) == 2.0


def test_legato_piece_has_no_gap():
    assert M.longest_gap_bars(score(scale(C_MAJOR))) == 0.0


def test_long_gap_share_over_a_set():
    with_gap = M.piece_metrics(score(scale([60]) + scale([62], start=3 * BAR)))  # 2.75-bar gap
    without = M.piece_metrics(score(scale(C_MAJOR)))
    summary = M.summarize([with_gap, without, without, without])
    assert summary["long_gap_share"] == 0.25
    assert summary["longest_gap_bars"] == pytest.approx(2.75 / 4)


# --- chord slamming ----------------------------------------------------------------------------


def chords(per_beat: int, n_beats: int, low=48):
    return [(b * TPB, (b + 1) * TPB, low + 2 * k, 90) for b in range(n_beats) for k in range(per_beat)]


def test_six_note_chord_per_beat_counts():
    s = score(chords(6, 4))
    assert M.notes_per_onset(s) == 6.0
    assert M.big_chord_share(s) == 1.0
    assert M.polyphony(s) == 6.0


def test_five_note_chords_are_not_big():
    s = score(chords(5, 4) + chords(6, 1))  # 4 five-note onsets... and one 6-note at beat 0 merged
    # beat 0 holds 5 + 6 = 11 notes; beats 1-3 hold 5 each
    assert M.big_chord_share(s) == 0.25
    assert M.notes_per_onset(s) == pytest.approx((11 + 15) / 4)


def test_polyphony_is_time_weighted():
    # A whole-bar bass note under four quarter notes: 2 notes sound all bar long.
    rows = [(0, BAR, 36, 80)] + scale([60, 62, 64, 65])
    assert M.polyphony(score(rows)) == 2.0
    # Two notes overlapping for half of the sounding time: (1*1 + 2*1 + 1*1) / 3 beats.
    rows = [(0, 2 * TPB, 60, 80), (TPB, 3 * TPB, 64, 80)]
    assert M.polyphony(score(rows)) == pytest.approx(4 / 3)
    assert M.max_polyphony(score(rows)) == 2.0


def test_silence_does_not_dilute_polyphony():
    rows = chords(3, 1) + [(r[0] + 3 * BAR, r[1] + 3 * BAR, r[2], r[3]) for r in chords(3, 1)]
    assert M.polyphony(score(rows)) == 3.0


# --- rapid taps --------------------------------------------------------------------------------


def test_iois_and_short_share():
    # Four 64th-note taps (1/16 beat apart), then quarter notes.
    t64 = TPB // 16
    rows = [(i * t64, (i + 1) * t64, 60, 80) for i in range(4)] + scale([62, 64, 65], start=TPB)
    s = score(rows)
    iois = M.ioi_beats(s)
    assert iois.tolist() == pytest.approx([1 / 16] * 3 + [1 - 3 / 16, 1, 1])
    assert M.short_ioi_share(s) == 0.5


def test_a_32nd_note_is_not_below_a_32nd_note():
    t32 = TPB // 8
    s = score([(i * t32, (i + 1) * t32, 60, 80) for i in range(8)])
    assert M.short_ioi_share(s) == 0.0


def test_notes_per_second_follows_tempo():
    s = score(scale(C_MAJOR))  # 8 quarter notes = 4 s at the default 120 bpm
    assert M.notes_per_second(s) == pytest.approx(2.0)
    fast = score(scale(C_MAJOR), tempos=[Tempo(0, 240.0)])
    assert M.notes_per_second(fast) == pytest.approx(4.0)
    # Leading silence does not count.
    assert M.notes_per_second(score(scale(C_MAJOR, start=BAR))) == pytest.approx(2.0)


def test_median_ioi():
    assert M.median_ioi_beats(score(scale(C_MAJOR, beat=TPB // 2))) == 0.5
    assert math.isnan(M.median_ioi_beats(score(chords(3, 1))))  # one onset: no interval


# --- coherence ---------------------------------------------------------------------------------


def test_c_major_scale_has_scale_consistency_one():
    assert M.scale_consistency(score(scale(C_MAJOR))) == 1.0


def test_chromatic_scale_consistency_is_seven_twelfths():
    assert M.scale_consistency(score(scale(range(60, 72)))) == pytest.approx(7 / 12)


def test_scale_consistency_of_transposed_scale_with_one_wrong_note():
    pitches = [p + 3 for p in C_MAJOR] + [64]  # Eb major + an E natural
    assert M.scale_consistency(score(scale(pitches))) == pytest.approx(8 / 9)


def test_pitch_class_entropy():
    assert M.pitch_class_entropy(score(scale([60, 72, 48]))) == 0.0  # one pitch class
    assert M.pitch_class_entropy(score(scale(range(60, 72)))) == pytest.approx(math.log2(12))
    assert M.pitch_class_entropy(score(scale([60, 67]))) == pytest.approx(1.0)


def test_groove_consistency():
    # The same rhythm in every bar: 1.
    bar = [0, TPB, 2 * TPB, 3 * TPB + TPB // 2]
    same = [(b * BAR + t, b * BAR + t + 100, 60, 80) for b in range(4) for t in bar]
    assert M.groove_consistency(score(same)) == 1.0
    # Bar 2 moves one onset: the two bars differ on 2 of the 4*12 grid positions, bars 2-3 too.
    moved = [0, TPB, 2 * TPB, 3 * TPB]
    rows = [(t, t + 100, 60, 80) for t in bar] + [(BAR + t, BAR + t + 100, 60, 80) for t in moved]
    rows += [(2 * BAR + t, 2 * BAR + t + 100, 60, 80) for t in bar]
    assert M.groove_consistency(score(rows)) == pytest.approx(1 - 2 / 48)
    assert math.isnan(M.groove_consistency(score(scale([60, 62]))))  # one bar


def test_pitch_range_and_velocity_spread():
    rows = [(0, TPB, 40, 60), (TPB, 2 * TPB, 70, 100)]
    assert M.pitch_range(score(rows)) == 30.0
    assert M.velocity_spread(score(rows)) == 20.0
    assert M.velocity_spread(score(scale(C_MAJOR))) == 0.0


def test_piece_metrics_of_an_empty_piece_are_nan_and_counted_empty():
    empty = M.piece_metrics(score([]))
    assert empty["n_notes"] == 0
    assert all(math.isnan(v) for k, v in empty.items() if k != "n_notes")
    summary = M.summarize([empty, M.piece_metrics(score(scale(C_MAJOR)))])
    assert summary["empty_share"] == 0.5
    assert summary["scale_consistency"] == 1.0  # the NaN of the empty piece is skipped


# --- overlap area ------------------------------------------------------------------------------


def test_overlap_of_identical_distributions_is_one():
    x = np.random.default_rng(0).normal(size=200)
    assert M.overlap_area(x, x) == pytest.approx(1.0, abs=1e-3)
    assert M.overlap_area([3.0] * 5, [3.0] * 7) == pytest.approx(1.0, abs=1e-3)


def test_overlap_of_disjoint_distributions_is_zero():
    rng = np.random.default_rng(1)
    assert M.overlap_area(rng.normal(0, 1, 100), rng.normal(50, 1, 100)) < 1e-3
    assert M.overlap_area([0.0] * 4, [1.0] * 4) < 1e-3


def test_overlap_of_shifted_normals_matches_theory():
    # Two unit normals a distance d apart overlap by 2 * Phi(-d / 2); with d = 1 that is 0.617.
    rng = np.random.default_rng(2)
    oa = M.overlap_area(rng.normal(0, 1, 4000), rng.normal(1, 1, 4000))
    assert oa == pytest.approx(0.617, abs=0.04)


def test_overlap_ignores_nans_and_is_nan_for_empty():
    assert M.overlap_area([1.0, 2.0, float("nan")], [1.0, 2.0]) == pytest.approx(1.0, abs=1e-3)
    assert math.isnan(M.overlap_area([], [1.0]))


def test_overlap_areas_per_metric():
    a = [M.piece_metrics(score(scale(C_MAJOR, vel=v))) for v in (60, 70, 80)]
    b = [M.piece_metrics(score(chords(6, 4)))] * 3
    oa = M.overlap_areas(a, b)
    assert set(oa) == set(M.PIECE_METRICS)
    assert oa["velocity_spread"] == pytest.approx(1.0, abs=1e-3)  # all zero in both
    assert oa["notes_per_onset"] < 1e-3  # 1 vs 6


# --- continuation ------------------------------------------------------------------------------


def bars_of(pitches_per_bar, start_bar=0, notes_per_bar=4):
    rows = []
    for b, pitches in enumerate(pitches_per_bar):
        for k in range(notes_per_bar):
            t = (start_bar + b) * BAR + k * BAR // notes_per_bar
            rows.append((t, t + BAR // notes_per_bar, pitches[k % len(pitches)], 80))
    return rows


def test_continuation_that_keeps_everything():
    c_bar = [[60, 64, 67, 72], [65, 69, 72, 77], [67, 71, 74, 79], [60, 64, 67, 72]]
    s = score(bars_of(c_bar * 2))  # bars 1-4 = bars 5-8
    c = M.continuation_consistency(s, prompt_bars=4)
    assert c == {"key_agree": 1.0, "key_same": 1.0, "tempo_ratio": 1.0, "density_ratio": 1.0, "pitch_range_overlap": 1.0}


def test_continuation_that_changes_key_tempo_density_and_register():
    c_bars = [[60, 64, 67, 72], [65, 69, 72, 77], [67, 71, 74, 79], [60, 64, 67, 72]]
    # Continuation: F# major cadence, an octave+ higher, twice as many notes, twice the tempo.
    fs_bars = [[p + 6 + 12 for p in bar] for bar in c_bars]
    rows = bars_of(c_bars) + bars_of(fs_bars, start_bar=4, notes_per_bar=8)
    s = score(rows, tempos=[Tempo(0, 100.0), Tempo(4 * BAR, 200.0)])
    c = M.continuation_consistency(s, prompt_bars=4)
    assert c["key_agree"] == 0.0 and c["key_same"] == 0.0
    assert c["tempo_ratio"] == pytest.approx(2.0)
    assert c["density_ratio"] == pytest.approx(2.0)
    # prompt 60..79, continuation 78..97: overlap 78..79 (2 semitones) of 60..97 (38)
    assert c["pitch_range_overlap"] == pytest.approx(2 / 38)


def test_continuation_total_bars_cuts_the_piece():
    c_bar = [[60, 64, 67, 72]]
    rows = bars_of(c_bar * 4) + bars_of([[90, 91, 92, 93]] * 4, start_bar=6)
    s = score(rows)
    assert M.continuation_consistency(s, 4, total_bars=6)["pitch_range_overlap"] != M.continuation_consistency(s, 4)[
        "pitch_range_overlap"
    ]
    assert math.isnan(M.continuation_consistency(s, 4, total_bars=5)["key_agree"])  # bar 5 is silent


def test_split_at_bar_with_three_four():
    rows = [(i * TPB, (i + 1) * TPB, 60, 80) for i in range(12)]
    s = score(rows, time_signatures=[TimeSignature(0, 3, 4)])
    head, tail, split = M.split_at_bar(s, 2)
    assert split == 6 * TPB and len(head) == 6 and len(tail) == 6


def test_bar_starts_follow_time_signature_changes():
    s = score([(0, 1, 60, 80)], time_signatures=[TimeSignature(0, 4, 4), TimeSignature(2 * BAR, 3, 4)])
    starts = M.bar_starts(s, 2 * BAR + 3 * 3 * TPB)
    assert starts.tolist() == [0, BAR, 2 * BAR, 2 * BAR + 3 * TPB, 2 * BAR + 6 * TPB, 2 * BAR + 9 * TPB, 2 * BAR + 12 * TPB]


# --- key accuracy ------------------------------------------------------------------------------


def test_key_accuracy_counts_relative_keys_and_skips_unstated():
    from remi.score import KeySignature

    c = score(scale(C_MAJOR))
    pieces = [
        ("c-as-C", Score(TPB, c.notes, key_signatures=[KeySignature(0, "C")])),
        ("c-as-Am", Score(TPB, c.notes, key_signatures=[KeySignature(0, "Am")])),
        ("c-as-G", Score(TPB, c.notes, key_signatures=[KeySignature(0, "G")])),
        ("c-unstated", c),
    ]
    r = M.key_accuracy(pieces)
    assert (r["n"], r["agree"], r["skipped"]) == (3, 2, 1)
    assert r["accuracy"] == pytest.approx(2 / 3)
    assert r["misses"] == [("c-as-G", "G major", "C major")]


def test_kl_divergence_is_zero_for_one_distribution_and_grows_with_the_distance():
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, 300)
    kls = [M.kl_divergence(real, rng.normal(shift, 1, 300)) for shift in (0.0, 1.0, 2.0, 4.0)]
    assert kls[0] < 0.1 and kls == sorted(kls) and kls[-1] > 3
    assert M.kl_divergence(real, real) == pytest.approx(0.0, abs=1e-6)  # the floor's share only
    # not symmetric: a narrow model misses most of a wide real distribution, not the reverse
    wide, narrow = rng.normal(0, 3, 300), rng.normal(0, 0.3, 300)
    assert M.kl_divergence(wide, narrow) > 2 * M.kl_divergence(narrow, wide)
    # one density estimate serves both figures
    assert M.overlap_and_kl(real, wide) == (M.overlap_area(real, wide), M.kl_divergence(real, wide))
    # a value the model never produces costs a large but finite divergence; no data: NaN
    assert 5 < M.kl_divergence(real, [40.0, 40.0]) < 100
    assert np.isnan(M.kl_divergence([], real)) and np.isnan(M.kl_divergence(real, [np.nan]))
