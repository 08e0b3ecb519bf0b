"""remi.bpe: merges learned inside bars, exact inverse on any sequence, plain-data round trip."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import remi
from remi import shards
from remi.__main__ import bpe_info_main
from remi.bpe import BPEModel, train_bpe
from remi.bpe_info import bpe_info
from tests.conftest import ROOT, shared_midi_files

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


# ---- with the real tokenizer, real MIDI, shards and corpus preparation --------------------------

def coarse() -> remi.Tokenizer:
    return remi.Tokenizer.from_yaml(ROOT / "conf" / "tokenizer" / "coarse.yaml")


def encode_real_files(at_most: int | None = None) -> list[list[int]]:
    """Base ids of the readable shared MIDI files in sorted order (the first `at_most` of them)."""
    files = shared_midi_files()
    if not files:
        pytest.skip("../shared/midi is absent: the real-MIDI BPE checks need it")
    tok, out = coarse(), []
    for p in files:
        if at_most is not None and len(out) == at_most:
            break
        try:
            out.append(tok.encode(p))
        except remi.MidiReadError:
            continue
    return out


@pytest.fixture(scope="module")
def real_base_ids() -> list[list[int]]:
    return encode_real_files()


@pytest.fixture(scope="module")
def real_bpe_tok(real_base_ids):
    return coarse().train_bpe(real_base_ids[::2], 800)  # half the files: the rest are unseen


@pytest.mark.slow  # encodes every shared MIDI file and trains BPE on half of them
@pytest.mark.shared_midi
def test_exact_inverse_on_every_shared_midi_file(real_bpe_tok, real_base_ids):
    bpe = real_bpe_tok.bpe
    tok = coarse()
    assert bpe.base_vocab_size == tok.base_vocab_size and real_bpe_tok.vocab_size == 800
    bar, n_base, n_merged = tok.bar_id, 0, 0
    for ids in real_base_ids:
        merged = bpe.encode(ids)
        assert bpe.decode(merged) == ids
        assert all(bar not in bpe.expand(t)[1:] for t in merged)
        n_base, n_merged = n_base + len(ids), n_merged + len(merged)
    assert n_base / n_merged > 1.3  # real REMI bars repeat enough for BPE to pay


@pytest.mark.shared_midi
@pytest.mark.slow  # shares the fixture above
def test_tokenizer_with_bpe_saves_loads_and_decodes_merged_ids(real_bpe_tok, tmp_path):
    path = shared_midi_files("tegridy-piano")[0]
    merged = real_bpe_tok.encode(path)
    base = coarse().encode(path)
    assert len(merged) < len(base) and real_bpe_tok.bpe.decode(merged) == base
    real_bpe_tok.save(tmp_path / "tok.json")
    loaded = remi.Tokenizer.load(tmp_path / "tok.json")
    assert loaded.hash == real_bpe_tok.hash != coarse().hash
    assert loaded.encode(path) == merged
    # The REMI side sees the same music through merged ids.
    assert loaded.count_notes(merged) == coarse().count_notes(base)
    assert np.array_equal(loaded.decode_score(merged).notes, coarse().decode_score(base).notes)
    assert "+".join(loaded.tokens(merged)) == "+".join(coarse().tokens(base))


def write_base_shards(folder, tok, songs):
    """A minimal base-token shard folder (train = first songs, val = the rest)."""
    k = len(songs) * 3 // 4
    splits = {"train": ([np.asarray(s) for s in songs[:k]], [0] * k),
              "val": ([np.asarray(s) for s in songs[k:]], [0] * (len(songs) - k))}
    return shards.write_shards(folder, splits, tok.vocab_size, {"tokenizer": tok.to_dict(), "tokenizer_hash": tok.hash})


@pytest.mark.shared_midi
def test_training_from_a_shard_folder_streams_the_train_split(tmp_path, capsys):
    tok, songs = coarse(), encode_real_files(40)  # not the whole-corpus fixture: 40 songs are enough
    folder = write_base_shards(tmp_path / "base", tok, songs)
    from_dir = tok.train_bpe(folder, vocab_size=600)
    from_seqs = tok.train_bpe(songs[:30], 600)
    assert from_dir.hash == from_seqs.hash and from_dir.bpe.stats["n_sequences"] == 30

    other = remi.Tokenizer.from_yaml(ROOT / "conf" / "tokenizer" / "fine.yaml")  # different base ids
    with pytest.raises(ValueError, match="base-token shards"):
        other.train_bpe(folder, 600)

    info = bpe_info(from_dir, folder, top=5)
    val = songs[30:]
    expect = sum(map(len, val)) / sum(len(from_dir.bpe.encode(s)) for s in val)
    assert info["split"]["shards"] == "base" and info["split"]["compression"] == pytest.approx(expect, abs=1e-4)
    assert 0 < info["split"]["merged_tokens_used"] <= 600 - tok.base_vocab_size
    counts = [m["count"] for m in info["top_merges"]]
    assert counts == sorted(counts, reverse=True) and all("_" in t for t in info["top_merges"][0]["tokens"])

    from_dir.save(tmp_path / "bpe.json")
    assert bpe_info_main([str(tmp_path / "bpe.json"), str(folder), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert f"compression {expect:.3f}" in out and "top 3 merged tokens" in out


@pytest.mark.shared_midi
@pytest.mark.slow
def test_bpe_on_and_off_configs_prepare_shards_shorter_by_the_reported_factor(tmp_path):
    from remi.corpus.prepare import prepare_for_training

    folder = ROOT.parent / "shared" / "midi" / "tegridy-piano"
    if not shared_midi_files("tegridy-piano"):
        pytest.skip("../shared/midi/tegridy-piano is absent")
    data = {"name": "tegridy", "sources": [str(folder)], "limit": 40, "val_fraction": 0.25, "test_fraction": 0.1}
    off = coarse()
    on = remi.Tokenizer(dataclasses.replace(off.config, bpe_vocab_size=500))
    tok_off, dir_off = prepare_for_training(data, off, None, tmp_path / "cache", workers=1, progress=False)
    tok_on, dir_on = prepare_for_training(data, on, None, tmp_path / "cache", workers=1, progress=False)
    assert tok_off.bpe is None and tok_on.bpe is not None and tok_on.vocab_size == 500
    info = bpe_info(tok_on, dir_on, split="val")["split"]
    assert info["shards"] == "bpe"
    for split in ("train", "val"):
        a, b = shards.load_split(dir_off, split), shards.load_split(dir_on, split)
        assert a.n_songs == b.n_songs > 0 and np.array_equal(a.notes, b.notes)
        assert tok_on.bpe.decode_array(np.asarray(b.tokens)).tolist() == np.asarray(a.tokens).tolist()
        if split == "val":
            assert a.n_tokens / b.n_tokens == pytest.approx(info["compression"], abs=1e-4) and info["compression"] > 1.2
    assert bpe_info(tok_on, dir_off, split="val")["split"]["compression"] == pytest.approx(info["compression"], abs=1e-4)


def test_base_ids_beyond_uint16_and_past_the_surrogate_block():
    # Ids above 0xD800 - 0x100 map past the UTF-16 surrogates; above 65535 words are held as int32.
    big = [70_000, 65_600, 55_300, 55_400]  # 55_300..55_400 land on the skipped surrogate range
    song = [BAR] + [big[0], big[1], big[2], big[3], 7] * 5
    m = train_bpe([song] * 4, 70_001, 70_004, {BAR}, SPECIALS)
    assert m.vocab_size == 70_004 and m.decode(m.encode(song)) == song
    assert len(m.encode(song)) < len(song)
    assert m.expand(70_001) in {(big[0], big[1]), (big[1], big[2]), (big[2], big[3])}
