"""Token ids -> the media people look at: a .mid file, a piano-roll .png, and numbers about them.

Shared by `sample.py` and by anything that wants to show samples during training. Uses only the
tokenizer (which owns MIDI writing), numpy and matplotlib.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .midi_io import score_to_midifile
from .pianoroll import save_pianoroll
from .score import KeySignature, bar_starts


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


def bar_ids(tok) -> set[int]:
    """Ids that start a bar: the Bar token, or with BPE every merged token that begins with it."""
    bar = int(tok.bar_id)
    if getattr(tok, "bpe", None) is None:
        return {bar}
    names = tok.tokens(list(range(tok.vocab_size)))  # a merged id renders as "Bar_None+Position_0+..."
    return {i for i, name in enumerate(names) if name.split("+")[0] == names[bar]}


def count_bars(tok, ids: Sequence[int]) -> int:
    starts = bar_ids(tok)
    return sum(1 for i in ids if int(i) in starts)


def cut_bars(tok, ids: Sequence[int], n_bars: int | None) -> tuple[list[int], int]:
    """The ids up to (not including) the (n_bars+1)-th Bar token, EOS dropped; and the bar count.

    n_bars None keeps every bar. A file with fewer bars keeps all it has. With key tokens, the
    bars kept are re-keyed to their own notes (the encoder keyed them to the whole piece, which a
    prompt must not know).
    """
    ids = [int(i) for i in ids]
    if ids and ids[-1] == tok.eos_id:
        ids = ids[:-1]
    starts = bar_ids(tok)
    bars = [i for i, t in enumerate(ids) if t in starts]
    if n_bars is not None and len(bars) > n_bars:
        return tok.set_key(ids[: bars[n_bars]]), n_bars
    return ids, len(bars)


def prompt_end_tick(tok, prompt_ids: Sequence[int]) -> int:
    """Tick where the bars of a prompt end (the start of the first bar after it).

    Counts Bar tokens in the prompt ids and walks the decoded prompt's time signatures, so it
    agrees with the tokenizer's own bar grid.
    """
    ids = [int(i) for i in prompt_ids]
    n_bars = count_bars(tok, ids)
    if n_bars == 0:
        return 0
    score = tok.decode_score(ids)
    starts = bar_starts(score, 0, min_count=n_bars + 1)
    return int(starts[n_bars])


def render(tok, ids: Sequence[int], stem: str | Path, title: str | None = None,
           prompt_end: int | None = None, key_signature: str | None = None) -> Rendered:
    """Write `<stem>.mid` and `<stem>.png` for one id sequence; return paths and measurements.

    ids: the raw sequence as sampled (BOS ... EOS, prompt included); the grammar error rate is
    measured on exactly these ids, before the decoder skips anything.
    prompt_end: tick where a prompt ends, drawn as a marker on the roll (None: no marker).
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
                   prompt_end_tick=prompt_end)
    return Rendered(midi=midi_path, png=png_path, n_tokens=len(ids), n_notes=len(score),
                    seconds=round(score.seconds(), 3),
                    token_errors=float(tok.token_errors(ids)))


def render_many(tok, sequences: Sequence[Sequence[int]], out_dir: str | Path,
                prefix: str = "sample") -> list[Rendered]:
    """`render` each sequence to `out_dir/<prefix>_<i>.{mid,png}`; e.g. for a training callback."""
    return [render(tok, ids, Path(out_dir) / f"{prefix}_{i:03d}") for i, ids in enumerate(sequences)]


def mean_token_errors(rendered: Sequence[Rendered]) -> float:
    return float(np.mean([r.token_errors for r in rendered])) if rendered else 0.0
