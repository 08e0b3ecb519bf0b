"""remi.score.bar_starts: the one bar grid shared by the tokenizer, the metrics and the plots."""
from __future__ import annotations

import numpy as np

import remi
from remi import metrics as M
from remi.score import Score, TimeSignature, bar_starts

TPB = 480
BAR = 4 * TPB


def test_bar_starts_follow_time_signature_changes_and_min_count():
    s = Score.from_notes([(0, 1, 60, 80)], ticks_per_beat=TPB,
                         time_signatures=[TimeSignature(0, 4, 4), TimeSignature(2 * BAR, 3, 4),
                                          TimeSignature(2 * BAR + 2 * 3 * TPB, 6, 8)])
    starts = bar_starts(s, 2 * BAR + 4 * 3 * TPB)
    assert (np.diff(starts) / TPB).tolist() == [4, 4, 3, 3, 3, 3, 3]  # through the first start past `until`
    assert starts[-1] > 2 * BAR + 4 * 3 * TPB >= starts[-2]
    assert len(bar_starts(s, 0, min_count=12)) == 12
    # no time signature: 4/4
    assert bar_starts(Score.from_notes([], ticks_per_beat=96), 96 * 8).tolist() == [0, 384, 768, 1152]


def test_a_mid_bar_change_takes_effect_at_the_next_bar_line_as_the_tokenizer_places_it():
    # 3/4 announced one beat into bar 2: the bar in progress keeps 4/4, the next one is 3/4
    s = Score.from_notes([(i * TPB, (i + 1) * TPB, 60 + i % 12, 80) for i in range(24)], ticks_per_beat=TPB,
                         time_signatures=[TimeSignature(0, 4, 4), TimeSignature(BAR + TPB, 3, 4)])
    starts = bar_starts(s, 24 * TPB)
    assert starts[:5].tolist() == [0, BAR, 2 * BAR, 2 * BAR + 3 * TPB, 2 * BAR + 6 * TPB]
    assert M.bar_length_at(s, BAR + 2 * TPB) == BAR and M.bar_length_at(s, 2 * BAR) == 3 * TPB
    # the tokenizer agrees: after decoding, the time signature sits on the grid's third bar line,
    # and each note's bar (count of Bar tokens before it) is its bar on this grid
    tok = remi.Tokenizer.from_yaml("conf/tokenizer/miditok.yaml")
    ids = tok.encode(s)
    back = tok.decode_score(ids)
    assert [(t.tick * TPB // back.ticks_per_beat, t.numerator) for t in back.time_signatures][-1] == (2 * BAR, 3)
    tokens = tok.tokens(ids)
    bars_before_pitch = []
    n_bars = 0
    for t in tokens:
        n_bars += t == "Bar_None"
        if t.startswith("Pitch_"):
            bars_before_pitch.append(n_bars - 1)
    onsets = s.notes[:, 0]
    assert bars_before_pitch == (np.searchsorted(starts, onsets, side="right") - 1).tolist()
