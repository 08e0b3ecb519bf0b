"""What a strided context window costs in quality: bits per note and music metrics, side by side.

Past the context, `GPT.generate` moves its window on by `stride` tokens at a time
(model/window.py), so a token sees between `block_size - stride + 1` and `block_size` tokens of
context instead of always `block_size` (stride 1, the exact sliding window). This measures what
that changes, on one checkpoint:

1. bits per note of real pieces scored with each stride (`model.window.sequence_nll`, which
   gives every token exactly the context that generation with that stride would), over the
   first `--tokens` tokens of each piece (default 4 x block_size: stride 1 costs one forward
   pass of a whole window per token);
2. music metrics (remi.metrics) of pieces generated from scratch by sample.py's own generation
   (`sample.generate_batch`: grammar on, seed fixed) with stride 1 and with the default stride
   (or `--generate-strides`), and of the real pieces, plus each generated set's mean overlap
   area with the real one. The same seed gives the same pieces for a stride in any run.

    python benchmarks/stride_effect.py CKPT --real FOLDER [--limit 20] [--samples 8]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]

from model.window import check_stride, default_stride, sequence_nll  # noqa: E402
from pianolm.checkpoint import load_checkpoint  # noqa: E402
from pianolm.generate import Prompt, generate_batch  # noqa: E402
from remi.metrics import PIECE_METRICS, nanmean, overlap_areas, piece_metrics, summarize  # noqa: E402


def real_pieces(tok, folder: Path, limit: int | None) -> list[tuple[str, list[int]]]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi") and p.is_file())
    if not files:
        raise SystemExit(f"stride_effect: no .mid/.midi files under {folder}")
    pieces = []
    for path in files[:limit]:
        try:
            pieces.append((path.name, tok.encode(path)))
        except Exception as e:  # a file the reader refuses is reported and left out
            print(f"# skipped {path.name}: {str(e).splitlines()[0][:120]}", file=sys.stderr)
    return pieces


def generated(gpt, tok, n: int, new_tokens: int, stride: int, seed: int, batch: int) -> list[tuple]:
    """`n` pieces from scratch through sample.py's generation with conf/sample.yaml's defaults:
    (ids, stop reason, metrics) each."""
    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "sample.yaml"),
                          {"max_new_tokens": new_tokens, "stride": stride})
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    prompt = Prompt(name="sample", ids=[tok.bos_id])
    out = []
    for start in range(0, n, batch):
        for ids, stop in generate_batch(gpt, tok, prompt, min(batch, n - start), cfg, 1.0, generator, "cpu"):
            out.append((ids, stop, piece_metrics(tok.decode_score(ids))))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--real", type=Path, required=True, help="a folder of real MIDI pieces the model did not train on")
    ap.add_argument("--limit", type=int, default=20, help="real pieces used (sorted by name)")
    ap.add_argument("--tokens", type=int, default=None, help="tokens scored per piece (default 4 x block_size)")
    ap.add_argument("--strides", type=int, nargs="+", default=None,
                    help="strides scored (default: 1, block/8, block/4, block/2, block)")
    ap.add_argument("--samples", type=int, default=8, help="pieces generated with each stride of --generate-strides")
    ap.add_argument("--generate-strides", type=int, nargs="+", default=None,
                    help="strides generated with (default: 1 and the default stride)")
    ap.add_argument("--new-tokens", type=int, default=None, help="max new tokens per piece (default 4 x block_size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    tok, gpt, extras = load_checkpoint(args.ckpt)
    block = gpt.config.block_size
    default = default_stride(block)
    strides = args.strides or sorted({1, max(1, block // 8), default, max(1, block // 2), block})
    strides = [check_stride(s, block) for s in strides]
    n_tokens = args.tokens or 4 * block
    pieces = [(name, ids[:n_tokens]) for name, ids in real_pieces(tok, args.real, args.limit)]
    notes = sum(tok.count_notes(ids) for _, ids in pieces)
    scored = sum(len(ids) - 1 for _, ids in pieces)
    past = sum(max(0, len(ids) - 1 - block) for _, ids in pieces)
    print(f"# {args.ckpt}: {gpt.config.n_layer} layers x {gpt.config.n_embd}, context {block}, "
          f"step {extras.get('global_step')}; default stride {default}")
    print(f"# {len(pieces)} real pieces from {args.real}, first {n_tokens} tokens each: {scored} tokens scored "
          f"({past} past the first window), {notes} notes")

    print("\nstride,bits_per_note,vs_stride_1,seconds")
    base = None
    for s in strides:
        t = time.perf_counter()
        bits = sum(sequence_nll(gpt, ids, stride=s, bits=True) for _, ids in pieces) / notes
        base = bits if s == 1 else base
        vs = f"{(bits / base - 1) * 100:+.2f}%" if base else ""
        print(f"{s},{bits:.4f},{vs},{time.perf_counter() - t:.0f}", flush=True)

    if args.samples <= 0:
        return 0
    new_tokens = args.new_tokens or 4 * block
    real = [piece_metrics(tok.decode_score(ids)) for _, ids in real_pieces(tok, args.real, args.limit)]
    sets = {"real": real}
    for s in args.generate_strides or (1, default):
        s = check_stride(s, block)
        t = time.perf_counter()
        pieces = generated(gpt, tok, args.samples, new_tokens, s, args.seed, batch=8)
        sets[f"stride {s}"] = [m for _, _, m in pieces]
        lengths = [len(ids) - 1 for ids, _, _ in pieces]
        stops = [stop for _, stop, _ in pieces]
        print(f"# generated with stride {s}: {len(lengths)} pieces, new tokens mean {np.mean(lengths):.0f} "
              f"(max {max(lengths)}), {sum(n > block for n in lengths)} past the window, "
              f"stopped by EOS {stops.count('eos')}; {time.perf_counter() - t:.0f} s")
    names = list(PIECE_METRICS) + ["long_gap_share"]
    summaries = {k: summarize(v) for k, v in sets.items()}
    print("\nmetric," + ",".join(sets))
    for name in names:
        print(name + "," + ",".join(f"{summaries[k].get(name, float('nan')):.3f}" for k in sets))
    print("mean overlap area with real," + "," + ",".join(
        f"{nanmean(overlap_areas(sets[k], real).values()):.3f}" for k in list(sets)[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
