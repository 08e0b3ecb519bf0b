"""remi.media.pianoroll: the roll as data, bar lines, single and side-by-side PNG figures."""
from __future__ import annotations

import matplotlib.image as mpimg
import pytest

from remi.media.pianoroll import (
    PROMPT_LINE_LABEL,
    comparison_figure,
    pianoroll_figure,
    roll_array,
    save_comparison,
    save_pianoroll,
)
from remi.score import Score

TPB = 480


def chord_score(offset_beats=0, pitches=(60, 64, 67), n_beats=8):
    rows = [(b * TPB + offset_beats * TPB, (b + 1) * TPB + offset_beats * TPB, p + (b % 2), 40 + 10 * (b % 8))
            for b in range(n_beats) for p in pitches]
    return Score.from_notes(rows, ticks_per_beat=TPB)


def test_roll_array_marks_exactly_the_sounding_cells():
    score = Score.from_notes([(0, 480, 60, 80), (240, 960, 72, 80), (960, 961, 40, 10)], ticks_per_beat=TPB)
    roll = roll_array(score, ticks_per_cell=120)  # sixteenths
    assert roll.shape == (128, 9)
    assert roll[60].nonzero()[0].tolist() == [0, 1, 2, 3]
    assert roll[72].nonzero()[0].tolist() == [2, 3, 4, 5, 6, 7]
    assert roll[40].nonzero()[0].tolist() == [8]  # a 1-tick note still shows as one cell
    assert roll.sum() == 4 + 6 + 1


def test_single_roll_png_shows_the_notes_and_the_prompt_marker(tmp_path):
    score = chord_score()
    fig = pianoroll_figure(score, title="my piece", prompt_end_tick=4 * TPB)
    ax = fig.axes[0]
    assert ax.get_title() == "my piece"
    markers = [line for line in ax.lines if line.get_label() == PROMPT_LINE_LABEL]
    assert len(markers) == 1 and markers[0].get_xdata()[0] == pytest.approx(4.0)
    assert ax.get_xlim() == pytest.approx((0, 8.0))
    lo, hi = ax.get_ylim()
    assert lo < 60 and hi > 68 and hi - lo < 20  # zoomed to the notes' pitch range

    path = save_pianoroll(score, tmp_path / "sub" / "roll.png", title="x", prompt_end_tick=4 * TPB)
    img = mpimg.imread(path)
    assert img.ndim == 3 and 200 <= img.shape[0] <= 1000 and 500 <= img.shape[1] <= 2500
    rgb = img[..., :3]
    # Notes are drawn in colour (viridis), and the prompt marker in red: both present.
    colourful = (rgb.max(-1) - rgb.min(-1)) > 0.3
    assert colourful.mean() > 0.01
    red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
    assert red.sum() > 50


def test_empty_score_still_draws():
    fig = pianoroll_figure(Score.from_notes([], ticks_per_beat=TPB))
    assert fig.axes[0].get_xlim()[1] > 0


def test_comparison_figure_labels_each_panel_and_shares_scales(tmp_path):
    scores = [chord_score(pitches=(48, 52)), chord_score(pitches=(72, 76), n_beats=16), chord_score()]
    labels = ["temperature 0.6", "temperature 1.0", "temperature 1.5"]
    fig = comparison_figure(scores, labels, title="sweep", prompt_end_ticks=[TPB * 2] * 3)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == labels
    assert fig._suptitle.get_text() == "sweep"
    assert len({ax.get_xlim() for ax in axes}) == 1 and axes[0].get_xlim()[1] == pytest.approx(16.0)
    lo, hi = axes[0].get_ylim()
    assert lo < 48 and hi > 77  # shared pitch range covers every panel
    for ax in axes:
        assert sum(line.get_label() == PROMPT_LINE_LABEL for line in ax.lines) == 1

    path = save_comparison(scores, labels, tmp_path / "cmp.png")
    img = mpimg.imread(path)
    assert img.shape[1] > 2 * img.shape[0]  # three panels side by side: wide, not tall


def test_comparison_figure_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="2 scores but 1 labels"):
        comparison_figure([chord_score(), chord_score()], ["one"])
