"""BPE side by side with MidiTok 3.1 (Hugging Face `tokenizers` under both): training time,
encode throughput and peak memory, on the same MIDI files and the same target vocabulary size.

    .venv/bin/python benchmarks/bench_bpe.py [--files DIR] [--vocab-size N] [--repeat R]

Each measurement runs in its own subprocess, so peak RSS (ru_maxrss) belongs to that step alone;
"Δ" is peak minus the RSS just before the timed step (imports and inputs excluded).

Rows:
- train from files: MidiTok's `REMI.train(vocab_size, model="BPE", files_paths=...)` against
  ours: `remi.Tokenizer.encode` on every file, then `train_tokenizer_bpe` — both read MIDI.
- train BPE only: both start from base ids already in memory (MidiTok: its per-bar byte strings,
  exactly what its training iterator yields; ours: our tokenizer's base ids).
- encode: base ids -> merged ids, base tokens per second, one sequence at a time (how the corpus
  preparation calls it) and as one batch. MidiTok: `encode_token_ids` on base TokSequences.
- "ours on MidiTok ids": our BPE trained/encoding on MidiTok's base ids, the same input bytes as
  the peer, so the engine comparison is not confounded by the two tokenizations.
Ratios are ours / MidiTok (time: < 1 is faster; throughput: > 1 is faster).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILES = ROOT.parent / "shared" / "midi" / "tegridy-piano"


def midi_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi") and p.is_file())


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def cpu_s() -> float:
    """User + system CPU seconds of this process, all threads (robust to a busy shared machine)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- the two tokenizers -------------------------------------------------------------------------


def miditok_tokenizer():
    import miditok

    # MidiTok's REMI with its default resolution, one sequence per track, specials like ours.
    return miditok.REMI(miditok.TokenizerConfig(special_tokens=["PAD", "BOS", "EOS", "MASK"]))


def miditok_base_seqs(tok, files: list[Path]):
    """Base TokSequences (one per track) of every readable file, as MidiTok's pipeline makes them."""
    import symusic

    seqs = []
    for p in files:
        try:
            out = tok(symusic.Score(str(p)), encode_ids=False)
        except Exception:  # noqa: BLE001 - a file MidiTok cannot read is skipped, as its iterator does
            continue
        seqs.extend(s for s in (out if isinstance(out, list) else [out]) if len(s.ids) > 0)
    return seqs


def ours_tokenizer(config: str | None):
    import remi

    if config:
        return remi.Tokenizer.from_yaml(config)
    return remi.Tokenizer.from_yaml(ROOT / "conf" / "tokenizer" / "coarse.yaml")


def ours_base_ids(tok, files: list[Path]) -> list[list[int]]:
    import remi

    out = []
    for p in files:
        try:
            out.append(tok.encode(p))
        except remi.MidiReadError:
            continue
    return out


# ---- workers (one measurement each, in a fresh process) -----------------------------------------


def worker(task: str, args: argparse.Namespace) -> dict:
    files = midi_files(Path(args.files))
    work = Path(args.work)
    if task == "miditok-train-files":
        tok = miditok_tokenizer()
        before, c0, t0 = rss_mb(), cpu_s(), time.perf_counter()
        tok.train(vocab_size=args.vocab_size, model="BPE", files_paths=files)
        seconds, cpu = time.perf_counter() - t0, cpu_s() - c0
        tok.save(work / "miditok.json")
        return {"seconds": seconds, "cpu": cpu, "before_mb": before, "peak_mb": peak_mb(), "vocab_size": tok.vocab_size}
    if task == "miditok-train-ids":
        tok = miditok_tokenizer()
        bars = [tok._ids_to_bytes([s.ids for s in seq.split_per_bars() if len(s)], as_one_str=True)
                for seq in miditok_base_seqs(tok, files)]
        bars = [b if isinstance(b, list) else [b] for b in bars]
        before, c0, t0 = rss_mb(), cpu_s(), time.perf_counter()
        tok.train(vocab_size=args.vocab_size, model="BPE", iterator=bars)
        seconds, cpu = time.perf_counter() - t0, cpu_s() - c0
        return {"seconds": seconds, "cpu": cpu, "before_mb": before, "peak_mb": peak_mb(), "vocab_size": tok.vocab_size}
    if task == "ours-train-files":

        before, c0, t0 = rss_mb(), cpu_s(), time.perf_counter()
        tok = ours_tokenizer(args.config)
        bpe_tok = tok.train_bpe(ours_base_ids(tok, files), args.vocab_size)
        seconds, cpu = time.perf_counter() - t0, cpu_s() - c0
        bpe_tok.save(work / "ours.json")
        return {"seconds": seconds, "cpu": cpu, "before_mb": before, "peak_mb": peak_mb(), "vocab_size": bpe_tok.vocab_size}
    if task in ("ours-train-ids", "ours-train-miditok-ids"):
        from remi.bpe import train_bpe

        if task == "ours-train-ids":
            tok = ours_tokenizer(args.config)
            seqs = ours_base_ids(tok, files)
            base, bars, specials = tok.vocab_size, {tok.bar_id}, {tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id}
        else:
            tok = miditok_tokenizer()
            seqs = [s.ids for s in miditok_base_seqs(tok, files)]
            base, bars, specials = len(tok), {tok.vocab["Bar_None"]}, set(tok.special_tokens_ids)
        before, c0, t0 = rss_mb(), cpu_s(), time.perf_counter()
        model = train_bpe(seqs, base, args.vocab_size, word_start_ids=bars, never_merge_ids=specials)
        seconds, cpu = time.perf_counter() - t0, cpu_s() - c0
        (work / f"{task}.json").write_text(json.dumps(model.to_dict()))
        return {"seconds": seconds, "cpu": cpu, "before_mb": before, "peak_mb": peak_mb(), "vocab_size": model.vocab_size,
                "base_tokens": sum(len(s) for s in seqs)}
    if task == "miditok-encode":
        import miditok

        tok = miditok.REMI(params=work / "miditok.json")
        base = miditok_base_seqs(tok, files)
        n = sum(len(s.ids) for s in base)
        one = batch = float("inf")
        for _ in range(args.repeat):  # encode_token_ids works in place: fresh copies, made untimed
            seqs = [copy.deepcopy(s) for s in base]
            t0 = time.perf_counter()
            for s in seqs:
                tok.encode_token_ids(s)
            one = min(one, time.perf_counter() - t0)
            seqs = [copy.deepcopy(s) for s in base]
            t0 = time.perf_counter()
            tok.encode_token_ids(seqs)
            batch = min(batch, time.perf_counter() - t0)
        merged = sum(len(s.ids) for s in seqs)
        return {"base_tokens": n, "merged_tokens": merged, "one_tok_s": n / one, "batch_tok_s": n / batch}
    if task in ("ours-encode", "ours-encode-miditok-ids"):
        from remi.bpe import BPEModel

        if task == "ours-encode":
            bpe_tok = __import__("remi").Tokenizer.load(work / "ours.json")
            model = bpe_tok.bpe
            seqs = ours_base_ids(ours_tokenizer(args.config), files)
        else:
            model = BPEModel.from_dict(json.loads((work / "ours-train-miditok-ids.json").read_text()))
            seqs = [list(s.ids) for s in miditok_base_seqs(miditok_tokenizer(), files)]
        n = sum(len(s) for s in seqs)
        one = batch = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = [model.encode(s) for s in seqs]
            one = min(one, time.perf_counter() - t0)
            t0 = time.perf_counter()
            out_b = model.encode_batch(seqs)
            batch = min(batch, time.perf_counter() - t0)
        assert out == out_b and all(model.decode(e) == s for e, s in zip(out, seqs)), "BPE round trip failed"
        merged = sum(len(e) for e in out)
        return {"base_tokens": n, "merged_tokens": merged, "one_tok_s": n / one, "batch_tok_s": n / batch}
    raise SystemExit(f"unknown worker task {task!r}")


def run_worker(task: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", task, "--files", str(args.files), "--work", args.work,
           "--vocab-size", str(args.vocab_size), "--repeat", str(args.repeat)]
    if args.config:
        cmd += ["--config", args.config]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "true")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"worker {task} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", default=str(DEFAULT_FILES), help="folder of MIDI files (default: tegridy-piano)")
    ap.add_argument("--vocab-size", type=int, default=2000, help="target vocabulary size for both (default 2000)")
    ap.add_argument("--repeat", type=int, default=3, help="encode timings: best of R (default 3)")
    ap.add_argument("--config", default=None, help="our tokenizer yaml (default: conf/tokenizer/coarse.yaml)")
    ap.add_argument("--skip-ours-tokenizer", action="store_true",
                    help="only the engine rows (ours on MidiTok ids), e.g. before remi.Tokenizer exists")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    files = midi_files(Path(args.files))
    if not files:
        raise SystemExit(f"no MIDI files under {args.files}")
    import tokenizers

    print(f"{len(files)} files from {args.files}; target vocab {args.vocab_size}; "
          f"tokenizers {tokenizers.__version__}; {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        args.work = tmp
        r = {t: run_worker(t, args) for t in ("miditok-train-files", "miditok-train-ids", "miditok-encode",
                                               "ours-train-miditok-ids", "ours-encode-miditok-ids")}
        if not args.skip_ours_tokenizer:
            r.update({t: run_worker(t, args) for t in ("ours-train-files", "ours-train-ids", "ours-encode")})

    def mem(x: dict) -> str:
        return f"peak {x['peak_mb']:7.1f} MiB (Δ {x['peak_mb'] - x['before_mb']:6.1f})"

    rows = [("train from files", "ours-train-files", "miditok-train-files"),
            ("train BPE only", "ours-train-ids", "miditok-train-ids"),
            ("train BPE only, ours on MidiTok ids", "ours-train-miditok-ids", "miditok-train-ids")]
    print("\ntraining: wall s / CPU s (all threads); ratio ours/MidiTok, target <= 1.0")
    for name, ours, peer in rows:
        if ours not in r:
            continue
        o, p = r[ours], r[peer]
        print(f"  {name:36s} ours {o['seconds']:6.2f} / {o['cpu']:6.2f} s  {mem(o)} | "
              f"MidiTok {p['seconds']:6.2f} / {p['cpu']:6.2f} s  {mem(p)} | ratio wall {o['seconds'] / p['seconds']:.2f}x, "
              f"CPU {o['cpu'] / p['cpu']:.2f}x  (vocab {o['vocab_size']} vs {p['vocab_size']})")
    print("\nencode (base tokens/s; ratio ours/MidiTok, target >= 1.0)")
    p = r["miditok-encode"]
    for name, ours in (("ours (our base ids)", "ours-encode"), ("ours on MidiTok ids", "ours-encode-miditok-ids")):
        if ours not in r:
            continue
        o = r[ours]
        for mode in ("one", "batch"):
            print(f"  {name:24s} {mode:5s} ours {o[f'{mode}_tok_s']:12,.0f} | MidiTok {p[f'{mode}_tok_s']:12,.0f} "
                  f"| ratio {o[f'{mode}_tok_s'] / p[f'{mode}_tok_s']:.2f}x")
    print("\ncompression (base tokens per merged token)")
    for name, key in (("MidiTok", "miditok-encode"), ("ours on MidiTok ids", "ours-encode-miditok-ids"),
                      ("ours", "ours-encode")):
        if key in r:
            print(f"  {name:24s} {r[key]['base_tokens'] / r[key]['merged_tokens']:.3f} "
                  f"({r[key]['base_tokens']:,} -> {r[key]['merged_tokens']:,})")


if __name__ == "__main__":
    main()
