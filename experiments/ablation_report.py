"""The ablation report from experiments/evaluate.py's results (one RUN/eval/evaluation.json per run).

Per round: every number as its mean over seeds, the spread over seeds (sample standard
deviation) and a 95% bootstrap interval over pieces (`ci95`), then the original work's four
findings judged by one rule (`judge`). Seed 0's pieces of every round are copied beside the
report (MIDI, compressed audio, piano rolls), so a reader hears what the numbers say.

The bootstrap: each resample draws the real pieces with replacement once (the same draw for
every seed, since every run is scored on the same pieces) and, for each seed, that seed's
pieces from scratch and continuations with replacement; every number is recomputed per seed
as evaluate.py computes it (overlaps and KL divergences on a coarser grid of `BOOTSTRAP_GRID`
points) and averaged over seeds, as the reported mean is. `ci95` is the 2.5th and 97.5th
percentiles of `BOOTSTRAP_RESAMPLES` resamples.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments.common import (
    MACHINES_JSON,
    REPORT_JSON,
    REPORT_MD,
    aggregate,
    fmt,
    fmt_ms,
    machine_name,
    markdown_table,
    plain,
    read_json,
)
from remi import metrics as M

EVAL_DIR = "eval"  # evaluate.py --out of each run folder
EVALUATION_JSON = "evaluation.json"
SAMPLES_PNG, CONTINUATIONS_PNG = "pianoroll_samples.png", "pianoroll_continuations.png"  # in OUT/media/<round>/
MEDIA_DIR = "media"  # seed 0's pieces of each round, copied beside the report
RUN_FIGURES = ("steps", "wall_time_s", "train_tokens", "non_embedding_params", "vocab_size", "val_bits_per_note",
               "train_compute")
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_GRID = 512
# Why an overlap can sit at or above the top of its interval (measured on round 2 seed 0 of the
# CPU study: big-chord share, OA 0.953 over all pieces, every one of 300 resamples below it).
BOOTSTRAP_BIAS = (
    "Overlaps (OA) and KL divergences are not means: drawing pieces with replacement adds noise to both "
    "density estimates, and noise can only lower an overlap (raise a divergence) on average, while "
    "each resample moves Scott's bandwidth. Their intervals therefore sit below (OA) or above (KL) the "
    "figure over all pieces, which may lie at or beyond the interval's edge. They measure the spread over "
    "pieces and compare rounds like with like: every round's intervals carry the same shift.")
GRID_BITS = (
    "Bits per note and per second do not depend on the vocabulary (BPE or not) but do depend on the grid: "
    "a finer grid says more about every note (round 1's `fine` tokenizer: 32 velocities against 16, 8 "
    "positions a beat against 4, finer durations, 32 tempos against 16), which costs bits by itself. "
    "Compare bits between rounds on the same grid (rounds 2, 3 and 4, and 1c where trained), not round 1 with "
    "the others.")
SHOWN = 2  # pieces from scratch and continuations of each round copied beside the report

# The original work's findings, each as comparisons of two rounds on one number of evaluate.py.
# (name of the number, "lower"/"higher" = which way the finding says the first round should
# differ from the second.)
CLAIMS = (
    # Each round's excess over the same real pieces on its own grid: a coarser grid alone merges
    # onsets into chords (the real test pieces: 1.87 notes per onset on round 1's grid, 2.16 on
    # round 2's), so raw means across rounds would compare grids, not models.
    ("Round 1 sounds like keys being slammed: big chords, rapid taps, erratic rhythm (round 1 vs round 2)",
     "round1", "round2",
     [("metrics.big_chord_share.excess", "higher"), ("metrics.notes_per_onset.excess", "higher"),
      ("metrics.short_ioi_share.excess", "higher"), ("metrics.groove_consistency.overlap", "lower")]),
    ("Round 1 has long pauses; trimming leading silence removes them (round 2 vs round 1)",
     "round2", "round1",
     [("metrics.longest_gap_bars.mean", "lower"), ("metrics.leading_silence_beats.mean", "lower"),
      ("metrics.longest_gap_bars.overlap", "higher")]),
    ("Dropping BPE helps (round 3 vs round 2)",
     "round3", "round2",
     [("bits_per_note", "lower"), ("bits_per_second", "lower"), ("mean_overlap", "higher"),
      ("grammar_error_rate", "lower")]),
    ("A model 1.5x larger helps (round 4 vs round 3)",
     "round4", "round3",
     [("bits_per_note", "lower"), ("bits_per_second", "lower"), ("mean_overlap", "higher"),
      ("grammar_error_rate", "lower")]),
)
# What makes round 1 differ, measured by the data-vs-grid arm (conf/experiment/round1c.yaml: round
# 2's tokenizer on round 1's data), each hypothesis judged as a claim; reported only where the
# study trained that arm. Bits compare only between round 1c and round 2 (the same grid).
_SLAMS = CLAIMS[0][3]
_PAUSES = CLAIMS[1][3]
CAUSES = (
    ("Round 1's tokenizer makes it slam keys (round 1 vs round 1c: the same data)", "round1", "round1c", _SLAMS),
    ("Round 1's data makes it slam keys (round 1c vs round 2: the same tokenizer)", "round1c", "round2", _SLAMS),
    ("Round 1's tokenizer (leading silence kept) makes its long pauses (round 1c vs round 1: the same data)",
     "round1c", "round1", _PAUSES),
    ("Round 1's data makes its long pauses (round 2 vs round 1c: the same tokenizer)", "round2", "round1c", _PAUSES),
    ("Round 1's data makes a worse model of the test pieces (round 1c vs round 2: the same grid)", "round1c", "round2",
     [("bits_per_note", "higher"), ("bits_per_second", "higher"), ("mean_overlap", "lower"),
      ("grammar_error_rate", "higher")]),
)
CAUSES_INTRO = (
    "Round 1 differs from round 2 in its tokenizer (the fine grid, leading silence kept) and in its data (the "
    "classical performance corpora alone). Round 1c, not a round of the original work, is round 2's tokenizer on "
    "round 1's data: round 1 against 1c measures the tokenizer with the data fixed, 1c against round 2 the data "
    "with the tokenizer fixed. Each hypothesis is judged by the rule above; the \"claim\" column is the direction "
    "that would make it hold.")
RULE = ("A comparison *holds* when the difference goes the claimed way by more than the two rounds' "
        "seed spreads added and the 95% bootstrap interval of the difference excludes 0 (one resampling "
        "of both rounds: the same real pieces and the same prompts drawn for both, since every run is "
        "scored on them, so bits per note compare piece by piece; pieces from scratch drawn per run); "
        "it is *reversed* when the same is true the other way; otherwise it *cannot be told* at this "
        "budget. A claim holds when every one of its comparisons holds, is reversed when every one is "
        "reversed, holds *partly* when some hold, and otherwise cannot be told.")


# ---------------------------------------------------------------------------------------------
# Numbers


def key_metrics() -> tuple[str, ...]:
    from experiments.evaluate import KEY_METRICS

    return KEY_METRICS


def evaluation_numbers(evaluation: dict) -> dict[str, float]:
    """evaluate.py's JSON flattened to `name -> number` (metric means, overlaps and KL divergences
    as `metrics.<name>.mean` / `.overlap` / `.kl`; `.excess`, the mean minus the real pieces' on the
    run's own grid; `mean_overlap` over the 9 key metrics)."""
    out = {"bits_per_note": evaluation.get("bits_per_note"), "bits_per_second": evaluation.get("bits_per_second"),
           "grammar_error_rate": evaluation.get("grammar_error_rate"),
           "empty_pieces": evaluation.get("empty_pieces")}
    for name, m in (evaluation.get("metrics") or {}).items():
        for field in ("mean", "real_mean", "overlap", "kl"):
            if field in m:
                out[f"metrics.{name}.{field}"] = m[field]
        if m.get("mean") is not None and m.get("real_mean") is not None:
            out[f"metrics.{name}.excess"] = m["mean"] - m["real_mean"]
    out["mean_overlap"] = _mean_finite(out.get(f"metrics.{k}.overlap") for k in key_metrics())
    if any(f"metrics.{k}.kl" in out for k in key_metrics()):
        out["mean_kl"] = _mean_finite(out.get(f"metrics.{k}.kl") for k in key_metrics())
    for name, v in (evaluation.get("continuation") or {}).items():
        out[f"continuation.{name}"] = v
    for name, v in (evaluation.get("baselines") or {}).items():
        out[f"baselines.{name}"] = v
    return out


def _mean_finite(values) -> float:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else M.NAN


def train_compute(metrics: dict) -> float | None:
    """Training FLOPs as 6 x non-embedding parameters x tokens seen (the usual estimate)."""
    try:
        return 6.0 * metrics["non_embedding_params"] * metrics["steps"] * metrics["tokens_per_step"]
    except (KeyError, TypeError):
        return None


def compute_cell(cell: dict | None, least: float | None) -> str:
    """Training compute as `3.88e+14 (x1.50)`: FLOP, then the ratio to the round that spent least."""
    if not cell or not cell.get("mean"):
        return "–"
    ratio = f" (×{cell['mean'] / least:.2f})" if least else ""
    return f"{cell['mean']:.3g}{ratio}"


def wall_time_covers_run(metrics: dict, run_dir: Path) -> bool:
    """Whether a run's `wall_time_s` is the whole run's: train.py says so since it carries the time
    across resumes; for a run of older code, false when the ablation's log beside the run folder
    (`runs/<run>.train.log`) shows a resume (`ckpt_path=` on a command line), since its
    `wall_time_s` is then the last process's alone."""
    if "wall_time_covers_run" in metrics:
        return bool(metrics["wall_time_covers_run"])
    log = run_dir.parent / f"{run_dir.name}.train.log"
    if not log.is_file():
        return True
    lines = log.read_text(errors="replace").splitlines()
    return not any(line.startswith("$ ") and " ckpt_path=" in line for line in lines)


TRAIN_LINE = re.compile(r"^\[train\] step (\d+)/\d+\s+loss ([0-9.]+)")
LOSS_EVERY = 500  # the report's training-loss table: one column every this many steps


def train_loss_curve(run_dir: Path) -> dict[int, float]:
    """Step -> training loss from train.py's progress lines in the ablation's log of the run
    (`runs/<run>.train.log`, part of the run's record). A resumed run trains the steps after its
    checkpoint again: the last line of a step is the one that led to the final weights."""
    log = run_dir.parent / f"{run_dir.name}.train.log"
    curve: dict[int, float] = {}
    if log.is_file():
        for line in log.read_text(errors="replace").splitlines():
            m = TRAIN_LINE.match(line)
            if m:
                curve[int(m.group(1))] = float(m.group(2))
    return dict(sorted(curve.items()))


def loss_at(curve: dict, step: int, span: int = LOSS_EVERY // 5) -> float | None:
    """The mean of the logged training losses of the `span` steps up to `step` (single batches
    are noisy), or None where the log has none there."""
    values = [v for s, v in curve.items() if step - span < int(s) <= step]
    return float(np.mean(values)) if values else None


def load_evaluated_run(run_dir: str | Path) -> dict:
    """A run folder's training figures (metrics.json) and evaluation (eval/evaluation.json)."""
    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    evaluation = read_json(run_dir / EVAL_DIR / EVALUATION_JSON)
    if metrics is None or evaluation is None:
        missing = "metrics.json" if metrics is None else f"{EVAL_DIR}/{EVALUATION_JSON}"
        raise FileNotFoundError(f"{run_dir}: {missing} is missing (train it / run experiments/evaluate.py "
                                f"CKPT --real FOLDER --out {run_dir / EVAL_DIR})")
    run = {k: metrics.get(k) for k in RUN_FIGURES}
    run["train_compute"] = train_compute(metrics)
    return {"label": str(metrics.get("round") or run_dir.name), "seed": metrics.get("seed"), "dir": str(run_dir),
            "run": run, "wall_time_covers_run": wall_time_covers_run(metrics, run_dir),
            "machines": read_json(run_dir / MACHINES_JSON) or [], "train_loss": train_loss_curve(run_dir),
            "numbers": evaluation_numbers(evaluation), "code_fingerprint": metrics.get("code_fingerprint"),
            "media": evaluation.get("media") or {}, "settings": evaluation.get("settings") or {},
            "real_folder": evaluation.get("real_folder"), "per_piece": evaluation.get("per_piece")}


def _arr(values) -> np.ndarray:
    return np.asarray([M.NAN if v is None else v for v in values], dtype=float)


def _numbers_of(pp: dict, r: np.ndarray, f: np.ndarray, c: np.ndarray, grid: int) -> dict[str, float]:
    """One seed's numbers from its per-piece figures (evaluate.py's `per_piece`), with the real
    pieces `r`, pieces from scratch `f` and continuations `c` (index arrays, drawn with replacement)."""
    real, free, cont = pp["real"], pp["free"], pp["continuations"]
    bits = _arr(real["bits"])[r]
    out = {"bits_per_note": bits.sum() / _arr(real["notes"])[r].sum(),
           "bits_per_second": bits.sum() / _arr(real["seconds"])[r].sum()}
    for k in M.PIECE_METRICS:
        gen, ref = _arr(free["metrics"][k])[f], _arr(real["metrics"][k])[r]
        out[f"metrics.{k}.mean"] = M.nanmean(gen)
        out[f"metrics.{k}.real_mean"] = M.nanmean(ref)
        out[f"metrics.{k}.excess"] = out[f"metrics.{k}.mean"] - out[f"metrics.{k}.real_mean"]
        out[f"metrics.{k}.overlap"], out[f"metrics.{k}.kl"] = M.overlap_and_kl(ref, gen, grid)
    out["mean_overlap"] = _mean_finite(out[f"metrics.{k}.overlap"] for k in key_metrics())
    out["mean_kl"] = _mean_finite(out[f"metrics.{k}.kl"] for k in key_metrics())
    errors = _arr(free["errors"])[f].sum() + _arr(cont["errors"])[c].sum()
    tokens = _arr(free["tokens"])[f].sum() + _arr(cont["tokens"])[c].sum()
    out["grammar_error_rate"] = errors / tokens if tokens else M.NAN
    out["empty_pieces"] = float(_arr(free["empty"])[f].sum())
    for k, v in cont.items():
        if k not in ("file", "errors", "tokens"):
            out[f"continuation.{k}"] = M.nanmean(_arr(v)[c])
    return out


def _percentiles(draws: dict[str, list[float]]) -> dict[str, list[float]]:
    """name -> [2.5th, 97.5th percentile] of its finite resampled values (names with none left out)."""
    out = {}
    for name, v in draws.items():
        v = np.asarray(v, dtype=float)
        v = v[np.isfinite(v)]
        if len(v):
            out[name] = [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
    return out


def bootstrap_intervals(per_pieces: Sequence[dict], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                        grid: int = BOOTSTRAP_GRID) -> dict[str, list[float]]:
    """name -> [2.5th, 97.5th percentile] of the seed-averaged number over `resamples` resamples of
    pieces (see the module's docstring). Every seed's evaluation must cover the same real pieces."""
    if not per_pieces:
        return {}
    files = [tuple(pp["real"]["file"]) for pp in per_pieces]
    if len(set(files)) != 1:
        raise ValueError("bootstrap_intervals: the seeds' evaluations cover different real pieces; "
                         "evaluate every run on the same folder (ablate.py's `real=`)")
    rng = np.random.default_rng(seed)
    n_real = len(files[0])
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        r = rng.integers(0, n_real, n_real)
        per_seed = []
        for pp in per_pieces:
            n_free, n_cont = len(pp["free"]["errors"]), len(pp["continuations"]["errors"])
            per_seed.append(_numbers_of(pp, r, rng.integers(0, n_free, n_free), rng.integers(0, n_cont, n_cont), grid))
        for k in per_seed[0]:
            draws.setdefault(k, []).append(_mean_finite(s[k] for s in per_seed))
    return _percentiles(draws)


def _shared(lists: Sequence[Sequence]) -> bool:
    return len({tuple(x) for x in lists}) == 1


def difference_intervals(first: Sequence[dict], second: Sequence[dict], names: Sequence[str],
                         resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                         grid: int = BOOTSTRAP_GRID) -> dict[str, list[float]]:
    """name -> 95% interval of (first round's number - second's), each round's number averaged over
    its seeds (`first`, `second`: their runs' `per_piece`), from one resampling of both rounds.

    Paired where the design pairs them: when every run scored the same real pieces, one draw of
    real pieces serves both rounds, so bits per note compare piece by piece; when every run
    continued the same prompts, one draw of prompts serves all continuations. Pieces from scratch
    are unrelated between runs and drawn per run. Without the shared pieces (or prompts) each
    round draws its own, which gives the wider, unpaired interval."""
    if not first or not second:
        return {}
    runs = list(first) + list(second)
    real_paired = _shared([pp["real"]["file"] for pp in runs])
    cont_paired = bool(runs[0]["continuations"].get("file")) and \
        _shared([pp["continuations"].get("file", []) for pp in runs])
    n_real, n_cont = len(runs[0]["real"]["file"]), len(runs[0]["continuations"]["errors"])
    rng = np.random.default_rng(seed)

    def own(n: int) -> np.ndarray:
        return rng.integers(0, n, n)

    draws: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(resamples):
        r = own(n_real) if real_paired else None    # one draw for every run of both rounds
        c = own(n_cont) if cont_paired else None
        sides = []
        for group in (first, second):
            nums = [_numbers_of(pp, own(len(pp["real"]["file"])) if r is None else r, own(len(pp["free"]["errors"])),
                                own(len(pp["continuations"]["errors"])) if c is None else c, grid) for pp in group]
            sides.append({n: _mean_finite(x.get(n) for x in nums) for n in names})
        for n in names:
            draws[n].append(sides[0][n] - sides[1][n])
    return _percentiles(draws)


def add_intervals(rounds: dict[str, dict], runs: Sequence[dict], **kw) -> None:
    """`ci95` beside `mean` in every round's numbers, from its runs' per-piece figures (a round
    whose evaluations predate `per_piece` gets none)."""
    for label, agg in rounds.items():
        pps = [r["per_piece"] for r in runs if r["label"] == label]
        if not pps or any(pp is None for pp in pps):
            continue
        for name, ci in bootstrap_intervals(pps, **kw).items():
            if name in agg["numbers"]:
                agg["numbers"][name]["ci95"] = ci


# ---------------------------------------------------------------------------------------------
# Verdicts


def judge(a: dict | None, b: dict | None, direction: str,
          diff_ci: Sequence[float] | None = None) -> tuple[str, float | None]:
    """Whether `a` differs from `b` in `direction` (RULE): by more than their seed spreads added,
    with the 95% interval of the difference (`diff_ci`, `difference_intervals`) clear of 0; without
    one, with disjoint 95% intervals where both have one. Returns (verdict, a - b): "holds",
    "reversed", "cannot tell" or "not measured"."""
    if not a or not b or a.get("mean") is None or b.get("mean") is None:
        return "not measured", None
    diff = a["mean"] - b["mean"]
    margin = (a.get("spread") or 0.0) + (b.get("spread") or 0.0)
    if diff_ci is not None:
        overlapping = diff_ci[0] <= 0 <= diff_ci[1]
    else:
        ca, cb = a.get("ci95"), b.get("ci95")
        overlapping = bool(ca and cb and ca[0] <= cb[1] and cb[0] <= ca[1])
    if diff == 0 or abs(diff) <= margin or overlapping:
        return "cannot tell", diff
    wanted = diff > 0 if direction == "higher" else diff < 0
    return ("holds" if wanted else "reversed"), diff


def judge_claims(rounds: dict[str, dict], runs: Sequence[dict] = (), claims=CLAIMS, **kw) -> list[dict]:
    """Every claim (of `claims`: CLAIMS or CAUSES) whose two rounds were measured, judged by RULE;
    each comparison's `diff_ci` comes from `difference_intervals` over the runs' per-piece figures
    (where all have them)."""
    out = []
    for text, first, second, tests in claims:
        if first not in rounds or second not in rounds:
            continue
        pps = {label: [r["per_piece"] for r in runs if r["label"] == label] for label in (first, second)}
        usable = all(pps.values()) and all(pp is not None for v in pps.values() for pp in v)
        cis = difference_intervals(pps[first], pps[second], [n for n, _ in tests], **kw) if usable else {}
        rows = []
        for name, direction in tests:
            a, b = rounds[first]["numbers"].get(name), rounds[second]["numbers"].get(name)
            verdict, diff = judge(a, b, direction, cis.get(name))
            rows.append({"number": name, "expect": direction, "first": a, "second": b, "diff": diff,
                         "diff_ci95": cis.get(name), "verdict": verdict})
        verdicts = {r["verdict"] for r in rows}
        overall = ("holds" if verdicts == {"holds"} else "reversed" if verdicts == {"reversed"}
                   else "partly" if "holds" in verdicts else "cannot tell")
        out.append({"claim": text, "first": first, "second": second, "tests": rows, "overall": overall})
    return out


# ---------------------------------------------------------------------------------------------
# Media: seed 0's pieces of each round, beside the report


def copy_media(runs: Sequence[dict], out_dir: Path, shown: int = SHOWN) -> dict[str, dict]:
    """For each round's lowest seed: `shown` pieces from scratch and continuations (with the real
    continuations of the same prompts) as MIDI and OGG, and piano rolls of exactly those, into
    OUT/media/<round>/. Returns round -> {"files": [...], "png": [...], "prompts": [...]} (paths
    relative to `out_dir`)."""
    from remi import read_midi
    from remi.media.pianoroll import save_comparison

    first: dict[str, dict] = {}
    for r in sorted(runs, key=lambda r: (r["label"], r["seed"] if r["seed"] is not None else 0)):
        first.setdefault(r["label"], r)
    out: dict[str, dict] = {}
    for label, r in first.items():
        src, dst = Path(r["dir"]) / EVAL_DIR, out_dir / MEDIA_DIR / label
        stems = [f"samples/sample_{i:02d}" for i in range(shown)]
        stems += [f"continuations/{kind}_{i:02d}" for i in range(shown) for kind in ("continuation", "real")]
        sources = [(src / stem).with_suffix(suffix) for stem in stems for suffix in (".mid", ".ogg")]
        prompts = ((r.get("per_piece") or {}).get("continuations") or {}).get("file", [])[:shown]
        if not any(p.is_file() for p in sources) and dst.is_dir():
            # The run's record without its samples (a clone on another machine): the media this
            # report copied while the samples were here are kept as they are.
            kept = [dst / p.name for p in sources] + [dst / n for n in (SAMPLES_PNG, CONTINUATIONS_PNG)]
            kept = [str(p.relative_to(out_dir)) for p in kept if p.is_file()]
            if kept:
                out[label] = {"files": [f for f in kept if not f.endswith(".png")],
                              "png": [f for f in kept if f.endswith(".png")], "prompts": list(prompts)}
            continue
        sources = [p for p in sources if p.is_file()]
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        files = []
        for source in sources:
            target = dst / source.name
            shutil.copyfile(source, target)
            files.append(target)
        png = []
        samples = [dst / f"sample_{i:02d}.mid" for i in range(shown) if (dst / f"sample_{i:02d}.mid").is_file()]
        if samples:
            png.append(save_comparison([read_midi(p) for p in samples], [f"{label}: {p.stem}" for p in samples],
                                       dst / SAMPLES_PNG))
        pairs = [(dst / f"continuation_{i:02d}.mid", dst / f"real_{i:02d}.mid") for i in range(shown)]
        pairs = [(g, t) for g, t in pairs if g.is_file() and t.is_file()]
        if pairs:
            scores, labels, ends = [], [], []
            for g, t in pairs:
                real = read_midi(t)
                end = M.split_at_bar(real, 4)[2]  # the 4-bar prompt, shaded
                scores += [read_midi(g), real]
                labels += [f"{label}: {g.stem}", "real continuation"]
                ends += [end, end]
            png.append(save_comparison(scores, labels, dst / CONTINUATIONS_PNG, prompt_end_ticks=ends))
        if not files:
            shutil.rmtree(dst)
            continue
        out[label] = {"files": [str(p.relative_to(out_dir)) for p in files],
                      "png": [str(Path(p).relative_to(out_dir)) for p in png], "prompts": list(prompts)}
    return out


# ---------------------------------------------------------------------------------------------
# The report


def build_ablation_report(run_dirs: Sequence[str | Path], out_dir: str | Path, command: str | None = None,
                          settings: dict | None = None, resamples: int = BOOTSTRAP_RESAMPLES,
                          media: bool = True) -> dict:
    """report.md and report.json from each run's metrics.json and evaluate.py result: per round
    the mean, seed spread and `ci95` of every number, and the original findings judged claim by claim."""
    out_dir = Path(out_dir)
    runs = [load_evaluated_run(d) for d in run_dirs]
    if not runs:
        raise ValueError("no run folders given")
    rounds = aggregate(runs, sections=("run", "numbers"))
    add_intervals(rounds, runs, resamples=resamples)
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = copy_media(runs, out_dir) if media else {}
    result = {"command": command, "settings": settings or {}, "rule": RULE,
              "bootstrap": {"resamples": resamples, "grid_points": BOOTSTRAP_GRID},
              "rounds": rounds, "claims": judge_claims(rounds, runs, resamples=resamples),
              "causes": judge_claims(rounds, runs, CAUSES, resamples=resamples), "media": shown,
              "runs": [{k: v for k, v in r.items() if k != "per_piece"} for r in runs],
              "real_folder": runs[0]["real_folder"]}
    (out_dir / REPORT_JSON).write_text(json.dumps(plain(result), indent=1) + "\n")
    (out_dir / REPORT_MD).write_text(render_ablation_markdown(result, out_dir))
    return result


def render_ablation_markdown(result: dict, out_dir: Path) -> str:
    rounds = result["rounds"]

    def cell(label: str, name: str, digits: int = 3, fixed: bool = False, section: str = "numbers") -> str:
        return fmt_ms(rounds[label][section].get(name), rounds[label]["n_seeds"], digits, fixed)

    lines = _render_header(result) + _render_training(result) + _render_test_pieces(rounds, cell)
    lines += _render_claims(result)
    lines += render_media(result, out_dir)
    lines += ["All numbers, per run: `report.json`; each run's own evaluation: `RUN/eval/report.md`.", ""]
    return "\n".join(lines)


def _render_header(result: dict) -> list[str]:
    """Title, the command, the protocol, the bootstrap's caveat, and whether the report is partial."""
    s = result["settings"]
    lines = ["# Ablation report: the four rounds", ""]
    if result.get("command"):
        lines += ["Produced by:", "", "```", result["command"], "```", ""]
    b = result.get("bootstrap") or {}
    lines += [f"Every run is evaluated by `experiments/evaluate.py` on the same real pieces "
              f"(`{result.get('real_folder')}`): bits per note and per second of those pieces, "
              f"{s.get('eval_n', '?')} pieces sampled from scratch and a continuation of each piece's first 4 bars "
              f"by 12 (temperature {s.get('temperature', '?')}, prompt kept in the window: "
              f"{s.get('keep_prompt', '?')}), with the grammar constraint off. Cells: mean ± standard deviation "
              f"over seeds [95% bootstrap interval over pieces, {b.get('resamples', '?')} resamples, seeds pooled].",
              "", BOOTSTRAP_BIAS, ""]
    if s.get("left_out"):
        lines += [f"**A partial report** (`report_only=true`, while the study runs): {len(s['left_out'])} of its "
                  f"runs are not trained and evaluated yet and are not in it: {', '.join(s['left_out'])}. "
                  "With one seed a round has no seed spread, and its verdicts rest on the intervals alone.", ""]
    return lines


def _render_training(result: dict) -> list[str]:
    rounds = result["rounds"]
    header = ["round", "seeds", "steps", "wall s", "train tokens", "non-emb params", "vocab", "val bits/note",
              "compute (6ND FLOP)"]
    least = min((agg["run"]["train_compute"]["mean"] for agg in rounds.values()
                 if (agg["run"].get("train_compute") or {}).get("mean")), default=None)
    partial = {r["label"] for r in result["runs"] if not r.get("wall_time_covers_run", True)}
    rows = [[label, ",".join(map(str, agg["seeds"]))] +
            [fmt_ms(agg["run"].get(k), agg["n_seeds"], 4) + ("*" if k == "wall_time_s" and label in partial else "")
             for k in RUN_FIGURES if k != "train_compute"] +
            [compute_cell(agg["run"].get("train_compute"), least)] for label, agg in rounds.items()]
    fingerprints = sorted({r.get("code_fingerprint") or "not recorded" for r in result["runs"]})
    lines = ["## Training", "", markdown_table(header, rows), ""]
    if partial:
        resumed = ", ".join(f"{r['label']}-seed{r['seed']}" for r in result["runs"]
                            if not r.get("wall_time_covers_run", True))
        lines += [f"\\* Wall time of the last process only, not of the run: {resumed} were resumed from a "
                  "checkpoint by code that did not carry the time across a resume (train.py now does), so "
                  "these seconds do not compare between rounds.", ""]
    return (lines + [f"Code that trained the runs (fingerprints): {', '.join(fingerprints)}.", ""] + _machines(result)
            + _train_loss(result))


def _train_loss(result: dict) -> list[str]:
    """Training loss every LOSS_EVERY steps, mean ± seed spread per round: how far each round had
    come, and whether the larger round 4 is catching up with round 3 (the same batches: same data,
    tokenizer and seed) when the budget ends."""
    runs = [r for r in result["runs"] if r.get("train_loss")]
    if not runs:
        return []
    last = max(max(map(int, r["train_loss"])) for r in runs)
    steps = list(range(LOSS_EVERY, last + 1, LOSS_EVERY)) or [last]
    by_round: dict[str, list[dict]] = {}
    for r in runs:
        by_round.setdefault(r["label"], []).append(r["train_loss"])

    def cell(values: list) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "–"
        spread = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
        return f"{np.mean(values):.3f}{spread}"

    rows = [[label] + [cell([loss_at(c, s) for c in curves]) for s in steps] for label, curves in by_round.items()]
    pairs = {r["seed"]: r["train_loss"] for r in runs if r["label"] == "round3"}
    gaps = []
    for r in (r for r in runs if r["label"] == "round4" and r["seed"] in pairs):
        big, base = ([loss_at(c, s) for s in steps] for c in (r["train_loss"], pairs[r["seed"]]))
        gaps.append([a - b if a is not None and b is not None else None for a, b in zip(big, base)])
    if gaps:
        rows.append(["round4 − round3 (same seed)"] + [cell([g[i] for g in gaps]) for i in range(len(steps))])
    return ["Training loss per token (train.py's logged losses, mean of those in the "
            f"{LOSS_EVERY // 5} steps up to each step; rounds with BPE count other tokens, so compare "
            "rounds 3 and 4, which see the same batches):", "",
            markdown_table(["round"] + [f"step {s}" for s in steps], rows), ""]


def _machines(result: dict) -> list[str]:
    """Which CPU trained which runs (each run's machines.json): CPUs with other instruction sets
    round floats differently, and their seconds do not compare."""
    where: dict[str, list[str]] = {}
    spans = []
    for r in result["runs"]:
        name = f"{r['label']}-seed{r['seed']}"
        names = list(dict.fromkeys(machine_name(m) for m in r.get("machines") or [])) or ["not recorded"]
        for key in names:
            where.setdefault(key, []).append(name)
        if len(names) > 1:
            spans.append(name)
    if list(where) == ["not recorded"]:
        return []
    text = "; ".join(f"{key}: {', '.join(names)}" for key, names in where.items())
    note = (" Runs on CPUs with other instruction sets round floats differently (the same seed does not "
            "give the same weights bit for bit), and their wall seconds do not compare.") if len(where) > 1 else ""
    if spans:
        note += f" Trained part on one machine and part on another (resumed): {', '.join(spans)}."
    return [f"Machines that trained the runs: {text}.{note}", ""]


def _render_test_pieces(rounds: dict, cell) -> list[str]:
    """Bits, errors and mean distances; each metric against the real pieces on the round's own grid;
    the continuations beside the real ones on each round's grid."""
    header = ["round", "bits/note", "bits/second", "grammar errors", "empty", "mean OA (9 metrics)", "mean KL (9 metrics)"]
    rows = [[label, cell(label, "bits_per_note", 4), cell(label, "bits_per_second", 4),
             cell(label, "grammar_error_rate", 2), cell(label, "empty_pieces"),
             cell(label, "mean_overlap", 2, True), cell(label, "mean_kl", 2, True)] for label in rounds]
    lines = ["## Test pieces", "", markdown_table(header, rows), "", GRID_BITS, ""]
    lines += ["Each metric: mean of the pieces from scratch; the same real "
              "pieces' mean on the round's own grid (every round quantizes them as it quantizes its "
              "training data, so the real column differs between rounds whose grids differ) and the "
              "excess over it; OA (overlapping area with the real pieces' distribution, 1 = the same) and "
              "KL (divergence of the real from the generated distribution, 0 = the same, from the same "
              "density estimates):", ""]
    for k in list(key_metrics()) + ["big_chord_share", "short_ioi_share", "leading_silence_beats", "velocity_spread"]:
        header = [f"{M.PIECE_METRICS[k][1]}", "mean", "real", "excess", "OA", "KL"]
        rows = [[label, cell(label, f"metrics.{k}.mean"), cell(label, f"metrics.{k}.real_mean"),
                 cell(label, f"metrics.{k}.excess"), cell(label, f"metrics.{k}.overlap", 2, True),
                 cell(label, f"metrics.{k}.kl", 2, True)] for label in rounds]
        lines += [markdown_table(header, rows), ""]
    lines += ["## Continuations (4 bars of a real piece, continued by 12)", ""]
    ckeys = ("key_agree", "tempo_ratio", "density_ratio", "pitch_range_overlap")
    rows = []
    for label in rounds:  # the real continuations on each round's own grid
        rows += [[label] + [cell(label, f"continuation.{k}") for k in ckeys],
                 [f"real, {label}'s grid"] + [cell(label, f"continuation.{k}_real") for k in ckeys]]
    return lines + [markdown_table(["round"] + list(ckeys), rows), ""]


def diff_cell(test: dict) -> str:
    ci = test.get("diff_ci95")
    return fmt(test["diff"]) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


def _render_claims(result: dict) -> list[str]:
    lines = ["## The original findings, claim by claim", "", result.get("rule", RULE), ""]
    lines += _claim_tables(result["rounds"], result["claims"])
    if result.get("causes"):
        lines += ["## What makes round 1 differ: the data-vs-grid arm (round 1c)", "", CAUSES_INTRO, ""]
        lines += _claim_tables(result["rounds"], result["causes"])
    return lines


def _claim_tables(rounds: dict, claims: list[dict]) -> list[str]:
    lines = []
    for c in claims:
        lines += [f"**{c['claim']}: {c['overall']}.**", ""]
        header = ["number", "claim", c["first"], c["second"], "difference [95% interval]", "verdict"]
        rows = [[t["number"], t["expect"], fmt_ms(t["first"], rounds[c["first"]]["n_seeds"]),
                 fmt_ms(t["second"], rounds[c["second"]]["n_seeds"]), diff_cell(t), t["verdict"]]
                for t in c["tests"]]
        lines += [markdown_table(header, rows), ""]
    return lines


def render_media(result: dict, out_dir: Path) -> list[str]:
    media = result.get("media") or {}
    if not media:  # no copies: link each round's first run's own files
        lines = ["## Look and listen (first seed of each round)", ""]
        shown = set()
        for r in result["runs"]:
            if r["label"] in shown:
                continue
            shown.add(r["label"])
            base = Path(r["dir"]) / EVAL_DIR
            rel = Path(os.path.relpath(base, out_dir))
            lines += [f"![{r['label']}: {png}]({(rel / png).as_posix()})" for png in r["media"].get("png", [])]
            lines.append("")
        return lines
    prompts = {tuple(m["prompts"]) for m in media.values()}
    lines = ["## Look and listen (seed 0 of each round)", "",
             f"{SHOWN} pieces from scratch and {SHOWN} continuations per round; "
             + ("every round continues the same prompts: " + ", ".join(f"`{p}`" for p in next(iter(prompts)))
                if len(prompts) == 1 else "the rounds continue different prompts (their tokenizers count bars differently)")
             + ". Beside each continuation, the real one.", ""]
    for label, m in media.items():
        lines += [f"### {label}", ""]
        lines += [f"![{label}: {Path(p).stem}]({p})" for p in m["png"]]
        oggs = [p for p in m["files"] if p.endswith(".ogg")]
        if oggs:
            lines += ["", "Audio: " + ", ".join(f"[{Path(p).stem}]({p})" for p in oggs)]
        lines.append("")
    return lines
