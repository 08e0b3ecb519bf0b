"""Generation: prompts from MIDI, the per-step mask (REMI grammar, length, no empty piece) and the
cut that ends each piece. The grammar is followed through the tokenizer's incremental automaton
(`remi.Tokenizer.grammar_state`), one id per step, so a step costs the same at any length.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

import remi
from model import GPT
from remi.render import bar_ids, count_bars, cut_bars, prompt_end_tick
from remi.score import bar_starts, ticks_to_seconds

from .errors import PromptError

MIDI_SUFFIXES = (".mid", ".midi")


@dataclass
class Prompt:
    """What generation starts from: BOS alone, or BOS + the first bars of a MIDI file."""

    name: str  # used in output file names
    ids: list[int]
    path: Path | None = None
    n_bars: int = 0
    end_tick: int | None = None  # where the prompt's bars end (marked on the piano roll)

    def info(self) -> dict | None:
        if self.path is None:
            return None
        return {"file": str(self.path), "bars": self.n_bars, "tokens": len(self.ids),
                "end_tick": self.end_tick}


def safe_name(text: str) -> str:
    """A file-name-safe version of a prompt's stem (prompt names carry spaces, '#', accents)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "prompt"


def prompt_files(prompt: str | Path) -> list[Path]:
    path = Path(prompt)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())
        if not files:
            raise PromptError(f"prompt folder {path} holds no .mid/.midi files")
        return files
    if not path.is_file():
        raise PromptError(f"prompt {path} does not exist")
    return [path]


def load_prompts(tok: remi.Tokenizer, prompt: str | Path | None, prompt_bars: int | None, block_size: int) -> list[Prompt]:
    if prompt is None:
        return [Prompt(name="sample", ids=[tok.bos_id])]
    if prompt_bars is not None and prompt_bars < 1:
        raise PromptError(f"prompt_bars must be >= 1 (or null for the whole file), got {prompt_bars}")
    prompts, used = [], set()
    for path in prompt_files(prompt):
        try:
            ids = tok.encode(path)
        except Exception as e:  # remi.MidiReadError and whatever a broken file provokes
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise PromptError(f"prompt {path} does not parse as MIDI ({reason})") from None
        ids, n_bars = cut_bars(tok, ids, prompt_bars)
        if n_bars == 0 or tok.count_notes(ids) == 0:
            raise PromptError(f"prompt {path} has no notes to continue")
        if len(ids) >= block_size:
            raise PromptError(f"prompt {path}: its first {n_bars} bars are {len(ids)} tokens, longer than "
                              f"the model's context of {block_size}; use fewer prompt_bars")
        name = safe_name(path.stem)
        while name in used:
            name += "_"
        used.add(name)
        prompts.append(Prompt(name=name, ids=ids, path=path, n_bars=n_bars,
                              end_tick=prompt_end_tick(tok, ids)))
    return prompts


# ---------------------------------------------------------------- generation


def seconds_between_bars(tok: remi.Tokenizer, ids: Sequence[int], first: int, last: int) -> float:
    """Seconds of music from the start of bar `first` to the start of bar `last` (0-based) of the
    piece `ids` begins, on the bar grid and tempo map the tokenizer decodes from them."""
    score = tok.decode_score(ids)
    starts = bar_starts(score, 0, min_count=last + 1)
    tpb = score.ticks_per_beat
    return (ticks_to_seconds(int(starts[last]), tpb, score.tempos)
            - ticks_to_seconds(int(starts[first]), tpb, score.tempos))


class Piece:
    """One row's bookkeeping while it is generated: the grammar automaton, the bars generated,
    and where (if anywhere) the piece has reached EOS or the length asked for.

    `advance(row)` reads only the ids it has not seen, so a step costs the same at token 5,000 as
    at token 5: nothing here depends on the model's context window, which `GPT.generate` slides
    underneath. A Bar that would open a bar past the length asked for (`max_bars` generated bars,
    or a bar starting `max_seconds` or more of generated music after the prompt) stops the piece
    there: `finish` cuts it off and ends the piece with EOS.
    """

    def __init__(self, tok: remi.Tokenizer, prompt: Sequence[int], max_bars: int | None = None,
                 max_seconds: float | None = None, grammar: bool = True):
        self.tok, self.max_bars, self.max_seconds = tok, max_bars, max_seconds
        self.prompt_len = len(prompt)
        self.prompt_bars = count_bars(tok, prompt)
        self.starts = bar_ids(tok)
        self.state = tok.grammar_state(list(prompt)) if grammar else None
        self.n = self.prompt_len  # ids read so far
        self.bars = 0  # bars generated (Bar ids after the prompt, the stopping one excluded)
        self.stop: str | None = None  # "eos", "max_bars" or "max_seconds"
        self.end: int | None = None  # index of the EOS or of the Bar that stopped it

    def advance(self, row: Sequence[int]) -> None:
        for i in range(self.n, len(row)):
            t = int(row[i])
            if self.stop is None:
                if t == self.tok.eos_id:
                    self.stop, self.end = "eos", i
                elif t in self.starts:
                    reason = self.over_length(row[:i])
                    if reason:
                        self.stop, self.end = reason, i
                    else:
                        self.bars += 1
            if self.state is not None and self.stop is None:
                for base in (self.tok.bpe.expand(t) if self.tok.bpe is not None else (t,)):
                    self.state.step(base)
        self.n = max(self.n, len(row))

    def over_length(self, before: Sequence[int]) -> str | None:
        """Why a Bar after `before` (the next generated bar) would be one too many, if it would."""
        if self.max_bars is not None and self.bars >= self.max_bars:
            return "max_bars"
        if self.max_seconds is not None and seconds_between_bars(
                self.tok, before, self.prompt_bars, self.prompt_bars + self.bars) >= self.max_seconds:
            return "max_seconds"
        return None


def make_allowed(tok: remi.Tokenizer, prompt_len: int, grammar: bool, max_bars: int | None, continue_bars: bool,
                 max_seconds: float | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-step mask for one `GPT.generate` call.

    grammar: only ids the REMI grammar allows next (the tokenizer's grammar automaton, advanced
        one id at a time).
    max_bars / max_seconds: a row whose latest Bar opens a bar past the length asked for may only
        say EOS (`finish` then cuts that Bar off); see `Piece`.
    continue_bars: the first new id must open a bar, so the continuation never adds notes to
        the prompt's last bar and the prompt's bars stay exactly as given.
    Always: the first new id is not EOS (no empty pieces).
    Every row's state is read from the whole sequence `generate` hands in, never from the model's
    window, so it stays exact however often the window shifts.
    """
    only_eos = np.zeros(tok.vocab_size, dtype=bool)
    only_eos[tok.eos_id] = True
    anything = np.ones(tok.vocab_size, dtype=bool)
    starts = np.array(sorted(bar_ids(tok)))
    opens_bar = np.zeros(tok.vocab_size, dtype=bool)
    opens_bar[starts] = True
    # Specials other than EOS never belong inside a piece, whatever the grammar table permits.
    not_special = anything.copy()
    not_special[[tok.bos_id, tok.pad_id, tok.mask_id]] = False
    pieces: list[Piece] = []

    def allowed(ids: torch.Tensor) -> torch.Tensor:  # ids (B, T) -> bool (B, V)
        rows = ids.cpu().numpy()
        if len(pieces) != len(rows) or pieces[0].n > rows.shape[1]:  # a new generation: start over
            pieces[:] = [Piece(tok, row[:prompt_len].tolist(), max_bars, max_seconds, grammar) for row in rows]
        masks = np.empty((len(rows), tok.vocab_size), dtype=bool)
        for b, (piece, row) in enumerate(zip(pieces, rows)):
            piece.advance(row)
            if piece.stop is not None:
                masks[b] = only_eos
                continue
            mask = tok.allowed_after_state(piece.state) & not_special if grammar else anything
            if not mask.any():
                mask = only_eos
            if len(row) == prompt_len:  # never an empty piece: the first new id is not EOS
                mask = mask & ~only_eos if (mask & ~only_eos).any() else mask
                if continue_bars:
                    mask = mask & opens_bar if (mask & opens_bar).any() else opens_bar
            masks[b] = mask
        return torch.from_numpy(masks).to(ids.device)

    return allowed


def finish(tok: remi.Tokenizer, row: Sequence[int], prompt_len: int, max_bars: int | None,
           max_seconds: float | None = None) -> tuple[list[int], str]:
    """One generated row -> the raw ids to keep, and why generation stopped.

    Cuts after the first EOS, or before the Bar that opens a bar past `max_bars` generated bars
    or past `max_seconds` of generated music (then ends with EOS): the same `Piece` rule that
    `make_allowed` applied while generating.
    """
    row = [int(i) for i in row]
    piece = Piece(tok, row[:prompt_len], max_bars, max_seconds, grammar=False)
    piece.advance(row)
    if piece.stop is None:
        return row, "max_new_tokens"
    if piece.stop == "eos":
        return row[: piece.end + 1], "eos"
    return row[: piece.end] + [tok.eos_id], piece.stop


def generate_batch(gpt: GPT, tok: remi.Tokenizer, prompt: Prompt, n: int, cfg, temperature: float,
                   generator: torch.Generator, device: str) -> list[tuple[list[int], str]]:
    """`n` continuations of one prompt, as (raw ids, stop reason)."""
    idx = torch.tensor([prompt.ids] * n, dtype=torch.long, device=device)
    allowed = make_allowed(tok, len(prompt.ids), bool(cfg.grammar), cfg.max_bars,
                           continue_bars=prompt.path is not None, max_seconds=cfg.max_seconds)
    with torch.no_grad():
        out = gpt.generate(idx, int(cfg.max_new_tokens), temperature=float(temperature),
                           top_k=cfg.top_k, top_p=cfg.top_p, eos_id=tok.eos_id,
                           allowed=allowed, generator=generator, stride=cfg.stride)
    return [finish(tok, row, len(prompt.ids), cfg.max_bars, cfg.max_seconds) for row in out.tolist()]
