"""tokenizer.key_tokens: a Key token (the piece's key) after every bar's meter.

The key is found by Krumhansl-Schmuckler over the quantized notes; these tests check it against
`remi.keys.find_key` (the metrics' own key finder) run on the decoded score, the token layout,
the grammar, exact round trips, re-keying of prompts and the transposition of Key ids.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import remi
from remi import Tokenizer, TokenizerConfig
from remi.bars import cut_bars
from remi.keys import Key, find_key
from remi.score import Score

ROOT = Path(__file__).resolve().parents[1]
TPB = 480


def coarse(**changes) -> Tokenizer:
    return Tokenizer(dataclasses.replace(TokenizerConfig.from_yaml(ROOT / "conf/tokenizer/coarse.yaml"), **changes))


def cadences(*keys: tuple[int, bool], bars_each: int = 2) -> Score:
    """I-IV-V-I block chords (two beats each) per key, one key after another: 2 bars per key in 4/4."""
    rows, t = [], 0
    for tonic, minor in keys:
        third = 3 if minor else 4
        for chord in ([0, third, 7], [5, 5 + third, 12], [7, 11, 14], [0, third, 7]):
            rows += [(t, t + 2 * TPB, 60 + tonic + p, 80) for p in chord]
            t += 2 * TPB
    return Score.from_notes(rows, ticks_per_beat=TPB)


def key_tokens(tok: Tokenizer, ids) -> list[str]:
    return [t for t in tok.tokens(ids) if t.startswith("Key_")]


def test_off_by_default_and_the_old_hash_and_ids_are_kept():
    off, on = coarse(), coarse(key_tokens=True)
    assert "key_tokens" not in off.config.to_dict()                # configs written before it hash as they did
    assert off.config.hash() != on.config.hash() and off.hash != on.hash
    assert on.base_vocab_size == off.base_vocab_size + 24
    assert on.vocab.tokens[: off.base_vocab_size] == off.vocab.tokens  # the block comes last: no id moves
    assert on.vocab.tokens[-24:][:2] == ("Key_C", "Key_C#") and on.vocab.tokens[-1] == "Key_Bm"
    assert TokenizerConfig.from_dict(on.config.to_dict()) == on.config
    with pytest.raises(ValueError, match="key_tokens"):
        TokenizerConfig(key_tokens="yes")
    with pytest.raises(ValueError, match="no Key tokens"):
        off.key_id(0)


@pytest.mark.parametrize("tonic,minor", [(0, False), (9, True), (2, False), (7, True), (10, False)])
def test_every_bar_states_the_key_the_metrics_find(tonic, minor):
    tok = coarse(key_tokens=True)
    score = cadences((tonic, minor), (tonic, minor))
    ids = tok.encode_score(score)
    names = tok.tokens(ids)
    bars = [i for i, t in enumerate(names) if t == "Bar_None"]
    assert len(bars) == 4
    for b in bars:                                                 # Bar, TimeSig, Key, then the bar's events
        assert names[b + 1].startswith("TimeSig_") and names[b + 2].startswith("Key_")
    found = find_key(tok.decode_score(ids))
    assert found == Key(tonic, minor)
    assert set(key_tokens(tok, ids)) == {tok.vocab.tokens[tok.key_id(found)]}
    assert tok.token_errors(ids) == 0.0 and sum(remi.grammar.syntax_errors(tok.base_ids(ids), tok.vocab).values()) == 0


def test_decoding_ignores_the_key_and_round_trips_are_exact():
    on, off = coarse(key_tokens=True), coarse()
    score = cadences((2, False), (9, True))
    ids = on.encode_score(score)
    assert on.encode_score(on.decode_score(ids)) == ids
    np.testing.assert_array_equal(on.decode_score(ids).notes, off.decode_score(off.encode_score(score)).notes)
    stripped = [i for i in on.base_ids(ids).tolist() if on.vocab.types[i] != remi.vocab.KEY]
    assert stripped == off.encode_score(score)                     # the Key tokens are the only difference


def test_a_piece_without_notes_has_no_key_token():
    tok = coarse(key_tokens=True)
    empty = Score.from_notes(np.zeros((0, 4), dtype=np.int64), ticks_per_beat=TPB)
    assert key_tokens(tok, tok.encode_score(empty)) == []


def test_grammar_places_the_key_after_the_meter_only():
    tok = coarse(key_tokens=True)
    key_c = tok.key_id(0)
    state = tok.grammar_state([tok.bos_id, tok.bar_id])
    assert not tok.allowed_after_state(state)[key_c]              # after Bar comes the TimeSig
    ts = tok.ids_from_tokens(["TimeSig_4/4"])[0]
    state.step(ts)
    assert tok.allowed_after_state(state)[key_c]
    pos = tok.ids_from_tokens(["Position_0"])[0]
    good = [tok.bos_id, tok.bar_id, ts, key_c, pos]
    assert tok.token_errors(good) == 0.0
    assert tok.token_errors([tok.bos_id, tok.bar_id, ts, pos, key_c]) > 0  # a Key inside the bar breaks it
    no_ts = Tokenizer(dataclasses.replace(tok.config, use_time_signatures=False))
    assert no_ts.token_errors([no_ts.bos_id, no_ts.bar_id, no_ts.key_id(3), no_ts.ids_from_tokens(["Position_0"])[0]]) == 0.0


def test_a_prompt_cut_from_a_piece_is_keyed_to_its_own_notes():
    tok = coarse(key_tokens=True)
    # 6 bars of G major then 2 of D minor: the whole piece is G major, its last two bars D minor
    score = cadences((7, False), (7, False), (7, False), (2, True))
    ids = tok.encode_score(score)
    assert set(key_tokens(tok, ids)) == {"Key_G"}
    prompt, n = cut_bars(tok, ids, 6)
    assert n == 6 and set(key_tokens(tok, prompt)) == {"Key_G"}
    # the same piece but with D minor first: the 2-bar prompt says D minor, not the piece's key
    ids = tok.encode_score(cadences((2, True), (7, False), (7, False), (7, False)))
    prompt, _ = cut_bars(tok, ids, 2)
    assert set(key_tokens(tok, prompt)) == {"Key_Dm"} and set(key_tokens(tok, ids)) == {"Key_G"}
    assert tok.set_key(ids, Key(9, True)) != ids and set(key_tokens(tok, tok.set_key(ids, 21))) == {"Key_Am"}
    off = coarse()
    plain = off.encode_score(score)
    assert off.set_key(plain) == plain                             # nothing to re-key


def test_set_key_works_through_bpe():
    tok = coarse(key_tokens=True)
    pieces = [tok.encode_score(cadences((t, False), (t, False)))[1:-1] for t in range(4)]
    bpe = tok.train_bpe(pieces, tok.base_vocab_size + 12)
    ids = bpe.encode_score(cadences((2, True), (7, False), (7, False), (7, False)))
    prompt, _ = cut_bars(bpe, ids, 2)
    names = [t for t in tok.tokens(bpe.base_ids(prompt).tolist()) if t.startswith("Key_")]
    assert set(names) == {"Key_Dm"}


def test_transposition_moves_key_tokens_with_the_pitches():
    from model.data import transpose_windows
    tok = coarse(key_tokens=True)
    first, last = tok.pitch_id_range
    kf = tok.key_id(0)
    ids = np.array([tok.encode_score(cadences((10, False), (10, False)))] * 64, dtype=np.int64)
    out = transpose_windows(ids, np.random.default_rng(0), 5, first, last, key_first=kf)
    shifts = set()
    for row, new in zip(ids, out):
        is_pitch = (row >= first) & (row <= last)
        shift = int((new - row)[is_pitch][0])
        shifts.add(shift)
        is_key = (row >= kf) & (row < kf + 24)
        for a, b in zip(row[is_key], new[is_key]):
            old, moved = int(a - kf), int(b - kf)
            assert moved // 12 == old // 12 and (old + shift) % 12 == moved % 12
        np.testing.assert_array_equal(new[~is_pitch & ~is_key], row[~is_pitch & ~is_key])
    assert len(shifts) >= 8 and any((s + 10) % 12 < 10 for s in shifts)  # wraps past B
    # and each transposed window says the key its notes are in
    for row in out[:8]:
        moved = tok.decode_score(row.tolist())
        assert tok.vocab.tokens[int(row[(row >= kf) & (row < kf + 24)][0])] == tok.vocab.tokens[tok.key_id(find_key(moved))]


def test_window_config_passes_the_key_ids_to_the_transposition():
    from omegaconf import OmegaConf

    from pianolm.training import window_config
    from tests.test_training import cfg_of
    cfg = cfg_of("scale=tiny", "model.block_size=8", "augment.transpose=3", "tokenizer.key_tokens=true")
    tok = Tokenizer(TokenizerConfig(**OmegaConf.to_container(cfg.tokenizer, resolve=True)))
    wc = window_config(cfg, tok)
    assert tok.tokens([wc.key_first]) == ["Key_C"]
    assert window_config(cfg_of("scale=tiny", "augment.transpose=3"), coarse()).key_first is None


def test_a_fixed_key_is_told_to_a_model_with_key_tokens():
    import torch

    from model import GPT, GPTConfig
    from pianolm import control as ctl
    from pianolm.generate import Sampling, sample_ids
    tok = coarse(key_tokens=True)
    control = ctl.fixed(tok, key="D minor", key_penalty=0.0)
    dm = tok.key_id(Key(2, True))
    keys = np.flatnonzero(tok.vocab.types == remi.vocab.KEY)
    assert control.banned[keys].sum() == 23 and not control.banned[dm]
    assert ctl.fixed(coarse(), key="D minor").banned.sum() == 0     # without key tokens: the soft bias only
    prompt, _ = cut_bars(tok, tok.encode_score(cadences((7, False), (7, False))), 2)
    told = control.tell(tok, prompt)
    assert set(key_tokens(tok, told)) == {"Key_Dm"} and len(told) == len(prompt)
    # a random model writes Key tokens; with the control every one names D minor
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    likely = torch.zeros(tok.vocab_size)
    likely[keys] = 6.0                                               # Key tokens likely wherever allowed
    s = Sampling(temperature=1.0, grammar=True, max_new_tokens=120, max_bars=6)
    gen = torch.Generator().manual_seed(0)
    rows = sample_ids(gpt, tok, told, 4, s, gen, continue_bars=True, allowed=control.allowed(tok, len(told)),
                      logit_bias=likely)
    written = [t for ids, _ in rows for t in key_tokens(tok, ids[len(told):])]
    assert written and set(written) == {"Key_Dm"}
    free = sample_ids(gpt, tok, told, 4, s, torch.Generator().manual_seed(0), continue_bars=True, logit_bias=likely)
    assert len({t for ids, _ in free for t in key_tokens(tok, ids[len(told):])}) > 1   # the control is what held it


def test_miditok_export_refuses_key_tokens():
    from remi.miditok_export import miditok_params
    with pytest.raises(ValueError, match="Key tokens"):
        miditok_params(coarse(key_tokens=True))
    assert miditok_params(coarse())["_vocab_base"]["Bar_None"] == coarse().bar_id


def test_both_decoders_skip_key_tokens_wherever_they_stand():
    from remi.decode import ids_to_score, ids_to_score_loop
    tok = coarse(key_tokens=True)
    rng = np.random.default_rng(0)
    ids = np.array(tok.encode_score(cadences((4, False), (9, True))))
    for _ in range(50):                                            # Key ids dropped in at random places
        at = np.sort(rng.choice(len(ids), size=6, replace=False))
        noisy = np.insert(ids, at, tok.key_id(0) + rng.integers(0, 24, size=6))
        a, b = ids_to_score(noisy, tok.vocab), ids_to_score_loop(noisy, tok.vocab)
        np.testing.assert_array_equal(a.notes, b.notes)
        assert a.tempos == b.tempos and a.time_signatures == b.time_signatures
    random_ids = rng.integers(0, tok.base_vocab_size, size=(40, 150))
    for row in random_ids:
        a, b = ids_to_score(row, tok.vocab), ids_to_score_loop(row, tok.vocab)
        np.testing.assert_array_equal(a.notes, b.notes)
