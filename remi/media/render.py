"""Token ids -> the media people look at: a .mid file, a piano-roll .png, and numbers about them.

Shared by `sample.py` and by anything that wants to show samples during training. Uses only the
tokenizer (which owns MIDI writing), numpy and matplotlib. Cutting ids at bars is token logic and
lives in the core, `remi.bars`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..midi_io import score_to_midifile
from ..score import KeySignature
from .pianoroll import save_pianoroll


@dataclass
class Rendered:
    """What `render` wrote for one sequence, and what it measured."""

    midi: Path
    png: Path
    n_tokens: int
    n_notes: int
    seconds: float
    token_errors: float  # grammar error ratio of the raw ids (tok.token_errors)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["midi"], d["png"] = str(self.midi), str(self.png)
        return d


def render(tok, ids: Sequence[int], stem: str | Path, title: str | None = None,
           prompt_end: int | None = None, key_signature: str | None = None,
           span: tuple[int, int] | None = None) -> Rendered:
    """Write `<stem>.mid` and `<stem>.png` for one id sequence; return paths and measurements.

    ids: the raw sequence as sampled (BOS ... EOS, prompt included); the grammar error rate is
    measured on exactly these ids, before the decoder skips anything.
    prompt_end: tick where a prompt ends, drawn as a marker on the roll (None: no marker).
    span: (start, end) ticks of bars regenerated inside the piece, shaded on the roll.
    key_signature: a MIDI key name ("Dm", "F#") written at tick 0 of the .mid (the tokens carry
    no key; a sampler that held the piece to a key says so here).
    """
    ids = [int(i) for i in ids]
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    midi_path, png_path = stem.with_suffix(".mid"), stem.with_suffix(".png")
    score = tok.decode_score(ids)  # decoded once: the .mid and the roll both come from it
    if key_signature is not None:
        score.key_signatures = [KeySignature(0, key_signature)]
    score_to_midifile(score).save(str(midi_path))
    save_pianoroll(score, png_path, title=title if title is not None else stem.name,
                   prompt_end_tick=prompt_end, span=span)
    return Rendered(midi=midi_path, png=png_path, n_tokens=len(ids), n_notes=len(score),
                    seconds=round(score.seconds(), 3),
                    token_errors=float(tok.token_errors(ids)))


def render_many(tok, sequences: Sequence[Sequence[int]], out_dir: str | Path,
                prefix: str = "sample") -> list[Rendered]:
    """`render` each sequence to `out_dir/<prefix>_<i>.{mid,png}`; e.g. for a training callback."""
    return [render(tok, ids, Path(out_dir) / f"{prefix}_{i:03d}") for i, ids in enumerate(sequences)]


def mean_token_errors(rendered: Sequence[Rendered]) -> float:
    return float(np.mean([r.token_errors for r in rendered])) if rendered else 0.0
