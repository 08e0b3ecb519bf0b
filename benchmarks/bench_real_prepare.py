"""Preparing every real piano corpus: wall time and peak memory, 1 and 2 workers, then BPE.

    .venv/bin/python benchmarks/bench_real_prepare.py [--data-dir ../shared/midi] [--tokenizer coarse]
                                                      [--bpe 1000] [--workers 1 2]

Each row is one fresh process (`python -m remi.prepare ... --workers W`) on an empty cache, so
every file is read, hashed, encoded and written to shards; the last row trains BPE to `--bpe`
ids on the train split of the shards the 2-worker run wrote. Peak RSS is the largest resident
set of any one process of the row (`wait4`'s ru_maxrss: the main process or one worker), not
their sum. The ratio row is the 1-worker wall time over the 2-worker one.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("maestro_v2", "pop909", "pianomidi", "asap", "tegridy")


def run_row(argv: list[str]) -> tuple[float, float, str]:
    """Run `argv` under a small wrapper process that reports its own children's peak RSS."""
    wrapper = ("import json,resource,subprocess,sys,time;t=time.perf_counter();"
               "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
               "w=time.perf_counter()-t;"
               "r=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024;"
               "print(json.dumps({'rc':p.returncode,'wall':w,'rss':r,'out':p.stdout,'err':p.stderr[-800:]}))")
    p = subprocess.run([sys.executable, "-c", wrapper, *argv], cwd=ROOT, capture_output=True, text=True)
    res = json.loads(p.stdout)
    if res["rc"] != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({res['rc']}): {res['err']}")
    return res["wall"], res["rss"], res["out"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "midi")
    ap.add_argument("--tokenizer", default="coarse")
    ap.add_argument("--bpe", type=int, default=1000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    if not args.data_dir.is_dir():
        raise SystemExit(f"{args.data_dir} is absent: point --data-dir at the real corpora (../shared/midi)")
    rows = []
    shard_dir = None
    with tempfile.TemporaryDirectory(prefix="bench-real-prepare-") as tmp:
        for w in args.workers:
            cache = Path(tmp) / f"cache-{w}"
            wall, rss, out = run_row([sys.executable, "-m", "remi.prepare", *SOURCES, "--tokenizer", args.tokenizer,
                                      "--data-dir", str(args.data_dir), "--cache", str(cache), "--workers", str(w),
                                      "--json"])
            res = json.loads(out)
            total = res["total"]
            shard_dir = res["shard_dir"] if "shard_dir" in res else res.get("dir", shard_dir)
            rows.append((f"prepare {args.tokenizer}, cold cache, {w} worker{'s' * (w > 1)}", wall, rss,
                         f"{total['files']} files, {total['notes']:,} notes, {total['tokens']:,} tokens, "
                         f"{total['files'] / wall:,.0f} files/s"))
            if w != args.workers[-1]:
                shutil.rmtree(cache)
        if args.bpe and shard_dir:
            code = ("import sys;from remi import Tokenizer;from remi.shards import load_split;"
                    f"base=Tokenizer.from_yaml('conf/tokenizer/{args.tokenizer}.yaml');"
                    f"tok=base.train_bpe({str(shard_dir)!r},{args.bpe});"
                    f"n=len(load_split({str(shard_dir)!r},'train',expect_hash=base.hash).tokens);"
                    "print(tok.vocab_size, n)")
            wall, rss, out = run_row([sys.executable, "-c", code])
            vocab, n = out.split()
            rows.append((f"BPE to {args.bpe} on that train split", wall, rss, f"{int(n):,} base tokens -> vocab {vocab}"))
    print(f"{'row':<46}{'wall s':>9}{'peak RSS MB':>13}  notes")
    for name, wall, rss, note in rows:
        print(f"{name:<46}{wall:>9.1f}{rss:>13.0f}  {note}")
    if len(args.workers) == 2:
        print(f"scaling: {args.workers[0]} -> {args.workers[1]} workers: {rows[0][1] / rows[1][1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
