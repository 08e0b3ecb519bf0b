"""The offline corpus: public-domain scores shipped in the music21 package, converted to MIDI once.

`bundled_files(cache_dir)` converts (on first use, in parallel worker processes, with a progress
bar) and returns the MIDI files under `<cache_dir>/bundled/`, in a fixed order. Conversion is
resumable: each corpus file is one job whose MIDI files are written atomically and then a
`.done/<job>.json` marker listing them (and the pieces that failed, with reasons). A rerun skips
finished jobs. Key signatures stay in the MIDI as key_signature meta messages.

Which collections: the ones that convert fastest (CPU seconds per piece, measured) while still
giving well over 1,500 pieces — Bach chorales (four-part, with key signatures; ~0.3 s each),
O'Neill's 1850 ABC tune book (~2,000 tunes, ~0.13 s each), Monteverdi madrigals, the Northumbrian
minstrelsy and a handful of single pieces (Joplin, Schubert, Clara Schumann, Chopin, Corelli,
Handel, ...). Left out because they are slow: Palestrina (1,318 Humdrum masses), the trecento
mass movements (5-13 s each), the string quartets of Beethoven, Mozart, Haydn and Robert
Schumann (5-60 s per movement, many fail on repeat expansion), Aird's Airs (six 200-tune books,
one slow job each), Weber's concertino (40 s) and the Essen folk songs (slow opus files, ~20 %
fail in music21's MIDI writer). A job that still runs past JOB_TIMEOUT seconds is stopped,
reported as failed, and retried on the next run.

    python -m remi.bundled [--cache DIR] [--workers N] [--limit N]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..paths import default_cache_dir
from .pool import default_workers, pool_context

DONE = ".done"
JOB_TIMEOUT = 600  # seconds; a safety net far above any kept job (a timed-out job is retried next run)
# Collections of the music21 corpus (its top-level folders) and the suffixes we read there.
COLLECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bach", (".mxl", ".xml", ".krn")),
    ("oneills1850", (".abc",)),
    ("monteverdi", (".mxl", ".xml")),
    ("joplin", (".mxl", ".xml")),
    ("schumann_clara", (".mxl", ".xml")),
    ("chopin", (".mxl", ".xml", ".krn")),
    ("schubert", (".mxl", ".xml")),
    ("handel", (".mxl", ".xml")),
    ("corelli", (".mxl", ".xml")),
    ("cpebach", (".mxl", ".xml")),
    ("josquin", (".abc", ".mxl", ".xml")),
    ("luca", (".mxl", ".xml")),
    ("ciconia", (".mxl", ".xml")),
    ("beach", (".mxl", ".xml")),
    ("verdi", (".mxl", ".xml")),
    ("liliuokalani", (".mxl", ".xml")),
    ("johnson_j_r", (".mxl", ".xml")),
    ("miscFolk", (".abc",)),
)

# Single files that music21 converts pathologically slowly (measured CPU seconds): left out so the
# one-time conversion stays a few minutes on 2 cores.
SLOW_FILES = frozenset({
    "oneills1850/1031-1115.abc",  # 124 s for 85 tunes
    "oneills1850/0701-0720.abc",  # 25 s for 20 tunes
})


def bundled_dir(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "bundled"


@dataclass(frozen=True)
class Job:
    collection: str
    path: str  # absolute path of the music21 corpus file
    rel: str  # path relative to the collection folder

    @property
    def name(self) -> str:
        stem = self.rel.rsplit(".", 1)[0].replace("/", "_")
        return f"{self.collection}__{stem}"


def jobs() -> list[Job]:
    """Every conversion job, in the fixed order that defines the corpus order."""
    from music21 import corpus

    out = []
    for p in sorted(corpus.getPaths(), key=str):
        s = str(p).replace(os.sep, "/")
        if "/corpus/" not in s:
            continue
        rel = s.split("/corpus/", 1)[1]
        collection, _, inner = rel.partition("/")
        for name, suffixes in COLLECTIONS:
            if collection == name and p.suffix.lower() in suffixes and inner and rel not in SLOW_FILES:
                out.append(Job(collection, str(p), inner))
    # The same piece in two formats (bwv8.6.mxl and bwv8.6.krn): keep the collection's first suffix.
    suffixes = dict(COLLECTIONS)
    best: dict[str, Job] = {}
    for j in out:
        rank = suffixes[j.collection].index(Path(j.path).suffix.lower())
        if j.name not in best or rank < suffixes[j.collection].index(Path(best[j.name].path).suffix.lower()):
            best[j.name] = j
    order = {name: i for i, (name, _) in enumerate(COLLECTIONS)}
    return sorted(best.values(), key=lambda j: (order[j.collection], j.rel))


def convert_job(job: Job, out_dir: str, timeout: int | None = None) -> dict:
    """Parse one corpus file (a score or an ABC opus of many tunes), write one MIDI per piece.

    Returns {"job", "written": [relative paths], "failed": [[piece, reason]], "seconds"}; the
    marker written after the files makes the job count as finished on a rerun.
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = Path(out_dir)
    written, failed = [], []
    try:
        from music21 import converter, midi, stream

        if timeout:
            _alarm(timeout)
        # forceSource: parse the file itself; the default also pickles it into a scratch
        # folder for next time, which costs ~40 % of the parse and is never reused here
        parsed = converter.parse(job.path, forceSource=True)
        if isinstance(parsed, stream.Opus):
            pieces = []
            for i, sc in enumerate(parsed.scores):
                num = getattr(sc.metadata, "number", None) if sc.metadata is not None else None
                pieces.append((f"{job.name}-{i:04d}" + (f"-n{_clean(num)}" if num else ""), sc))
        else:
            pieces = [(job.name, parsed)]
        for piece, sc in pieces:
            try:
                if not any(True for _ in sc.recurse().notes):
                    failed.append([piece, "no notes"])
                    continue
                data = midi.translate.streamToMidiFile(sc).writestr()
                rel = f"{job.collection}/{piece}.mid"
                _write_atomic(out / rel, data)
                written.append(rel)
            except Exception as e:  # noqa: BLE001 — one bad piece must not stop the job
                failed.append([piece, f"{type(e).__name__}: {str(e)[:200]}"])
    except Exception as e:  # noqa: BLE001
        failed.append([job.name, f"parse failed: {type(e).__name__}: {str(e)[:200]}"])
    except JobTimeout:
        # no marker: a timeout says more about the machine's load than the piece; retry next run
        return {"job": job.name, "written": [], "failed": [[job.name, f"timed out after {timeout} s"]], "timeout": True}
    finally:
        if timeout:
            _alarm(0)
    result = {
        "job": job.name,
        "written": written,
        "failed": failed,
        "seconds": round(time.perf_counter() - t0, 3),
        "cpu_seconds": round(time.process_time() - cpu0, 3),
    }
    _write_atomic(out / DONE / f"{job.name}.json", json.dumps(result).encode())
    return result


class JobTimeout(BaseException):  # not an Exception: the per-piece handler must not swallow it
    pass


def _on_alarm(signum, frame):
    raise JobTimeout("conversion took too long (JOB_TIMEOUT)")


def _alarm(seconds: int) -> None:
    """Arm (or with 0 disarm) a SIGALRM that interrupts a runaway music21 parse (Unix only)."""
    import signal

    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(seconds)


def _clean(x) -> str:
    return "".join(c for c in str(x) if c.isalnum() or c in "-_")[:20]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _convert_star(args):
    return convert_job(*args)


def convert(
    cache_dir: str | Path | None = None,
    limit: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Convert every job not yet done (with `limit`: jobs in order until >= limit pieces exist).

    Returns {"dir", "files": [Path, in corpus order], "failed": [[piece, reason]], "seconds",
    "converted_jobs"}.
    """
    from tqdm import tqdm

    out = bundled_dir(cache_dir)
    all_jobs = jobs()
    t0 = time.perf_counter()
    done = _read_markers(out, all_jobs)
    if limit is not None:  # the shortest prefix of jobs that can give `limit` pieces
        need, have = [], 0
        for j in all_jobs:
            need.append(j)
            have += len(done[j.name]["written"]) if j.name in done else 1  # unknown: at least one
            if have >= limit:
                break
        todo_jobs = need
    else:
        todo_jobs = all_jobs
    todo = [j for j in todo_jobs if j.name not in done]
    if todo:
        workers = max(1, min(workers or default_workers(), len(todo)))
        bar = tqdm(total=len(todo), desc=f"music21 -> MIDI ({workers} proc)", unit="file", disable=not progress, file=sys.stderr)
        # Big files first, so no worker is left with a long one at the end.
        todo_sorted = sorted(todo, key=lambda j: -Path(j.path).stat().st_size)
        if workers == 1:
            for j in todo_sorted:
                done[j.name] = convert_job(j, str(out))
                bar.update()
        else:
            with pool_context().Pool(workers) as pool:
                for r in pool.imap_unordered(_convert_star, [(j, str(out), JOB_TIMEOUT) for j in todo_sorted], chunksize=1):
                    done[r["job"]] = r
                    bar.update()
        bar.close()
        # with `limit`, a job may have given fewer pieces than estimated: go round again
        if limit is not None and sum(len(done[j.name]["written"]) for j in todo_jobs) < limit and len(todo_jobs) < len(all_jobs):
            return convert(cache_dir, limit, workers, progress)
    files, failed = [], []
    for j in todo_jobs:
        files += [out / rel for rel in done[j.name]["written"]]
        failed += done[j.name]["failed"]
    if limit is not None:
        files = files[:limit]
    seconds = time.perf_counter() - t0
    if todo and limit is None:
        summary = {"pieces": len(files), "failed": len(failed), "jobs": len(all_jobs), "seconds_last_run": round(seconds, 1)}
        _write_atomic(out / "conversion.json", json.dumps(summary, indent=1).encode())
    return {"dir": out, "files": files, "failed": failed, "seconds": seconds, "converted_jobs": len(todo)}


def bundled_files(cache_dir: str | Path | None = None, limit: int | None = None, workers: int | None = None, progress: bool = True) -> list[Path]:
    """The bundled corpus as MIDI files (converted on first use), in corpus order."""
    return convert(cache_dir, limit, workers, progress)["files"]


def _read_markers(out: Path, all_jobs: list[Job]) -> dict[str, dict]:
    done = {}
    for j in all_jobs:
        marker = out / DONE / f"{j.name}.json"
        if marker.is_file():
            try:
                r = json.loads(marker.read_text())
            except json.JSONDecodeError:
                continue
            if all((out / rel).is_file() for rel in r["written"]):
                done[j.name] = r
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m remi.bundled", description="convert the music21 corpus to MIDI (once)")
    p.add_argument("--cache", type=Path, default=None, help="cache root (default $PIANOLM_CACHE or ~/.cache/pianolm)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--limit", type=int, default=None)
    args = p.parse_args(argv)
    r = convert(args.cache, args.limit, args.workers)
    print(f"{len(r['files'])} pieces in {r['dir']} ({len(r['failed'])} failed; {r['converted_jobs']} files converted in {r['seconds']:.1f} s)")
    for piece, reason in r["failed"]:
        print(f"  failed: {piece}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
