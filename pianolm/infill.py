"""Bar infilling: regenerate bars a..b of a piece between the fixed bars around them.

A model trained with `data.infill_share > 0` has seen windows laid out as (`model.data.Infill`)

    prefix  Infill_Start  suffix  Infill_Middle  middle  Infill_End

so it writes a middle given both sides. Here a piece's ids are cut at its bar lines into the bars
before (prefix), the bars asked for (middle) and the bars after (suffix); the model sees
`prefix Infill_Start suffix Infill_Middle` (the outer bars trimmed, whole bars at a time, when
they do not fit the context) and writes a new middle, under a mask that keeps the piece's frame:

- the middle opens with a Bar and holds exactly as many bars as it replaces, each with the
  original bar's TimeSig (so every later bar starts on the tick it started on), and with key
  tokens the piece's Key;
- `Infill_End` only where the REMI grammar would allow a piece to end, once the last bar is open;
- no pitch struck while a note of the bars before still holds it (the decoder would end that
  note there: `remi.score.one_voice_per_pitch`);
- only what the REMI grammar allows after the prefix (always: a Position past its bar would put a
  note among the bars after), never a special token.

The result is prefix + new middle + suffix: outside the bars asked for, every note is the input's
as the tokenizer quantizes it. When the new middle leaves a different tempo in force than the old
one did, the suffix's first bar restates the old tempo at its first position, so the bars after
keep their tempo too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

import remi
from model import GPT
from model.generate import generate
from remi.score import END, START, bar_starts
from remi.score import PITCH as PITCH_COL
from remi.vocab import INFILL, KEY, PITCH, POSITION, SPECIAL, TEMPO, TIMESIG

from .errors import InputError

# Tokens kept free for the middle beyond the old middle's length (the new one may be denser).
RESERVE_SHARE, RESERVE_MIN = 0.25, 16


def check_infill_model(tok: remi.Tokenizer, run: dict | None) -> None:
    """InputError unless this tokenizer and training run can infill."""
    share = ((run or {}).get("data") or {}).get("infill_share")
    if tok.infill_ids is None or (share is not None and not share > 0):
        raise InputError("this model was trained without infilling (data.infill_share=0), so it cannot regenerate "
                         "bars inside a piece; train one with data.infill_share > 0 (docs/training.md), or continue "
                         "the piece instead")
    if tok.bpe is not None:
        raise InputError("infilling needs a tokenizer without BPE (tokenizer.bpe_vocab_size=0)")


def parse_bars(bars) -> tuple[int, int]:
    """(first, last) bar numbers from (9, 12), [9, 12] or "9-12": counted from 1, both included."""
    if isinstance(bars, str):
        parts = bars.replace(",", "-").split("-")
        try:
            bars = tuple(int(p) for p in parts)
        except ValueError:
            bars = None
    ok = isinstance(bars, (tuple, list)) and len(bars) == 2 and all(
        isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in bars)
    if not ok:
        raise InputError(f"bars={bars!r}: give the first and last bar to regenerate, e.g. (9, 12) (counted from 1, "
                         "both included)")
    a, b = int(bars[0]), int(bars[1])
    if a > b:
        raise InputError(f"bars=({a}, {b}) is empty: the first bar comes after the last; e.g. ({b}, {a})")
    return a, b


@dataclass
class Plan:
    """A piece cut for infilling. `ids` = prefix + middle + suffix (BOS ... EOS)."""

    ids: list[int]
    bars: tuple[int, int]        # first and last bar asked for, from 1
    start: int                   # index in `ids` of the middle's first token (its first Bar)
    end: int                     # index of the first token after the middle (a Bar, or EOS)
    context: list[int]           # what the model reads: prefix Infill_Start suffix Infill_Middle
    timesigs: list[int | None]   # each middle bar's TimeSig id (None without time signatures)
    key: int | None              # the piece's Key id (None without key tokens)
    budget: int                  # tokens the middle may take (the context's room left)
    bar_ticks: list[tuple[int, int]]  # each middle bar's (first tick, ticks per Position step)
    held: dict[int, int]         # Pitch id -> tick until which a note of the bars before sounds

    @property
    def n_bars(self) -> int:
        return self.bars[1] - self.bars[0] + 1


def plan(tok: remi.Tokenizer, ids: Sequence[int], bars, block_size: int) -> Plan:
    """Cut `ids` (a whole encoded piece) around `bars`, or InputError naming what does not fit."""
    a, b = parse_bars(bars)
    ids = [int(i) for i in ids]
    opens = [i for i, t in enumerate(ids) if t == tok.bar_id]
    if not opens:
        raise InputError("the piece has no bars to regenerate")
    if a < 1 or b > len(opens):
        raise InputError(f"bars=({a}, {b}) lies outside the piece: it has {len(opens)} bars; choose a range "
                         f"within 1..{len(opens)}")
    start = opens[a - 1]
    end = opens[b] if b < len(opens) else (len(ids) - 1 if ids[-1] == tok.eos_id else len(ids))
    types = tok.vocab.types
    timesigs = []
    for bar in opens[a - 1:b]:
        nxt = ids[bar + 1] if bar + 1 < len(ids) else None
        timesigs.append(nxt if nxt is not None and types[nxt] == TIMESIG else None)
    keys = [t for t in ids if types[t] == KEY]
    key = keys[0] if keys else None
    reserve = math.ceil((end - start) * (1 + RESERVE_SHARE)) + RESERVE_MIN
    context = _fit(tok, ids, opens, a, b, start, end, block_size - reserve)
    if context is None:
        raise InputError(f"bars=({a}, {b}): the {b - a + 1} bar(s) to regenerate are {end - start} tokens; with room "
                         f"for a new middle ({reserve} tokens) and a bar on each side they do not fit the model's "
                         f"context of {block_size} tokens; choose fewer bars")
    bar_ticks, held = _frame(tok, ids, a, b, timesigs)
    return Plan(ids, (a, b), start, end, context, timesigs, key, block_size - len(context), bar_ticks, held)


def _frame(tok, ids, a, b, timesigs) -> tuple[list[tuple[int, int]], dict[int, int]]:
    """Each middle bar's (first tick, ticks per Position step), and the pitches the bars before
    still hold when the middle starts (Pitch id -> the tick they end)."""
    v = tok.vocab
    score = tok.decode_score(ids)
    starts = bar_starts(score, 0, min_count=b + 1)
    bar_ticks = []
    for j, ts in enumerate(timesigs):
        den = v.time_signatures[int(v.values[ts])][1] if ts is not None else 4
        bar_ticks.append((int(starts[a - 1 + j]), score.ticks_per_beat * 4 // (den * v.res)))
    t0 = int(starts[a - 1])
    notes = score.notes[(score.notes[:, START] < t0) & (score.notes[:, END] > t0)]
    held: dict[int, int] = {}
    first_pitch = v.first[PITCH] - tok.config.pitch_range[0]
    for end, pitch in zip(notes[:, END].tolist(), notes[:, PITCH_COL].tolist()):
        held[first_pitch + pitch] = max(end, held.get(first_pitch + pitch, 0))
    return bar_ticks, held


def _fit(tok, ids, opens, a, b, start, end, room) -> list[int] | None:
    """prefix S suffix M in at most `room` tokens, dropping whole bars farthest from the middle
    first (the prefix's from its front, the suffix's from its back); None when even one bar on each
    side (where the piece has one) is too many."""
    s, m, _ = tok.infill_ids
    lo = 0  # where the prefix starts (0: with BOS)
    hi = len(ids)  # where the suffix ends (len: with EOS)
    before = [0] + opens[: a - 1]  # prefix cut points: BOS, then each bar line before the middle
    after = opens[b:] + [hi]  # suffix cut points
    i, j = 0, len(after) - 1
    while (start - lo) + (hi - end) + 2 > room:
        can_front = i + 1 < len(before)  # keeps at least the bar just before the middle
        can_back = j > 1  # keeps at least the bar just after it
        if not (can_front or can_back):
            return None
        if can_front and (not can_back or start - lo >= hi - end):
            i += 1
            lo = before[i]
        else:
            j -= 1
            hi = after[j]
    return ids[lo:start] + [s] + ids[end:hi] + [m]


def middle_mask(tok: remi.Tokenizer, p: Plan, prompt_len: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-step mask of a middle (see the module docstring): `allowed(ids (B, n)) -> (B, V)`."""
    V = tok.vocab_size
    types = tok.vocab.types
    _, _, e = tok.infill_ids
    free = ~np.isin(types, [SPECIAL, INFILL])  # what a middle's tokens may be at all
    if p.key is not None:
        free &= (types != KEY) | (np.arange(V) == p.key)
    only = np.eye(V, dtype=bool)
    prefix = p.ids[:p.start]
    states: list = []

    def row_mask(state, row) -> np.ndarray:
        new = row[prompt_len:]
        if len(new) == 0:
            return only[tok.bar_id]
        if new[-1] == e:
            return only[e]
        bars = int(np.count_nonzero(new == tok.bar_id))
        if new[-1] == tok.bar_id and p.timesigs[bars - 1] is not None:
            return only[p.timesigs[bars - 1]]
        allowed = tok.allowed_after_state(state)
        can_end = bool(allowed[tok.eos_id])
        mask = allowed & free
        if p.held and state.pos >= 0:  # a pitch still held from before the middle cannot sound again yet
            first, step = p.bar_ticks[bars - 1]
            now = first + state.pos * step
            for pitch, until in p.held.items():
                if until > now:
                    mask[pitch] = False
        if bars >= p.n_bars:
            mask[tok.bar_id] = False
            mask[e] = can_end
        if not mask.any():
            mask[e] = True
        return mask

    def allowed(ids: torch.Tensor) -> torch.Tensor:
        rows = ids.cpu().numpy()
        if len(states) != len(rows) or states[0][1] > rows.shape[1]:  # a new generation
            states[:] = [[tok.grammar_state(prefix), prompt_len] for _ in rows]
        out = np.empty((len(rows), V), dtype=bool)
        for r, row in enumerate(rows):
            st = states[r]
            for t in row[st[1]:]:
                if t != e:
                    st[0].step(int(t))
            st[1] = len(row)
            out[r] = row_mask(st[0], row)
        return torch.from_numpy(out).to(ids.device)

    return allowed


def assemble(tok: remi.Tokenizer, p: Plan, middle: Sequence[int]) -> tuple[list[int], str]:
    """prefix + `middle` (generated ids after Infill_Middle) + suffix, and why the middle stopped.

    A middle cut short by its budget is completed with empty bars (their original TimeSig), so the
    bar count never changes; the old tempo is restated where the new middle changed it.
    """
    _, _, e = tok.infill_ids
    middle = [int(t) for t in middle]
    stop = "infill_end"
    if e in middle:
        middle = middle[: middle.index(e)]
    else:
        stop = "max_new_tokens"
    bars = middle.count(tok.bar_id)
    for ts in p.timesigs[bars:]:
        middle += [tok.bar_id] + ([ts] if ts is not None else []) + ([p.key] if p.key is not None else [])
    suffix = _restate_tempo(tok, p.ids[:p.end], p.ids[:p.start] + middle, p.ids[p.end:])
    return p.ids[:p.start] + middle + suffix, stop


def _tempo_in_force(tok: remi.Tokenizer, ids: Sequence[int]) -> int | None:
    types = tok.vocab.types
    for t in reversed(ids):
        if types[t] == TEMPO:
            return int(t)
    return None


def _restate_tempo(tok: remi.Tokenizer, old: Sequence[int], new: Sequence[int], suffix: list[int]) -> list[int]:
    """The suffix, with a Tempo at its first bar's first position when the tempo in force after
    `new` differs from the one after `old` (the suffix's own first Tempo there makes it moot)."""
    was, now = _tempo_in_force(tok, old), _tempo_in_force(tok, new)
    if was == now or not suffix or suffix[0] != tok.bar_id:
        return list(suffix)
    types = tok.vocab.types
    if was is None:  # the piece had no tempo yet: the decoder's default
        was = tok.vocab.first[TEMPO] + tok.vocab.default_tempo_index
    i = 1
    while i < len(suffix) and types[suffix[i]] in (TIMESIG, KEY):
        i += 1
    pos0 = tok.vocab.first[POSITION]
    if i < len(suffix) and suffix[i] == pos0:
        if i + 1 < len(suffix) and types[suffix[i + 1]] == TEMPO:
            return list(suffix)
        return suffix[: i + 1] + [was] + suffix[i + 1:]
    return suffix[:i] + [pos0, was] + suffix[i:]


def infill_rows(gpt: GPT, tok: remi.Tokenizer, p: Plan, n: int, sampler, generator: torch.Generator,
                threads: int | None = None,
                on_token: Callable[[int], None] | None = None) -> list[tuple[list[int], str]]:
    """`n` infilled versions of the plan's piece: (ids, why the middle stopped) each."""
    prompt = p.context
    device = next(gpt.parameters()).device
    idx = torch.tensor([prompt] * n, dtype=torch.long, device=device)
    _, _, e = tok.infill_ids
    out = generate(gpt, idx, p.budget, sampler, eos_id=e, allowed=middle_mask(tok, p, len(prompt)),
                   generator=generator, threads=threads, on_token=on_token)
    return [assemble(tok, p, row[len(prompt):]) for row in out.tolist()]
