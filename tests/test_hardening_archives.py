"""Hostile zip archives (issue 15): every refusal is a DownloadError, nothing is written outside
the target or without bound, and `download` leaves no `.extract-*` folder behind."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from remi.corpus import datasets
from remi.corpus.datasets import DownloadError
from tests import test_datasets
from tests.test_datasets import _registry, _zip

server = test_datasets.server  # the loopback HTTP server fixture


def _write(tmp_path: Path, members: dict[str, bytes]) -> Path:
    """A deflated zip of `members`, written as given (no name checks)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            zi = zipfile.ZipInfo(name)
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
    path = tmp_path / "a.zip"
    path.write_bytes(buf.getvalue())
    return path


def test_a_zip_bomb_is_refused_by_its_ratio(tmp_path):
    archive = _write(tmp_path, {"corpus/bomb.mid": bytes(20 << 20)})  # 20 MiB of zeros -> ~20 kB
    assert archive.stat().st_size < 100_000
    with pytest.raises(DownloadError, match=r"bomb.mid' unpacks 20971520 bytes from \d+ \(over 100:1"):
        datasets.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_total_size_is_capped(tmp_path):
    members = {f"corpus/{i}.mid": os.urandom(400_000) for i in range(3)}  # incompressible: no ratio to catch
    with pytest.raises(DownloadError, match="more than 1000000 bytes"):
        datasets.safe_extract(_write(tmp_path, members), tmp_path / "out", max_bytes=1_000_000)
    assert not (tmp_path / "out").exists()


def test_a_member_named_dot_is_refused_and_writes_nothing(tmp_path):
    target = tmp_path / "root" / "out"
    with pytest.raises(DownloadError, match=r"member '\.' names no file"):
        datasets.safe_extract(_write(tmp_path, {"corpus/ok.mid": b"x", ".": b"junk"}), target)
    assert not list(tmp_path.rglob("*.part"))  # the old code wrote `.out.part` beside the target


def _patch_headers(path: Path, local_at: int, central_at: int, value: int) -> None:
    """Set a 2-byte field of the (one) member's local and central headers, as another zip tool would."""
    data = bytearray(path.read_bytes())
    for sig, at in ((b"PK\x03\x04", local_at), (b"PK\x01\x02", central_at)):
        i = data.index(sig)
        data[i + at:i + at + 2] = value.to_bytes(2, "little")
    path.write_bytes(bytes(data))


def test_an_encrypted_member_is_a_download_error(tmp_path):
    path = _write(tmp_path, {"corpus/secret.mid": b"x" * 100})
    _patch_headers(path, 6, 8, 0x1)  # general-purpose flag bit 0: encrypted
    with pytest.raises(DownloadError, match="'corpus/secret.mid' is encrypted"):
        datasets.safe_extract(path, tmp_path / "out")


def test_an_unsupported_compression_method_is_a_download_error(tmp_path):
    path = _write(tmp_path, {"corpus/a.mid": b"x" * 100})
    _patch_headers(path, 8, 10, 99)  # compression method 99: WinZip AES
    with pytest.raises(DownloadError, match="compression method 99"):
        datasets.safe_extract(path, tmp_path / "out")


@pytest.mark.parametrize("members", [
    {"corpus/a.mid": b"x", "corpus/a.mid/b.mid": b"y"},
    {"corpus": b"x", "corpus/b.mid": b"y"},
    {"corpus/b.mid": b"y", "corpus/b.mid/": b""},
], ids=["file-then-folder", "file-holds-files", "named-folder"])
def test_a_file_and_a_folder_of_one_name_are_refused(tmp_path, members):
    with pytest.raises(DownloadError, match="is both a file and a folder"):
        datasets.safe_extract(_write(tmp_path, members), tmp_path / "out")


def test_a_colon_inside_a_name_is_an_ordinary_character(tmp_path):
    out = datasets.safe_extract(_write(tmp_path, {"Bach: Invention 1.mid": b"MThd", "corpus/Op. 2: No. 3.mid": b"M"}),
                                tmp_path / "out")
    assert [p.relative_to((tmp_path / "out").resolve()).as_posix() for p in out] == \
        ["Bach: Invention 1.mid", "corpus/Op. 2: No. 3.mid"]


def test_a_drive_letter_is_still_refused(tmp_path):
    with pytest.raises(DownloadError, match="escape"):
        datasets.safe_extract(_write(tmp_path, {"C:/evil.mid": b"x"}), tmp_path / "out")


@pytest.mark.parametrize("members, message", [
    ({"corpus/a.mid": b"x", "corpus/a.mid/b.mid": b"y"}, "both a file and a folder"),
    ({"corpus/ok.mid": b"x", ".": b"junk"}, "names no file"),
    ({"corpus/bomb.mid": bytes(20 << 20)}, "zip bomb"),
])
def test_download_cleans_up_after_every_refusal(server, tmp_path, members, message):
    handler, base = server
    archive = _zip(members)
    handler.files["/toy.zip"] = archive
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match=message):
        datasets.download("toy", root, _registry(base + "/toy.zip", archive), progress=False)
    assert sorted(p.name for p in root.iterdir()) == [".downloads"]


def test_download_removes_the_extraction_folder_of_a_killed_run(server, tmp_path):
    handler, base = server
    archive = _zip({"corpus/a.mid": b"MThd" * 100})
    handler.files["/toy.zip"] = archive
    root = tmp_path / "root"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = root / f".extract-toy-{int(dead.stdout)}"
    (stale / "corpus").mkdir(parents=True)
    folder = datasets.download("toy", root, _registry(base + "/toy.zip", archive), progress=False)
    assert not stale.exists() and (folder / "corpus" / "a.mid").is_file()


# --------------------------------------------------------------------------- pinned checksums


def test_maestro_archive_is_pinned_to_the_publishers_sha256(server, tmp_path, capsys):
    # MAESTRO's page states the SHA-256 of maestro-v3.0.0-midi.zip; SOURCES pins it, so an archive
    # that differs (here: a toy zip served under that name by the loopback mirror) fails on the
    # first download already, instead of being recorded and trusted.
    handler, base = server
    archive = _zip({"maestro-v3.0.0/2018/piece.midi": b"x" * 5000})
    handler.files["/maestro-v3.0.0-midi.zip"] = archive
    pinned = datasets.SOURCES["maestro"].sha256
    found = hashlib.sha256(archive).hexdigest()
    rc = datasets.main(["download", "maestro", "--root", str(tmp_path), "--base-url", base])
    err = capsys.readouterr().err
    assert rc != 0
    assert "maestro-v3.0.0-midi.zip" in err and f"SHA-256 {found}, expected {pinned}" in err
    assert "no official SHA-256" not in err and not list((tmp_path / ".downloads").glob("*.sha256"))
    assert not (tmp_path / "maestro").exists()
    assert not list((tmp_path / ".downloads").iterdir())  # the partial file is deleted


def test_a_pinned_size_that_differs_names_both_sizes(server, tmp_path):
    handler, base = server
    archive = _zip({"corpus/a.mid": b"y" * 4000})
    handler.files["/toy.zip"] = archive
    reg = _registry(base + "/toy.zip", archive, size=len(archive) + 7)
    with pytest.raises(DownloadError, match=rf"toy.zip: size {len(archive)} bytes, expected {len(archive) + 7}"):
        datasets.download("toy", tmp_path, reg, progress=False)
    assert not (tmp_path / "toy").exists()
