"""remi.corpus.prepare: MIDI folders -> token shards (real MIDI where it exists), caching, corrupt files."""
from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import remi
from remi import shards
from remi.corpus import prepare
from remi.corpus.datasets import DataConfig
from tests.conftest import ROOT, shared_midi_files
from tests.midi_bytes import midi_file, note_events, tempo, time_sig, track

TEGRIDY = shared_midi_files("tegridy-piano")
needs_tegridy = pytest.mark.skipif(not TEGRIDY, reason="../shared/midi/tegridy-piano is absent")


def piece(seed: int) -> bytes:
    """A small piano piece of its own (8 bars of 1-3 note chords, its own tempo and metre):
    the caching tests run on files they write, so they need no corpus on disk."""
    rng = np.random.default_rng(seed)
    beats = int(rng.choice([3, 4]))
    notes = []
    for beat in range(8 * beats):
        for pitch in rng.choice(np.arange(40, 90), size=int(rng.integers(1, 4)), replace=False):
            start = beat * 480 + int(rng.choice([0, 240]))
            notes.append((start, start + int(rng.choice([240, 480, 960])), int(pitch), int(rng.integers(30, 110))))
    events = [tempo(0, float(rng.integers(60, 160))), time_sig(0, beats, 4), *note_events(notes)]
    return midi_file([track(events)])


def _pieces(tmp_path: Path, seeds, name: str = "corpus") -> Path:
    """A folder of `piece(seed)` files, piece_<seed>.mid (added to the folder if it exists)."""
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    for i in seeds:
        (d / f"piece_{i:03d}.mid").write_bytes(piece(i))
    return d


@pytest.fixture(scope="module")
def tok():
    return remi.Tokenizer.from_yaml(ROOT / "conf" / "tokenizer" / "coarse.yaml")


def _songs_by_file(prep: prepare.Prepared) -> dict[str, np.ndarray]:
    """file -> its song's ids, using the manifest's file order within each split."""
    out, cursor = {}, {s: 0 for s in shards.SPLITS}
    loaded = {s: shards.load_split(prep.dir, s, expect_hash=prep.manifest["tokenizer_hash"]) for s in shards.SPLITS}
    for f in prep.manifest["files"]:
        out[f"{f['source']}/{f['file']}"] = loaded[f["split"]].song(cursor[f["split"]])
        cursor[f["split"]] += 1
    assert cursor == {s: loaded[s].n_songs for s in shards.SPLITS}
    return out


# --------------------------------------------------------------------------- real corpus round trip


@needs_tegridy
@pytest.mark.shared_midi
def test_tegridy_folder_shards_decode_to_the_tokenizers_round_trip(tmp_path, tok):
    folder = TEGRIDY[0].parent
    cfg = DataConfig(name="tegridy-folder", sources=(str(folder),))
    prep = prepare.prepare(cfg, tok, cache_dir=tmp_path / "cache", workers=2, progress=False)
    songs = _songs_by_file(prep)
    assert len(songs) + len(prep.manifest["skipped"]) == len(TEGRIDY)
    assert len(songs) >= 0.95 * len(TEGRIDY)
    for path in TEGRIDY:
        key = f"{folder}/{path.name}"
        if key not in songs:
            continue
        ids = tok.encode(path)
        np.testing.assert_array_equal(songs[key], ids, err_msg=str(path))
        np.testing.assert_array_equal(tok.decode_score(songs[key]).notes, tok.decode_score(ids).notes)
    # note counts carried per song equal the tokenizer's own count
    train = shards.load_split(prep.dir, "train")
    assert [tok.count_notes(train.song(i)) for i in range(train.n_songs)] == train.notes.tolist()
    total = prep.manifest["total"]
    assert total["files"] == len(songs) and total["notes"] == sum(int(tok.count_notes(s)) for s in songs.values())
    assert total["tokens"] == sum(len(s) for s in songs.values()) and total["hours"] > 1
    # the three splits are non-empty and mostly train (5 % + 5 % by content hash)
    counts = {s: prep.manifest["splits"][s]["songs"] for s in shards.SPLITS}
    assert counts["train"] > 0.8 * len(songs) and counts["val"] > 0 and counts["test"] > 0


# --------------------------------------------------------------------------- caches and staleness


@pytest.fixture
def small_folder(tmp_path):
    return _pieces(tmp_path, range(12))


def test_two_configs_two_caches_and_a_changed_value_rebuilds(tmp_path, tok, small_folder):
    cfg = DataConfig(name="small", sources=(str(small_folder),))
    cache = tmp_path / "cache"
    a = prepare.prepare(cfg, tok, cache_dir=cache, workers=1, progress=False)
    fine = remi.Tokenizer.from_yaml(ROOT / "conf" / "tokenizer" / "fine.yaml")
    b = prepare.prepare(cfg, fine, cache_dir=cache, workers=1, progress=False)
    assert a.dir != b.dir and shards.is_complete(a.dir) and shards.is_complete(b.dir)
    assert shards.read_manifest(b.dir)["tokenizer_hash"] == fine.hash
    again = prepare.prepare(cfg, tok, cache_dir=cache, workers=1, progress=False)
    assert again.reused and again.dir == a.dir
    # one config value changed -> another key, fresh shards that differ
    changed = remi.Tokenizer(replace(tok.config, num_velocities=tok.config.num_velocities // 2))
    c = prepare.prepare(cfg, changed, cache_dir=cache, workers=1, progress=False)
    assert not c.reused and c.dir not in (a.dir, b.dir)
    assert shards.read_manifest(c.dir)["tokenizer_hash"] == changed.hash
    # the data selection is part of the key too
    d = prepare.prepare(replace(cfg, limit=5), tok, cache_dir=cache, workers=1, progress=False)
    assert d.dir != a.dir and d.manifest["total"]["files"] + d.manifest["total"]["skipped"] == 5


def test_truncated_shard_is_detected_and_rebuilt(tmp_path, tok, small_folder):
    cfg = DataConfig(name="small", sources=(str(small_folder),))
    cache = tmp_path / "cache"
    a = prepare.prepare(cfg, tok, cache_dir=cache, workers=1, progress=False)
    good = np.array(shards.load_split(a.dir, "train").tokens)
    b = a.dir / "train.bin"
    b.write_bytes(b.read_bytes()[: b.stat().st_size // 2])
    with pytest.raises(shards.ShardError, match="truncated"):
        shards.load_split(a.dir, "train")
    again = prepare.prepare(cfg, tok, cache_dir=cache, workers=1, progress=False)
    assert not again.reused and again.dir == a.dir
    np.testing.assert_array_equal(shards.load_split(again.dir, "train").tokens, good)


def test_changed_corpus_gets_new_shards_old_files_keep_their_split(tmp_path, tok):
    folder = _pieces(tmp_path, range(20))
    cfg = DataConfig(name="grow", sources=(str(folder),), val_fraction=0.2, test_fraction=0.2)
    a = prepare.prepare(cfg, tok, cache_dir=tmp_path / "cache", workers=1, progress=False)
    _pieces(tmp_path, range(20, 30))
    b = prepare.prepare(cfg, tok, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert a.dir != b.dir and b.manifest["total"]["files"] > a.manifest["total"]["files"]
    split_a = {f["file"]: f["split"] for f in a.manifest["files"]}
    split_b = {f["file"]: f["split"] for f in b.manifest["files"]}
    assert all(split_b[f] == s for f, s in split_a.items())
    assert len(set(split_b.values())) == 3


def test_killed_preparation_leaves_nothing_complete_and_resumes_from_cached_files(tmp_path, tok, small_folder, monkeypatch):
    cfg = DataConfig(name="small", sources=(str(small_folder),))
    cache = tmp_path / "cache"
    real_write = shards.write_split

    def dies_on_val(folder, split, *a, **kw):
        if split == "val":
            raise KeyboardInterrupt("killed")
        return real_write(folder, split, *a, **kw)

    monkeypatch.setattr(shards, "write_split", dies_on_val)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(cfg, tok, cache_dir=cache, workers=1, progress=False)
    shard_root = cache / "shards"
    assert not any(shards.is_complete(p) for p in shard_root.iterdir()) if shard_root.exists() else True
    monkeypatch.setattr(shards, "write_split", real_write)
    # the rerun reuses every file's cached result: encoding again would fail here
    monkeypatch.setattr(prepare, "encode_file", lambda *a: (_ for _ in ()).throw(AssertionError("re-encoded")))
    r = prepare.prepare(cfg, tok, cache_dir=cache, workers=1, progress=False)
    assert shards.is_complete(r.dir) and r.manifest["total"]["files"] == 12


def test_parallel_workers_write_their_own_logs_and_a_rerun_reuses_them(tmp_path, tok, small_folder, monkeypatch):
    cfg = DataConfig(name="small", sources=(str(small_folder),))
    cache = tmp_path / "cache"
    first = prepare.prepare(cfg, tok, cache_dir=cache, workers=2, progress=False)
    logs = sorted(prepare.results_dir(cache, tok).glob("log-*.bin"))
    # one per worker process that got work, none from the main process
    assert 1 <= len(logs) <= 2 and not any(f.name.startswith(f"log-{os.getpid()}-") for f in logs)
    # a log cut inside its last record (a worker killed mid-write) loses only that file
    logs[0].write_bytes(logs[0].read_bytes()[:-3])
    for d in (cache / "shards").iterdir():
        shutil.rmtree(d)
    calls = []
    real = prepare.encode_file
    monkeypatch.setattr(prepare, "encode_file", lambda path, t: calls.append(path) or real(path, t))
    again = prepare.prepare(cfg, tok, cache_dir=cache, workers=1, progress=False)
    assert len(calls) == 1  # only the cut record is encoded again
    assert again.manifest["files"] == first.manifest["files"]
    for split in shards.SPLITS:
        a, b = shards.load_split(first.dir, split), shards.load_split(again.dir, split)
        np.testing.assert_array_equal(a.tokens, b.tokens)


# --------------------------------------------------------------------------- corrupt files


def test_corrupt_files_are_skipped_with_reasons(tmp_path, tok):
    folder = _pieces(tmp_path, range(4))
    good = sorted(folder.iterdir())
    data = good[0].read_bytes()
    (folder / "truncated.mid").write_bytes(data[: len(data) // 3])
    (folder / "random.mid").write_bytes(np.random.default_rng(0).bytes(5000))
    (folder / "text.mid").write_text("this is not a MIDI file, just text\n" * 20)
    (folder / "zero.mid").write_bytes(b"")
    (folder / "header_only.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0")
    cfg = DataConfig(name="mixed", sources=(str(folder),))
    r = prepare.prepare(cfg, tok, cache_dir=tmp_path / "cache", workers=2, progress=False)
    skipped = {s["file"]: s["reason"] for s in r.manifest["skipped"]}
    assert set(skipped) == {"truncated.mid", "random.mid", "text.mid", "zero.mid", "header_only.mid"}
    assert all(reason for reason in skipped.values())
    assert "0 bytes" in skipped["zero.mid"]
    assert r.manifest["total"]["files"] == len(good) and r.manifest["total"]["skipped"] == 5
    assert {f["file"] for f in r.manifest["files"]} == {p.name for p in good}


def test_identical_files_across_sources_are_kept_once(tmp_path, tok, small_folder):
    other = _pieces(tmp_path, range(3), name="other")
    (other / "renamed copy.mid").write_bytes(piece(5))
    cfg = DataConfig(name="two", sources=(str(small_folder), str(other)))
    r = prepare.prepare(cfg, tok, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert r.manifest["stats"][str(other)]["duplicates"] == 4
    assert r.manifest["stats"][str(other)]["files"] == 0
    assert r.manifest["total"]["files"] + r.manifest["total"]["skipped"] == 12
    assert r.manifest["total"]["duplicates"] == 4


def test_fraction_is_fixed_by_content_and_seed(tmp_path, tok, small_folder):
    cfg = DataConfig(name="half", sources=(str(small_folder),), fraction=0.5, fraction_seed=3)
    full = {e.sha256 for e in prepare.collect(replace(cfg, fraction=1.0), progress=False).entries}
    kept = {e.sha256 for e in prepare.collect(cfg, progress=False).entries}
    assert kept < full and kept == {s for s in full if prepare.in_fraction(s, 0.5, 3)}
    # the choice depends on the content alone: renamed and reordered files are chosen alike
    moved = tmp_path / "moved"
    for i, f in enumerate(sorted(small_folder.glob("*.mid"), reverse=True)):
        (moved / str(i)).mkdir(parents=True)
        shutil.copy(f, moved / str(i) / f"renamed_{i}.mid")
    assert {e.sha256 for e in prepare.collect(replace(cfg, sources=(str(moved),)), progress=False).entries} == kept
    # over many hashes: the share is the fraction, a smaller fraction keeps a subset, another seed another set
    import hashlib

    shas = [hashlib.sha256(bytes([i, j])).hexdigest() for i in range(40) for j in range(50)]
    half, third = ({s for s in shas if prepare.in_fraction(s, f, 3)} for f in (0.5, 0.3))
    assert 0.45 < len(half) / len(shas) < 0.55 and 0.25 < len(third) / len(shas) < 0.35 and third < half
    other = {s for s in shas if prepare.in_fraction(s, 0.5, "other")}
    assert 0.4 < len(half & other) / len(half) < 0.6
    assert all(prepare.in_fraction(s, 1.0, 3) for s in shas)


def _round1_data(data: str) -> DataConfig:
    """`data` as `+experiment=round1` composes it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return DataConfig.from_mapping(compose("train", overrides=["+experiment=round1", f"data={data}"]).data)


def _old_round1_half(sha: str) -> bool:
    """The rule round 1 used before `data.fraction` (remi.corpus.prepare.in_round1_half), from its definition."""
    import hashlib

    return int(hashlib.sha256(f"round1:{sha}".encode()).hexdigest()[:15], 16) / 16**15 < 0.5


def test_round1_reads_what_it_read_before_on_bundled_and_real(tmp_path, monkeypatch):
    """Before: `data.subset: round1` read `round1_sources` where the data set named them (real:
    maestro_v2) and otherwise a fixed half (`in_round1_half`). The generic keys that
    conf/experiment/round1.yaml sets select the same files."""
    # bundled: its conversion (minutes) stands in for a folder of written pieces here; the slow
    # test below checks the real bundled corpus
    fake = _pieces(tmp_path, range(40), "bundled")
    monkeypatch.setattr(prepare, "bundled_dir", lambda cache_dir=None: fake)
    monkeypatch.setattr(prepare, "bundled_files", lambda *a, **k: sorted(fake.glob("*.mid")))
    cfg = _round1_data("bundled")
    every = prepare.collect(replace(cfg, fraction=1.0), progress=False).entries
    chosen = prepare.collect(cfg, progress=False).entries
    assert [e.rel for e in chosen] == [e.rel for e in every if _old_round1_half(e.sha256)]
    assert 10 < len(chosen) < 30
    # real: five sources under one root, round 1 reads every MAESTRO file and nothing else
    root = tmp_path / "midi"
    for k, folder in enumerate(["maestro-v2.0.0", "pop909", "piano-midi-de", "asap-scores", "tegridy-piano"]):
        _pieces(root, range(100 + 10 * k, 106 + 10 * k), folder)
    cfg = _round1_data("real")
    every = prepare.collect(replace(cfg, only_sources=None), data_dir=root, progress=False).entries
    assert {e.source for e in every} == {"maestro_v2", "pop909", "pianomidi", "asap", "tegridy"}
    chosen = prepare.collect(cfg, data_dir=root, progress=False).entries
    assert chosen == [e for e in every if e.source == "maestro_v2"] and len(chosen) == 6


def test_missing_corpus_is_a_clear_error(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="python -m remi.datasets download tegridy"):
        prepare.prepare(DataConfig(name="t", sources=("tegridy",)), tok, data_dir=tmp_path, cache_dir=tmp_path / "c", progress=False)


def test_cli_json(tmp_path, small_folder, capsys):
    rc = prepare.main([str(small_folder), "--tokenizer", "coarse", "--cache", str(tmp_path / "c"), "--workers", "1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"sources", "total", "skipped"}
    assert set(out["total"]) >= {"files", "skipped", "notes", "tokens", "hours"}
    assert out["total"]["files"] == 12 and out["total"]["notes"] > 0
    assert list(out["sources"]) == [str(small_folder)]
    rc = prepare.main([str(small_folder), "--tokenizer", "coarse", "--cache", str(tmp_path / "c"), "--workers", "1"])
    table = capsys.readouterr().out
    assert "tok/note" in table and "total" in table and "reused" in table


# --------------------------------------------------------------------------- BPE


def test_prepare_for_training_with_bpe(tmp_path, tok, small_folder, monkeypatch):
    cfg = {"name": "small", "sources": [str(small_folder)], "only_sources": None, "fraction": 1.0,
           "limit": None, "val_fraction": 0.1, "test_fraction": 0.1}
    bpe_tok = remi.Tokenizer(replace(tok.config, bpe_vocab_size=tok.vocab_size + 40))
    final, shard_dir = prepare.prepare_for_training(cfg, bpe_tok, tmp_path, tmp_path / "cache", workers=1, progress=False)
    assert final.bpe is not None and final.vocab_size == tok.vocab_size + 40
    base_tok, base_dir = prepare.prepare_for_training(cfg, tok, tmp_path, tmp_path / "cache", workers=1, progress=False)
    assert base_dir != shard_dir and base_tok.hash == tok.hash
    for split in shards.SPLITS:
        merged = shards.load_split(shard_dir, split, expect_hash=final.hash)
        base = shards.load_split(base_dir, split, expect_hash=tok.hash)
        assert merged.n_songs == base.n_songs and merged.n_tokens < base.n_tokens or base.n_songs == 0
        np.testing.assert_array_equal(merged.notes, base.notes)
        for i in range(merged.n_songs):
            np.testing.assert_array_equal(final.base_ids(merged.song(i)), base.song(i))
    m = shards.read_manifest(shard_dir)
    assert m["total"]["tokens"] == sum(shards.load_split(shard_dir, s).n_tokens for s in shards.SPLITS)
    assert m["total"]["tokens_per_note"] < shards.read_manifest(base_dir)["total"]["tokens_per_note"]
    # second call: the trained BPE and the shards are reused, not retrained or rewritten
    monkeypatch.setattr(remi.Tokenizer, "train_bpe", lambda *a, **k: pytest.fail("BPE retrained"))
    monkeypatch.setattr(shards, "write_shards", lambda *a, **k: pytest.fail("shards rewritten"))
    again, again_dir = prepare.prepare_for_training(cfg, bpe_tok, tmp_path, tmp_path / "cache", workers=1, progress=False)
    assert again.hash == final.hash and again_dir == shard_dir


# --------------------------------------------------------------------------- bundled (slow)


@pytest.fixture(scope="module")
def bundled_cache(tmp_path_factory):
    """The bundled corpus converted once, from a fresh cache, with the network refused."""
    cache = tmp_path_factory.mktemp("bundled-cache")
    real_connect = socket.socket.connect

    def no_network(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("/"):
            raise OSError(f"network access to {address} during the offline bundled test")
        return real_connect(self, address)

    socket.socket.connect = no_network  # forked workers inherit it
    try:
        from remi.corpus import bundled

        result = bundled.convert(cache, progress=False)
    finally:
        socket.socket.connect = real_connect
    return cache, result


@pytest.mark.slow
def test_bundled_from_fresh_cache_offline_has_1500_pieces(bundled_cache, tok):
    cache, conv = bundled_cache
    assert len(conv["files"]) >= 1500
    r = prepare.prepare(DataConfig(name="bundled", sources=("bundled",)), tok, cache_dir=cache, progress=False)
    assert r.manifest["total"]["files"] >= 1500
    assert min(r.manifest["splits"][s]["songs"] for s in shards.SPLITS) > 50
    # round 1 on bundled: a fixed half, the same files as the old rule chose (_old_round1_half)
    every = prepare.collect(DataConfig(name="bundled", sources=("bundled",)), cache_dir=cache, progress=False).entries
    half = prepare.collect(_round1_data("bundled"), cache_dir=cache, progress=False).entries
    assert [e.rel for e in half] == [e.rel for e in every if _old_round1_half(e.sha256)]
    assert 0.4 < len(half) / len(every) < 0.6
    # Bach chorales keep their key signatures (the key-finding check reads them)
    chorales = [f for f in conv["files"] if f.parent.name == "bach"][:20]
    assert chorales and all(remi.read_midi(f).key_signatures for f in chorales)


def test_result_log_ignores_the_incomplete_record_of_a_killed_run(tmp_path):
    log = prepare.ResultLog(tmp_path)
    shas = [f"{i:064x}" for i in range(3)]
    log.put(shas[0], prepare.FileResult(np.array([1, 5, 70_000, 2]), notes=1, seconds=2.5))
    log.put(shas[1], prepare.FileResult(None, error="unreadable MIDI: bad header"))
    log.put(shas[2], prepare.FileResult(np.arange(100), notes=30, seconds=1.0))
    log.close()
    (f,) = tmp_path.glob("log-*.bin")
    f.write_bytes(f.read_bytes()[:-7])  # killed while writing the last record
    again = prepare.ResultLog(tmp_path)
    r0 = again.get(shas[0])
    np.testing.assert_array_equal(r0.ids, [1, 5, 70_000, 2])
    assert (r0.notes, r0.seconds) == (1, 2.5)
    assert again.get(shas[1]).ids is None and again.get(shas[1]).error == "unreadable MIDI: bad header"
    assert again.get(shas[2]) is None
