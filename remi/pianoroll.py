"""Moved to `remi.media.pianoroll` (piano-roll figures); this name stays for
`from remi.pianoroll import ...`. The project imports the new home."""
from .media.pianoroll import (
    PROMPT_LINE_LABEL,
    comparison_figure,
    draw_pianoroll,
    pianoroll_figure,
    plt,
    roll_array,
    save_comparison,
    save_figure,
    save_pianoroll,
)

__all__ = [
    "PROMPT_LINE_LABEL", "roll_array", "draw_pianoroll", "pianoroll_figure", "comparison_figure", "save_figure",
    "save_pianoroll", "save_comparison", "plt",
]
