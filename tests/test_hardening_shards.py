"""Damaged shards and caches (issue 15): every kind of damage is a ShardError naming the file,
and `remi.corpus.prepare` rebuilds what is damaged instead of reusing or crashing on it."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import remi
from remi import shards
from remi.corpus import prepare
from remi.corpus.datasets import DataConfig
from tests.midi_bytes import midi_file, note_events, track

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    return remi.Tokenizer.from_yaml(ROOT / "conf" / "tokenizer" / "coarse.yaml")


def _corpus(folder: Path, n: int = 8) -> Path:
    """n small distinct MIDI files (a scale from a different pitch each)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        notes = [(i * 240, i * 240 + 200, 48 + k + i, 80) for i in range(24)]
        (folder / f"piece{k}.mid").write_bytes(midi_file([track(note_events(notes))]))
    return folder


def _prepare(tmp_path: Path, tok, **kw) -> prepare.Prepared:
    cfg = DataConfig(name="small", sources=(str(tmp_path / "corpus"),), val_fraction=0.25, test_fraction=0.25)
    return prepare.prepare(cfg, tok, cache_dir=tmp_path / "cache", workers=1, progress=False, **kw)


@pytest.fixture
def prepared(tmp_path, tok):
    _corpus(tmp_path / "corpus")
    return _prepare(tmp_path, tok)


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _all_tokens(folder: Path) -> dict[str, np.ndarray]:
    return {s: np.array(shards.load_split(folder, s).tokens) for s in shards.SPLITS}


def _rebuilt_as_before(tmp_path, tok, prepared, good: dict) -> None:
    """The damaged folder is no longer complete, and preparing again rebuilds it in place with
    the same tokens as before the damage."""
    assert not shards.is_complete(prepared.dir)
    again = _prepare(tmp_path, tok)
    assert not again.reused and again.dir == prepared.dir
    for s, arr in _all_tokens(again.dir).items():
        np.testing.assert_array_equal(arr, good[s])


def test_a_flipped_byte_in_train_bin_is_refused_and_rebuilt(tmp_path, tok, prepared):
    good = _all_tokens(prepared.dir)
    _flip(prepared.dir / "train.bin", 5)  # size unchanged: only the content hash can tell
    with pytest.raises(shards.ShardError, match="train.bin: content differs from the SHA-256"):
        shards.load_split(prepared.dir, "train")
    _rebuilt_as_before(tmp_path, tok, prepared, good)


def test_a_flipped_byte_in_the_offsets_is_refused(prepared):
    path = prepared.dir / "train.idx.npy"
    _flip(path, path.stat().st_size - 12)
    with pytest.raises(shards.ShardError, match="train.idx.npy"):
        shards.load_split(prepared.dir, "train")


def test_offsets_that_go_backwards_are_refused_even_with_a_matching_hash(prepared):
    # A shard written wrong (not damaged after): the manifest agrees, the numbers do not.
    path = prepared.dir / "train.idx.npy"
    offsets = np.load(path)
    assert len(offsets) >= 3
    offsets[1] = offsets[-1] + 7  # song 0 runs past the end; song 1 starts after it ends
    np.save(path, offsets)
    m = json.loads((prepared.dir / shards.MANIFEST).read_text())
    m["splits"]["train"]["sha256"]["train.idx.npy"] = shards.file_sha256(path)
    (prepared.dir / shards.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(shards.ShardError, match="offsets do not rise"):
        shards.load_split(prepared.dir, "train")


def test_ids_outside_the_vocabulary_are_refused_even_with_a_matching_hash(tmp_path):
    d = shards.write_shards(tmp_path / "s", {"train": ([np.array([1, 2, 3])], [1])}, 300, {})
    m = json.loads((d / shards.MANIFEST).read_text())
    m["vocab_size"] = 3  # id 3 no longer fits
    (d / shards.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(shards.ShardError, match="token id 3 is outside the vocabulary"):
        shards.load_split(d, "train")


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\xff\xfe binary", b"[1, 2, 3]", b'{"format": 2, "splits": 7}'],
                         ids=["binary", "json-list", "wrong-shape"])
def test_a_damaged_manifest_is_a_shard_error_and_prepare_rebuilds(tmp_path, tok, prepared, content):
    good = _all_tokens(prepared.dir)
    (prepared.dir / shards.MANIFEST).write_bytes(content)
    with pytest.raises(shards.ShardError, match="manifest.json"):
        shards.load_split(prepared.dir, "train")
    again = _prepare(tmp_path, tok)
    assert not again.reused
    for s, arr in _all_tokens(again.dir).items():
        np.testing.assert_array_equal(arr, good[s])


@pytest.mark.parametrize("keys, value", [
    (("splits", "train", "songs"), "7"),  # is_complete said True, then load_split raised TypeError
    (("dtype",), "uint8"),                # reused, then a ShardError only on load
    (("dtype",), "object"),
    (("vocab_size",), 201.0),
    (("splits", "val", "bytes", "val.bin"), None),
    (("splits", "test", "sha256", "test.notes.npy"), 12345),
    (("skipped",), "none"),               # remi.corpus.prepare iterated it when reusing the folder
], ids=["songs-string", "dtype-uint8", "dtype-object", "vocab-float", "bytes-null", "sha-int", "skipped-string"])
def test_a_manifest_field_of_the_wrong_type_is_a_shard_error_and_prepare_rebuilds(tmp_path, tok, prepared, keys, value):
    good = _all_tokens(prepared.dir)
    m = json.loads((prepared.dir / shards.MANIFEST).read_text())
    node = m
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    (prepared.dir / shards.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(shards.ShardError, match=rf"manifest.json: field {re.escape('.'.join(keys))} is "):
        shards.load_split(prepared.dir, "train")
    _rebuilt_as_before(tmp_path, tok, prepared, good)


def test_a_damaged_npy_header_is_a_shard_error(tmp_path):
    # Checked past the hash: the .npy was damaged before the manifest was written.
    d = shards.write_shards(tmp_path / "s", {"train": ([np.array([1, 2, 3])], [1])}, 300, {})
    path = d / "train.notes.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + path.read_bytes()[8:].replace(b"descr", b"dxscr"))
    m = json.loads((d / shards.MANIFEST).read_text())
    m["splits"]["train"]["sha256"]["train.notes.npy"] = shards.file_sha256(path)
    (d / shards.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(shards.ShardError, match="train.notes.npy is not a readable .npy"):
        shards.load_split(d, "train")


def _results_log(tmp_path: Path, tok) -> Path:
    (log,) = prepare.results_dir(tmp_path / "cache", tok).glob("log-*.bin")
    return log


def test_a_damaged_cached_result_is_encoded_again(tmp_path, tok, prepared):
    good = _all_tokens(prepared.dir)
    log = _results_log(tmp_path, tok)
    _flip(log, prepare._HEAD_STRUCT.size + 8)  # inside the first record's ids
    for p in prepared.dir.iterdir():
        p.unlink()
    prepared.dir.rmdir()
    again = _prepare(tmp_path, tok)
    for s, arr in _all_tokens(again.dir).items():
        np.testing.assert_array_equal(arr, good[s])


def test_a_cached_result_outside_the_vocabulary_is_encoded_again(tmp_path, tok):
    corpus = _corpus(tmp_path / "corpus", n=3)
    cfg = DataConfig(name="small", sources=(str(corpus),))
    col = prepare.collect(cfg, cache_dir=tmp_path / "cache", progress=False)
    bad = prepare.ResultLog(prepare.results_dir(tmp_path / "cache", tok))
    bad.put(col.entries[0].sha256, prepare.FileResult(np.array([tok.bos_id, tok.vocab_size + 5, tok.eos_id]), 1, 1.0))
    bad.close()
    results = prepare.tokenize(col.entries, tok, tmp_path / "cache", workers=1, progress=False)
    np.testing.assert_array_equal(results[0].ids, tok.encode(corpus / Path(col.entries[0].rel)))


_KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    from remi import shards
    real = shards.write_split
    def dies(folder, split, *a, **kw):
        out = real(folder, split, *a, **kw)
        if split == "val":
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    shards.write_split = dies
    shards.write_shards({out!r}, {{"train": ([np.array([1, 2])], [1]), "val": ([np.array([3])], [1])}}, 300, {{}})
""")


def test_temporary_folders_of_a_killed_writer_are_removed_by_the_next(tmp_path):
    out = tmp_path / "root" / "s"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER.format(root=str(ROOT), out=str(out))])
    assert proc.returncode == -9
    left = [p.name for p in out.parent.iterdir()]
    assert len(left) == 1 and left[0].startswith(".tmp-s@"), left
    live = out.parent / f".tmp-other@{shards._HOST}-{os.getpid()}"  # a live writer's: kept
    live.mkdir()
    shards.write_shards(out.parent / "t", {"train": ([np.array([1])], [1])}, 300, {})
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([live.name, "t"])


def test_file_names_that_are_not_utf8_print_in_the_table(tmp_path):
    corpus = _corpus(tmp_path / "corpus", n=2)
    (corpus / os.fsdecode(b"caf\xe9.mid")).write_bytes(b"not midi")  # skipped, so its name is printed
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    out = subprocess.run([sys.executable, "-m", "remi.prepare", str(corpus), "--tokenizer", "coarse",
                          "--cache", str(tmp_path / "cache"), "--workers", "1"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "/corpus/caf\\xe9.mid: unreadable MIDI" in out.stdout
