"""Corpus preparation: MIDI folders -> token shards, in parallel, cached, resumable.

    python -m remi.prepare SOURCE... --tokenizer NAME [--out DIR] [--workers N] [--json]

The steps, each a plain function:
1. `collect`   — list every source's MIDI files (sorted), hash their content, give each a split
                 (MAESTRO's official one, else a stable content hash) and drop repeats of a
                 content hash seen earlier (counted per source).
2. `tokenize`  — encode every file in worker processes, each file within `data.file_timeout`
                 seconds (a worker over it is interrupted, or killed and replaced; the file is
                 skipped with the bound as its reason). Each file's result (ids, notes,
                 seconds, or the reason it was skipped) is cached under
                 `<cache>/files/<tokenizer+code key>/`, keyed by content hash, so a killed run
                 resumes where it stopped and a second corpus sharing files reuses them.
3. `prepare`   — write the shard folder `<out>/<name>-<key>/` atomically (remi.shards); `key`
                 hashes the tokenizer, the tokenizer code, the data selection and the file list
                 with content hashes, so a changed config, tokenizer or corpus never reads an
                 old shard: it gets a new folder (and a damaged folder is rebuilt).
`prepare_for_training` adds BPE: base shards, BPE trained on their train split (cached), then
BPE shards re-encoded from the base shards' ids (no MIDI read twice).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import re
import signal
import struct
import sys
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import shards
from ..midi_read import MidiReadError, read_midi
from ..paths import default_cache_dir, default_conf_dir, default_data_dir
from ..tokenizer import Tokenizer
from .bundled import bundled_dir, bundled_files
from .datasets import BUNDLED, SOURCES, DataConfig, list_midi_files, maestro_splits, source_folder
from .pool import default_workers, pool_context

# The modules whose code decides a file's base ids (their source is part of every cache key):
# files of the tokenizer core, remi/, one folder above this one.
ENCODER_MODULES = ("score.py", "midi_read.py", "config.py", "vocab.py", "encode.py", "keys.py", "tokenizer.py")  # keys: Key tokens
STAT_KEYS = ("files", "skipped", "duplicates", "notes", "tokens", "hours")


# --------------------------------------------------------------------------- 1. collect


@dataclass(frozen=True)
class FileEntry:
    source: str
    path: str  # absolute
    rel: str  # relative to the source folder, POSIX
    sha256: str
    split: str  # train / val / test


@dataclass
class Collection:
    entries: list[FileEntry]
    duplicates: dict[str, list[list[str]]]  # source -> [[rel, first source, first rel], ...]
    folders: dict[str, str]


def _unit(tag: str, sha: str) -> float:
    """A number in [0, 1) fixed by the file content alone (so adding files never moves old ones)."""
    return int(hashlib.sha256(f"{tag}:{sha}".encode()).hexdigest()[:15], 16) / 16**15


def hash_split(sha: str, val_fraction: float, test_fraction: float) -> str:
    u = _unit("split", sha)
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def in_fraction(sha: str, fraction: float, seed: str | int = 0) -> bool:
    """Whether a file with content hash `sha` is among the `fraction` that `data.fraction` keeps."""
    return fraction >= 1 or _unit(str(seed), sha) < fraction


def collect(
    cfg: DataConfig,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Collection:
    """Every file of the active sources, in source order then sorted path, with split assigned."""
    entries: list[FileEntry] = []
    seen: dict[str, FileEntry] = {}
    duplicates: dict[str, list[list[str]]] = {}
    folders: dict[str, str] = {}
    for name in cfg.active_sources():
        if name == BUNDLED:
            folder = bundled_dir(cache_dir)
            files = bundled_files(cache_dir, limit=cfg.limit, workers=workers, progress=progress)
        else:
            folder = source_folder(name, data_dir, cache_dir)
            files = list_midi_files(folder)
            if cfg.limit is not None:
                files = files[: cfg.limit]
        folders[name] = str(folder)
        official = maestro_splits(folder) if name in SOURCES and SOURCES[name].split == "maestro" else {}
        duplicates[name] = []
        resolved = Path(folder).resolve()
        for path in files:
            rel = path.relative_to(folder).as_posix()
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            if not in_fraction(sha, cfg.fraction, cfg.fraction_seed):
                continue
            if sha in seen:
                first = seen[sha]
                duplicates[name].append([rel, first.source, first.rel])
                continue
            split = official.get(rel) or hash_split(sha, cfg.val_fraction, cfg.test_fraction)
            e = FileEntry(name, str(resolved / rel), rel, sha, split)
            seen[sha] = e
            entries.append(e)
    return Collection(entries, duplicates, folders)


# --------------------------------------------------------------------------- 2. tokenize


@dataclass
class FileResult:
    ids: np.ndarray | None  # None when skipped
    notes: int = 0
    seconds: float = 0.0
    error: str | None = None


@functools.cache
def code_hash() -> str:
    """Hash of the tokenizer's source code: a changed encoder must not reuse cached results."""
    h = hashlib.sha256()
    core = Path(__file__).resolve().parents[1]  # remi/ (this file is remi/corpus/prepare.py)
    for name in ENCODER_MODULES:
        h.update(name.encode() + b"\0" + (core / name).read_bytes())  # a missing module is an error, not a skip
    return h.hexdigest()[:16]


RESULT_FORMAT = 2  # 2: records carry a CRC-32


def results_dir(cache_dir: str | Path, tok: Tokenizer) -> Path:
    return Path(cache_dir) / "files" / f"{tok.hash[:16]}-{code_hash()}-r{RESULT_FORMAT}"


# A result record's head: 32-byte content hash, int64 notes, int64 milliseconds, int64 n, and the
# CRC-32 of those and of the body.
_HEAD_STRUCT = struct.Struct("<32sqqqI")
_HEAD_FIELDS = struct.Struct("<32sqqq")


class ResultLog:
    """Per-file results, appended as they arrive to `<dir>/log-<pid>-<ns>.bin` (one file per
    writing process and run: the main process with one worker, else each worker process).

    Record: `_HEAD_STRUCT`, then (n >= 0) n uint32 ids or (n < 0) -n bytes of UTF-8 skip
    reason. A killed run leaves at most one incomplete record at the end of each log, which
    reading ignores; everything before it is reused, so a rerun resumes. Reading maps each log
    once; a result's ids are a view into it. A record whose CRC-32 does not match (a damaged
    disk or an edited file) is not used: the file is encoded again. A damaged length ends the
    scan of that log (later records are encoded again too).
    """

    def __init__(self, folder: Path, scan: bool = True):
        """scan=False: a writer only (a worker process), which need not index existing logs."""
        self.folder = Path(folder)
        self.index: dict[bytes, tuple[np.ndarray, int, int, int, int]] = {}  # sha -> (log bytes, offset, notes, ms, n)
        self._scanned: set[str] = set()
        self._out = None
        if scan:
            self.rescan()

    def rescan(self) -> None:
        """Index the logs written since the last scan (e.g. by worker processes)."""
        for log in sorted(self.folder.glob("log-*.bin")):
            if log.name not in self._scanned:
                self._scanned.add(log.name)
                self._scan(log)

    def _scan(self, log: Path) -> None:
        if log.stat().st_size == 0:
            return
        data = np.memmap(log, dtype=np.uint8, mode="r").view(np.ndarray)
        pos, size, hs = 0, len(data), _HEAD_STRUCT.size
        while pos + hs <= size:
            sha, notes, ms, n, crc = _HEAD_STRUCT.unpack_from(data, pos)
            body = n * 4 if n >= 0 else -n
            if pos + hs + body > size:
                break  # the incomplete last record of a killed run (or a damaged length)
            head = data[pos : pos + _HEAD_FIELDS.size]
            if zlib.crc32(data[pos + hs : pos + hs + body], zlib.crc32(head)) == crc and notes >= 0 and ms >= 0:
                self.index[sha] = (data, pos + hs, notes, ms, n)
            pos += hs + body

    def get(self, sha: str) -> FileResult | None:
        hit = self.index.get(bytes.fromhex(sha))
        if hit is None:
            return None
        data, offset, notes, ms, n = hit
        if n < 0:
            return FileResult(None, error=data[offset : offset - n].tobytes().decode("utf-8", "replace"))
        return FileResult(data[offset : offset + 4 * n].view("<u4"), notes, ms / 1000.0)

    def put(self, sha: str, r: FileResult) -> None:
        if self._out is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._out = open(self.folder / f"log-{os.getpid()}-{time.time_ns()}.bin", "ab")
        if r.ids is None:
            body = (r.error or "").encode("utf-8")
            n = -len(body)
        else:
            body = np.asarray(r.ids, dtype="<u4").tobytes()
            n = len(r.ids)
        fields = _HEAD_FIELDS.pack(bytes.fromhex(sha), r.notes, round(r.seconds * 1000), n)
        self._out.write(fields + struct.pack("<I", zlib.crc32(body, zlib.crc32(fields))) + body)

    def flush(self) -> None:
        if self._out is not None:
            self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


_TOK = None  # the worker process's tokenizer (set once by _init_worker)
_LOG: ResultLog | None = None  # the worker process's own result log


def _init_worker(tok_dict: dict, log_folder: str) -> None:
    global _TOK, _LOG
    _TOK = Tokenizer.from_dict(tok_dict)
    _LOG = ResultLog(Path(log_folder), scan=False)


def encode_file(path: str, tok: Tokenizer) -> FileResult:
    """One file -> ids, note count and length; any failure becomes a skip with its reason."""
    try:
        data = Path(path).read_bytes()
        if not data:
            return FileResult(None, error="empty file (0 bytes)")
        score = read_midi(data)
        # what tok.encode(score) returns, as an array; a piece over tokenizer.max_notes, or one
        # that runs out of memory, is a MidiReadError (a skip like any unreadable file)
        ids = tok.encode_ids(score)
        notes = int(tok.count_notes(ids))
        if notes == 0:
            return FileResult(None, error="no notes")
        return FileResult(ids, notes, float(score.seconds()))
    except MidiReadError as e:
        return FileResult(None, error=f"unreadable MIDI: {e}")
    except Exception as e:  # noqa: BLE001 — a corrupt file never aborts the run
        return FileResult(None, error=f"{type(e).__name__}: {e}")


class FileTimedOut(BaseException):
    """Raised by the SIGALRM handler in `_time_bound`. A BaseException, so that `encode_file`'s
    catch-all (which turns any failure into a skip) lets it through to the bound's owner."""


def timed_out_reason(seconds: float) -> str:
    return f"timed out: took longer than {seconds:g} s to read and encode (data.file_timeout)"


_TIMED_OUT = re.compile(r"timed out: took longer than ([0-9.e+-]+) s")
_DIED = "worker process died"  # a skip that a later run tries again (a crash may be transient)
# This many worker deaths in a row, with no file finished between them, is a broken worker
# (it cannot start), not hostile files: the run stops instead of skipping the whole corpus.
MAX_DEATHS_IN_A_ROW = 4

# A worker still busy this long past the bound (the interrupt did not land: a long call inside
# C code) is killed by the main process and replaced.
KILL_GRACE_S = 10.0
_QUEUED = 2  # files sent ahead to each worker


def _kill_after(timeout: float) -> float:
    return timeout * 1.25 + KILL_GRACE_S


@contextlib.contextmanager
def _time_bound(seconds: float | None):
    """Raise FileTimedOut in this thread after `seconds` (SIGALRM). A no-op without a bound,
    off the main thread, without SIGALRM (Windows), or while someone else's SIGALRM handler or
    timer is in place (e.g. pytest-timeout): the bound is never allowed to cancel another's."""
    if (not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, None) or signal.getitimer(signal.ITIMER_REAL)[0]):
        yield
        return

    def on_alarm(signum, frame):
        raise FileTimedOut

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def encode_bounded(path: str, tok: Tokenizer, timeout: float | None) -> FileResult:
    """`encode_file` within `timeout` seconds; over it, a skip naming the bound."""
    try:
        with _time_bound(timeout):
            return encode_file(path, tok)
    except FileTimedOut:
        return FileResult(None, error=timed_out_reason(timeout))  # type: ignore[arg-type]


def _worker_main(conn, tok_dict: dict, log_folder: str, timeout: float | None) -> None:
    """A worker process: receive (path, sha), append the file's result to the worker's own log
    (flushed, so a killed worker loses nothing finished), answer 1; None ends it. Only the
    count goes back: the main process has nothing to unpickle or write."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _init_worker(tok_dict, log_folder)
    try:
        while True:
            try:
                item = conn.recv()
            except EOFError:  # the main process is gone
                return
            if item is None:
                return
            path, sha = item
            _LOG.put(sha, encode_bounded(path, _TOK, timeout))
            _LOG.flush()
            conn.send(1)
    finally:
        _LOG.close()


def _encode_in_workers(items: list[tuple[str, str]], tok: Tokenizer, log: "ResultLog", workers: int,
                       timeout: float | None, on_done) -> None:
    """Encode (path, sha) items in `workers` processes, file by file (files differ 100x in
    length, so no worker is left alone with a long chunk at the end); each worker holds
    `_QUEUED` files, so it never waits for the main process between two. A worker past
    `_kill_after(timeout)` on one file, or one that dies (a crash, the OOM killer), is replaced;
    its file is recorded in `log` as skipped, with the reason, and the files queued behind it go
    back to the others. Results go to the workers' logs."""
    pool = _WorkerPool(items, tok, log, timeout, on_done)
    try:
        for slot in range(workers):
            pool.start(slot)
            pool.give(slot)
        while any(pool.queued.values()):
            busy = [s for s, q in pool.queued.items() if q]
            wait = None
            if timeout:
                wait = max(0.0, min(pool.started[s] for s in busy) + _kill_after(timeout) - time.monotonic())
            ready = mp.connection.wait([pool.procs[s][1] for s in busy], timeout=wait)
            for slot in [s for s in busy if pool.procs[s][1] in ready]:
                pool.answered(slot)
            if timeout:
                pool.replace_overdue(busy)
    finally:
        pool.close()


class _WorkerPool:
    """The worker processes of `_encode_in_workers`, one per slot, and the files each holds."""

    def __init__(self, items: list[tuple[str, str]], tok: Tokenizer, log: "ResultLog", timeout: float | None,
                 on_done) -> None:
        self.ctx = pool_context()
        self.worker_args = (tok.to_dict(), str(log.folder), timeout)
        self.log, self.timeout, self.on_done = log, timeout, on_done
        self.pending = deque(items)
        self.procs: dict[int, tuple[Any, Any]] = {}  # slot -> (process, connection)
        self.queued: dict[int, deque] = {}  # slot -> the items sent to it and not answered, oldest first
        self.started: dict[int, float] = {}  # slot -> when its oldest queued item started (monotonic)
        self.deaths_in_a_row = 0

    def start(self, slot: int) -> None:
        here, there = self.ctx.Pipe()
        p = self.ctx.Process(target=_worker_main, args=(there, *self.worker_args), daemon=True)
        p.start()
        there.close()
        self.procs[slot] = (p, here)

    def give(self, slot: int) -> None:
        """Send the slot's worker pending items until it holds `_QUEUED`."""
        q = self.queued.setdefault(slot, deque())
        if not q:
            self.started[slot] = time.monotonic()
        while self.pending and len(q) < _QUEUED:
            item = self.pending.popleft()
            q.append(item)
            try:
                self.procs[slot][1].send(item)
            except OSError:  # the worker is already dead: its connection reads EOF, handled below
                break

    def answered(self, slot: int) -> None:
        """The slot's connection is ready: its oldest file is done, or its worker died."""
        try:
            self.procs[slot][1].recv()
        except (EOFError, OSError):
            p = self.procs[slot][0]
            p.join(5)
            self.deaths_in_a_row += 1
            if self.deaths_in_a_row >= MAX_DEATHS_IN_A_ROW:
                raise RuntimeError(f"{self.deaths_in_a_row} worker processes died in a row (the last with exit code "
                                   f"{p.exitcode}) before finishing a file: they cannot start or run here; "
                                   "see their error output above, or rerun with --workers 1")
            self.replace(slot, f"{_DIED} (exit code {p.exitcode}) while encoding this file")
            return
        self.deaths_in_a_row = 0
        self.queued[slot].popleft()
        self.started[slot] = time.monotonic()  # the next queued file starts now
        self.on_done(1)
        self.give(slot)

    def replace_overdue(self, busy: list[int]) -> None:
        """Replace every worker of `busy` still on one file `_kill_after(timeout)` seconds on."""
        now, limit = time.monotonic(), _kill_after(self.timeout)
        for slot in [s for s in busy if self.queued.get(s) and now - self.started[s] > limit]:
            self.replace(slot, timed_out_reason(self.timeout) + f"; the worker was killed after {limit:g} s")

    def replace(self, slot: int, reason: str) -> None:
        """Kill the slot's worker, record its current file as skipped for `reason`, put the files
        queued behind it back in front, and start a new worker in the slot."""
        p, conn = self.procs.pop(slot)
        p.kill()
        p.join()
        conn.close()
        q = self.queued.pop(slot)
        _, sha = q.popleft()
        self.log.put(sha, FileResult(None, error=reason))
        self.on_done(1)
        self.pending.extendleft(reversed(q))
        self.start(slot)
        self.give(slot)

    def close(self) -> None:
        """Tell every worker to finish, then wait for it (killing one that does not stop)."""
        for p, conn in self.procs.values():
            with contextlib.suppress(OSError):
                conn.send(None)
        for p, conn in self.procs.values():
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
            conn.close()


def tokenize(
    entries: Sequence[FileEntry],
    tok: Tokenizer,
    cache_dir: str | Path,
    workers: int | None = None,
    progress: bool = True,
    timeout: float | None = None,
) -> list[FileResult]:
    """Encode every entry not in the result log (keyed by content hash), in worker processes,
    each file within `timeout` seconds (None: no bound); results in entry order."""
    from tqdm import tqdm

    log = ResultLog(results_dir(cache_dir, tok))
    results: list[FileResult | None] = [_usable(log.get(e.sha256), tok, timeout) for e in entries]
    todo = [i for i, r in enumerate(results) if r is None]
    workers = max(1, min(workers or default_workers(), len(todo) or 1))
    bar = tqdm(total=len(todo), desc=f"tokenize ({workers} proc)", unit="file", disable=not progress, file=sys.stderr)
    try:
        if workers == 1:
            for i in todo:  # in this process: the bound interrupts Python code only
                results[i] = r = encode_bounded(entries[i].path, tok, timeout)
                log.put(entries[i].sha256, r)
                bar.update()
        else:
            items = [(entries[i].path, entries[i].sha256) for i in todo]
            _encode_in_workers(items, tok, log, workers, timeout, bar.update)
            log.flush()  # the skips this process recorded for killed workers
            log.rescan()
            for i in todo:
                results[i] = log.get(entries[i].sha256)
                if results[i] is None:  # cannot happen unless a worker's log was lost
                    raise RuntimeError(f"no result for {entries[i].path} in {log.folder}; rerun to resume")
    finally:
        log.close()
        bar.close()
    return results  # type: ignore[return-value]


def _usable(r: FileResult | None, tok: Tokenizer, timeout: float | None = None) -> FileResult | None:
    """A cached result, or None (encode again) when its ids could not come from `tok`, or when it
    timed out under a lower bound than `timeout` (at the same or a lower bound it stays skipped:
    a resumed run does not try a hostile file forever)."""
    if r is not None and r.ids is None:
        m = _TIMED_OUT.match(r.error or "")
        if m and (timeout is None or timeout > float(m.group(1))) or (r.error or "").startswith(_DIED):
            return None
        return r
    if r is None or not len(r.ids):
        return r
    return r if int(r.ids.max()) < tok.vocab_size else None


# --------------------------------------------------------------------------- 3. shards


@dataclass
class Prepared:
    dir: Path
    manifest: dict
    reused: bool = False

    @property
    def stats(self) -> dict:
        return {"sources": self.manifest["stats"], "total": self.manifest["total"], "skipped": self.manifest["skipped"]}


def shard_key(tok: Tokenizer, cfg: DataConfig, entries: Sequence[FileEntry]) -> str:
    h = hashlib.sha256()
    # the name and the training windows' infill share select no file
    selection = {k: v for k, v in cfg.to_dict().items() if k not in ("name", "infill_share")}
    h.update(json.dumps({"tokenizer": tok.hash, "code": code_hash(), "data": selection, "format": shards.FORMAT_VERSION}, sort_keys=True).encode())
    for e in entries:
        # surrogateescape: a file name that is not UTF-8 hashes as its bytes
        h.update(f"{e.source}\0{e.rel}\0{e.sha256}\0{e.split}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def _empty_stats() -> dict:
    return {k: 0 for k in STAT_KEYS}


def _finish(stats: dict) -> dict:
    stats["hours"] = round(stats["hours"], 3)
    stats["tokens_per_note"] = round(stats["tokens"] / stats["notes"], 3) if stats["notes"] else 0.0
    return stats


def prepare(
    data_cfg: Mapping | DataConfig,
    tok: Tokenizer,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Prepared:
    """Shards for `data_cfg` under `tok`, reused when an intact folder with the same key exists."""
    cfg = DataConfig.from_mapping(data_cfg)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out_dir = Path(out_dir) if out_dir is not None else cache_dir / "shards"
    col = collect(cfg, data_dir, cache_dir, workers, progress)
    key = shard_key(tok, cfg, col.entries)
    final = out_dir / f"{cfg.name}-{key}"
    if shards.is_complete(final, tok.hash, key):
        manifest = shards.read_manifest(final)
        # reused, unless a worker died on some file: that file is tried again (below)
        if not any(str(s.get("reason", "")).startswith(_DIED) for s in manifest["skipped"]):
            return Prepared(final, manifest, reused=True)
    results = tokenize(col.entries, tok, cache_dir, workers, progress, timeout=cfg.file_timeout)
    return _write(final, key, cfg, tok, col, results)


def _write(final: Path, key: str, cfg: DataConfig, tok: Tokenizer, col: Collection, results: Sequence[FileResult]) -> Prepared:
    stats = {name: _empty_stats() for name in cfg.active_sources()}
    for name, dups in col.duplicates.items():
        stats[name]["duplicates"] = len(dups)
    split_songs: dict[str, tuple[list[np.ndarray], list[int]]] = {s: ([], []) for s in shards.SPLITS}
    skipped, files = [], []
    for e, r in zip(col.entries, results):
        s = stats[e.source]
        if r.ids is None:
            s["skipped"] += 1
            skipped.append({"source": e.source, "file": e.rel, "sha256": e.sha256, "reason": r.error})
            continue
        s["files"] += 1
        s["notes"] += r.notes
        s["tokens"] += len(r.ids)
        s["hours"] += r.seconds / 3600.0
        songs, notes = split_songs[e.split]
        songs.append(r.ids)
        notes.append(r.notes)
        files.append({"source": e.source, "file": e.rel, "sha256": e.sha256, "split": e.split, "notes": r.notes, "tokens": len(r.ids)})
    total = _empty_stats()
    for s in stats.values():
        for k in STAT_KEYS:
            total[k] += s[k]
        _finish(s)
    _finish(total)
    manifest = {
        "name": cfg.name,
        "key": key,
        "tokenizer": tok.to_dict(),
        "tokenizer_hash": tok.hash,
        "code_hash": code_hash(),
        "data": cfg.to_dict(),
        "sources": {name: {"folder": col.folders.get(name)} for name in cfg.active_sources()},
        "stats": stats,
        "total": total,
        "duplicates": col.duplicates,
        "skipped": skipped,
        "files": files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    shards.write_shards(final, split_songs, tok.vocab_size, manifest)
    return Prepared(final, shards.read_manifest(final))


# --------------------------------------------------------------------------- training entry


def base_tokenizer(tok: Tokenizer) -> Tokenizer:
    """The BPE-free tokenizer of the same config (base shards are shared by every BPE size)."""
    if tok.config.bpe_vocab_size == 0 and tok.bpe is None:
        return tok
    return Tokenizer(dataclasses.replace(tok.config, bpe_vocab_size=0))


def prepare_for_training(
    data_cfg: Mapping | DataConfig,
    tok: Tokenizer,
    data_dir: str | Path | None,
    cache_dir: str | Path | None,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[Tokenizer, Path]:
    """Base shards; with `tok.config.bpe_vocab_size > 0` also BPE (trained on the base train split,
    cached) and BPE shards. Returns (final tokenizer, shard folder)."""
    cfg = DataConfig.from_mapping(data_cfg)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base = base_tokenizer(tok)
    prepared = prepare(cfg, base, data_dir, cache_dir, workers=workers, progress=progress)
    vocab = int(tok.config.bpe_vocab_size or 0)
    if vocab <= 0:
        return base, prepared.dir
    return prepare_bpe(prepared, base, vocab, cache_dir, progress)


def prepare_bpe(prepared: Prepared, base: Tokenizer, vocab_size: int, cache_dir: Path,
                progress: bool = True) -> tuple[Tokenizer, Path]:
    """BPE tokenizer (cached by base shard key + size) and the base shards re-encoded with it."""
    base_key = prepared.manifest["key"]
    bpe_json = Path(cache_dir) / "bpe" / f"{base_key}-{vocab_size}.json"
    if bpe_json.is_file():
        tok = Tokenizer.load(bpe_json)
    else:
        tok = base.train_bpe(prepared.dir, vocab_size)
        bpe_json.parent.mkdir(parents=True, exist_ok=True)
        tmp = bpe_json.with_name(f".{bpe_json.name}.{os.getpid()}.tmp")
        tok.save(tmp)
        os.replace(tmp, bpe_json)
    final = prepared.dir.with_name(f"{prepared.dir.name}-bpe{vocab_size}-{tok.hash[:8]}")
    key = f"{base_key}-bpe{vocab_size}-{tok.hash[:16]}"
    if shards.is_complete(final, tok.hash, key):
        return tok, final
    split_songs = {}
    for split in shards.SPLITS:
        sh = shards.load_split(prepared.dir, split, expect_hash=base.hash)
        merged = tok.bpe.encode_batch(list(shards.iter_songs(sh)))
        split_songs[split] = ([np.asarray(m, dtype=np.int64) for m in merged], sh.notes.tolist())
    m = json.loads(json.dumps(prepared.manifest))  # deep copy
    for k in ("format", "dtype", "vocab_size", "splits"):
        m.pop(k, None)
    m.update({"key": key, "base_key": base_key, "tokenizer": tok.to_dict(), "tokenizer_hash": tok.hash, "bpe_vocab_size": vocab_size})
    # Token counts shrink with BPE: recount per file, per source and in total (files are listed
    # in song order within each split).
    cursor = {s: 0 for s in shards.SPLITS}
    for st in [*m["stats"].values(), m["total"]]:
        st["tokens"] = 0
    for f in m["files"]:
        n = len(split_songs[f["split"]][0][cursor[f["split"]]])
        cursor[f["split"]] += 1
        f["tokens"] = n
        m["stats"][f["source"]]["tokens"] += n
        m["total"]["tokens"] += n
    for st in [*m["stats"].values(), m["total"]]:
        _finish(st)
    shards.write_shards(final, split_songs, tok.vocab_size, m)
    return tok, final


# --------------------------------------------------------------------------- CLI


def load_tokenizer(name: str, conf_dir: str | Path | None = None) -> Tokenizer:
    """A `<conf_dir>/tokenizer` yaml name, a yaml path, or a tokenizer JSON path."""
    p = Path(name)
    if p.suffix == ".json" and p.is_file():
        return Tokenizer.load(p)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return Tokenizer.from_yaml(p)
    conf = Path(conf_dir or default_conf_dir()) / "tokenizer" / f"{name}.yaml"
    if conf.is_file():
        return Tokenizer.from_yaml(conf)
    avail = sorted(x.stem for x in conf.parent.glob("*.yaml")) if conf.parent.is_dir() else []
    raise SystemExit(f"--tokenizer {name!r}: not a tokenizer JSON/yaml file nor one of {conf.parent}/ {avail} "
                     "(pass --conf DIR or set $PIANOLM_CONF to the project's conf/ folder)")


def data_config_for(sources: Sequence[str], limit: int | None = None,
                    conf_dir: str | Path | None = None) -> DataConfig:
    """Dataset names (`<conf_dir>/data/NAME.yaml`) and folders -> one DataConfig over all of them."""
    conf_dir = Path(conf_dir or default_conf_dir()) / "data"
    names: list[str] = []
    base: dict = {}
    for s in sources:
        yaml_path = conf_dir / f"{s}.yaml"
        if not Path(s).is_dir() and yaml_path.is_file():
            d = _read_yaml(yaml_path)
            names += list(d.get("sources") or [s])
            if len(sources) == 1:
                base = d
        elif Path(s).is_dir() or s in SOURCES or s == BUNDLED:
            names.append(str(Path(s).resolve()) if Path(s).is_dir() else s)
        else:
            raise SystemExit(f"source {s!r}: not a dataset in {conf_dir}/ ({sorted(p.stem for p in conf_dir.glob('*.yaml'))}) nor a folder")
    label = "+".join(Path(s).name if Path(s).is_dir() else s for s in sources)
    d = {**base, "name": _safe_name(label), "sources": names}
    if limit is not None:
        d["limit"] = limit
    return DataConfig.from_mapping(d)


def _safe_name(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_+." else "_" for c in s)[:60] or "data"


def _read_yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # type: ignore[return-value]


def printable(text: str) -> str:
    """A file name as it can be printed: bytes that are not UTF-8 (kept by Python as lone
    surrogates) become `\\xNN` escapes instead of aborting the print with UnicodeEncodeError."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name decoding made
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def format_table(stats: Mapping[str, Mapping], total: Mapping) -> str:
    head = f"{'source':<24}{'files':>8}{'skipped':>9}{'dups':>6}{'notes':>12}{'tokens':>13}{'hours':>9}{'tok/note':>9}"
    lines = [head, "-" * len(head)]
    for name, s in [*stats.items(), ("total", total)]:
        if name == "total":
            lines.append("-" * len(head))
        label = printable(Path(name).name if "/" in name else name)
        lines.append(
            f"{label[:23]:<24}{s['files']:>8}{s['skipped']:>9}{s['duplicates']:>6}{s['notes']:>12}{s['tokens']:>13}"
            f"{s['hours']:>9.1f}{s['tokens_per_note']:>9.2f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m remi.prepare", description="MIDI corpora -> token shards")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="dataset name (conf/data/) or folder of MIDI files")
    p.add_argument("--tokenizer", required=True, metavar="NAME", help="conf/tokenizer name or tokenizer JSON")
    p.add_argument("--out", type=Path, default=None, help="shard root (default <cache>/shards)")
    p.add_argument("--cache", type=Path, default=None, help=f"cache root (default {default_cache_dir()}; $PIANOLM_CACHE)")
    p.add_argument("--data-dir", type=Path, default=None, help=f"corpus root (default {default_data_dir()}; $PIANOLM_DATA)")
    p.add_argument("--conf", type=Path, default=None, help=f"config folder for dataset and tokenizer names (default {default_conf_dir()}; $PIANOLM_CONF)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--limit", type=int, default=None, help="at most N files per source")
    p.add_argument("--file-timeout", type=float, default=None, metavar="SECONDS",
                   help="skip a file that takes longer to read and encode (default: the data config's "
                        f"file_timeout, {DataConfig.file_timeout:g} s; 0: no bound)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    tok = load_tokenizer(args.tokenizer, args.conf)
    cfg = data_config_for(args.sources, args.limit, args.conf)
    if args.file_timeout is not None:
        if not args.file_timeout >= 0:
            p.error(f"--file-timeout must be >= 0 (0: no bound), got {args.file_timeout}")
        cfg = dataclasses.replace(cfg, file_timeout=args.file_timeout or None)
    t0 = time.perf_counter()
    try:
        r = prepare(cfg, tok, args.data_dir, args.cache, args.out, args.workers, progress=not args.json)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = r.manifest
    if args.json:
        print(json.dumps({"dir": str(r.dir), "reused": r.reused, "sources": m["stats"], "total": m["total"], "skipped": m["skipped"]}))
    else:
        print(format_table(m["stats"], m["total"]))
        for s in m["skipped"]:
            print(printable(f"skipped {s['source']}/{s['file']}: {s['reason']}"))
        verb = "reused" if r.reused else f"written in {time.perf_counter() - t0:.1f} s"
        print(printable(f"shards: {r.dir} ({verb})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
