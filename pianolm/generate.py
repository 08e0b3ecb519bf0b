"""Generation: prompts from MIDI, the per-step mask (REMI grammar, length, no empty piece) and the
cut that ends each piece. The grammar is followed through the tokenizer's incremental automaton
(`remi.Tokenizer.grammar_state`), one id per step, so a step costs the same at any length.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

import remi
from model import GPT
from model.generate import Sampler, generate
from remi.bars import bar_ids, count_bars, cut_bars, prompt_end_tick
from remi.score import bar_starts, ticks_to_seconds

from .errors import InputError, PromptError

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


def encode_source(tok: remi.Tokenizer, src, what: str, kind: str = "a piece") -> list[int]:
    """A MIDI path, its bytes, a mido.MidiFile or a remi.Score as ids (BOS ... EOS), or a
    PromptError naming `what`: missing file, wrong type, not MIDI."""
    if isinstance(src, (str, Path)) and not Path(src).is_file():
        raise PromptError(f"{what} does not exist")
    try:
        return tok.encode(src)
    except TypeError:
        raise PromptError(f"{what}: {kind} is a MIDI file path, its bytes, a mido.MidiFile or a remi.Score, "
                          f"not {type(src).__name__}") from None
    except Exception as e:  # remi.MidiReadError and whatever a broken file provokes
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise PromptError(f"{what} does not parse as MIDI ({reason})") from None


def prompt_from(tok: remi.Tokenizer, src, prompt_bars: int | None, block_size: int, name: str = "prompt",
                what: str | None = None) -> Prompt:
    """One prompt: the first `prompt_bars` bars (None: all) of a MIDI path, its bytes, a
    mido.MidiFile or a remi.Score, as BOS + ids. `what` names the source in errors."""
    what = what or (f"prompt {src}" if isinstance(src, (str, Path)) else f"prompt ({type(src).__name__})")
    if prompt_bars is not None and (isinstance(prompt_bars, bool) or int(prompt_bars) != prompt_bars or prompt_bars < 1):
        raise PromptError(f"prompt_bars must be an integer >= 1 (or None for the whole file), got {prompt_bars!r}")
    ids, n_bars = cut_bars(tok, encode_source(tok, src, what, "a prompt"), prompt_bars)
    if n_bars == 0 or tok.count_notes(ids) == 0:
        raise PromptError(f"{what} has no notes to continue")
    if len(ids) >= block_size:
        raise PromptError(f"{what}: its first {n_bars} bars are {len(ids)} tokens, longer than "
                          f"the model's context of {block_size}; use fewer prompt_bars")
    path = Path(src) if isinstance(src, (str, Path)) else None
    return Prompt(name=name, ids=ids, path=path, n_bars=n_bars, end_tick=prompt_end_tick(tok, ids))


def load_prompts(tok: remi.Tokenizer, prompt: str | Path | None, prompt_bars: int | None, block_size: int,
                 skipped: list[tuple[str, str]] | None = None) -> list[Prompt]:
    """The prompts of `prompt`: None (one from scratch), a MIDI file, or a folder of them.

    A file that cannot be a prompt (not MIDI, no notes, longer than the context) raises
    PromptError. In a folder, where `skipped` is a list, such files are left out and listed there
    as (file name, reason), so one broken file does not stop the others; a folder with no usable
    file still raises, naming the first reasons."""
    if prompt is None:
        return [Prompt(name="sample", ids=[tok.bos_id])]
    prompts, used, refused = [], set(), []
    files = prompt_files(prompt)
    for path in files:
        name = safe_name(path.stem)
        while name in used:
            name += "_"
        try:
            prompts.append(prompt_from(tok, path, prompt_bars, block_size, name=name))
        except PromptError as e:
            if skipped is None or not Path(prompt).is_dir():
                raise
            refused.append((path.name, str(e)))
            continue
        used.add(name)
    if not prompts:
        raise PromptError(f"none of the {len(files)} files in prompt folder {prompt} can be a prompt: "
                          + "; ".join(reason for _, reason in refused[:3]))
    if skipped is not None:
        skipped.extend(refused)
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
    """The per-step mask for one generation (`model.generate.generate`, through `sample_ids`).

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


@dataclass(frozen=True)
class Sampling:
    """How to draw and when to stop: the knobs of `sample_ids` (conf/sample.yaml's, plus min-p,
    the repetition penalty and `keep`). `check()` names the bad one."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    grammar: bool = True
    max_new_tokens: int = 1024
    max_bars: int | None = None
    max_seconds: float | None = None
    stride: int | None = None
    keep_prompt: bool = False

    @classmethod
    def from_cfg(cls, cfg, temperature: float | None = None) -> "Sampling":
        """From sample.py's config (an OmegaConf node or any object with its keys)."""
        get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
        return cls(temperature=cfg.temperature if temperature is None else temperature,
                   top_k=get("top_k"), top_p=get("top_p"), min_p=get("min_p"),
                   repetition_penalty=get("repetition_penalty"), grammar=bool(get("grammar", True)),
                   max_new_tokens=int(get("max_new_tokens", 1024)), max_bars=get("max_bars"),
                   max_seconds=get("max_seconds"), stride=get("stride"), keep_prompt=bool(get("keep_prompt", False)))

    def sampler(self) -> Sampler:
        """The draw's knobs as `model.generate.Sampler`, which checks them (InputError here)."""
        try:
            return Sampler(self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty)
        except ValueError as e:
            raise InputError(str(e)) from None

    def check(self) -> "Sampling":
        """Every knob, or an InputError naming the bad one: the draw's through `sampler()`, the
        length's here."""
        self.sampler()
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"max_new_tokens={n!r}: must be an integer >= 1")
        b = self.max_bars
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise InputError(f"bars/max_bars={b!r}: must be an integer >= 1, or None (until EOS or max_new_tokens)")
        m = self.max_seconds
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m <= 0):
            raise InputError(f"max_seconds must be > 0 (or None), got {m!r}")
        return self


def sample_ids(gpt: GPT, tok: remi.Tokenizer, prompt_ids: Sequence[int], n: int, s: Sampling,
               generator: torch.Generator, continue_bars: bool = False,
               allowed: Callable[[torch.Tensor], torch.Tensor] | None = None,
               logit_bias: torch.Tensor | None = None, threads: int | None = None,
               on_token: Callable[[int], None] | None = None) -> list[tuple[list[int], str]]:
    """`n` continuations of `prompt_ids` (BOS first), as (raw ids, stop reason): the one sampling
    path of sample.py and `pianolm.api` (grammar mask, length limits, `finish`).

    `allowed` (optional) wraps `make_allowed`'s mask: `allowed(ids, mask) -> mask` (e.g.
    `pianolm.control`'s fixed start); `logit_bias` (V,) is added to every step's logits;
    `threads`: CPU threads while decoding (None: `model.threads.decode_threads`' rule); `on_token(k)`
    hears each step (k new ids per row so far).
    """
    device = next(gpt.parameters()).device
    idx = torch.tensor([list(prompt_ids)] * n, dtype=torch.long, device=device)
    mask = make_allowed(tok, len(prompt_ids), bool(s.grammar), s.max_bars, continue_bars=continue_bars,
                        max_seconds=s.max_seconds)
    step_mask = mask if allowed is None else (lambda ids: allowed(ids, mask(ids)))
    keep = min(len(prompt_ids), gpt.config.block_size // 2) if s.keep_prompt else 0
    out = generate(gpt, idx, int(s.max_new_tokens), s.sampler(), eos_id=tok.eos_id, allowed=step_mask,
                   generator=generator, stride=s.stride, keep=keep, logit_bias=logit_bias, threads=threads,
                   on_token=on_token)
    return [finish(tok, row, len(prompt_ids), s.max_bars, s.max_seconds) for row in out.tolist()]


def generate_batch(gpt: GPT, tok: remi.Tokenizer, prompt: Prompt, n: int, cfg, temperature: float,
                   generator: torch.Generator, device: str | None = None) -> list[tuple[list[int], str]]:
    """`n` continuations of one prompt, as (raw ids, stop reason), with sample.py's config."""
    return sample_ids(gpt, tok, prompt.ids, n, Sampling.from_cfg(cfg, temperature), generator,
                      continue_bars=prompt.path is not None)
