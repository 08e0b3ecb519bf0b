"""Evaluate a checkpoint against a folder of real piano pieces it never saw.

    python experiments/evaluate.py CKPT --real FOLDER [--n N] [--seed S] [--json] [--out DIR]

What it measures (docs/experiments.md says why each):
- `bits_per_note`: the summed negative log-likelihood of those pieces (whole pieces, cut into
  consecutive windows of the model's context as validation is), in bits, over their notes;
  `bits_per_second` the same bits over the files' length in seconds (both independent of the
  tokenizer's vocabulary).
- N pieces sampled from scratch (default 16, fixed seed, no grammar constraint), each cut to
  `--bars` bars, and for every real piece a continuation of its first 4 bars by 12 bars (the setup
  of the MIREX 2025 symbolic piano continuation task). Sampled pieces are measured with
  `remi.metrics` against the real pieces cut to the same number of bars (after the tokenizer's
  quantization, so both sides are on one grid): each metric's mean, its overlapping area with
  the real distribution and the KL divergence from it (the same kernel density estimates); the grammar error rate over generated tokens; the empty pieces.
- Continuations against the real continuations of the same prompts: key agreement with the
  prompt, tempo ratio, note-density ratio and pitch-range overlap, for both.
- With `--infill` (a model trained with `data.infill_share > 0`): `infill`, bars 5-8 of every
  real piece regenerated between bars 1-4 and 9-12, against a continuation of bars 1-4
  (`experiments/infill_eval.py` says what each figure is).

`--json` prints one JSON object: `bits_per_note`, `bits_per_second`, `metrics` (name -> {"mean",
"real_mean", "overlap", "kl"}), `grammar_error_rate`, `empty_pieces`, `continuation` (name ->
value), `per_piece` (the same figures piece by piece, for bootstrap intervals), plus the
settings and timings. `--out DIR` also writes evaluation.json, the pieces as MIDI, piano rolls
(4 sampled pieces and 4 continuations beside the real ones) and compressed audio where
FluidSynth is installed. `--baselines TRAIN_SHARDS` adds the references: a unigram token model
(counts from that train split) and the same network at step 0.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from experiments.infill_eval import evaluate_infill, render_infill_text
from model.generate import Sampler, cut_at_eos, only_eos_after
from model.generate import generate as generate_ids
from model.gpt import GPT
from pianolm.errors import CheckpointError
from pianolm.likelihood import nll_bits_per_piece, read_pieces, summed_nll_bits  # shared with pianolm.api
from remi import metrics as M
from remi.bars import bar_ids, count_bars, cut_bars

PROMPT_BARS = 4          # MIREX 2025 symbolic piano continuation: 4 bars of prompt ...
CONTINUATION_BARS = 12   # ... continued by 12 bars
# The metrics the quality bar names (each with an overlapping area >= 0.7).
KEY_METRICS = ("notes_per_onset", "polyphony", "median_ioi_beats", "notes_per_second", "pitch_range",
               "pitch_class_entropy", "scale_consistency", "groove_consistency", "longest_gap_bars")
CONTINUATION_KEYS = ("key_agree", "tempo_ratio", "density_ratio", "pitch_range_overlap")


# ------------------------------------------------------------------------------ real pieces

def real_files(folder: str | Path, at_most: int | None) -> list[Path]:
    """MIDI files under `folder` (sorted by relative path), at most `at_most` spread evenly."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"evaluate: --real {folder} is not a folder of MIDI files")
    files = sorted((p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi")),
                   key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise SystemExit(f"evaluate: no .mid/.midi files under {folder}")
    if at_most is not None and len(files) > at_most:
        keep = np.unique(np.linspace(0, len(files) - 1, at_most).round().astype(int))
        files = [files[i] for i in keep]
    return files


# ------------------------------------------------------------------------------ likelihood

def unigram_bits(train_tokens: np.ndarray, vocab_size: int, sequences: Sequence[Sequence[int]]) -> float:
    """Summed bits of every token after the first under add-one unigram counts of the train split."""
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size)[:vocab_size] + 1.0
    logp = np.log2(counts / counts.sum())
    return float(-sum(logp[np.asarray(s[1:], dtype=np.int64)].sum() for s in sequences))


# ------------------------------------------------------------------------------ generation

def stop_after_bars(tok, total_bars: int):
    """An `allowed` mask for generation that permits everything until a row has started
    `total_bars + 1` bars, then only EOS: generation stops once the wanted bars are complete.
    With BPE a bar starts at every merged token that begins with Bar (`remi.bars.bar_ids`)."""
    return only_eos_after(bar_ids(tok), total_bars, tok.eos_id, tok.vocab_size)


def generate(gpt: GPT, tok, prompt: Sequence[int], n: int, total_bars: int, max_new_tokens: int,
             temperature: float, seed: int, top_k: int | None = None, top_p: float | None = None,
             keep_prompt: bool = False, min_p: float | None = None,
             logit_bias: torch.Tensor | None = None, threads: int | None = None) -> list[list[int]]:
    """`n` rows continuing `prompt` (BOS first) until `total_bars` bars are complete, EOS or
    `max_new_tokens`; each row's ids cut to those bars (prompt included, EOS dropped).
    `keep_prompt` pins the prompt (at most half the context: its start) in every window;
    `logit_bias` (V,) is added to every step's logits (`follow_key_bias`)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.tensor([list(prompt)] * n, dtype=torch.long)
    keep = min(len(prompt), gpt.config.block_size // 2) if keep_prompt else 0
    out = generate_ids(gpt, idx, max_new_tokens, Sampler(temperature, top_k, top_p, min_p), eos_id=tok.eos_id,
                       allowed=stop_after_bars(tok, total_bars), generator=gen, keep=keep, logit_bias=logit_bias,
                       threads=threads)
    return cut_at_eos(out.tolist(), len(prompt), tok.eos_id, keep_eos=False)


def follow_key_bias(tok, prompt: Sequence[int], penalty: float) -> torch.Tensor | None:
    """The logit bias that keeps a continuation in its prompt's key: the prompt's
    Krumhansl-Schmuckler key (`remi.keys.find_key`), then `penalty` logits off every Pitch outside
    that key's scale (`pianolm.control`'s soft key constraint). None when the prompt has no key."""
    from pianolm.control import fixed, prompt_key

    key = prompt_key(tok, prompt)
    return None if key is None else fixed(tok, key=key, key_penalty=penalty).bias_tensor()


def _generated_counts(count, tok, rows: Sequence[Sequence[int]], skip: Sequence[int]) -> dict[str, int]:
    """`count(base ids) -> {kind: n}` over the generated part of each row (after `skip[i]` ids):
    the whole row's counts minus its prompt's, so the state carries over from the prompt."""
    total: dict[str, int] = {}
    for row, k in zip(rows, skip):
        whole = count(tok.base_ids(list(row)), tok.vocab)
        prompt = count(tok.base_ids(list(row[:k])), tok.vocab) if k else {}
        for name, n in whole.items():
            total[name] = total.get(name, 0) + n - prompt.get(name, 0)
    return total


def generated_tokens(tok, rows: Sequence[Sequence[int]], skip: Sequence[int]) -> int:
    """Non-special base tokens in the generated parts of the rows."""
    from remi.vocab import SPECIAL

    def count(base, vocab) -> dict[str, int]:
        return {"tokens": int(np.count_nonzero(vocab.types[base] != SPECIAL))}

    return _generated_counts(count, tok, rows, skip).get("tokens", 0)


def row_errors(tok, rows: Sequence[Sequence[int]], skip: Sequence[int]) -> list[tuple[int, int]]:
    """(syntax errors, generated tokens) of each row alone: what `grammar_errors` and
    `generated_tokens` sum over the rows."""
    return [(sum(grammar_errors(tok, [r], [k]).values()), generated_tokens(tok, [r], [k]))
            for r, k in zip(rows, skip)]


def file_seconds(path: Path) -> float:
    """Length in seconds of a MIDI file as written (its own tempo map), the denominator of bits
    per second: the same for every tokenizer, unlike the notes and tokens it keeps."""
    import remi

    return float(remi.read_midi(path).seconds())


def grammar_errors(tok, rows: Sequence[Sequence[int]], skip: Sequence[int]) -> dict[str, int]:
    """The generated parts' token syntax errors by kind (remi.grammar.SYNTAX_KINDS: MidiTok's
    `tokens_errors` rules): what `grammar_error_rate` counts."""
    from remi.grammar import syntax_errors

    return _generated_counts(syntax_errors, tok, rows, skip)


def grammar_error_kinds(tok, rows: Sequence[Sequence[int]], skip: Sequence[int]) -> dict[str, int]:
    """The generated parts' breaks of the strict grammar (the encoder's canonical order, what
    the constrained sampler enforces) by rule (remi.grammar.ERROR_KINDS): `canonical_error_rate`."""
    from remi.grammar import error_kinds

    return _generated_counts(error_kinds, tok, rows, skip)


# ------------------------------------------------------------------------------ evaluation

def evaluate(gpt: GPT, tok, files: Sequence[Path], n: int = 16, seed: int = 0, bars: int = 16,
             temperature: float = 1.0, max_new_tokens: int = 2048, continuations: bool = True,
             top_k: int | None = None, top_p: float | None = None, progress: bool = False,
             likelihood: bool = True, keep_prompt: bool = False, min_p: float | None = None,
             follow_key: float | None = None, threads: int | None = None, infill: bool = False) -> dict:
    """Every number of the evaluation, and the generated pieces (ids) for whoever renders them.
    `likelihood=False` skips bits per note (NaN), e.g. for a temperature sweep; `threads`: CPU
    threads while sampling (None: `model.threads`' rule); `infill`: add the infilling block
    (`experiments.infill_eval`)."""
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)
    draw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                threads=threads)
    clock = [time.time()]
    real = _real_side(gpt, tok, files, bars, likelihood)
    for problem in real["skipped"]:  # said even with --json: a piece left out changes every figure
        print(f"[evaluate] skipped {problem}", file=sys.stderr, flush=True)
    clock.append(time.time())
    say(f"[evaluate] bits/note {real['bits'] / real['notes']:.4f} over {len(real['seqs'])} pieces "
        f"({clock[1] - clock[0]:.0f} s)")
    free = _from_scratch(gpt, tok, n, bars, seed, draw)
    clock.append(time.time())
    say(f"[evaluate] {n} pieces from scratch ({clock[2] - clock[1]:.0f} s)")
    cont = _continuations(gpt, tok, real["pieces"], seed, draw, keep_prompt, follow_key) if continuations else None
    clock.append(time.time())
    say(f"[evaluate] {len(cont['rows']) if cont else 0} continuations ({clock[3] - clock[2]:.0f} s)")
    settings = {"n": n, "seed": seed, "bars": bars, "temperature": temperature, "top_k": top_k, "top_p": top_p,
                "min_p": min_p, "max_new_tokens": max_new_tokens, "prompt_bars": PROMPT_BARS,
                "continuation_bars": CONTINUATION_BARS, "grammar": False, "keep_prompt": keep_prompt,
                "follow_key": follow_key}
    result = _result(tok, real, free, cont, settings, clock)
    if infill:
        block = evaluate_infill(gpt, tok, real["pieces"], seed=seed, temperature=temperature, top_k=top_k,
                                top_p=top_p, min_p=min_p, max_new_tokens=max_new_tokens, threads=threads)
        result["_generated"]["infill"] = block.pop("_ids")
        result["infill"] = block
        result["seconds"]["infill"] = round(time.time() - clock[-1], 1)
        say(f"[evaluate] infilling on {block['pieces']} pieces ({result['seconds']['infill']:.0f} s)")
    return result


def _real_side(gpt: GPT, tok, files: Sequence[Path], bars: int, likelihood: bool) -> dict:
    """The real pieces: their ids, bits (per piece), notes, seconds, and metrics of their first
    `bars` bars on the tokenizer's grid (each piece as the model would see it)."""
    pieces, skipped = read_pieces(tok, files)
    if not pieces:
        raise SystemExit(f"evaluate: none of the {len(files)} real files is readable: {skipped[:3]}")
    seqs = [ids for _, ids in pieces]
    piece_notes = [tok.count_notes(s) for s in seqs]
    piece_bits = nll_bits_per_piece(gpt, seqs) if likelihood else np.full(len(seqs), M.NAN)
    real_cut = [tok.decode_score(cut_bars(tok, s, bars)[0]) for s in seqs]
    return {"pieces": pieces, "skipped": skipped, "seqs": seqs, "piece_notes": piece_notes,
            "notes": sum(piece_notes), "piece_bits": piece_bits, "bits": float(piece_bits.sum()),
            # Seconds of each real file as written (its own tempo map), the same for every tokenizer.
            "piece_seconds": [file_seconds(f) for f, _ in pieces],
            "metrics": [M.piece_metrics(s) for s in real_cut]}


def _from_scratch(gpt: GPT, tok, n: int, bars: int, seed: int, draw: dict) -> dict:
    rows = generate(gpt, tok, [tok.bos_id], n, bars, seed=seed, **draw)
    scores = [tok.decode_score(cut_bars(tok, r, bars)[0]) for r in rows]
    skip = [1] * len(rows)
    return {"rows": rows, "scores": scores, "metrics": [M.piece_metrics(s) for s in scores],
            "syntax": grammar_errors(tok, rows, skip), "kinds": grammar_error_kinds(tok, rows, skip),
            "tokens": generated_tokens(tok, rows, skip), "errors": row_errors(tok, rows, skip)}


def _continuations(gpt: GPT, tok, pieces, seed: int, draw: dict, keep_prompt: bool,
                   follow_key: float | None) -> dict:
    """Every real piece long enough continued from its first PROMPT_BARS bars to
    PROMPT_BARS + CONTINUATION_BARS, measured beside its real continuation."""
    total = PROMPT_BARS + CONTINUATION_BARS
    rows, prompts, gen, real = [], [], [], []
    for i, (f, ids) in enumerate(pieces):
        if count_bars(tok, ids) < total:
            continue  # too short to hold a prompt and a real continuation
        prompt = cut_bars(tok, ids, PROMPT_BARS)[0]
        bias = follow_key_bias(tok, prompt, follow_key) if follow_key else None
        row = generate(gpt, tok, prompt, 1, total, seed=seed + 1 + i, keep_prompt=keep_prompt, logit_bias=bias,
                       **draw)[0]
        rows.append(cut_bars(tok, row, total)[0])
        prompts.append((f, prompt))
        gen.append(M.continuation_consistency(tok.decode_score(rows[-1]), PROMPT_BARS))
        real.append(M.continuation_consistency(tok.decode_score(cut_bars(tok, ids, total)[0]), PROMPT_BARS))
    skip = [len(p) for _, p in prompts]
    return {"rows": rows, "prompts": prompts, "gen": gen, "real": real,
            "syntax": grammar_errors(tok, rows, skip), "kinds": grammar_error_kinds(tok, rows, skip),
            "tokens": generated_tokens(tok, rows, skip), "errors": row_errors(tok, rows, skip)}


def _result(tok, real: dict, free: dict, cont: dict | None, settings: dict, clock: list[float]) -> dict:
    """evaluate()'s dict from the three parts (see the module docstring for its keys)."""
    cont = cont or {"rows": [], "prompts": [], "gen": [], "real": [], "syntax": {}, "kinds": {}, "tokens": 0,
                    "errors": []}
    syntax, kinds = dict(free["syntax"]), dict(free["kinds"])
    for mine, more in ((syntax, cont["syntax"]), (kinds, cont["kinds"])):
        for name, count in more.items():
            mine[name] = mine.get(name, 0) + count
    total = free["tokens"] + cont["tokens"]
    overlap = M.overlap_areas(free["metrics"], real["metrics"])
    kl = M.kl_divergences(free["metrics"], real["metrics"])
    free_summary, real_summary = M.summarize(free["metrics"]), M.summarize(real["metrics"])
    # Generated continuation vs the real continuation of the same prompt, piece by piece.
    continuation = {}
    for k in CONTINUATION_KEYS:
        continuation[k] = M.nanmean(c[k] for c in cont["gen"])
        continuation[f"{k}_real"] = M.nanmean(c[k] for c in cont["real"])
    continuation["n"] = len(cont["gen"])
    t0, t_nll, t_free, t_cont = clock
    return {
        "bits_per_note": real["bits"] / real["notes"],
        "bits_per_second": real["bits"] / sum(real["piece_seconds"]),
        "metrics": {name: {"mean": free_summary.get(name, M.NAN), "real_mean": real_summary.get(name, M.NAN),
                           "overlap": overlap[name], "kl": kl[name]} for name in M.PIECE_METRICS},
        # MidiTok's token syntax errors (one per token, no cascade); the strict canonical grammar beside
        "grammar_error_rate": sum(syntax.values()) / total if total else 0.0,
        "canonical_error_rate": sum(kinds.values()) / total if total else 0.0,
        "grammar_errors": {"tokens": int(total), "errors": int(sum(syntax.values())), "by_kind": syntax,
                           "canonical_errors": int(sum(kinds.values())), "by_rule": kinds},
        "empty_pieces": int(sum(len(s) == 0 for s in free["scores"])),
        "continuation": continuation,
        "pieces": {"real": len(real["pieces"]), "skipped": real["skipped"], "notes": int(real["notes"]),
                   "tokens": int(sum(len(s) for s in real["seqs"])), "sampled": settings["n"],
                   "continued": len(cont["rows"])},
        "settings": settings,
        "seconds": {"bits_per_note": round(t_nll - t0, 1), "sampling": round(t_free - t_nll, 1),
                    "continuations": round(t_cont - t_free, 1), "total": round(t_cont - t0, 1)},
        "per_piece": _per_piece(real, free, cont),
        "_generated": {"free": free["rows"], "continuations": cont["rows"], "prompts": cont["prompts"]},
        "_real": real["seqs"],  # the real pieces' ids, for the baselines
    }


def _per_piece(real: dict, free: dict, cont: dict) -> dict:
    """Piece by piece, so a report can resample pieces (bootstrap intervals) and pool seeds."""
    return {
        "real": {"file": [f.name for f, _ in real["pieces"]], "bits": [float(b) for b in real["piece_bits"]],
                 "notes": real["piece_notes"], "seconds": real["piece_seconds"],
                 "metrics": {k: [m[k] for m in real["metrics"]] for k in M.PIECE_METRICS}},
        "free": {"metrics": {k: [m[k] for m in free["metrics"]] for k in M.PIECE_METRICS},
                 "errors": [e for e, _ in free["errors"]], "tokens": [t for _, t in free["errors"]],
                 "empty": [len(sc) == 0 for sc in free["scores"]]},
        "continuations": {"file": [f.name for f, _ in cont["prompts"]],
                          "errors": [e for e, _ in cont["errors"]], "tokens": [t for _, t in cont["errors"]],
                          **{k: [c[k] for c in cont["gen"]] for k in CONTINUATION_KEYS},
                          **{f"{k}_real": [c[k] for c in cont["real"]] for k in CONTINUATION_KEYS}},
    }


def quality_checks(result: dict) -> dict[str, bool]:
    """The issue's bar for a model that plays piano, item by item (for reports and the README)."""
    c = result["continuation"]
    checks = {f"overlap_{k}>=0.7": result["metrics"][k]["overlap"] >= 0.7 for k in KEY_METRICS}
    checks["grammar_error_rate<0.01"] = result["grammar_error_rate"] < 0.01
    checks["no_empty_piece"] = result["empty_pieces"] == 0
    if not math.isnan(c.get("key_agree", M.NAN)):
        checks["key_agree>=real-0.15"] = c["key_agree"] >= c["key_agree_real"] - 0.15
    return checks


# ------------------------------------------------------------------------------ media

def write_media(tok, result: dict, out: Path, n_show: int = 4) -> dict:
    """MIDI, piano rolls and (where FluidSynth exists) OGG audio of the first pieces shown."""
    from remi.bars import prompt_end_tick
    from remi.media.audio import find_renderer, render_wav
    from remi.media.pianoroll import save_comparison
    from remi.midi_io import score_to_midifile

    gen = result["_generated"]
    renderer = find_renderer()
    written: dict[str, list[str]] = {"midi": [], "audio": [], "png": []}

    def save(score, stem: Path) -> None:
        stem.parent.mkdir(parents=True, exist_ok=True)
        mid = stem.with_suffix(".mid")
        score_to_midifile(score).save(str(mid))
        written["midi"].append(str(mid.relative_to(out)))
        if renderer is not None and len(score):
            wav = render_wav(mid, stem.with_suffix(".wav"), renderer, seconds=score.seconds())
            written["audio"].append(str(to_ogg(wav).relative_to(out)))

    free = [tok.decode_score(cut_bars(tok, r, result["settings"]["bars"])[0]) for r in gen["free"][:n_show]]
    for i, s in enumerate(free):
        save(s, out / "samples" / f"sample_{i:02d}")
    written["png"].append(str(save_comparison(free, [f"sample {i}" for i in range(len(free))],
                                              out / "pianoroll_samples.png").relative_to(out)))
    scores, labels, ends = [], [], []
    for i, (row, (f, prompt)) in enumerate(list(zip(gen["continuations"], gen["prompts"]))[:n_show]):
        g = tok.decode_score(row)
        r = tok.decode_score(cut_bars(tok, tok.encode(f), PROMPT_BARS + CONTINUATION_BARS)[0])
        save(g, out / "continuations" / f"continuation_{i:02d}")
        save(r, out / "continuations" / f"real_{i:02d}")
        end = prompt_end_tick(tok, prompt)
        scores += [g, r]
        labels += [f"model: {f.stem[:28]}", "real continuation"]
        ends += [end, end]
    if scores:
        written["png"].append(str(save_comparison(scores, labels, out / "pianoroll_continuations.png",
                                                  prompt_end_ticks=ends).relative_to(out)))
    _infill_media(tok, result, out, n_show, save, written)
    return written


def _infill_media(tok, result: dict, out: Path, n_show: int, save, written: dict) -> None:
    """The first infilled pieces beside the real ones and the continued ones, bars 5-8 shaded."""
    from remi.bars import bar_span_ticks
    from remi.media.pianoroll import save_comparison

    shown = result.get("_generated", {}).get("infill", [])[:n_show]
    if not shown:
        return
    kinds = ("real", "infilled", "continuation")
    for i, (ids, name) in enumerate(zip(shown, result["infill"]["per_piece"]["file"])):
        span = bar_span_ticks(tok, ids["real"], 5, 8)
        scores = [tok.decode_score(ids[kind]) for kind in kinds]
        for kind, score in zip(kinds, scores):
            save(score, out / "infill" / f"{kind}_{i:02d}")
        labels = [f"real: {Path(name).stem[:24]}", "bars 5-8 infilled", "bars 5-8 continued"]
        written["png"].append(str(save_comparison(scores, labels, out / "infill" / f"pianoroll_{i:02d}.png",
                                                  spans=[span] * len(kinds)).relative_to(out)))


def to_ogg(wav: Path, quality: float = 0.4) -> Path:
    """WAV -> mono OGG Vorbis beside it (a few hundred kB for a minute), the WAV removed."""
    import soundfile as sf

    from remi.media.audio import write_compressed

    data, rate = sf.read(str(wav), always_2d=True)
    ogg = write_compressed(wav.with_suffix(".ogg"), data.mean(axis=1), rate, "OGG", quality=quality)
    wav.unlink()
    return ogg


# ------------------------------------------------------------------------------ command line

def load_model(ckpt: str | Path):
    """(tokenizer, GPT, checkpoint extras): through pianolm's loader, which checks everything."""
    from pianolm.checkpoint import load_checkpoint

    return load_checkpoint(ckpt)


def baselines(gpt: GPT, tok, seqs: Sequence[Sequence[int]], train_shards: Path, seed: int) -> dict:
    """Bits per note of the same pieces (their ids) under a unigram model and the network at step 0."""
    from remi.shards import load_split

    notes = sum(tok.count_notes(s) for s in seqs)
    train = load_split(train_shards, "train", expect_hash=tok.hash)
    torch.manual_seed(seed)
    fresh = GPT(gpt.config)
    return {"unigram_bits_per_note": unigram_bits(np.asarray(train.tokens), tok.vocab_size, seqs) / notes,
            "step0_bits_per_note": summed_nll_bits(fresh, seqs) / notes}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python experiments/evaluate.py", description=__doc__.split("\n")[0])
    p.add_argument("ckpt", help="a checkpoint written by train.py (or its run folder)")
    p.add_argument("--real", required=True, metavar="FOLDER", help="real MIDI files the model never saw")
    p.add_argument("--n", type=int, default=16, help="pieces sampled from scratch (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", type=Path, default=None, help="also write evaluation.json, MIDI, piano rolls, audio")
    p.add_argument("--max-pieces", type=int, default=48, help="real files used, spread evenly (default 48)")
    p.add_argument("--bars", type=int, default=16, help="bars of each piece sampled from scratch")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None, help="keep tokens with at least this share of the top probability")
    p.add_argument("--max-new-tokens", type=int, default=2048)
    p.add_argument("--no-continuations", action="store_true")
    p.add_argument("--keep-prompt", action="store_true",
                   help="pin each continuation's prompt (up to half the context) in every window")
    p.add_argument("--follow-key", type=float, default=None, metavar="PENALTY",
                   help="continuations: PENALTY logits off every pitch outside the prompt's key (a sampling control, not the model)")
    p.add_argument("--baselines", type=Path, default=None, metavar="TRAIN_SHARDS",
                   help="also score a unigram model of this shard folder's train split and the step-0 network")
    p.add_argument("--infill", action="store_true",
                   help="also measure infilling (a model trained with data.infill_share > 0): adds `infill`")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's for the likelihood, model/threads.py's rule for sampling)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n must be >= 1, got {args.n}")
    if args.threads:
        torch.set_num_threads(args.threads)
    files = real_files(args.real, args.max_pieces)
    try:
        tok, gpt, extra = load_model(args.ckpt)
    except (CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"evaluate: {e}") from None
    result = evaluate(gpt, tok, files, n=args.n, seed=args.seed, bars=args.bars, temperature=args.temperature,
                      max_new_tokens=args.max_new_tokens, continuations=not args.no_continuations,
                      top_k=args.top_k, top_p=args.top_p, progress=not args.json, keep_prompt=args.keep_prompt,
                      min_p=args.min_p, follow_key=args.follow_key, threads=args.threads, infill=args.infill)
    if args.baselines is not None:
        from remi.shards import ShardError

        try:
            result["baselines"] = baselines(gpt, tok, result["_real"], args.baselines,
                                            int((extra.get("cfg") or {}).get("seed", 0)))
        except (ShardError, FileNotFoundError) as e:
            raise SystemExit(f"evaluate: --baselines {args.baselines}: {e}") from None
    result["checks"] = quality_checks(result)
    result["checkpoint"] = str(args.ckpt)
    result["real_folder"] = str(args.real)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        result["media"] = write_media(tok, result, args.out)
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    if args.out is not None:
        (args.out / "evaluation.json").write_text(json.dumps(public, indent=2, allow_nan=True) + "\n")
        (args.out / "report.md").write_text(render_report(public, argv if argv is not None else sys.argv[1:]))
    if args.json:
        print(json.dumps(public, allow_nan=True))
    else:
        print(render_text(public))
    return 0


def render_report(r: dict, argv: Sequence[str]) -> str:
    """report.md beside evaluation.json: the command, the figures, and links to listen and look."""
    media = r.get("media", {})
    lines = ["# Evaluation", "", "```", "python experiments/evaluate.py " + " ".join(argv), "```", "",
             "```", render_text(r), "```", "",
             f"Timings (s): {r['seconds']}", "", "## Look and listen", ""]
    lines += [f"![{png}]({png})" for png in media.get("png", [])]
    lines += ["", "| piece | MIDI | audio |", "| --- | --- | --- |"]
    audio = {Path(a).stem: a for a in media.get("audio", [])}
    for mid in media.get("midi", []):
        stem = Path(mid).stem
        lines.append(f"| {stem} | [{Path(mid).name}]({mid}) | "
                     + (f"[{Path(audio[stem]).name}]({audio[stem]})" if stem in audio else "(no FluidSynth)") + " |")
    return "\n".join(lines) + "\n"


def render_text(r: dict) -> str:
    skipped = len(r["pieces"].get("skipped") or [])
    lines = [f"bits per note: {r['bits_per_note']:.4f}  ({r['pieces']['real']} real pieces, {r['pieces']['notes']:,} notes"
             + (f"; {skipped} file{'s' * (skipped > 1)} skipped: unreadable or without notes)" if skipped else ")")]
    if "bits_per_second" in r:
        lines.append(f"bits per second of music: {r['bits_per_second']:.2f}")
    if "baselines" in r:
        b = r["baselines"]
        lines.append(f"  unigram: {b['unigram_bits_per_note']:.4f}   step 0: {b['step0_bits_per_note']:.4f}")
    lines.append(f"grammar error rate: {r['grammar_error_rate']:.4%}   empty pieces: {r['empty_pieces']}")
    g = r.get("grammar_errors") or {}
    if any((g.get("by_kind") or {}).values()):
        lines.append("  syntax errors by kind: " + ", ".join(f"{k} {v}" for k, v in g["by_kind"].items() if v))
    if "canonical_error_rate" in r:
        lines.append(f"canonical-order error rate (strict grammar): {r['canonical_error_rate']:.4%}")
    if any((g.get("by_rule") or {}).values()):
        lines.append("  by rule: " + ", ".join(f"{k} {v}" for k, v in g["by_rule"].items() if v))
    lines.append(f"{'metric':<24}{'sampled':>10}{'real':>10}{'overlap':>9}{'KL':>8}")
    for k, v in r["metrics"].items():
        lines.append(f"{k:<24}{v['mean']:>10.3f}{v['real_mean']:>10.3f}{v['overlap']:>9.3f}{v.get('kl', M.NAN):>8.3f}")
    lines.append("continuations (model | real):")
    c = r["continuation"]
    for k in CONTINUATION_KEYS:
        lines.append(f"  {k:<22}{c[k]:>8.3f} | {c[k + '_real']:.3f}")
    if "infill" in r:
        lines.append(render_infill_text(r["infill"]))
    failed = [k for k, ok in r["checks"].items() if not ok]
    lines.append("checks: all pass" if not failed else f"checks failed: {', '.join(failed)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
