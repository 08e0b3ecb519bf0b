"""remi.corpus.datasets: data config, source folders, MAESTRO splits, and download against a loopback server."""
from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from remi.corpus import datasets
from remi.corpus.datasets import DataConfig, DatasetMissingError, DownloadError, Source

# --------------------------------------------------------------------------- loopback server


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    drop_after: dict[str, int] = {}  # path -> bytes sent before the connection is cut (first GET only)
    log: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802
        data = self.files.get(self.path)
        rng = self.headers.get("Range")
        self.log.append((self.path, rng))
        if data is None:
            self.send_error(404)
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if start >= len(data) and rng:
            self.send_error(416)
            return
        body = data[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cut = self.drop_after.pop(self.path, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.files, _Handler.drop_after, _Handler.log = {}, {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield _Handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


MIDI_LIKE = {f"corpus/piece{i}.mid": bytes([i]) * (3000 + i) for i in range(5)}


def _registry(url, data, **kw):
    src = Source("toy", "Toy corpus", "toy", url=url, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    return {"toy": replace(src, **kw)}


def test_download_verifies_extracts_and_is_idempotent(server, tmp_path):
    handler, base = server
    archive = _zip(MIDI_LIKE)
    handler.files["/toy.zip"] = archive
    folder = datasets.download("toy", tmp_path, _registry(base + "/toy.zip", archive), progress=False)
    assert folder == tmp_path / "toy"
    got = {p.relative_to(folder).as_posix(): p.read_bytes() for p in datasets.list_midi_files(folder)}
    assert got == MIDI_LIKE
    n_requests = len(handler.log)
    datasets.download("toy", tmp_path, _registry(base + "/toy.zip", archive), progress=False)
    assert len(handler.log) == n_requests  # second call: nothing fetched again


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    handler, base = server
    archive = _zip(MIDI_LIKE)
    handler.files["/toy.zip"] = archive
    handler.drop_after["/toy.zip"] = len(archive) // 3
    reg = _registry(base + "/toy.zip", archive)
    with pytest.raises(DownloadError, match="resume"):
        datasets.download("toy", tmp_path, reg, progress=False)
    part = tmp_path / ".downloads" / "toy.zip.part"
    assert part.stat().st_size == len(archive) // 3
    assert not (tmp_path / "toy").exists()
    folder = datasets.download("toy", tmp_path, reg, progress=False)
    assert handler.log[-1] == ("/toy.zip", f"bytes={len(archive) // 3}-")  # asked only for the rest
    assert {p.name for p in datasets.list_midi_files(folder)} == {Path(n).name for n in MIDI_LIKE}


def test_wrong_checksum_is_rejected_and_not_extracted(server, tmp_path):
    handler, base = server
    archive = _zip(MIDI_LIKE)
    handler.files["/toy.zip"] = archive
    reg = _registry(base + "/toy.zip", archive, sha256="0" * 64)
    with pytest.raises(DownloadError, match="SHA-256"):
        datasets.download("toy", tmp_path, reg, progress=False)
    assert not (tmp_path / "toy").exists()
    assert not (tmp_path / ".downloads" / "toy.zip").exists()
    assert not (tmp_path / ".downloads" / "toy.zip.part").exists()  # deleted: next run starts clean


def test_wrong_size_is_rejected(server, tmp_path):
    handler, base = server
    archive = _zip(MIDI_LIKE)
    handler.files["/toy.zip"] = archive
    with pytest.raises(DownloadError, match="size"):
        datasets.download("toy", tmp_path, _registry(base + "/toy.zip", archive, size=len(archive) + 1, sha256=None), progress=False)
    assert not (tmp_path / "toy").exists()


def test_corrupted_archive_is_rejected(server, tmp_path):
    handler, base = server
    archive = bytearray(_zip(MIDI_LIKE))
    # flip bytes inside the first member's compressed data: the zip directory is intact, the CRC is not
    archive[60:70] = bytes(b ^ 0xFF for b in archive[60:70])
    archive = bytes(archive)
    handler.files["/toy.zip"] = archive
    with pytest.raises(DownloadError, match="corrupt|not a valid zip"):
        datasets.download("toy", tmp_path, _registry(base + "/toy.zip", archive), progress=False)
    assert not (tmp_path / "toy").exists()
    handler.files["/junk.zip"] = b"this is not a zip archive at all" * 10
    with pytest.raises(DownloadError, match="not a valid zip"):
        datasets.download("toy", tmp_path / "b", _registry(base + "/junk.zip", handler.files["/junk.zip"]), progress=False)


@pytest.mark.parametrize("evil", ["../escape.mid", "/abs/escape.mid", "corpus/../../escape.mid"])
def test_path_escaping_member_is_refused(server, tmp_path, evil):
    handler, base = server
    archive = _zip({"corpus/ok.mid": b"x" * 100, evil: b"evil"})
    handler.files["/toy.zip"] = archive
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match="escape"):
        datasets.download("toy", root, _registry(base + "/toy.zip", archive), progress=False)
    assert not list(tmp_path.rglob("escape.mid"))
    assert not (root / "toy").exists()


def test_symlink_member_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("corpus/link.mid")
        info.external_attr = (0o120777 << 16)
        z.writestr(info, "/etc/passwd")
    (tmp_path / "a.zip").write_bytes(buf.getvalue())
    with pytest.raises(DownloadError, match="symlink"):
        datasets.safe_extract(tmp_path / "a.zip", tmp_path / "out")
    assert not (tmp_path / "out" / "corpus" / "link.mid").exists()


def test_unpublished_checksum_is_recorded_then_enforced(server, tmp_path, capsys):
    handler, base = server
    archive = _zip(MIDI_LIKE)
    handler.files["/toy.zip"] = archive
    reg = _registry(base + "/toy.zip", archive, sha256=None, size=None)
    datasets.download("toy", tmp_path, reg, progress=False)
    record = tmp_path / ".downloads" / "toy.zip.sha256"
    assert record.read_text().split()[0] == hashlib.sha256(archive).hexdigest()
    assert "no official SHA-256" in capsys.readouterr().err
    # upstream changes: a fresh download no longer matches what was recorded
    (tmp_path / "toy" / ".complete").unlink()
    (tmp_path / ".downloads" / "toy.zip").unlink()
    handler.files["/toy.zip"] = _zip({"corpus/other.mid": b"y" * 50})
    with pytest.raises(DownloadError, match="recorded"):
        datasets.download("toy", tmp_path, reg, progress=False)


def test_cli_download_with_base_url(server, tmp_path, monkeypatch):
    handler, base = server
    archive = _zip(MIDI_LIKE)
    handler.files["/midi.zip"] = archive  # the adl archive's file name
    rc = datasets.main(["download", "adl", "--root", str(tmp_path), "--base-url", base])
    assert rc == 0
    assert len(datasets.list_midi_files(tmp_path / "adl")) == len(MIDI_LIKE)


def test_manual_corpus_prints_steps(tmp_path):
    with pytest.raises(DatasetMissingError, match="github.com/bytedance/GiantMIDI-Piano"):
        datasets.download("giantmidi", tmp_path)


# --------------------------------------------------------------------------- sources and config


def test_missing_corpus_names_dataset_folder_and_command(tmp_path):
    with pytest.raises(DatasetMissingError) as e:
        datasets.source_folder("maestro", tmp_path)
    msg = str(e.value)
    assert "'maestro'" in msg and str(tmp_path / "maestro") in msg
    assert f"python -m remi.datasets download maestro --root {tmp_path}" in msg


def test_list_midi_files_sorted_and_filtered(tmp_path):
    for rel in ["b/2.mid", "a/10.MID", "a/9.midi", "c.txt", ".hidden/x.mid", "z.mid"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    got = [p.relative_to(tmp_path).as_posix() for p in datasets.list_midi_files(tmp_path)]
    assert got == ["a/10.MID", "a/9.midi", "b/2.mid", "z.mid"]


def test_maestro_official_split_from_csv(tmp_path):
    base = tmp_path / "maestro-v3.0.0"
    base.mkdir()
    (base / "maestro-v3.0.0.csv").write_text(
        "canonical_composer,canonical_title,split,year,midi_filename,audio_filename,duration\n"
        "A,x,train,2004,2004/a.midi,2004/a.wav,1.0\n"
        "B,y,validation,2006,2006/b.midi,2006/b.wav,1.0\n"
        "C,z,test,2008,2008/c.midi,2008/c.wav,1.0\n"
    )
    assert datasets.maestro_splits(tmp_path) == {
        "maestro-v3.0.0/2004/a.midi": "train",
        "maestro-v3.0.0/2006/b.midi": "val",
        "maestro-v3.0.0/2008/c.midi": "test",
    }


def test_data_config_from_mapping_and_validation():
    cfg = DataConfig.from_mapping({"name": "piano", "sources": ["maestro", "giantmidi", "tegridy", "adl"],
                                   "only_sources": ["giantmidi", "maestro"]})
    assert cfg.active_sources() == ("maestro", "giantmidi")          # in `sources` order
    assert replace(cfg, only_sources=None).active_sources() == ("maestro", "giantmidi", "tegridy", "adl")
    assert DataConfig.from_mapping({"sources": ["maestro", "adl"], "only_sources": "adl"}).active_sources() == ("adl",)
    with pytest.raises(ValueError, match="unknown data config keys \\['sauces'\\]"):
        DataConfig.from_mapping({"sauces": ["x"]})
    # a name the data set does not read: the key, the name and the valid names
    with pytest.raises(ValueError, match=r"data.only_sources=\['maestro_v2'\]: \['maestro_v2'\] not in "
                                         r"choose among data.sources \['maestro', 'giantmidi', 'tegridy', 'adl'\]"):
        replace(cfg, only_sources=("maestro_v2",))
    with pytest.raises(ValueError, match="data.only_sources=\\[\\]: empty"):
        replace(cfg, only_sources=())
    for bad in (0, 0.0, 1.5, -0.1, True, "half"):
        with pytest.raises(ValueError, match="data.fraction must be a number in \\(0, 1\\]"):
            replace(cfg, fraction=bad)
    assert replace(cfg, fraction=1).fraction == 1.0 and isinstance(replace(cfg, fraction=1).fraction, float)
    for bad in (None, 1.5, False, "split"):
        with pytest.raises(ValueError, match="data.fraction_seed"):
            replace(cfg, fraction_seed=bad)


def test_every_data_yaml_composes(repo_root):
    from omegaconf import OmegaConf

    files = sorted((repo_root / "conf" / "data").glob("*.yaml"))
    assert {p.stem for p in files} >= {"maestro", "giantmidi", "tegridy", "adl", "bundled", "piano"}
    for p in files:
        cfg = DataConfig.from_mapping(OmegaConf.load(p))
        for s in cfg.sources:
            assert s in datasets.SOURCES or s == datasets.BUNDLED, (p, s)
    piano = DataConfig.from_mapping(OmegaConf.load(repo_root / "conf" / "data" / "piano.yaml"))
    assert set(piano.sources) == {"maestro", "giantmidi", "tegridy", "adl"}
    assert piano.only_sources is None and piano.fraction == 1.0         # a data yaml reads all of itself
