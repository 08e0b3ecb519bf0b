"""`python -m pianolm serve` under load: the real server in a subprocess on 127.0.0.1, and N clients
posting generations and polling their jobs for S seconds, while a probe times GET /api/info.

    .venv/bin/python benchmarks/bench_serve_load.py [--clients 32] [--seconds 30] [--warmup 5]
        [--ckpt CKPT] [--big-prompt-bars 40000] [--no-audio]

Each client posts a piece of one bar (every other one continuing a 2-bar prompt; client 0 a
1.4 MB prompt of 40,000 bars, whose reading takes ~1-2 s), polls its job every 0.2 s until it
is done and fetches its MIDI file; after a 429 it waits 0.2 s and posts again. The server runs
with its defaults (max_waiting 8, audio when a renderer is found) and --threads 1, on a tiny
random checkpoint unless --ckpt is given. Shared with tests/test_serve_load.py through
tests/serve_helpers.py (`run_load`).

Prints the requests by status, the 429s, the pieces made, the /api/info latency (p50, p99, max)
under load beside the same server idle just before (the peer), the longest queue seen against
max_waiting, and the server's RSS after the warm-up and at the end (the queue drained), with the
targets: no 5xx, queue <= max_waiting, RSS within 20%, p99 < 200 ms.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The load generator is the load test's own (tests/serve_helpers.py). tests/ is not installed: it is
# made importable as the package `tests` from its folder, wherever this script is started from.
_tests = types.ModuleType("tests")
_tests.__path__ = [str(ROOT / "tests")]
sys.modules.setdefault("tests", _tests)

from tests.serve_helpers import LoadReport, prompt_midi, run_load, running_server, tiny_checkpoint  # noqa: E402


def idle_latencies(server, n: int, every: float = 0.02) -> list[float]:
    """GET /api/info n times on the idle server, ms each (the peer of the loaded figures)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        server.get_json("/api/info")
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(every)
    return out


def others_running() -> list[str]:
    """Command lines of training jobs on this machine (train.py, ablate.py), read from /proc."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith((b"train.py", b"ablate.py")) for a in args):
            found.append(" ".join(a.decode(errors="replace") for a in args if a)[:100])
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=30.0, help="load after the warm-up")
    p.add_argument("--warmup", type=float, default=5.0, help="load before the RSS baseline and the latencies count")
    p.add_argument("--ckpt", type=Path, default=None, help="default: a tiny random checkpoint made here")
    p.add_argument("--big-prompt-bars", type=int, default=40_000, help="client 0's prompt (0: none)")
    p.add_argument("--no-audio", action="store_true", help="pass --no-audio to the server")
    args = p.parse_args(argv)

    load_before, others = os.getloadavg(), others_running()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        tmp = Path(tmp)
        (tmp / "cwd").mkdir()
        ckpt = args.ckpt or tiny_checkpoint(tmp / "tiny.ckpt")
        extra = ["--no-audio"] if args.no_audio else []
        with running_server(ckpt, "--workdir", str(tmp / "jobs"), *extra, cwd=tmp / "cwd") as server:
            info = server.get_json("/api/info")[1]
            idle = LoadReport(info_ms=idle_latencies(server, 200))
            big = prompt_midi(args.big_prompt_bars) if args.big_prompt_bars else None
            t0 = time.monotonic()
            r = run_load(server, clients=args.clients, seconds=args.seconds, warmup=args.warmup,
                         prompts=(None, prompt_midi(2)), big_prompt=big)
            took = time.monotonic() - t0
    load_after = os.getloadavg()

    max_waiting, p99 = info["limits"]["max_waiting"], r.percentile(99)
    change = (r.rss_end - r.rss_start) / r.rss_start
    five = sum(n for s, n in r.statuses.items() if s >= 500)
    print(f"machine: {os.cpu_count()} cores, load average {load_before[0]:.1f} before and {load_after[0]:.1f} after; "
          f"training jobs running: {len(others)}" + "".join(f"\n    {c}" for c in others))
    print(f"server: {ckpt if args.ckpt else 'tiny random checkpoint'}, audio {info['audio_engine'] or 'off'}, "
          f"--threads 1, max_waiting {max_waiting}")
    print(f"load: {args.clients} clients, {args.warmup:g} s warm-up + {args.seconds:g} s, then the queue drained "
          f"({took:.0f} s in all); client 0's prompt {len(big) if big else 0:,} bytes")
    print(f"requests: {r.requests:,} ({', '.join(f'{s}: {n:,}' for s, n in sorted(r.statuses.items()))}); "
          f"429s: {r.statuses[429]:,}; pieces made: {r.jobs_done}, failed: {r.jobs_failed}")
    print(f"problems (5xx, other 4xx, dropped connections): {len(r.problems)}" + "".join(f"\n    {x}" for x in r.problems[:5]))
    print("429 messages: " + "; ".join(f"{n:,} x {m!r}" for m, n in r.busy_errors.items()))
    print(f"queue: longest seen {r.most_waiting} waiting (max_waiting {max_waiting})")
    print(f"GET /api/info under load: {len(r.info_ms)} probes, {r.info_ms_running} with a piece running; "
          f"p50 {r.percentile(50):.1f} ms, p99 {p99:.1f} ms, max {max(r.info_ms):.1f} ms; over 200 ms at "
          f"{r.info_slow or 'none'} (s since the clients started, ms)")
    print(f"GET /api/info idle (peer): {len(idle.info_ms)} probes; p50 {idle.percentile(50):.1f} ms, "
          f"p99 {idle.percentile(99):.1f} ms; loaded/idle p99 {p99 / idle.percentile(99):.1f}x")
    print(f"server RSS: {r.rss_start / 1e6:.0f} MB after the warm-up, {r.rss_end / 1e6:.0f} MB at the end "
          f"({change:+.1%}), {r.rss_most / 1e6:.0f} MB at most")
    ok = {"no 5xx": five == 0, f"queue <= {max_waiting}": r.most_waiting <= max_waiting,
          "RSS within 20%": abs(change) <= 0.2, "p99 < 200 ms": p99 < 200}
    print("targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in ok.items()))
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
