"""Corpus preparation throughput: 1 worker process vs all cores, and vs the tokenizer's own loop.

    .venv/bin/python benchmarks/bench_prepare.py [--folder DIR] [--tokenizer NAME] [--repeat R] [--copies K]

Rows, measured side by side (interleaved, best of R, each from an empty cache so every file is
really read and encoded):
- encode loop (peer): `[tok.encode(f) for f in files]` with `tok.count_notes` — the tokenizer's
  own loop, what one would write without remi.corpus.prepare (no hashing, caching or shard writing);
- prepare, 1 worker: `remi.corpus.prepare.prepare(..., workers=1)` — collect + hash, encode, per-file
  cache, shards + manifest;
- prepare, N workers: the same with N = all cores (`os.sched_getaffinity`).
It prints files/s and notes/s per row, the scaling ratio (1-worker time / N-worker time; target
>= 1.8 on 2 cores) and prepare-1-worker throughput / encode-loop throughput (target >= 1.0).
`--copies K` repeats the corpus K times, each copy made distinct by a trailing unknown chunk
(which MIDI readers skip), so short folders give runs long enough to time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = ROOT.parent / "shared" / "midi" / "tegridy-piano"


def build_corpus(src: Path, dest: Path, copies: int) -> list[Path]:
    """K copies of every MIDI file; each copy gets a distinct trailing (ignored) chunk, so content
    hashes differ and nothing is deduplicated or served from a cache."""
    from remi.corpus.datasets import list_midi_files

    files = list_midi_files(src)
    out = []
    for k in range(copies):
        d = dest / f"copy{k}"
        d.mkdir(parents=True)
        for f in files:
            data = f.read_bytes()
            if k:
                extra = f"copy {k}".encode()
                data += b"XTRA" + len(extra).to_bytes(4, "big") + extra  # an unknown chunk: readers skip it
            (d / f.name).write_bytes(data)
            out.append(d / f.name)
    return out


def time_encode_loop(tok, files) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    notes = done = 0
    for f in files:
        try:
            ids = tok.encode(f)
        except Exception:  # noqa: BLE001 — skipped, as prepare skips it
            continue
        notes += tok.count_notes(ids)
        done += 1
    return time.perf_counter() - t0, done, notes


def time_prepare(tok, folder: Path, workers: int, scratch: Path) -> tuple[float, int, int]:
    from remi.corpus import prepare
    from remi.corpus.datasets import DataConfig

    cache = scratch / f"cache-{workers}-{time.perf_counter_ns()}"
    t0 = time.perf_counter()
    r = prepare.prepare(DataConfig(name="bench", sources=(str(folder),)), tok, cache_dir=cache, workers=workers, progress=False)
    dt = time.perf_counter() - t0
    shutil.rmtree(cache, ignore_errors=True)
    return dt, r.manifest["total"]["files"], r.manifest["total"]["notes"]


def main(argv=None) -> int:
    from remi.corpus.pool import default_workers
    from remi.corpus.prepare import load_tokenizer

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    p.add_argument("--tokenizer", default="coarse")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--copies", type=int, default=8)
    p.add_argument("--workers", type=int, default=None, help="N for the parallel row (default: all cores)")
    args = p.parse_args(argv)
    if not args.folder.is_dir():
        print(f"no MIDI folder {args.folder}; pass --folder", file=sys.stderr)
        return 1
    tok = load_tokenizer(args.tokenizer)
    n_workers = args.workers or default_workers()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        files = build_corpus(args.folder, scratch / "corpus", args.copies)
        corpus = scratch / "corpus"
        print(f"corpus: {len(files)} files ({args.copies} x {args.folder}), tokenizer {args.tokenizer}, "
              f"{n_workers} workers, cores available {default_workers()}, load average {os.getloadavg()[0]:.1f}")
        best: dict[str, tuple[float, int, int]] = {}
        for _ in range(args.repeat):
            for name, fn in [
                ("encode loop (peer)", lambda: time_encode_loop(tok, files)),
                ("prepare, 1 worker", lambda: time_prepare(tok, corpus, 1, scratch)),
                (f"prepare, {n_workers} workers", lambda: time_prepare(tok, corpus, n_workers, scratch)),
            ]:
                r = fn()
                if name not in best or r[0] < best[name][0]:
                    best[name] = r
    print(f"{'row':<24}{'seconds':>9}{'files':>7}{'files/s':>9}{'notes/s':>11}")
    for name, (dt, n, notes) in best.items():
        print(f"{name:<24}{dt:>9.2f}{n:>7}{n / dt:>9.1f}{notes / dt:>11.0f}")
    t_peer = best["encode loop (peer)"][0]
    t1 = best["prepare, 1 worker"][0]
    tn = best[f"prepare, {n_workers} workers"][0]
    print(f"scaling {n_workers} workers / 1 worker: {t1 / tn:.2f}x  (target >= 1.8 on 2 cores)")
    print(f"prepare 1 worker / encode loop throughput: {t_peer / t1:.2f}x  (target >= 1.0)")
    print(f"load average after: {os.getloadavg()[0]:.1f} (other processes share these cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
