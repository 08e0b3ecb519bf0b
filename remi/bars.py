"""Bar tokens: which ids start a bar, how many bars ids hold, cutting ids after N bars, and the
tick where a prompt's bars end. Token logic over a Tokenizer (BPE ids included), used by
generation's stopping rules and prompts (`pianolm.generate`), evaluation and the media writer.
"""
from __future__ import annotations

from typing import Sequence

from .score import START, bar_starts


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


def bar_span_ticks(tok, ids: Sequence[int], first: int, last: int) -> tuple[int, int]:
    """(tick where bar `first` starts, tick where bar `last` ends) of the piece `ids`, bars
    counted from 1 as in `remi.bars.count_bars`, on the tokenizer's own bar grid."""
    score = tok.decode_score([int(i) for i in ids])
    starts = bar_starts(score, 0, min_count=last + 1)
    return int(starts[first - 1]), int(starts[last])


def notes_outside(score, start_tick: int, end_tick: int) -> tuple:
    """(notes starting before `start_tick`, notes starting at or after `end_tick`) of a Score,
    as (N, 4) arrays: what an infilled piece keeps of its input."""
    s = score.notes[:, START]
    return score.notes[s < start_tick], score.notes[s >= end_tick]
