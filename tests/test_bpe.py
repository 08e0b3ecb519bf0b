"""remi.bpe: merges learned inside bars, exact inverse on any sequence, plain-data round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remi.bpe import BPEModel, train_bpe

# A synthetic base vocabulary laid out like REMI's: specials first, then one Bar id, then the rest.
PAD, BOS, EOS, MASK, BAR = 0, 1, 2, 3, 4
SPECIALS = {PAD, BOS, EOS, MASK}
BASE = 120


def synthetic_corpus(n_songs: int = 60, seed: int = 0) -> list[list[int]]:
    """Songs of bars drawn from a few recurring motifs (so pairs repeat) plus random filler."""
    rng = np.random.default_rng(seed)
    motifs = [rng.integers(5, 60, size=rng.integers(2, 7)).tolist() for _ in range(12)]
    songs = []
    for _ in range(n_songs):
        song = [BOS]
        for _ in range(rng.integers(5, 30)):
            song.append(BAR)
            for _ in range(rng.integers(1, 4)):
                song.extend(motifs[rng.integers(len(motifs))] if rng.random() < 0.8 else rng.integers(5, 60, 3).tolist())
        song.append(EOS)
        songs.append(song)
    return songs


@pytest.fixture(scope="module")
def corpus() -> list[list[int]]:
    return synthetic_corpus()


@pytest.fixture(scope="module")
def model(corpus) -> BPEModel:
    return train_bpe(corpus, BASE, 300, word_start_ids={BAR}, never_merge_ids=SPECIALS)


def assert_merged_tokens_stay_in_bar(model: BPEModel, merged: list[int]) -> None:
    for t in merged:
        e = model.expand(t)
        assert BAR not in e[1:], f"merged token {t} = {e} crosses a bar line"
        if len(e) > 1:
            assert not set(e) & SPECIALS, f"merged token {t} = {e} contains a special token"


def test_trains_to_target_size_with_merged_ids_after_base(model, corpus):
    assert model.base_vocab_size == BASE and model.vocab_size == 300
    merged_seen = {t for s in corpus for t in model.encode(s) if t >= BASE}
    assert merged_seen, "no merged token used on its own training data"
    assert max(merged_seen) < model.vocab_size
    for t in range(BASE, model.vocab_size):
        assert len(model.expand(t)) >= 2
        assert all(0 <= i < BASE for i in model.expand(t))
    # Base ids are untouched: a sequence that cannot merge (specials only) encodes to itself.
    assert model.encode([BOS, PAD, MASK, EOS, EOS]) == [BOS, PAD, MASK, EOS, EOS]


def test_compresses_its_training_data_and_roundtrips_it(model, corpus):
    n_base = sum(len(s) for s in corpus)
    encoded = model.encode_batch(corpus)
    assert encoded == [model.encode(s) for s in corpus]
    assert [model.decode(e) for e in encoded] == corpus
    assert n_base / sum(len(e) for e in encoded) > 1.5  # motifs repeat, so BPE must shorten them
    for e in encoded:
        assert_merged_tokens_stay_in_bar(model, e)


def test_first_merge_is_the_most_frequent_pair_and_bar_never_ends_a_token():
    # Pairs: (5,6) x20 per song, (9,BAR) x10 — more frequent than anything but never mergeable.
    song = [BOS] + [BAR, 5, 6, 5, 6, 9] * 10 + [EOS]
    m = train_bpe([song] * 3, 10, 14, word_start_ids={BAR}, never_merge_ids=SPECIALS)
    assert m.merges[0] == (5, 6) and m.expand(10) == (5, 6)
    for a, b in m.merges:
        assert m.expand(b)[0] != BAR, f"merge {(a, b)} puts a Bar inside a token"
    enc = m.encode(song)
    assert m.decode(enc) == song and len(enc) < len(song) // 2
    assert_merged_tokens_stay_in_bar(m, enc)


def test_deterministic_training_and_plain_data_roundtrip(model, corpus):
    again = train_bpe(iter(corpus), BASE, 300, word_start_ids={BAR}, never_merge_ids=SPECIALS)
    assert again.hash == model.hash and again.merges == model.merges
    assert again.stats["n_sequences"] == len(corpus)
    assert again.stats["n_base_tokens"] == sum(len(s) for s in corpus)

    d = json.loads(json.dumps(model.to_dict()))  # JSON-able, survives a text round trip
    loaded = BPEModel.from_dict(d)
    assert loaded == model and loaded.hash == model.hash and loaded.vocab_size == model.vocab_size
    assert [loaded.encode(s) for s in corpus[:10]] == [model.encode(s) for s in corpus[:10]]

    d["merges"] = d["merges"][:-1]
    with pytest.raises(ValueError, match="inconsistent"):
        BPEModel.from_dict(d)


def test_hash_changes_with_the_merges(model):
    fewer = BPEModel(BASE, model.merges[:-1], {BAR}, SPECIALS)
    assert fewer.hash != model.hash and fewer.vocab_size == model.vocab_size - 1


def test_errors_name_the_bad_id(model):
    with pytest.raises(ValueError, match=f"id {BASE}"):
        model.encode([BOS, BASE, EOS])
    with pytest.raises(ValueError, match="id -1"):
        model.encode([-1])
    with pytest.raises(ValueError, match="id 300"):
        model.decode([5, 300])
    with pytest.raises(ValueError, match="must exceed"):
        train_bpe([[1, 2]], 10, 10, set(), set())
    with pytest.raises(ValueError, match="cross a word start"):
        BPEModel(10, [(5, BAR)], {BAR}, set())


def test_empty_and_unmergeable_inputs(model):
    assert model.encode([]) == [] and model.decode([]) == []
    tiny = train_bpe([[BAR], [BOS, EOS]], BASE, 200, {BAR}, SPECIALS)  # no pair to merge at all
    assert tiny.vocab_size == BASE
    assert tiny.encode([BAR, 7, 8]) == [BAR, 7, 8]


# Sequences the merges never saw: any base id in any order, with specials and bars sprinkled in.
sequences = st.lists(
    st.one_of(st.integers(0, BASE - 1), st.sampled_from(sorted(SPECIALS | {BAR})), st.integers(5, 20)),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(seq=sequences)
def test_decode_encode_is_identity_on_any_sequence(model, seq):
    merged = model.encode(seq)
    assert model.decode(merged) == seq
    assert all(0 <= t < model.vocab_size for t in merged)
    assert_merged_tokens_stay_in_bar(model, merged)
    # A Bar always begins a token, so every bar line in the input is a token boundary.
    assert sum(1 for t in merged if model.expand(t)[0] == BAR) == seq.count(BAR)


@settings(max_examples=100, deadline=None)
@given(seq=st.lists(st.sampled_from([BAR, 5, 6, 7, 8, BOS, EOS]), max_size=200))
def test_identity_on_dense_repeats_of_trained_symbols(model, seq):
    # Few symbols -> many trained merges apply, exercising overlapping-merge choices.
    assert model.decode(model.encode(np.array(seq, dtype=np.int64))) == seq
