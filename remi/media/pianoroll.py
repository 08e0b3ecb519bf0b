"""Piano-roll pictures of a `Score`: one roll, or several side by side with labels.

numpy + matplotlib only (Agg backend, no display needed). Time runs left to right in beats
(quarter notes), pitch bottom to top; bar lines are faint, and an optional red dashed line
marks where a prompt ends and the model's continuation begins.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never open a window (CI and servers have no display)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..score import END, PITCH, START, VELOCITY, Score, bar_starts  # noqa: E402

PROMPT_LINE_LABEL = "prompt end"
SPAN_LABEL = "regenerated bars"


def roll_array(score: Score, ticks_per_cell: int | None = None) -> np.ndarray:
    """Boolean piano roll (128, n_cells): cell [p, c] is True where pitch p sounds.

    `ticks_per_cell` defaults to a sixteenth note. A note covers the cells from its start to its
    end, at least one cell. Used by tests and by anyone who wants the roll as data.
    """
    step = ticks_per_cell or max(1, score.ticks_per_beat // 4)
    n_cells = -(-max(score.end_tick, 1) // step)
    roll = np.zeros((128, n_cells), dtype=bool)
    for start, end, pitch, _ in score.notes:
        a = start // step
        b = max(a + 1, -(-end // step))
        roll[pitch, a:b] = True
    return roll


def draw_pianoroll(
    ax,
    score: Score,
    title: str | None = None,
    prompt_end_tick: int | None = None,
    pitch_range: tuple[int, int] | None = None,
    max_beats: float | None = None,
    span: tuple[int, int] | None = None,
) -> None:
    """Draw `score` on the matplotlib axes `ax` (notes as boxes shaded by velocity); `span`
    (start, end ticks): bars regenerated inside the piece, shaded and labelled."""
    tpb = score.ticks_per_beat
    notes = score.notes
    # One quad per note, in (beats, pitch) coordinates: (N, 4 corners, 2).
    x0 = notes[:, START] / tpb
    x1 = np.maximum(notes[:, END], notes[:, START] + 1) / tpb
    y0 = notes[:, PITCH] - 0.4
    y1 = notes[:, PITCH] + 0.4
    quads = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1),
                      np.stack([x1, y1], 1), np.stack([x0, y1], 1)], axis=1)
    shade = plt.get_cmap("viridis")(0.25 + 0.75 * notes[:, VELOCITY] / 127.0)
    ax.add_collection(PolyCollection(quads, facecolors=shade, edgecolors="none"))

    end_tick = max(score.end_tick, prompt_end_tick or 0, tpb)
    right = max_beats if max_beats is not None else end_tick / tpb
    for tick in bar_starts(score, end_tick)[:-1]:  # the last start lies past end_tick
        ax.axvline(tick / tpb, color="0.85", linewidth=0.5, zorder=0)
    if prompt_end_tick is not None:
        ax.axvspan(0, prompt_end_tick / tpb, color="0.94", zorder=0)  # the given part, shaded
        ax.axvline(prompt_end_tick / tpb, color="red", linestyle="--", linewidth=1.2,
                   label=PROMPT_LINE_LABEL)
        ax.legend(loc="upper right", fontsize="small")
    if span is not None:
        ax.axvspan(span[0] / tpb, span[1] / tpb, color="#ffe9b3", zorder=0, label=SPAN_LABEL)
        ax.legend(loc="upper right", fontsize="small")
    if pitch_range is None:
        lo, hi = (int(notes[:, PITCH].min()), int(notes[:, PITCH].max())) if len(notes) else (48, 84)
        pitch_range = (max(0, lo - 2), min(127, hi + 2))
    ax.set_xlim(0, right)
    ax.set_ylim(pitch_range[0] - 0.5, pitch_range[1] + 0.5)
    ax.set_xlabel("beats")
    ax.set_ylabel("MIDI pitch")
    if title:
        ax.set_title(title, fontsize="medium")


def pianoroll_figure(score: Score, title: str | None = None,
                     prompt_end_tick: int | None = None, span: tuple[int, int] | None = None) -> Figure:
    """One piano roll as a figure, wide enough that bars stay legible."""
    beats = max(score.end_tick, prompt_end_tick or 0) / score.ticks_per_beat
    fig, ax = plt.subplots(figsize=(min(24.0, max(6.0, 0.12 * beats + 2)), 4.0), dpi=100)
    draw_pianoroll(ax, score, title=title, prompt_end_tick=prompt_end_tick, span=span)
    fig.tight_layout()
    return fig


def comparison_figure(
    scores: Sequence[Score],
    labels: Sequence[str],
    title: str | None = None,
    prompt_end_ticks: Sequence[int | None] | None = None,
    spans: Sequence[tuple[int, int] | None] | None = None,
) -> Figure:
    """Several piano rolls side by side (one column each), each titled with its label.

    All panels share the pitch range and time span, so the eye compares like with like.
    """
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    if not scores:
        raise ValueError("comparison_figure needs at least one score")
    ends = prompt_end_ticks or [None] * len(scores)
    pitches = np.concatenate([s.notes[:, PITCH] for s in scores])
    pitch_range = ((max(0, int(pitches.min()) - 2), min(127, int(pitches.max()) + 2))
                   if len(pitches) else (48, 84))
    max_beats = max(max(s.end_tick, e or 0, s.ticks_per_beat) / s.ticks_per_beat
                    for s, e in zip(scores, ends))
    fig, axes = plt.subplots(1, len(scores), figsize=(4.0 * len(scores), 4.5), dpi=100,
                             sharey=True, squeeze=False)
    for ax, score, label, end, span in zip(axes[0], scores, labels, ends, spans or [None] * len(scores)):
        draw_pianoroll(ax, score, title=label, prompt_end_tick=end,
                       pitch_range=pitch_range, max_beats=max_beats, span=span)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as PNG to `path` (parents created) and free it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def save_pianoroll(score: Score, path: str | Path, title: str | None = None,
                   prompt_end_tick: int | None = None, span: tuple[int, int] | None = None) -> Path:
    return save_figure(pianoroll_figure(score, title=title, prompt_end_tick=prompt_end_tick, span=span), path)


def save_comparison(scores: Sequence[Score], labels: Sequence[str], path: str | Path,
                    title: str | None = None,
                    prompt_end_ticks: Sequence[int | None] | None = None,
                    spans: Sequence[tuple[int, int] | None] | None = None) -> Path:
    return save_figure(comparison_figure(scores, labels, title=title,
                                         prompt_end_ticks=prompt_end_ticks, spans=spans), path)
