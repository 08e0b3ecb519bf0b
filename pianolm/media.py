"""Ids -> what a person looks at and listens to: .mid, a piano-roll .png and, where FluidSynth and
a General MIDI SoundFont are installed, a .wav. One renderer for the training callback's samples
and for sample.py's pieces.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import remi
from remi.media.audio import INSTALL_HINT, Renderer, find_renderer, render_wav
from remi.media.render import Rendered, mean_token_errors, render


@dataclass
class Media:
    rendered: Rendered  # .mid and .png paths, tokens, notes, seconds, grammar errors
    wav: Path | None = None
    warning: str | None = None  # why the .wav is missing although audio was asked for


class MediaWriter:
    """Writes one piece's files; `synth` None means no audio (say why once, with `INSTALL_HINT`)."""

    def __init__(self, tok: remi.Tokenizer, synth: Renderer | None = None):
        self.tok, self.synth = tok, synth

    @classmethod
    def find(cls, tok: remi.Tokenizer, audio: bool = True, soundfont: str | None = None,
             who: str = "pianolm") -> "MediaWriter":
        """With audio when FluidSynth and a SoundFont are found; else says once that audio is off."""
        synth = find_renderer(soundfont) if audio else None
        if audio and synth is None:
            print(f"[{who}] {INSTALL_HINT}", file=sys.stderr)
        return cls(tok, synth)

    def piece(self, ids: Sequence[int], stem: str | Path, title: str | None = None,
              prompt_end: int | None = None, key_signature: str | None = None,
              span: tuple[int, int] | None = None) -> Media:
        """`<stem>.mid`, `<stem>.png` and (with a synth) `<stem>.wav` for one id sequence
        (`key_signature`, `span`: see `remi.media.render.render`)."""
        rendered = render(self.tok, ids, stem, title=title, prompt_end=prompt_end, key_signature=key_signature,
                          span=span)
        media = Media(rendered)
        if self.synth is not None:
            try:
                media.wav = render_wav(rendered.midi, Path(stem).with_suffix(".wav"), self.synth,
                                       seconds=rendered.seconds)
            except (RuntimeError, OSError) as e:
                media.warning = str(e)
        return media

    def samples(self, samples: list[list[int]], out_dir: Path) -> dict:
        """The training callback's `render` (model.callbacks.SampleCallback): files and measures."""
        pieces = [self.piece(ids, Path(out_dir) / f"sample_{i:03d}") for i, ids in enumerate(samples)]
        for m in pieces:
            if m.warning:
                print(f"[train] sample audio skipped: {m.warning}", file=sys.stderr)
        rendered = [m.rendered for m in pieces]
        return {"midi": [r.midi for r in rendered], "images": [r.png for r in rendered],
                "audio": [m.wav for m in pieces if m.wav is not None],
                "grammar_error_rate": mean_token_errors(rendered),
                "notes_mean": sum(r.n_notes for r in rendered) / max(1, len(rendered))}
