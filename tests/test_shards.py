"""remi.shards: the on-disk token format, its checks, and atomic writes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from remi import shards


def _write(tmp_path, vocab_size=300, seed=0, name="s"):
    rng = np.random.default_rng(seed)
    songs = {split: [rng.integers(0, vocab_size, size=rng.integers(2, 40)) for _ in range(n)] for split, n in
             [("train", 7), ("val", 2), ("test", 0)]}
    notes = {split: [int(len(s) // 3) for s in v] for split, v in songs.items()}
    d = shards.write_shards(tmp_path / name, {k: (songs[k], notes[k]) for k in songs}, vocab_size,
                            {"tokenizer_hash": "abc123", "key": "k1"})
    return d, songs, notes


def test_round_trip_songs_offsets_notes(tmp_path):
    d, songs, notes = _write(tmp_path)
    for split in shards.SPLITS:
        sh = shards.load_split(d, split, expect_hash="abc123")
        assert sh.n_songs == len(songs[split])
        assert sh.offsets[0] == 0 and len(sh.offsets) == len(songs[split]) + 1
        assert sh.tokens.dtype == np.uint16
        for i, s in enumerate(songs[split]):
            np.testing.assert_array_equal(sh.song(i), s)
        np.testing.assert_array_equal(sh.notes, notes[split])
    m = shards.read_manifest(d)
    assert m["splits"]["train"]["songs"] == 7 and m["dtype"] == "uint16"
    assert m["splits"]["train"]["tokens"] == sum(len(s) for s in songs["train"])


def test_large_vocab_uses_uint32(tmp_path):
    d, songs, _ = _write(tmp_path, vocab_size=70_000)
    sh = shards.load_split(d, "train")
    assert sh.tokens.dtype == np.uint32
    np.testing.assert_array_equal(sh.song(0), songs["train"][0])
    assert any(s.max() > 65535 for s in songs["train"])  # the ids really need 32 bits


def test_out_of_range_id_is_refused(tmp_path):
    with pytest.raises(ValueError, match="out of range"):
        shards.write_shards(tmp_path / "x", {"train": ([np.array([1, 70_000])], [1])}, 300, {})
    assert not (tmp_path / "x").exists()


def test_truncated_bin_is_an_error(tmp_path):
    d, _, _ = _write(tmp_path)
    b = d / "train.bin"
    b.write_bytes(b.read_bytes()[:-2])
    with pytest.raises(shards.ShardError, match="truncated"):
        shards.load_split(d, "train")
    assert not shards.is_complete(d)


def test_wrong_tokenizer_hash_is_an_error(tmp_path):
    d, _, _ = _write(tmp_path)
    with pytest.raises(shards.ShardError, match="tokenizer"):
        shards.load_split(d, "val", expect_hash="ffff")
    assert shards.is_complete(d, "abc123", "k1") and not shards.is_complete(d, "abc123", "k2")


def test_folder_without_manifest_is_not_a_shard(tmp_path):
    d, _, _ = _write(tmp_path)
    (d / shards.MANIFEST).unlink()
    with pytest.raises(shards.ShardError, match="not a complete shard"):
        shards.load_split(d, "train")


def test_failed_write_leaves_no_complete_folder_and_keeps_old(tmp_path):
    d, songs, _ = _write(tmp_path)
    before = json.loads((d / shards.MANIFEST).read_text())
    with pytest.raises(ValueError):
        shards.write_shards(d, {"train": ([np.array([1, 2]), np.array([10**6])], [1, 1])}, 300, {"tokenizer_hash": "new"})
    # the previous complete folder is untouched; no temporary folder looks complete
    assert json.loads((d / shards.MANIFEST).read_text()) == before
    np.testing.assert_array_equal(shards.load_split(d, "train").song(0), songs["train"][0])
    assert sorted(p.name for p in tmp_path.iterdir()) == [d.name]  # the temporary folder is gone
