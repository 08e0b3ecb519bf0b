"""Bar infilling: the Infill tokens, the training layout, and regenerating bars inside a piece.

- the vocabulary: three tokens after every other id, off by default, the old hash and ids kept;
- the training windows (`model.data.Infill`): the layout, the ignored targets, a share of 0 that
  keeps today's stream bit for bit;
- `pianolm.infill` through `PianoLM.infill`: outside the bars asked for the notes are the input's
  as quantized, exactly, on every 50th real file (every real file in the slow tier); the number
  of bars and their meters are kept; a held note is never struck again early; a tempo changed by
  the new middle is restated; the same seed gives the same piece; bad requests get one clear error.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import remi
from model import GPT, GPTConfig
from model.data import Infill, TrainWindows
from pianolm import infill as inf
from pianolm.api import PianoLM
from pianolm.config import tokenizer_config
from pianolm.errors import InputError
from remi import Tokenizer, TokenizerConfig
from remi.bars import bar_span_ticks, count_bars, notes_outside
from remi.score import Score, Tempo, ticks_to_seconds
from tests.conftest import shared_midi_files

ROOT = Path(__file__).resolve().parents[1]
TPB = 480
# The hash of conf/tokenizer/coarse.yaml as shards and checkpoints have recorded it all along.
COARSE_HASH = "3e3dccd8c1f5"


def coarse(**changes) -> Tokenizer:
    return Tokenizer(dataclasses.replace(TokenizerConfig.from_yaml(ROOT / "conf/tokenizer/coarse.yaml"), **changes))


def tiny_lm(tok: Tokenizer, block_size: int = 512, seed: int = 0, run: dict | None = None) -> PianoLM:
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=32))
    return PianoLM(tok, gpt, {"run": run or {}})


def melody(bars: int = 8, held: tuple[int, int] | None = None, tempo_at: dict[int, float] | None = None) -> Score:
    """Quarter notes climbing C4.. in 4/4, one bar after another; `held` = (pitch, beats): a note
    from the second beat of bar 1 that sounds that many beats; `tempo_at` = {bar: bpm}."""
    rows = [(b * 4 * TPB + q * TPB, b * 4 * TPB + (q + 1) * TPB, 60 + (b + q) % 12, 64 + 8 * q)
            for b in range(bars) for q in range(4)]
    if held is not None:
        rows.append((TPB, (1 + held[1]) * TPB, held[0], 90))
    tempos = [Tempo(b * 4 * TPB, bpm) for b, bpm in sorted((tempo_at or {0: 120.0}).items())]
    return Score(ticks_per_beat=TPB, notes=Score.from_notes(rows, ticks_per_beat=TPB).notes, tempos=tempos)


# ------------------------------------------------------------------------------------ vocabulary


def test_infill_tokens_come_last_and_change_nothing_when_off():
    off, on = coarse(), coarse(infill_tokens=True)
    assert off.hash.startswith(COARSE_HASH) and "infill_tokens" not in off.config.to_dict()
    assert on.hash != off.hash and TokenizerConfig.from_dict(on.config.to_dict()) == on.config
    assert on.vocab.tokens[: off.vocab_size] == off.vocab.tokens
    assert on.vocab.tokens[off.vocab_size:] == ("Infill_Start", "Infill_Middle", "Infill_End")
    assert on.infill_ids == (off.vocab_size, off.vocab_size + 1, off.vocab_size + 2) and off.infill_ids is None
    both = coarse(key_tokens=True, infill_tokens=True)
    assert both.vocab.tokens[-27:-3][0] == "Key_C" and both.infill_ids[0] == both.vocab_size - 3
    score = melody()
    assert on.encode(score) == off.encode(score)  # no piece ever holds them
    with pytest.raises(ValueError, match="infill_tokens"):
        TokenizerConfig(infill_tokens=1)


def test_the_grammar_never_allows_them_and_decoding_skips_them():
    tok = coarse(infill_tokens=True)
    ids = tok.encode(melody(2))
    for n in range(1, len(ids)):
        assert not tok.allowed_next(ids[:n])[list(tok.infill_ids)].any()
    s, m, e = tok.infill_ids
    mixed = ids[:5] + [s] + ids[5:9] + [m, e] + ids[9:]
    assert np.array_equal(tok.decode_score(mixed).notes, tok.decode_score(ids).notes)
    assert tok.token_errors(mixed) > 0


def _train_cfg(share: float):
    return OmegaConf.create({"tokenizer": OmegaConf.to_container(OmegaConf.load(ROOT / "conf/tokenizer/coarse.yaml")),
                             "data": {"infill_share": share}})


def test_the_data_key_puts_the_tokens_in_only_when_on():
    assert Tokenizer(tokenizer_config(_train_cfg(0.0))).hash.startswith(COARSE_HASH)
    assert tokenizer_config(_train_cfg(0.25)).infill_tokens is True
    with pytest.raises(ValueError, match="data.infill_share"):
        remi.corpus.datasets.DataConfig(infill_share=1.5)


def test_the_shard_key_ignores_the_share():
    from remi.corpus.datasets import DataConfig
    from remi.corpus.prepare import shard_key

    tok = coarse()
    assert shard_key(tok, DataConfig(), []) == shard_key(tok, DataConfig(infill_share=0.5), [])
    assert shard_key(tok, DataConfig(), []) != shard_key(tok, DataConfig(val_fraction=0.1), [])


# ------------------------------------------------------------------------------- training rows

S, M, E, BAR, EOS, PAD = 900, 901, 902, 4, 2, 0


def corpus(n_songs: int = 30, seed: int = 0) -> np.ndarray:
    """Songs BOS (Bar x x ...)* EOS of random bar lengths over ids 10..99, concatenated."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_songs):
        out.append(1)
        for _ in range(rng.integers(2, 12)):
            out += [BAR] + rng.integers(10, 100, size=rng.integers(0, 9)).tolist()
        out.append(EOS)
    return np.array(out, dtype=np.int64)


def test_a_rewritten_window_is_prefix_start_suffix_middle_of_whole_bars_end():
    rule = Infill(S, M, E, bar=BAR, eos=EOS, pad=PAD)
    tokens, rng, seen = corpus(), np.random.default_rng(1), 0
    for start in range(0, len(tokens) - 33, 7):
        w = tokens[start:start + 33]
        done = rule.rewrite(w.copy(), rng)
        piece = w[: list(w).index(EOS) + 1] if EOS in w else w
        if done is None:  # only a piece without two bar lines (an EOS counts as one) has no middle
            assert np.count_nonzero(piece == BAR) + (EOS in w) < 2
            continue
        row, ignored = done
        seen += 1
        r = row.tolist()
        i, j, k = r.index(S), r.index(M), r.index(E)
        prefix, suffix, middle = r[:i], r[i + 1:j], r[j + 1:k]
        assert 1 <= middle.count(BAR) <= rule.max_bars and middle[0] == BAR
        assert suffix[0] in (BAR, EOS)  # the middle ends at a bar line or at the piece's end
        whole = prefix + middle + suffix
        text = " ".join(map(str, w.tolist()))
        assert " ".join(map(str, whole)) in text  # one contiguous stretch of the window, in order
        assert all(t == PAD for t in r[k + 1:])
        assert ignored.tolist() == [t in (S, M) or n >= k for n, t in enumerate(r[1:])]
    assert seen > 50


def test_a_share_of_zero_keeps_the_stream_and_a_share_rewrites_that_share():
    tokens = corpus(200)
    starts = np.flatnonzero(tokens == 1)
    kw = dict(block_size=32, batch_size=64, seed=3, song_starts=starts, song_start_share=0.1)
    before = TrainWindows(tokens, **kw)
    rule = Infill(S, M, E, bar=BAR, eos=EOS, pad=PAD)
    zero = TrainWindows(tokens, **kw, infill_share=0.0, infill=rule)
    half = TrainWindows(tokens, **kw, infill_share=0.5, infill=rule)
    for k in range(5):
        (x0, y0), (x1, y1) = before.batch(k), zero.batch(k)
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
        xh, yh = half.batch(k)
        assert torch.equal(xh, half.batch(k)[0])  # a pure function of the position
        rewritten = (xh == M).any(dim=1)
        assert 0.2 < rewritten.float().mean() < 0.8
        same = ~rewritten
        assert torch.equal(xh[same][:, 1:], yh[same][:, :-1])  # untouched rows are plain windows
        assert (yh[rewritten] == -1).any(dim=1).all()
    with pytest.raises(ValueError, match="infill_share"):
        TrainWindows(tokens, **kw, infill_share=0.5)


# ------------------------------------------------------------------------------- infilling


def infill_checked(lm: PianoLM, src, bars, seed: int = 0) -> tuple[remi.Score, list[int]]:
    """Infill `src` and assert what must hold: notes outside exact, bar grid and count kept."""
    tok = lm.tokenizer
    ids = tok.encode(src)
    out = lm.infill(src, bars=bars, seed=seed)
    new = lm.last[0]["ids"]
    a, b = bars
    span = bar_span_ticks(tok, ids, a, b)
    assert bar_span_ticks(tok, new, a, b) == span
    assert count_bars(tok, new) == count_bars(tok, ids)
    for kept, got in zip(notes_outside(tok.decode_score(ids), *span), notes_outside(out, *span)):
        assert np.array_equal(kept, got)
    assert [t.tick for t in out.time_signatures] == [t.tick for t in tok.decode_score(ids).time_signatures]
    return out, new


def test_the_bars_outside_are_kept_and_the_same_seed_gives_the_same_piece():
    tok = coarse(infill_tokens=True, key_tokens=True)
    lm = tiny_lm(tok)
    score = melody(8)
    out, new = infill_checked(lm, score, (3, 5))
    again = lm.infill(score, bars=(3, 5), seed=0)
    assert lm.ids(again) == lm.ids(out)
    other = lm.infill(score, bars=(3, 5), seed=1)
    assert lm.ids(other) != lm.ids(out)
    keys = {t for t in tok.tokens(new) if t.startswith("Key_")}
    assert len(keys) == 1  # the middle states the piece's key
    infill_checked(lm, score, (1, 1))  # the first bar
    infill_checked(lm, score, (8, 8))  # the last bar: the middle ends the piece
    infill_checked(lm, score, (1, 8))  # all of it


def test_a_held_note_is_not_struck_again_before_it_ends():
    tok = coarse(infill_tokens=True)
    score = melody(6, held=(50, 8))  # pitch 50 sounds from bar 1 into bar 3
    p = inf.plan(tok, tok.encode(score), (2, 3), 512)
    pitch50 = tok.vocab.first[remi.vocab.PITCH] + 50 - tok.config.pitch_range[0]
    q = tok.quantize(score)
    end50 = int(q.notes[q.notes[:, 2] == 50][0, 1])
    assert p.held == {pitch50: end50} and p.bar_ticks[1][0] < end50  # held into bar 3
    mask = inf.middle_mask(tok, p, prompt_len=len(p.context))
    pos = tok.vocab.first[remi.vocab.POSITION]
    bar_and_meter = [tok.bar_id, p.timesigs[0]]
    at_start = mask(torch.tensor([p.context + bar_and_meter + [pos]]))[0]
    assert not at_start[pitch50] and at_start[pitch50 + 1]
    # in the 2nd middle bar (bar 3) it still holds; a held note ending inside the middle frees it there
    late = mask(torch.tensor([p.context + bar_and_meter + [tok.bar_id, p.timesigs[1], pos + 8]]))[0]
    assert not late[pitch50]
    q = inf.plan(tok, tok.encode(melody(6, held=(50, 7))), (2, 3), 512)  # ends at bar 3's start
    free = inf.middle_mask(tok, q, prompt_len=len(q.context))(
        torch.tensor([q.context + bar_and_meter + [tok.bar_id, q.timesigs[1], pos]]))[0]
    assert free[pitch50]
    for seed in range(3):
        infill_checked(tiny_lm(tok, seed=seed), score, (2, 3))


def test_the_middle_has_its_bars_its_meters_and_ends_only_where_a_piece_may():
    tok = coarse(infill_tokens=True)
    score = melody(6)
    p = inf.plan(tok, tok.encode(score), (2, 3), 512)
    mask = inf.middle_mask(tok, p, prompt_len=len(p.context))
    _, _, e = tok.infill_ids
    first = mask(torch.tensor([p.context]))[0]
    assert first.nonzero().flatten().tolist() == [tok.bar_id]
    after_bar = mask(torch.tensor([p.context + [tok.bar_id]]))[0]
    assert after_bar.nonzero().flatten().tolist() == [p.timesigs[0]]
    one_bar = mask(torch.tensor([p.context + [tok.bar_id, p.timesigs[0]]]))[0]
    assert not one_bar[e] and one_bar[tok.bar_id] and not one_bar[tok.eos_id]
    two_bars = mask(torch.tensor([p.context + [tok.bar_id, p.timesigs[0], tok.bar_id, p.timesigs[1]]]))[0]
    assert two_bars[e] and not two_bars[tok.bar_id]


def test_a_tempo_changed_inside_the_middle_is_restated_for_the_bars_after():
    tok = coarse(infill_tokens=True)
    score = melody(6, tempo_at={0: 100.0, 2: 160.0})  # the tempo changes in bar 3
    ids = tok.encode(score)
    p = inf.plan(tok, ids, (3, 4), 512)
    plain = [tok.bar_id, p.timesigs[0], tok.bar_id, p.timesigs[1]]  # two empty bars, no tempo
    new, stop = inf.assemble(tok, p, plain + [tok.infill_ids[2]])
    assert stop == "infill_end"
    before, after = tok.decode_score(ids), tok.decode_score(new)
    t1 = bar_span_ticks(tok, ids, 3, 4)[1]
    late = before.notes[before.notes[:, 0] >= t1][:, 0]
    secs = lambda s: [round(ticks_to_seconds(int(t), s.ticks_per_beat, s.tempos) - ticks_to_seconds(  # noqa: E731
        t1, s.ticks_per_beat, s.tempos), 6) for t in late]
    assert secs(before) == secs(after)  # the bars after play at the tempo they had
    assert len(new) == len(ids) - (p.end - p.start) + len(plain) + 1  # one Tempo token added, nothing else


def test_bad_requests_get_one_clear_error_each():
    tok = coarse(infill_tokens=True)
    lm, score = tiny_lm(tok), melody(8)
    with pytest.raises(InputError, match=r"outside the piece: it has 8 bars; choose a range within 1..8"):
        lm.infill(score, bars=(7, 9))
    with pytest.raises(InputError, match=r"outside the piece"):
        lm.infill(score, bars=(0, 2))
    with pytest.raises(InputError, match=r"is empty"):
        lm.infill(score, bars=(5, 3))
    with pytest.raises(InputError, match=r"first and last bar"):
        lm.infill(score, bars=(5,))
    with pytest.raises(InputError, match=r"do not fit the model's context of 48 tokens; choose fewer bars"):
        tiny_lm(tok, block_size=48).infill(score, bars=(2, 7))
    with pytest.raises(InputError, match=r"trained without infilling"):
        tiny_lm(coarse()).infill(score, bars=(2, 3))
    with pytest.raises(InputError, match=r"trained without infilling"):
        tiny_lm(tok, run={"data": {"infill_share": 0.0}}).infill(score, bars=(2, 3))
    with pytest.raises(InputError, match=r"does not exist"):
        lm.infill("no/such.mid", bars=(2, 3))
    assert inf.parse_bars("9-12") == (9, 12) and inf.parse_bars([9, 12]) == (9, 12)


def test_context_too_long_for_the_window_is_trimmed_by_whole_bars():
    tok = coarse(infill_tokens=True)
    score = melody(40)
    lm = tiny_lm(tok, block_size=128)
    p = inf.plan(tok, tok.encode(score), (20, 20), 128)
    s, m, _ = tok.infill_ids
    assert len(p.context) + p.budget == 128
    prefix = p.context[: p.context.index(s)]
    suffix = p.context[p.context.index(s) + 1: p.context.index(m)]
    assert prefix[0] == tok.bar_id and suffix[0] == tok.bar_id  # cut at bar lines
    assert 1 <= count_bars(tok, prefix) < 19 and 1 <= count_bars(tok, suffix) < 20
    infill_checked(lm, score, (20, 20))


# ------------------------------------------------------------------------------- real files


def _real_files_checked(files: list[Path]) -> None:
    tok = coarse(infill_tokens=True, key_tokens=True)
    lm = tiny_lm(tok, block_size=512)
    checked = too_long = 0
    for i, f in enumerate(files):
        try:
            ids = tok.encode(f)
        except remi.MidiReadError:
            continue
        n = count_bars(tok, ids)
        if n < 3 or tok.count_notes(ids) == 0:
            continue
        a = 2 + i % (n - 2)
        try:
            infill_checked(lm, f, (a, min(n, a + i % 2)), seed=i)
        except InputError as e:
            assert "do not fit" in str(e), f"{f}: {e}"
            too_long += 1
            continue
        checked += 1
    assert checked >= 0.9 * (checked + too_long) and checked > 0


def test_outside_the_bars_every_50th_real_file_keeps_its_notes(shared_midi):
    _real_files_checked(shared_midi_files()[::50])


@pytest.mark.slow
def test_outside_the_bars_every_real_file_keeps_its_notes(shared_midi):
    _real_files_checked(shared_midi_files())
