"""Token shards on disk: one flat token array per split, song offsets, note counts, a manifest.

A shard folder is complete exactly when its `manifest.json` exists: writers build the folder
under a temporary name, write the manifest last and rename the folder into place, so a killed
preparation never leaves a folder that looks complete (and the next writer removes the
temporary folders that killed writers left). Readers check every file's byte size and SHA-256
against the manifest, the tokenizer hash against the caller's, and that offsets rise and ids
lie inside the vocabulary, so a truncated, damaged or stale shard is a `ShardError`, never
silently read.

Layout of `<dir>/`, per split in SPLITS:
    {split}.bin        flat token ids (uint16, or uint32 if vocab > 65535), songs concatenated
    {split}.idx.npy    int64 song offsets into .bin, length n_songs + 1 (offsets[0] == 0)
    {split}.notes.npy  int64 note count per song (for bits per note)
    manifest.json      tokenizer JSON + hash, dtype, per-split counts, byte sizes and SHA-256, sources...
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: each file's SHA-256 in the manifest


class ShardError(RuntimeError):
    """A shard folder that is missing, incomplete, truncated, damaged or built for another tokenizer."""


@dataclass(frozen=True)
class ShardSplit:
    """One split of a shard folder. `tokens[offsets[i]:offsets[i+1]]` is song i (BOS ... EOS)."""

    tokens: np.ndarray  # (n_tokens,) uint16/uint32 memmap
    offsets: np.ndarray  # (n_songs + 1,) int64
    notes: np.ndarray  # (n_songs,) int64

    @property
    def n_songs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def song(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]])

    def __len__(self) -> int:
        return self.n_songs


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 holds ids < 65536; a larger vocabulary needs uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def split_files(split: str) -> tuple[str, str, str]:
    return f"{split}.bin", f"{split}.idx.npy", f"{split}.notes.npy"


def write_split(folder: Path, split: str, songs: Sequence[np.ndarray], notes: Sequence[int], dtype: np.dtype) -> dict:
    """Write one split's three files into `folder` (a temporary folder); returns its manifest entry."""
    if len(songs) != len(notes):
        raise ValueError(f"split {split!r}: {len(songs)} songs but {len(notes)} note counts")
    folder = Path(folder)
    bin_name, idx_name, notes_name = split_files(split)
    lengths = np.fromiter((len(s) for s in songs), dtype=np.int64, count=len(songs))
    offsets = np.zeros(len(songs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    vmax = np.iinfo(dtype).max
    with open(folder / bin_name, "wb") as f:
        for s in songs:
            arr = np.asarray(s)
            if arr.size and (arr.min() < 0 or arr.max() > vmax):
                raise ValueError(f"split {split!r}: token id out of range for {dtype} (max {vmax})")
            f.write(arr.astype(dtype, copy=False).tobytes())
    np.save(folder / idx_name, offsets)
    np.save(folder / notes_name, np.asarray(notes, dtype=np.int64))
    names = (bin_name, idx_name, notes_name)
    return {
        "songs": int(len(songs)),
        "tokens": int(offsets[-1]),
        "notes": int(np.sum(notes, dtype=np.int64)) if len(notes) else 0,
        "bytes": {name: (folder / name).stat().st_size for name in names},
        "sha256": {name: file_sha256(folder / name) for name in names},
    }


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def remove_stale_temporaries(parent: Path) -> list[Path]:
    """Delete the `.tmp-*` / `.old-*` folders that writers killed with SIGKILL left in `parent`:
    each name ends in its writer's host and pid, and a pid no longer running on this host cannot
    finish it (a folder from another host, on a shared disk, is left alone). Returns what was removed."""
    removed = []
    for p in Path(parent).glob(".*"):
        if not p.name.startswith((".tmp-", ".old-")):
            continue
        host, _, pid = p.name.rpartition("@")[2].partition("-")
        if host != _HOST or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


_HOST = socket.gethostname().replace("-", "_").replace("@", "_")


def _temp_name(kind: str, final_dir: Path) -> Path:
    return final_dir.with_name(f".{kind}-{final_dir.name}@{_HOST}-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def write_shards(
    final_dir: Path,
    splits: Mapping[str, tuple[Sequence[np.ndarray], Sequence[int]]],
    vocab_size: int,
    manifest: Mapping[str, Any],
) -> Path:
    """Write every split and the manifest to a temporary folder, then rename it to `final_dir`.

    `splits[name] = (songs, note_counts)`. `manifest` is extended with format, dtype and the
    per-split counts/byte sizes. An existing complete `final_dir` is replaced.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final_dir.parent)
    tmp = _temp_name("tmp", final_dir)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    dtype = dtype_for_vocab(vocab_size)
    entries = {}
    try:
        for split in SPLITS:
            songs, notes = splits.get(split, ([], []))
            entries[split] = write_split(tmp, split, songs, notes, dtype)
        full = dict(manifest)
        full.update({"format": FORMAT_VERSION, "dtype": dtype.name, "vocab_size": int(vocab_size), "splits": entries})
        _write_json_atomic(tmp / MANIFEST, full)  # last: its presence marks the folder complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final_dir.exists():  # stale or concurrent copy: ours replaces it
        old = _temp_name("old", final_dir)
        final_dir.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(final_dir)
    return final_dir


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{folder} is not a complete shard folder (no {MANIFEST}); prepare it with `python -m remi.prepare`")
    try:
        m = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:  # binary junk, or text that is not JSON
        raise ShardError(f"{path} is not valid JSON ({e}); delete {folder} and prepare again") from None
    except OSError as e:
        raise ShardError(f"{path} cannot be read ({e.strerror or e}); delete {folder} and prepare again") from None
    if not isinstance(m, dict):
        raise ShardError(f"{path} holds a JSON {type(m).__name__}, not the manifest object; delete {folder} and prepare again")
    check_manifest(m, path)
    return m


_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_manifest(m: dict, path: str | Path) -> None:
    """The manifest's schema, checked wherever it is read (`read_manifest`): a field of the wrong
    type or value is a ShardError naming it, so a folder whose manifest says `"songs": "7"` or
    `"dtype": "uint8"` is never counted complete, reused, or read."""
    if m.get("format") != FORMAT_VERSION:
        raise ShardError(f"{path}: shard format {m.get('format')!r} != {FORMAT_VERSION}; prepare it again")

    def need(ok: bool, field: str, value: Any, want: str) -> None:
        if not ok:
            raise ShardError(f"{path}: field {field} is {value!r:.80}, not {want} (a damaged or hand-edited "
                             f"manifest); delete {Path(path).parent} and prepare again")

    vocab_size = m.get("vocab_size")
    need(_is_count(vocab_size) and vocab_size >= 1, "vocab_size", vocab_size, "an integer >= 1")
    want_dtype = dtype_for_vocab(vocab_size).name
    need(m.get("dtype") == want_dtype, "dtype", m.get("dtype"), f"{want_dtype!r} (what a vocabulary of {vocab_size} is written as)")
    for field in ("tokenizer_hash", "key"):
        if field in m:
            need(isinstance(m[field], str), field, m[field], "a string")
    for field in ("stats", "total"):  # remi.corpus.prepare's fields (a folder of plain write_shards may lack them)
        if field in m:
            need(isinstance(m[field], dict), field, m[field], "an object")
    for field in ("skipped", "files"):
        if field in m:
            need(isinstance(m[field], list) and all(isinstance(x, dict) for x in m[field]), field, m[field], "a list of objects")
    splits = m.get("splits")
    need(isinstance(splits, dict), "splits", splits, "an object with one entry per split")
    for split in SPLITS:
        entry = splits.get(split)
        need(isinstance(entry, dict), f"splits.{split}", entry, "an object")
        for field in ("songs", "tokens", "notes"):
            need(_is_count(entry.get(field)), f"splits.{split}.{field}", entry.get(field), "an integer >= 0")
        for field, ok, want in (("bytes", _is_count, "an integer >= 0"),
                                ("sha256", lambda v: isinstance(v, str) and _SHA256.fullmatch(v), "64 hex digits")):
            table = entry.get(field)
            need(isinstance(table, dict), f"splits.{split}.{field}", table, "an object keyed by file name")
            for name in split_files(split):
                need(ok(table.get(name)), f"splits.{split}.{field}.{name}", table.get(name), want)


def _is_count(value: Any) -> bool:
    """An int >= 0 as JSON gives it (bool, a subclass of int, and floats are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def verify(folder: str | Path, expect_hash: str | None = None, key: str | None = None) -> dict:
    """Check a shard folder without loading it: manifest present and well-formed, tokenizer hash
    and cache key as expected, every file's byte size and SHA-256 as recorded (reads every byte:
    ~0.1 s per 100 MB). Returns the manifest; raises ShardError."""
    folder = Path(folder)
    m = read_manifest(folder)
    try:
        _verify(folder, m, expect_hash, key)
    except (KeyError, TypeError, AttributeError, ValueError) as e:  # a manifest with the wrong shape
        raise ShardError(f"{folder / MANIFEST} is malformed ({type(e).__name__}: {e}); "
                         "delete the folder and prepare again") from None
    return m


def _verify(folder: Path, m: dict, expect_hash: str | None, key: str | None) -> None:
    # the manifest's schema (format, dtype, field types) was checked when it was read
    if expect_hash is not None and m.get("tokenizer_hash") != expect_hash:
        raise ShardError(
            f"{folder} was built with tokenizer {str(m.get('tokenizer_hash'))[:12]}, "
            f"not {expect_hash[:12]}: shards and tokenizer do not match"
        )
    if key is not None and m.get("key") != key:
        raise ShardError(f"{folder}: cache key {m.get('key')} != expected {key}; prepare it again")
    for split in SPLITS:
        entry = m["splits"][split]
        for name in split_files(split):
            path, size = folder / name, entry["bytes"][name]
            actual = path.stat().st_size if path.is_file() else None
            if actual != size:
                raise ShardError(
                    f"{path}: {'missing' if actual is None else f'{actual} bytes'}, manifest says {size} bytes "
                    "(truncated or modified shard); delete the folder and prepare again"
                )
            if file_sha256(path) != entry["sha256"][name]:
                raise ShardError(f"{path}: content differs from the SHA-256 in its manifest (damaged or modified "
                                 "shard); delete the folder and prepare again")


def load_split(folder: str | Path, split: str, expect_hash: str | None = None) -> ShardSplit:
    """Memory-map one split of a verified shard folder."""
    folder = Path(folder)
    m = verify(folder, expect_hash)
    if split not in m["splits"]:
        raise ShardError(f"{folder}: no split {split!r} (have {sorted(m['splits'])})")
    entry = m["splits"][split]
    bin_name, idx_name, notes_name = split_files(split)
    offsets, notes = _load_npy(folder / idx_name), _load_npy(folder / notes_name)
    dtype = np.dtype(m["dtype"])
    n_tokens = entry["tokens"]
    if (offsets.ndim != 1 or notes.ndim != 1 or len(offsets) != entry["songs"] + 1 or len(notes) != entry["songs"]
            or int(offsets[-1]) != n_tokens):
        raise ShardError(f"{folder}/{split}: offsets/notes disagree with the manifest; prepare it again")
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or np.any(notes < 0):
        raise ShardError(f"{folder}/{idx_name}: song offsets do not rise from 0 (or a note count is negative); "
                         "delete the folder and prepare again")
    if n_tokens * dtype.itemsize != entry["bytes"][bin_name]:
        raise ShardError(f"{folder}/{bin_name}: size does not match {n_tokens} {dtype} tokens")
    if n_tokens:
        tokens = np.memmap(folder / bin_name, dtype=dtype, mode="r", shape=(n_tokens,))
        vocab_size = int(m.get("vocab_size", np.iinfo(dtype).max + 1))
        if int(tokens.max()) >= vocab_size:
            raise ShardError(f"{folder}/{bin_name}: token id {int(tokens.max())} is outside the vocabulary "
                             f"(size {vocab_size}); delete the folder and prepare again")
    else:  # np.memmap refuses empty files
        tokens = np.zeros(0, dtype=dtype)
    return ShardSplit(tokens=tokens, offsets=offsets, notes=notes)


def _load_npy(path: Path) -> np.ndarray:
    """An int64 .npy (never pickles); a damaged header or body is a ShardError."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ShardError(f"{path} is not a readable .npy ({e}); delete the folder and prepare again") from None
    if arr.dtype != np.int64:
        raise ShardError(f"{path} holds {arr.dtype}, not int64; delete the folder and prepare again")
    return arr


def is_complete(folder: str | Path, expect_hash: str | None = None, key: str | None = None) -> bool:
    try:
        verify(folder, expect_hash, key)
        return True
    except (ShardError, OSError):
        return False


def iter_songs(split: ShardSplit) -> Iterable[np.ndarray]:
    for i in range(split.n_songs):
        yield split.song(i)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False))
    os.replace(tmp, path)
