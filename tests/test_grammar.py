"""The grammar table, token_errors and the allowed_next mask used to constrain sampling."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from remi import Tokenizer
from remi.grammar import follows_table
from remi.vocab import BAR, DURATION, PITCH, POSITION, TEMPO, TIMESIG, VELOCITY

ROOT = Path(__file__).resolve().parents[1]
TOK = Tokenizer.from_yaml(ROOT / "conf/tokenizer/coarse.yaml")


def ids(*tokens: str) -> list[int]:
    return TOK.ids_from_tokens(list(tokens))


def test_table_is_remi_order():
    t = follows_table(TOK.vocab)
    assert t[BAR] == (TIMESIG,) and set(t[POSITION]) == {TEMPO, PITCH}
    assert t[PITCH] == (VELOCITY,) and t[VELOCITY] == (DURATION,)
    no_ts = Tokenizer.from_yaml(ROOT / "conf/tokenizer/coarse.yaml").config.__class__(use_time_signatures=False)
    assert set(follows_table(Tokenizer(no_ts).vocab)[BAR]) == {POSITION, BAR}


def test_token_errors_counts_each_rule():
    good = ids("BOS_None", "Bar_None", "TimeSig_4/4", "Position_0", "Pitch_60", "Velocity_63", "Duration_0.1.4",
               "Position_3", "Pitch_62", "Velocity_63", "Duration_0.1.4", "EOS_None")
    assert TOK.token_errors(good) == 0.0
    no_position = ids("Bar_None", "TimeSig_4/4", "Pitch_60", "Velocity_63", "Duration_0.1.4")
    assert TOK.token_errors(no_position) == pytest.approx(3 / 5)  # Pitch, then its orphans
    backwards = ids("Bar_None", "TimeSig_4/4", "Position_3", "Pitch_60", "Velocity_63", "Duration_0.1.4",
                    "Position_2", "Pitch_60", "Velocity_63", "Duration_0.1.4")
    assert TOK.token_errors(backwards) > 0
    outside_bar = ids("Bar_None", "TimeSig_3/4", "Position_12", "Pitch_60", "Velocity_63", "Duration_0.1.4")
    assert TOK.token_errors(outside_bar) > 0  # 3/4 at 4 per beat has positions 0..11
    descending = ids("Bar_None", "TimeSig_4/4", "Position_0", "Pitch_62", "Velocity_63", "Duration_0.1.4",
                     "Pitch_60", "Velocity_63", "Duration_0.1.4")
    assert TOK.token_errors(descending) > 0


def test_error_kinds_name_the_rule_each_error_breaks():
    from remi.grammar import ERROR_KINDS

    def kinds(*tokens):
        counts = TOK.error_kinds(ids(*tokens))
        assert set(counts) == set(ERROR_KINDS)
        assert sum(counts.values()) == round(TOK.token_errors(ids(*tokens)) * sum(
            not t.startswith(("BOS", "EOS", "PAD")) for t in tokens))
        return {k: v for k, v in counts.items() if v}

    # A piece that starts without a Bar: every musical token waits for one.
    assert kinds("BOS_None", "Pitch_60", "Velocity_63", "Duration_0.1.4", "Bar_None", "TimeSig_4/4") == \
        {"no bar yet": 3}
    assert kinds("Bar_None", "TimeSig_4/4", "Position_0", "Pitch_60", "Velocity_63", "Velocity_63",
                 "Duration_0.1.4") == {"type": 1}
    assert kinds("Bar_None", "TimeSig_4/4", "Position_3", "Pitch_60", "Velocity_63", "Duration_0.1.4",
                 "Position_2") == {"position": 1}
    descending = kinds("Bar_None", "TimeSig_4/4", "Position_0", "Pitch_62", "Velocity_63", "Duration_0.1.4",
                       "Pitch_60", "Velocity_63", "Duration_0.1.4")
    assert descending["pitch order"] == 1  # then its Velocity and Duration follow a Duration: type errors
    assert kinds("Bar_None", "TimeSig_4/4", "EOS_None", "Bar_None") == {"after end": 1}


def test_syntax_errors_count_one_per_token_as_miditok_does():
    from remi.grammar import SYNTAX_KINDS, syntax_error_rate, syntax_errors

    def kinds(*tokens):
        counts = syntax_errors(ids(*tokens), TOK.vocab)
        assert set(counts) == set(SYNTAX_KINDS)
        return {k: v for k, v in counts.items() if v}

    good = ("BOS_None", "Bar_None", "TimeSig_4/4", "Position_0", "Pitch_60", "Velocity_63", "Duration_0.1.4",
            "Pitch_64", "Velocity_63", "Duration_0.1.4", "Position_3", "Pitch_62", "Velocity_63",
            "Duration_0.1.4", "Bar_None", "TimeSig_4/4", "Position_0", "Pitch_60", "Velocity_63",
            "Duration_0.1.4", "EOS_None")
    assert kinds(*good) == {}
    # a stray Velocity costs one error (the strict grammar also skips its neighbours' state)
    assert kinds("Bar_None", "TimeSig_4/4", "Position_0", "Pitch_60", "Velocity_63", "Velocity_63",
                 "Duration_0.1.4") == {"type": 1}
    assert kinds("Bar_None", "TimeSig_4/4", "Position_3", "Pitch_60", "Velocity_63", "Duration_0.1.4",
                 "Position_3", "Pitch_62", "Velocity_63", "Duration_0.1.4") == {"time": 1}
    assert kinds("Bar_None", "TimeSig_4/4", "Position_0", "Pitch_60", "Velocity_63", "Duration_0.1.4",
                 "Pitch_60", "Velocity_63", "Duration_0.1.4") == {"duplicate": 1}
    # descending pitches at one position decode to the same notes as ascending ones: no syntax error,
    # but the strict (canonical-order) grammar counts the Pitch and its two orphans
    down = ids("Bar_None", "TimeSig_4/4", "Position_0", "Pitch_62", "Velocity_63", "Duration_0.1.4",
               "Pitch_60", "Velocity_63", "Duration_0.1.4")
    up = ids("Bar_None", "TimeSig_4/4", "Position_0", "Pitch_60", "Velocity_63", "Duration_0.1.4",
             "Pitch_62", "Velocity_63", "Duration_0.1.4")
    assert kinds(*TOK.tokens(down)) == {}
    assert len(TOK.decode_score(down).notes) == 2
    assert np.array_equal(TOK.decode_score(down).notes, TOK.decode_score(up).notes)
    assert sum(TOK.error_kinds(down).values()) == 3
    assert syntax_error_rate(down, TOK.vocab) == 0.0
    assert syntax_error_rate(ids("Bar_None", "Velocity_63"), TOK.vocab) == pytest.approx(1 / 2)


# Where our type table is stricter than MidiTok's REMI graph: a Pitch right after a TimeSig (ours
# wants a Position first) and a TimeSig right after a Tempo (ours: only after a Bar).
STRICTER = {(TIMESIG, PITCH), (TEMPO, TIMESIG)}


def test_syntax_errors_equal_miditok_tokens_errors_on_random_sequences(tmp_path):
    """Parity with the peer: MidiTok's own `tokens_errors`, through a tokenizer file it loads with our
    ids (remi.miditok_export), on sequences with every kind of error; the two transitions our type
    table refuses and MidiTok's allows (STRICTER) can only make ours count more."""
    miditok = pytest.importorskip("miditok")
    from remi.grammar import syntax_errors
    from remi.miditok_export import save_miditok
    from remi.vocab import SPECIAL

    tok = Tokenizer.from_yaml(ROOT / "conf/tokenizer/miditok.yaml")
    theirs = miditok.REMI(params=save_miditok(tok, tmp_path / "tok.json"))
    musical = np.nonzero(tok.vocab.types != SPECIAL)[0]
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(40):
        # a grammatical skeleton, then random substitutions / swaps so every kind of error occurs
        seq = [tok.ids_from_tokens([t])[0] for t in ("Bar_None", "TimeSig_4/4")]
        for p in range(0, 16, 2):
            seq += tok.ids_from_tokens([f"Position_{p}", f"Pitch_{60 + p}", "Velocity_63", "Duration_0.1.8",
                                        f"Pitch_{67 + p}", "Velocity_63", "Duration_0.1.8"])
        for _ in range(int(rng.integers(1, 12))):
            k = int(rng.integers(1, len(seq)))
            if rng.random() < 0.5:
                seq[k] = int(rng.choice(musical))
            else:
                seq[k - 1], seq[k] = seq[k], seq[k - 1]
        ours = sum(syntax_errors(seq, tok.vocab).values())
        theirs_count = round(theirs.tokens_errors(miditok.TokSequence(ids=list(seq))) * len(seq))
        types = [int(tok.vocab.types[i]) for i in seq]
        if any(pair in STRICTER for pair in zip(types, types[1:])):
            assert ours > theirs_count  # our type table refuses these two transitions, MidiTok's allows them
        else:
            assert ours == theirs_count, (trial, tok.tokens(seq))
            checked += ours > 0
    assert checked >= 20  # the comparison saw errors, not only clean sequences


def test_mask_after_prefixes():
    m = TOK.allowed_next([TOK.bos_id])
    assert set(np.nonzero(m)[0]) == {TOK.bar_id, TOK.eos_id}
    m = TOK.allowed_next(ids("BOS_None", "Bar_None"))
    assert set(TOK.vocab.types[np.nonzero(m)[0]]) == {TIMESIG}
    m = TOK.allowed_next(ids("BOS_None", "Bar_None", "TimeSig_3/4", "Position_5"))
    allowed = {TOK.vocab.tokens[i] for i in np.nonzero(m)[0]}
    assert "Pitch_60" in allowed and "Position_6" not in allowed and not any(a.startswith("Bar") for a in allowed)
    m = TOK.allowed_next(ids("BOS_None", "Bar_None", "TimeSig_3/4", "Position_5", "Pitch_60", "Velocity_63",
                             "Duration_0.1.4"))
    allowed = {TOK.vocab.tokens[i] for i in np.nonzero(m)[0]}
    assert {"Position_6", "Position_11", "Bar_None", "Pitch_60", "EOS_None"} <= allowed
    assert not {"Position_5", "Position_12", "Pitch_59", "Velocity_63"} & allowed
    assert set(np.nonzero(TOK.allowed_next(ids("BOS_None", "EOS_None")))[0]) == {TOK.pad_id}


@pytest.mark.parametrize("seed", range(5))
def test_sequences_sampled_under_the_mask_decode_with_nothing_skipped(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    seq = [TOK.bos_id]
    for _ in range(300):
        m = TOK.allowed_next(seq)
        choices = np.nonzero(m)[0]
        choices = choices[choices != TOK.eos_id] if len(seq) < 250 else choices
        seq.append(int(rng.choice(choices)))
        if seq[-1] == TOK.eos_id:
            break
    while TOK.vocab.types[seq[-1]] in (PITCH, VELOCITY):  # cut at 300 inside a note group: no note yet
        seq.pop()
    assert TOK.token_errors(seq) == 0.0
    # Every note group becomes a note ...
    import remi.decode

    with monkeypatch.context() as m:
        m.setattr(remi.decode, "one_voice_per_pitch", lambda notes: notes)
        raw = TOK.decode_score(seq)
    assert len(raw) == TOK.count_notes(seq) > 0
    # ... and the one-voice rule then keeps one note per (onset, pitch): the grammar allows a pitch
    # twice at one position, a MIDI channel does not.
    score = TOK.decode_score(seq)
    assert len(score) == len(np.unique(raw.notes[:, [0, 2]], axis=0))


def test_incremental_state_gives_the_same_masks_as_allowed_next():
    from tests.test_tokenizer import small_midi

    seq = TOK.encode(small_midi())
    state = TOK.grammar_state()
    for k in range(len(seq)):
        np.testing.assert_array_equal(TOK.allowed_after_state(state), TOK.allowed_next(seq[:k]))
        assert TOK.allowed_next(seq[:k])[seq[k]]  # the encoder's own next token is always allowed
        state.step(seq[k])


def test_a_returned_mask_is_the_callers_own_and_copies_share_the_type_masks():
    from tests.test_tokenizer import small_midi

    seq = TOK.encode(small_midi())
    state = TOK.grammar_state(seq[:10])
    first = state.mask()
    first[:] = ~first  # a caller writing into its mask must not change the next step's
    np.testing.assert_array_equal(state.mask(), TOK.allowed_next(seq[:10]))
    twin = state.copy()
    assert twin.type_masks is state.type_masks
    twin.step(seq[10])
    np.testing.assert_array_equal(twin.mask(), TOK.allowed_next(seq[:11]))
    np.testing.assert_array_equal(state.mask(), TOK.allowed_next(seq[:10]))
