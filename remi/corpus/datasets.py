"""Where the corpora live and how to fetch them: the source registry, the data config, download.

Four real piano corpora (`maestro`, `giantmidi`, `tegridy`, `adl`) each read a folder under the
data root; `bundled` reads the music21 corpus converted to MIDI (remi.corpus.bundled). Any folder of
MIDI files is a source too. `python -m remi.datasets download NAME [--root DIR]` fetches a
corpus: resumable HTTP download, size + SHA-256 check, safe extraction, idempotent.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..paths import default_data_dir
from .bundled import bundled_dir

MIDI_SUFFIXES = (".mid", ".midi")
CHUNK = 1 << 20


# --------------------------------------------------------------------------- data config


@dataclass(frozen=True)
class DataConfig:
    """One `conf/data/*.yaml`; keys equal these fields.

    sources: corpus names from SOURCES, or folders of MIDI files.
    only_sources: read only these of `sources` (in `sources` order); null: all of them.
    fraction: the share of each source's files to read, chosen by a hash of file content and
        `fraction_seed` (so the choice is fixed, and adding files never moves old ones); 1: all.
    fraction_seed: a string or integer; another seed chooses another, equally fixed, subset.
    limit: at most this many files per source (sorted order; for tests), null = all.
    val_fraction / test_fraction: share of songs per split for hash-split sources (MAESTRO keeps
        its official split).
    file_timeout: seconds one file may take to read and encode in `remi.corpus.prepare`; a file over
        it is skipped, named with the bound, and not tried again at the same or a lower bound
        (a higher bound tries it again). null: no bound. The slowest real file takes ~2 s.
    infill_share: the share of training windows rewritten as fill-in-the-middle examples
        (`model.data.Infill`, `pianolm.infill`; 0: none, the left-to-right stream). Read by training only:
        it selects no file and is not part of the shard key. > 0 puts the Infill tokens in the
        vocabulary (`pianolm.config.tokenizer_config`).
    """

    name: str = "bundled"
    sources: tuple[str, ...] = ("bundled",)
    only_sources: tuple[str, ...] | None = None
    fraction: float = 1.0
    fraction_seed: str | int = 0
    limit: int | None = None
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    file_timeout: float | None = 300.0
    infill_share: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(str(s) for s in self.sources))
        if not self.sources:
            raise ValueError("data.sources is empty")
        if self.only_sources is not None:
            only = tuple(str(s) for s in self.only_sources)
            object.__setattr__(self, "only_sources", only)
            unknown = [s for s in only if s not in self.sources]
            if unknown or not only:
                raise ValueError(f"data.only_sources={list(only)}: " + (f"{unknown} not in " if unknown else "empty; ")
                                 + f"choose among data.sources {list(self.sources)} (null: all of them)")
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ValueError(f"data.fraction must be a number in (0, 1] (the share of files read; 1: all), got {f!r}")
        object.__setattr__(self, "fraction", float(f))  # 1 and 1.0: one shard key
        seed = self.fraction_seed
        if isinstance(seed, bool) or not isinstance(seed, (int, str)) or seed == "split":  # "split": the split's own hash
            raise ValueError(f"data.fraction_seed must be a string (not 'split') or an integer, got {seed!r}")
        if not (0 <= self.val_fraction and 0 <= self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"data.val_fraction + test_fraction must be in [0, 1), got {self.val_fraction} + {self.test_fraction}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit must be >= 1 or null, got {self.limit}")
        t = self.file_timeout
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf")):
            raise ValueError(f"data.file_timeout must be a number of seconds > 0 or null (no bound), got {t!r}")
        if t is not None:
            object.__setattr__(self, "file_timeout", float(t))  # 300 and 300.0: one shard key
        s = self.infill_share
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1:
            raise ValueError(f"data.infill_share must be a number in [0, 1] (the share of training windows "
                             f"rewritten as infilling examples; 0: none), got {s!r}")
        object.__setattr__(self, "infill_share", float(s))

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | "DataConfig") -> "DataConfig":
        """From a plain mapping or OmegaConf node; unknown keys are an error naming them."""
        if isinstance(m, DataConfig):
            return m
        if hasattr(m, "_metadata"):  # OmegaConf DictConfig, without importing omegaconf here
            from omegaconf import OmegaConf

            m = OmegaConf.to_container(m, resolve=True)
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in dict(m).items() if k != "_target_"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown data config keys {unknown}; known: {sorted(known)}")
        for k in ("sources", "only_sources"):
            if d.get(k) is not None and isinstance(d[k], str):
                d[k] = [d[k]]
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    def active_sources(self) -> tuple[str, ...]:
        """The sources this selection reads: `only_sources` (in `sources` order), else all."""
        if self.only_sources is not None:
            return tuple(s for s in self.sources if s in self.only_sources)
        return self.sources

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v, tuple) else v) for f in fields(self) for v in [getattr(self, f.name)]}


# --------------------------------------------------------------------------- source registry


@dataclass(frozen=True)
class Source:
    """A corpus: where it lives under the data root, how it splits, how to fetch it."""

    name: str
    title: str
    folder: str  # sub-folder of the data root
    url: str | None = None  # public archive; None -> manual steps only
    size: int | None = None  # archive bytes, where published
    sha256: str | None = None  # where published (else recorded on first download, and said so)
    manual: str = ""  # steps when it cannot be fetched by script
    split: str = "hash"  # "maestro": the official CSV split; "hash": by content hash
    licence: str = ""
    # Other names the same corpus's folder goes by in known layouts (the first that exists wins,
    # after `folder`): e.g. ../shared/midi calls Tegridy's folder `tegridy-piano`.
    aliases: tuple[str, ...] = ()

    def folder_in(self, root: Path) -> Path:
        """The folder this source reads under `root`: `folder`, else the first alias present."""
        for name in (self.folder, *self.aliases):
            if (root / name).is_dir():
                return root / name
        return root / self.folder


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "maestro",
            "MAESTRO v3.0.0 (MIDI only)",
            "maestro",
            url="https://storage.googleapis.com/magentadata/datasets/maestro/v3.0.0/maestro-v3.0.0-midi.zip",
            # The publisher's figure, from the dataset's page (magenta.tensorflow.org/datasets/maestro,
            # "maestro-v3.0.0-midi.zip  Size: 56MB (81MB uncompressed)  SHA256: 70470ee2…"). The
            # size is given only in rounded MB, so it is not pinned: the hash decides.
            sha256="70470ee253295c8d2c71e6d9d4a815189e35c89624b76d22fce5a019d5dde12c",
            split="maestro",
            licence="CC BY-NC-SA 4.0",
        ),
        Source(
            "giantmidi",
            "GiantMIDI-Piano v1.2",
            "giantmidi",
            manual=(
                "GiantMIDI-Piano is distributed behind a disclaimer form, not by a stable URL:\n"
                "  1. open https://github.com/bytedance/GiantMIDI-Piano and follow 'Download' (disclaimer, then the\n"
                "     Google Drive link to midis_v1.2.zip);\n"
                "  2. unzip it so the .mid files lie under {folder}/ (sub-folders are fine);\n"
                "  3. rerun `python -m remi.datasets download giantmidi --root {root}` to check the folder."
            ),
            licence="CC BY 4.0",
        ),
        Source(
            "tegridy",
            "Tegridy Piano",
            "tegridy",
            url="https://github.com/asigalov61/Tegridy-MIDI-Dataset/raw/master/Tegridy-Piano-CC-BY-NC-SA.zip",
            licence="CC BY-NC-SA",
            aliases=("tegridy-piano",),
        ),
        Source(
            "adl",
            "ADL Piano MIDI",
            "adl",
            url="https://github.com/lucasnfe/adl-piano-midi/raw/master/midi.zip",
            licence="CC BY 4.0 (per its repository)",
        ),
        # The real piano corpora of ../shared/midi (read its README), under their folder names
        # there. MAESTRO v2.0.0 keeps its official split from maestro-v2.0.0.csv.
        Source(
            "maestro_v2",
            "MAESTRO v2.0.0 (MIDI only)",
            "maestro-v2.0.0",
            url="https://storage.googleapis.com/magentadata/datasets/maestro/v2.0.0/maestro-v2.0.0-midi.zip",
            split="maestro",
            licence="CC BY-NC-SA 4.0",
        ),
        Source(
            "pop909",
            "POP909 (piano arrangements of 909 pop songs)",
            "pop909",
            manual=(
                "POP909 is published as a git repository (github.com/music-x-lab/POP909-Dataset):\n"
                "  copy its POP909/NNN/NNN.mid files under {folder}/ (sub-folders are fine)."
            ),
            licence="MIT",
        ),
        Source(
            "pianomidi",
            "piano-midi.de (classical pieces sequenced by Bernd Krueger)",
            "piano-midi-de",
            manual="Download the composers' zip files from piano-midi.de and unzip them under {folder}/.",
            licence="CC BY-SA 3.0 DE",
        ),
        Source(
            "asap",
            "ASAP score MIDIs",
            "asap-scores",
            manual=(
                "ASAP is a git repository (github.com/fosfrancesco/asap-dataset): copy each piece's\n"
                "  midi_score.mid under {folder}/ (the ../shared/midi layout names them Composer_Work_Piece.mid)."
            ),
            licence="CC BY-NC-SA 4.0",
        ),
    ]
}
BUNDLED = "bundled"  # converted by remi.corpus.bundled into <cache>/bundled, never downloaded


class DatasetMissingError(FileNotFoundError):
    """A corpus folder that is absent or holds no MIDI; the message says how to fetch it."""


def fetch_command(name: str, root: Path | None = None) -> str:
    return f"python -m remi.datasets download {name}" + (f" --root {root}" if root is not None else "")


def source_folder(name: str, data_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """The folder a source reads; raises DatasetMissingError (naming the fetch command) if absent.

    `bundled` is converted on demand by remi.corpus.bundled, so it is not checked here.
    """
    if name == BUNDLED:
        return bundled_dir(cache_dir)
    if name in SOURCES:
        root = Path(data_dir) if data_dir is not None else default_data_dir()
        folder = SOURCES[name].folder_in(root)
        if not folder.is_dir() or not any(iter_midi_files(folder)):
            raise DatasetMissingError(
                f"dataset {name!r} ({SOURCES[name].title}) not found: looked in {folder} "
                f"({'no MIDI files there' if folder.is_dir() else 'no such folder'}). "
                f"Fetch it with: {fetch_command(name, root)}"
            )
        return folder
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    raise DatasetMissingError(
        f"source {name!r} is neither a dataset ({', '.join([*SOURCES, BUNDLED])}) nor a folder of MIDI files"
    )


def iter_midi_files(folder: Path) -> Iterable[Path]:
    for p in Path(folder).rglob("*"):
        if p.suffix.lower() in MIDI_SUFFIXES and p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts):
            yield p


def list_midi_files(folder: str | Path) -> list[Path]:
    """Every .mid/.midi under `folder` (hidden folders skipped), sorted by relative POSIX path."""
    folder = Path(folder)
    return sorted(iter_midi_files(folder), key=lambda p: p.relative_to(folder).as_posix())


def maestro_splits(folder: str | Path) -> dict[str, str]:
    """MAESTRO's official split: relative midi path -> train/val/test, from its CSV (or JSON)."""
    folder = Path(folder)
    rename = {"train": "train", "validation": "val", "test": "test"}
    csvs = sorted(folder.rglob("maestro-v*.csv"))
    if csvs:
        base = csvs[-1].parent
        with open(csvs[-1], newline="", encoding="utf-8") as f:
            return {
                (base / row["midi_filename"]).relative_to(folder).as_posix(): rename[row["split"]]
                for row in csv.DictReader(f)
            }
    jsons = sorted(folder.rglob("maestro-v*.json"))
    if jsons:
        base = jsons[-1].parent
        d = json.loads(jsons[-1].read_text())
        # v3 JSON is column-major: {"midi_filename": {"0": ...}, "split": {"0": ...}}
        return {
            (base / d["midi_filename"][i]).relative_to(folder).as_posix(): rename[d["split"][i]]
            for i in d["midi_filename"]
        }
    return {}


# --------------------------------------------------------------------------- download


class DownloadError(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: Path, size: int | None = None, sha256: str | None = None, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download `url` to `dest`, resuming `dest.part` with an HTTP Range request.

    The finished file is checked against `size` and `sha256` (where given) before it is renamed
    to `dest`; a mismatch deletes the partial file and raises DownloadError. An existing `dest`
    that passes the checks is kept (idempotent).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and _check(dest, size, sha256, delete=False) is None:
        return dest
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # range not satisfiable: the part file is already complete
            resp = None
        else:
            raise DownloadError(f"GET {url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"GET {url}: {e}; rerun the command to resume") from e
    if resp is not None:
        with resp:
            resumed = resp.status == 206
            total = resp.headers.get("Content-Length")
            total = int(total) + (have if resumed else 0) if total is not None else size
            bar = _bar(total, have if resumed else 0, dest.name, progress)
            try:
                with open(part, "ab" if resumed else "wb") as f:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
            except (OSError, http_client_errors()) as e:
                raise DownloadError(f"GET {url}: transfer interrupted ({e}); rerun the command to resume") from e
            finally:
                bar.close()
        if total is not None and part.stat().st_size < total:
            raise DownloadError(
                f"GET {url}: got {part.stat().st_size} of {total} bytes; rerun the command to resume"
            )
    problem = _check(part, size, sha256, delete=True)
    if problem:
        raise DownloadError(f"{url}: {problem}; the partial file was deleted, rerun to download again")
    os.replace(part, dest)
    return dest


def http_client_errors() -> type[Exception]:
    import http.client

    return http.client.HTTPException


def _check(path: Path, size: int | None, sha256: str | None, delete: bool) -> str | None:
    actual = path.stat().st_size
    problem = None
    if size is not None and actual != size:
        problem = f"size {actual} bytes, expected {size}"
    elif sha256 is not None:
        digest = sha256_file(path)
        if digest != sha256.lower():
            problem = f"SHA-256 {digest}, expected {sha256}"
    if problem and delete:
        path.unlink()
    return problem


def _bar(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=desc, disable=not enabled, file=sys.stderr)


# Caps on what an archive may unpack to (a zip bomb unpacks 1 GiB from 1 MB). The corpora we
# fetch are far inside them: MAESTRO's MIDI unpacks to ~85 MB at ~1.5:1.
MAX_EXTRACT_BYTES = 8 << 30
MAX_RATIO = 100  # uncompressed / compressed bytes, per member of more than RATIO_MIN_BYTES
RATIO_MIN_BYTES = 1 << 20
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
            zipfile.ZIP_LZMA: "lzma"}


def safe_extract(archive: Path, target: Path, max_bytes: int = MAX_EXTRACT_BYTES, max_ratio: float = MAX_RATIO) -> list[Path]:
    """Extract a zip into `target`, refusing anything that could write outside it or without bound.

    Refused with DownloadError before anything is written: absolute names, `..` components,
    drive letters (`C:`), names that name no file (`.`, ``), symlinks, encrypted members,
    compression methods zipfile cannot read, a file and a folder of one name, more than
    `max_bytes` in all and a member over `max_ratio`:1. (A colon elsewhere in a name, as in
    `Bach: Invention 1.mid`, is an ordinary character.) Writing stops at the sizes the
    archive declares. Returns the extracted file paths, sorted. On any error the caller removes
    `target` (download extracts into a temporary folder).
    """
    target = Path(target).resolve()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DownloadError(f"{archive} is not a valid zip archive ({e}); delete it and download again") from e
    with zf:
        members = [m for m in zf.infolist()]
        files = _check_members(archive, target, members, max_bytes, max_ratio)
        try:
            bad = zf.testzip()
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as e:
            bad = f"? ({e})"
        if bad is not None:
            raise DownloadError(f"{archive}: member {bad!r} is corrupt; delete the archive and download again")
        out = []
        for m, dest in files:
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.part")
                with zf.open(m) as src, open(tmp, "wb") as dst:
                    left = m.file_size
                    while chunk := src.read(min(CHUNK, left + 1)):
                        left -= len(chunk)
                        if left < 0:
                            raise DownloadError(f"{archive}: member {m.filename!r} holds more than the "
                                                f"{m.file_size} bytes it declares; refusing to extract")
                        dst.write(chunk)
                os.replace(tmp, dest)
            except (OSError, zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as e:
                raise DownloadError(f"{archive}: member {m.filename!r} cannot be extracted to {dest} ({e})") from e
            out.append(dest)
    return sorted(out)


def _check_members(archive: Path, target: Path, members: list[zipfile.ZipInfo], max_bytes: int,
                   max_ratio: float) -> list[tuple[zipfile.ZipInfo, Path]]:
    """Every refusal of `safe_extract` that the central directory alone decides; returns
    (member, destination) for each file member."""
    files: dict[Path, zipfile.ZipInfo] = {}
    folders: set[Path] = set()
    total = 0
    for m in members:
        name = m.filename
        parts = Path(name.replace("\\", "/")).parts
        mode = m.external_attr >> 16
        is_drive = len(name) >= 2 and name[1] == ":" and name[0].isascii() and name[0].isalpha()
        if name.startswith(("/", "\\")) or ".." in parts or is_drive:
            raise DownloadError(f"{archive}: member {name!r} would escape {target}; refusing to extract")
        if (mode & 0o170000) == 0o120000:
            raise DownloadError(f"{archive}: member {name!r} is a symlink; refusing to extract")
        dest = (target / name).resolve()
        if not dest.is_relative_to(target):
            raise DownloadError(f"{archive}: member {name!r} would escape {target}; refusing to extract")
        if m.is_dir():
            folders.add(dest)
            continue
        if dest == target or not parts:
            raise DownloadError(f"{archive}: member {name!r} names no file inside {target}; refusing to extract")
        if m.flag_bits & 0x1:
            raise DownloadError(f"{archive}: member {name!r} is encrypted; refusing to extract (no password is known)")
        if m.compress_type not in _METHODS:
            raise DownloadError(f"{archive}: member {name!r} uses compression method {m.compress_type}, which "
                                f"cannot be read here (only {', '.join(_METHODS.values())})")
        if dest in files:
            raise DownloadError(f"{archive}: member {name!r} appears twice; refusing to extract")
        total += m.file_size
        if total > max_bytes:
            raise DownloadError(f"{archive}: members unpack to more than {max_bytes} bytes (the cap); refusing to extract")
        if m.file_size > RATIO_MIN_BYTES and m.file_size > max_ratio * max(1, m.compress_size):
            raise DownloadError(f"{archive}: member {name!r} unpacks {m.file_size} bytes from {m.compress_size} "
                                f"(over {max_ratio:g}:1, a zip bomb?); refusing to extract")
        files[dest] = m
    # A path that is a file for one member and a folder (named, or holding files) for another.
    parents = {p for dest in files for p in dest.parents if p != target and p.is_relative_to(target)}
    for dest in files:
        if dest in parents or dest in folders:
            raise DownloadError(f"{archive}: {dest.relative_to(target)} is both a file and a folder in the archive; "
                                "refusing to extract")
    return [(m, dest) for dest, m in files.items()]


def download(name: str, root: str | Path | None = None, registry: Mapping[str, Source] | None = None, progress: bool = True) -> Path:
    """Fetch corpus `name` into `<root>/<folder>`; returns that folder.

    Idempotent: a folder already marked complete (`.complete` with the archive hash) is left
    alone. Where no URL exists, raises DatasetMissingError with the manual steps.
    """
    registry = SOURCES if registry is None else registry
    if name == BUNDLED:
        raise DownloadError("'bundled' is not downloaded: it is converted from the music21 package (python -m remi.bundled)")
    if name not in registry:
        raise DownloadError(f"unknown dataset {name!r}; known: {', '.join(registry)}")
    src = registry[name]
    root = Path(root) if root is not None else default_data_dir()
    folder = root / src.folder
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    if src.url is None:
        if folder.is_dir() and any(iter_midi_files(folder)):
            marker.write_text(json.dumps({"source": name, "manual": True}))
            return folder
        raise DatasetMissingError(src.manual.format(folder=folder, root=root))
    archive = root / ".downloads" / src.url.rstrip("/").rsplit("/", 1)[-1]
    fetch(src.url, archive, src.size, src.sha256, progress=progress)
    digest = sha256_file(archive)
    if src.sha256 is None:
        # No official checksum is published for this archive: record the one we got (trust on
        # first use) so a later re-download that differs is noticed.
        record = archive.with_name(archive.name + ".sha256")
        if record.is_file() and record.read_text().split()[0] != digest:
            archive.unlink()
            raise DownloadError(
                f"{src.url}: SHA-256 {digest} differs from the one recorded at first download "
                f"({record}); the archive changed upstream or is corrupt"
            )
        record.write_text(f"{digest}  {archive.name}\n")
        print(f"note: no official SHA-256 is published for {name}; recorded {digest[:16]}… in {record}", file=sys.stderr)
    _remove_dead_extractions(root, src.folder)
    tmp = root / f".extract-{src.folder}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        safe_extract(archive, tmp)
    except BaseException as e:  # the folder goes whatever stopped us (Ctrl-C included)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, DownloadError) and src.sha256 is None:
            archive.unlink(missing_ok=True)  # cannot tell a corrupt archive from a changed one: fetch afresh next time
        raise
    (tmp / ".complete").write_text(json.dumps({"source": name, "url": src.url, "sha256": digest}))
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(folder)
    return folder


def _remove_dead_extractions(root: Path, folder: str) -> None:
    """`.extract-<folder>-<pid>` folders of downloads killed mid-extraction (their pid is gone)."""
    for p in root.glob(f".extract-{folder}-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            continue


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m remi.datasets", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="fetch a corpus into <root>/<name>")
    d.add_argument("name", choices=[*SOURCES, "all"])
    d.add_argument("--root", type=Path, default=None, help=f"data root (default {default_data_dir()}, $PIANOLM_DATA)")
    d.add_argument("--base-url", default=None, help="replace each archive URL's scheme+host+path prefix (mirrors, tests)")
    sub.add_parser("list", help="the registry")
    args = p.parse_args(argv)
    if args.cmd == "list":
        for s in SOURCES.values():
            print(f"{s.name:10} {s.title:28} {s.url or '(manual download)'}")
        return 0
    registry = dict(SOURCES)
    if args.base_url:
        registry = {k: _rebase(s, args.base_url) for k, s in registry.items()}
    names = list(SOURCES) if args.name == "all" else [args.name]
    rc = 0
    for name in names:
        try:
            folder = download(name, args.root, registry)
            print(f"{name}: {sum(1 for _ in iter_midi_files(folder))} MIDI files in {folder}")
        except (DownloadError, DatasetMissingError) as e:
            print(f"{name}: {e}", file=sys.stderr)
            rc = 1
    return rc


def _rebase(src: Source, base_url: str) -> Source:
    if src.url is None:
        return src
    from dataclasses import replace

    return replace(src, url=base_url.rstrip("/") + "/" + src.url.rsplit("/", 1)[-1])


if __name__ == "__main__":
    sys.exit(main())
