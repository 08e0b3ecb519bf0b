"""Hostile MIDI: time and memory of the reader and encoder on files built to be slow or large.

    .venv/bin/python benchmarks/bench_hostile.py [--repeat R] [--skip-big]

Rows (best of R, each in this process unless said; wall seconds, and CPU seconds of this process,
which a loaded machine inflates less):
- read 10^6 overlapping notes of one pitch (a 6 MB file; each note-off closes the earliest open
  note): `remi.read_midi` — target < 2 s on 2 cores (the list-based reader took 68 s);
- encode 4·10^5 time signatures (cycling meters a few ticks apart, so most collide on a bar
  line): `Tokenizer.encode` of the read Score, coarse config — target < 2 s (was ~10 s);
- encode 4·10^5 alternating meters (a meter change in every bar, the denominator alternating 4
  and 8, one note per bar: every bar is its own meter section), coarse config — target < 2 s
  (4·10^4 of them took 9-15 s before the per-section loops were vectorised);
- a 100 MB file of note pairs (~16.7·10^6 notes) read in a child process whose address space is
  capped at 2 GiB (`resource.setrlimit(RLIMIT_AS)`): it must end in success or `MidiReadError`,
  never another exception; prints the outcome, the time and the child's peak RSS.
Bounded memory through the whole encode (issue 29), each in a child process, coarse config:
- encode's peak memory per note over a file of `tokenizer.max_notes` (2·10^6) notes, each on
  its own grid position (`note_pairs(n, step=60)`): tracemalloc's peak (Python objects and
  numpy buffers) during `Tokenizer.encode_ids`, above what was allocated before it (the Score it
  is given, 32 bytes a note, is not counted), and the child's peak RSS (read and encode);
- the largest such file a process capped at 2 GiB of address space can read and encode
  (`max_notes` lifted; bisected over capped children to 1/16 of the bracket);
- 8·10^6 note pairs under the 2 GiB cap: with the default config (`max_notes` refuses it right
  after reading) and with `max_notes` lifted (the encoder runs out of memory): both must end in
  `MidiReadError` within 120 s; then `remi.corpus.prepare` (one worker, in the capped process) over a
  folder holding that file and three small ones, both ways: the three must be prepared and the
  big one skipped with its reason.
And, when ../shared/midi exists (`--skip-real` skips it): the largest real piece there (notes as
read, the count `max_notes` bounds), which the default limit must be far above.
The files are built as raw bytes by `tests/hostile.py`; the big ones are written under /tmp
and deleted afterwards.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tests_helper(name: str):
    """tests/<name>.py, the byte builders this benchmark shares with the hardening tests, loaded
    from its file: tests/ is not an installed package (remi, model, pianolm are)."""
    spec = importlib.util.spec_from_file_location(f"tests.{name}", ROOT / "tests" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CAP_BYTES = 2 << 30
_CHILD = textwrap.dedent("""
    import resource, time
    resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
    from remi import MidiReadError, read_midi
    t = time.perf_counter()
    try:
        score = read_midi({path!r})
        outcome = f"success, {{len(score)}} notes"
    except MidiReadError as e:
        outcome = f"MidiReadError: {{e.reason}}"
    except BaseException as e:
        outcome = f"OTHER {{type(e).__name__}}: {{e}}"
    dt = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{{outcome}}|{{dt:.2f}}|{{rss:.0f}}")
""")


# Issue 29's child: read and encode (or prepare a folder) under an address-space cap (0: none).
_CHILD_ENCODE = textwrap.dedent("""
    import dataclasses, resource, time, tracemalloc
    if {cap}:
        resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
    import remi
    tok = remi.Tokenizer.from_yaml({conf!r})
    if {max_notes}:
        tok = remi.Tokenizer(dataclasses.replace(tok.config, max_notes={max_notes}))
    t = time.perf_counter()
    try:
        if {mode!r} == "prepare":
            from remi.corpus import prepare
            from remi.corpus.datasets import DataConfig
            r = prepare.prepare(DataConfig(name="hostile", sources=({path!r},)), tok, cache_dir={cache!r},
                                workers=1, progress=False)
            files = sorted(f["file"] for f in r.manifest["files"])
            skipped = [s["file"] + ": " + s["reason"] for s in r.manifest["skipped"]]
            outcome = f"prepared {{files}}, skipped {{skipped}}"
        elif {mode!r} == "memory":
            score = remi.read_midi({path!r})
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            ids = tok.encode_ids(score)
            peak = tracemalloc.get_traced_memory()[1] - before
            tracemalloc.stop()
            outcome = f"{{len(score)}} {{peak / len(score):.0f}} {{len(ids)}}"
        else:
            ids = tok.encode({path!r})
            outcome = f"success, {{len(ids)}} ids"
    except remi.MidiReadError as e:
        outcome = f"MidiReadError: {{e}}"
    except BaseException as e:
        outcome = f"OTHER {{type(e).__name__}}: {{e}}"
    dt = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{{outcome}}|{{dt:.2f}}|{{rss:.0f}}")
""")


def run_child(path: Path, mode: str = "encode", cap: int = CAP_BYTES, max_notes: int = 0,
              cache: Path | None = None) -> tuple[str, float, float, float]:
    """(outcome, seconds inside the child, wall seconds with its start, peak RSS MB) of one
    `_CHILD_ENCODE` run; max_notes 0 keeps the config's."""
    code = _CHILD_ENCODE.format(cap=cap, conf=str(ROOT / "conf" / "tokenizer" / "coarse.yaml"),
                                max_notes=max_notes, mode=mode, path=str(path), cache=str(cache))
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_ENV)
    wall = time.perf_counter() - t
    line = (out.stdout.strip().splitlines() or [f"OTHER (exit {out.returncode}): {out.stderr.strip()[-300:]}|nan|nan"])[-1]
    outcome, dt, rss = line.rsplit("|", 2)
    return outcome, float(dt), wall, float(rss)


_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
LIFTED = 10**9  # max_notes "off"


def bounded_memory_rows(tmp: Path) -> None:
    from remi.config import DEFAULT_MAX_NOTES
    note_pairs = tests_helper("hostile").note_pairs
    midi_bytes = tests_helper("midi_bytes")
    midi_file, note_events, track = midi_bytes.midi_file, midi_bytes.note_events, midi_bytes.track

    big = tmp / "played.mid"
    big.write_bytes(note_pairs(DEFAULT_MAX_NOTES, step=60))
    outcome, dt, _, rss = run_child(big, "memory", cap=0)
    n, traced, n_ids = outcome.split()
    # Peak RSS is for the whole child (interpreter, read, encode): the reader's freed memory stays
    # in the heap and the encoder reuses it, so RSS growth over the encode alone says little.
    print(f"{'encode peak memory per note, %.0e notes (tracemalloc)' % int(n):<58}{dt:>9.2f}{'':>7}  "
          f"{traced} B/note above the Score ({n_ids} ids; child peak RSS {rss:.0f} MB reading and encoding)")

    def fits(n: int) -> bool:
        path = tmp / "probe.mid"
        path.write_bytes(note_pairs(n, step=60))
        outcome = run_child(path, "encode", max_notes=LIFTED)[0]
        if outcome.startswith("OTHER"):
            raise SystemExit(f"FAIL: {n} notes under the 2 GiB cap ended in another exception: {outcome}")
        return outcome.startswith("success")

    lo, hi = DEFAULT_MAX_NOTES, 8_000_000
    if not fits(lo) or fits(hi):
        raise SystemExit(f"FAIL: expected {lo} notes to fit in 2 GiB and {hi} not to")
    while hi - lo > (8_000_000 - DEFAULT_MAX_NOTES) // 16:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    print(f"{'largest file a 2 GiB process reads and encodes (notes)':<58}{'':>9}{'':>7}  "
          f"{lo} fit, {hi} do not (max_notes lifted)")

    huge = tmp / "hostile" / "0-eight-million.mid"  # first in the folder: the others come after its failure
    huge.parent.mkdir()
    huge.write_bytes(note_pairs(8_000_000))
    for k in range(3):
        notes = [(i * 240, i * 240 + 200, 48 + k + i, 80) for i in range(24)]
        (huge.parent / f"small{k}.mid").write_bytes(midi_file([track(note_events(notes))]))
    for max_notes, how in ((0, "default limit"), (LIFTED, "no limit")):
        outcome, dt, wall, rss = run_child(huge, "encode", max_notes=max_notes)
        ok = outcome.startswith("MidiReadError") and wall < 120
        print(f"{'encode 8e6 note pairs, 2 GiB cap, %s' % how:<58}{wall:>9.2f}{'':>7}  MidiReadError in < 120 s: "
              f"{'yes' if ok else 'NO'}: {outcome.split(': ', 2)[-1]} (peak RSS {rss:.0f} MB)")
        if not ok:
            raise SystemExit(f"FAIL: {outcome} after {wall:.1f} s")
        outcome, dt, wall, rss = run_child(huge.parent, "prepare", max_notes=max_notes, cache=tmp / f"cache{max_notes}")
        ok = outcome.startswith("prepared ['small0.mid', 'small1.mid', 'small2.mid'], skipped ['0-eight-million.mid: ")
        print(f"{'prepare it + 3 small files, 2 GiB cap, %s' % how:<58}{wall:>9.2f}{'':>7}  "
              f"the 3 prepared, it skipped: {'yes' if ok else 'NO'} (peak RSS {rss:.0f} MB)")
        if not ok:
            raise SystemExit(f"FAIL: {outcome}")


def largest_real_piece() -> None:
    import remi
    from remi.corpus.datasets import list_midi_files

    folder = Path(os.environ.get("PIANOLM_SHARED_MIDI", ROOT.parent / "shared" / "midi"))
    if not folder.is_dir():
        print(f"(no {folder}: largest real piece not measured)")
        return
    files = list_midi_files(folder)
    t = time.perf_counter()
    counts = []
    for path in files:
        try:
            counts.append((len(remi.read_midi(path)), path))
        except remi.MidiReadError:
            pass
    n, path = max(counts)
    print(f"{'largest real piece of %d files' % len(files):<58}{time.perf_counter() - t:>9.2f}{'':>7}  "
          f"{n} notes: {path.relative_to(folder)} ({len(files) - len(counts)} unreadable)")


def best_of(repeat: int, fn) -> tuple[float, float, object]:
    """(best wall seconds, best CPU seconds, last result) over `repeat` calls."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
    return best, best_cpu, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--skip-big", action="store_true", help="skip the capped and large-file rows (minutes)")
    p.add_argument("--skip-real", action="store_true", help="skip counting the notes of ../shared/midi")
    args = p.parse_args()

    import remi
    hostile = tests_helper("hostile")

    print(f"{'row':<58}{'seconds':>9}{'cpu s':>7}  target")
    data = hostile.overlapping_notes(1_000_000)
    t, c, score = best_of(args.repeat, lambda: remi.read_midi(data))
    assert len(score) == 1_000_000
    print(f"{'read 1e6 overlapping notes of one pitch (%.1f MB)' % (len(data) / 1e6):<58}{t:>9.2f}{c:>7.2f}  < 2 s")

    tok = remi.Tokenizer.from_file(ROOT / "conf" / "tokenizer" / "coarse.yaml")
    ts_score = remi.read_midi(hostile.many_time_signatures(400_000))
    t, c, _ = best_of(args.repeat, lambda: tok.encode(ts_score))
    print(f"{'encode 4e5 time signatures (coarse)':<58}{t:>9.2f}{c:>7.2f}  < 2 s")

    alt_score = remi.read_midi(hostile.alternating_meters(400_000))
    t, c, ids = best_of(args.repeat, lambda: tok.encode(alt_score))
    assert tok.count_notes(ids) == 400_000
    print(f"{'encode 4e5 alternating meters, one per bar (coarse)':<58}{t:>9.2f}{c:>7.2f}  < 2 s")

    if not args.skip_real:
        largest_real_piece()
    if args.skip_big:
        return
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = Path(tmp) / "big.mid"
        path.write_bytes(hostile.note_pairs(100_000_000 // 6))
        size = path.stat().st_size
        code = _CHILD.format(cap=CAP_BYTES, path=str(path))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        line = (out.stdout.strip().splitlines() or [f"OTHER (exit {out.returncode}): {out.stderr.strip()[-300:]}|nan|nan"])[-1]
        outcome, dt, rss = line.split("|")
        print(f"{'read %.0f MB of note pairs under a 2 GiB address-space cap' % (size / 1e6):<58}{float(dt):>9.2f}{'':>7}  "
              f"success or MidiReadError: {outcome} (peak RSS {rss} MB)")
        if outcome.startswith("OTHER"):
            raise SystemExit(f"FAIL: the capped read ended in another exception: {outcome}")
        path.unlink()
        bounded_memory_rows(Path(tmp))


if __name__ == "__main__":
    main()
