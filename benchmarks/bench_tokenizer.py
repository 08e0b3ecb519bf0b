"""Tokenizer speed: ours vs MidiTok 3.x REMI, side by side, single process, same files.

    .venv/bin/python benchmarks/bench_tokenizer.py [--repeat 3] [--limit N]

encode: MIDI file path -> ids, parsing included (ours: remi.midi_read + numpy quantization;
        MidiTok: symusic parsing + REMI), with conf/tokenizer/miditok.yaml vs the equivalent
        miditok.REMI(TokenizerConfig(use_tempos=True, use_time_signatures=True)).
decode: ids -> a MIDI object (ours: mido.MidiFile, the API's return type; MidiTok: symusic.Score),
        one file at a time, each result dropped before the next (the loop of sampling, or of
        decoding and writing a corpus). Each side decodes its own encoding of the same files.
decode,kept: the same, but all results are held in one list until the end. Ours then holds
        ~670k mido message objects, which Python's cyclic GC rescans on every full collection
        (together with everything else alive in the process); symusic's Score is one object.
decode,kept,frozen: the kept row again, with `gc.freeze()` first (everything alive before the
        loop is left out of the GC's passes): how much of the kept row is the GC's.
decode->Score: ours to remi.Score alone (the like-for-like row: both return an in-memory score).
decode->bytes: ids -> a standard MIDI file's bytes (ours: tok.decode + mido's writer; MidiTok:
        decode + symusic's dump_midi to a temporary file, read back as bytes).
Prints files/s, notes/s and the ratio ours / MidiTok. Best of --repeat runs.
"""
from __future__ import annotations

import argparse
import gc
import importlib.metadata
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def best_of(repeat: int, fn) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def drop_each(fn, items) -> None:
    for item in items:
        fn(item)


def kept_frozen(fn, items) -> list:
    gc.freeze()
    try:
        return [fn(item) for item in items]
    finally:
        gc.unfreeze()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--midi", default=str(ROOT.parent / "shared" / "midi"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N files")
    args = ap.parse_args()

    import miditok

    import remi
    from remi.midi_io import midifile_to_bytes

    base = Path(args.midi)
    files = sorted((base / "tegridy-piano").glob("*.mid")) + sorted((base / "miditok-tests" / "one-track").glob("*.mid"))
    files = [f for f in files if f.stat().st_size > 200]  # skip empty.mid
    if args.limit:
        files = files[: args.limit]
    if not files:
        raise SystemExit(f"no MIDI files under {base} (tegridy-piano/, miditok-tests/one-track/)")
    ours = remi.Tokenizer.from_yaml(ROOT / "conf" / "tokenizer" / "miditok.yaml")
    theirs = miditok.REMI(miditok.TokenizerConfig(use_tempos=True, use_time_signatures=True))

    notes = sum(len(remi.read_midi(f)) for f in files)
    # Each side runs with only its own data alive: MidiTok's TokSequences hold ~1M Python Event
    # objects, which every cyclic-GC pass of the other side would otherwise rescan.
    ours_t = {"encode": best_of(args.repeat, lambda: [ours.encode(f) for f in files])}
    our_ids = [ours.encode(f) for f in files]
    ours_t["decode"] = best_of(args.repeat, lambda: drop_each(ours.decode, our_ids))
    ours_t["decode,kept"] = best_of(args.repeat, lambda: [ours.decode(i) for i in our_ids])
    ours_t["decode,kept,frozen"] = best_of(args.repeat, lambda: kept_frozen(ours.decode, our_ids))
    ours_t["decode->Score"] = best_of(args.repeat, lambda: [ours.decode_score(i) for i in our_ids])
    ours_t["decode->bytes"] = best_of(args.repeat, lambda: [midifile_to_bytes(ours.decode(i)) for i in our_ids])
    our_ids.clear()  # free them before the other side runs
    gc.collect()
    theirs_t = {"encode": best_of(args.repeat, lambda: [theirs.encode(f) for f in files])}
    their_seqs = [theirs.encode(f) for f in files]
    theirs_t["decode"] = best_of(args.repeat, lambda: drop_each(theirs.decode, their_seqs))
    theirs_t["decode,kept"] = theirs_t["decode->Score"] = best_of(args.repeat, lambda: [theirs.decode(s) for s in their_seqs])
    theirs_t["decode,kept,frozen"] = best_of(args.repeat, lambda: kept_frozen(theirs.decode, their_seqs))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.mid"

        def dump(seq) -> bytes:
            theirs.decode(seq).dump_midi(out)
            return out.read_bytes()

        theirs_t["decode->bytes"] = best_of(args.repeat, lambda: [dump(s) for s in their_seqs])
    rows = [(k, ours_t[k], theirs_t[k]) for k in ours_t]
    print(f"{len(files)} files, {notes} notes, best of {args.repeat}, single process; "
          f"miditok {importlib.metadata.version('miditok')}")
    print(f"{'task':<19} {'ours files/s':>13} {'ours notes/s':>13} {'miditok files/s':>16} {'miditok notes/s':>16} {'ratio':>6}")
    for name, t_ours, t_theirs in rows:
        print(f"{name:<19} {len(files) / t_ours:>13.1f} {notes / t_ours:>13.0f} {len(files) / t_theirs:>16.1f} "
              f"{notes / t_theirs:>16.0f} {t_theirs / t_ours:>5.2f}x")


if __name__ == "__main__":
    main()
