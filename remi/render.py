"""Split: bar logic (`bar_ids`, `count_bars`, `cut_bars`, `prompt_end_tick`) moved to the core's
`remi.bars`, ids -> .mid + .png (`render`, `Rendered`, ...) to `remi.media.render`; this name stays for
`from remi.render import ...`. The project imports the new homes."""
from .bars import bar_ids, count_bars, cut_bars, prompt_end_tick
from .media.render import Rendered, mean_token_errors, render, render_many

__all__ = [
    "bar_ids", "count_bars", "cut_bars", "prompt_end_tick", "Rendered", "render",
    "render_many", "mean_token_errors",
]
