"""The ablation report from run folders: one table, plots, and a JSON of every number.

Used by `compare.py` (runs already trained); the four-round study's own report is `ablation_report.py`.
A run folder is what `train.py` writes (`metrics.json`, `checkpoints/last.ckpt`) plus what the
ablation samples into it:

    RUN/metrics.json                 round, seed, data size, vocabulary, parameters, val bits/note
    RUN/eval/free/*.mid (+ .json)    pieces sampled from scratch (sample.py's per-piece JSON
                                     carries the grammar error rate of the raw tokens)
    RUN/eval/continue/*.mid (+ .json) continuations of held-out prompts (the JSON names the
                                     prompt file and its bar count)

A wandb offline run folder (`wandb/offline-run-*`) works too: its numbers come from
`files/wandb-summary.json` and `files/config.yaml` (or from the train folder around it).

Every metric is computed on the generated pieces and on held-out real pieces (the test split of
the run's shards); the report gives each metric's mean and its overlapping area (OA) with the
real pieces' distribution (remi.metrics.overlap_area). Several seeds of a round are shown as
mean ± spread (sample standard deviation over seeds).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

import remi
from experiments.common import (
    REPORT_JSON,
    REPORT_MD,
    aggregate,
    fmt,
    fmt_ms,
    markdown_table,
    natural_key,
    plain,
    read_json,
    test_split_files,
)
from remi import metrics as M

FREE_DIR = Path("eval") / "free"
CONTINUE_DIR = Path("eval") / "continue"
PLOTS_DIR = "plots"

# (key in metrics.json / wandb summary, column header)
RUN_COLUMNS = (
    ("train_songs", "songs"),
    ("train_tokens", "tokens"),
    ("vocab_size", "vocab"),
    ("non_embedding_params", "non-emb params"),
    ("val_bits_per_note", "val bits/note"),
)
# Per-piece metrics shown in the table (all of remi.metrics.PIECE_METRICS), then set-level ones.
PIECE_COLUMNS = tuple(M.PIECE_METRICS)
SET_COLUMNS = (("long_gap_share", f"pieces with a gap >= {M.LONG_GAP_BARS:g} bars"),
               ("grammar_error_rate", "grammar error rate"),
               ("empty_share", "empty pieces"))
CONTINUATION_COLUMNS = (
    ("key_agree", "key agrees (signature)"),
    ("key_same", "same key"),
    ("tempo_ratio", "tempo ratio"),
    ("density_ratio", "note-density ratio"),
    ("pitch_range_overlap", "pitch-range overlap"),
)
REAL = "real (held-out)"


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class Piece:
    name: str
    score: remi.Score
    info: dict = field(default_factory=dict)  # the sample's JSON (empty for real pieces)


@dataclass
class Run:
    dir: Path
    label: str  # the round, the table's row
    seed: int | None
    metrics: dict  # metrics.json (or the wandb summary + config)
    free: list[Piece]
    continuations: list[Piece]


def load_pieces(folder: Path) -> list[Piece]:
    """Every .mid in `folder` (sorted), with its sidecar .json when there is one."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pieces = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in (".mid", ".midi")):
        pieces.append(Piece(path.stem, remi.read_midi(path), read_json(path.with_suffix(".json")) or {}))
    return pieces


def _wandb_config(path: Path) -> dict:
    """wandb's config.yaml ({key: {value: ...}}) as a plain dict."""
    from omegaconf import OmegaConf

    if not path.is_file():
        return {}
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    return {k: (v.get("value") if isinstance(v, dict) and "value" in v else v) for k, v in raw.items()}


def train_folder(run_dir: Path) -> Path | None:
    """The train.py output folder of a run: the folder itself, or RUN for RUN/wandb/offline-run-x."""
    candidates = [run_dir] + ([run_dir.parent.parent] if run_dir.parent.name == "wandb" else [])
    return next((d for d in candidates if (d / "metrics.json").is_file()), None)


def load_run(run_dir: str | Path) -> Run:
    """A train.py run folder, or a wandb offline run folder (see the module docstring)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    metrics: dict = {}
    home = train_folder(run_dir)
    if home is not None:
        metrics = read_json(home / "metrics.json") or {}
    summary = read_json(run_dir / "files" / "wandb-summary.json")
    if summary is not None:  # a wandb run folder
        config = _wandb_config(run_dir / "files" / "config.yaml")
        merged = {k: v for k, v in summary.items() if not k.startswith("_")}
        merged.update({k: config[k] for k in ("round", "seed", "tags") if k in config})
        merged.update(metrics)  # metrics.json, when found, is the more complete record
        metrics = merged
    if not metrics:
        raise FileNotFoundError(f"{run_dir} holds neither metrics.json (train.py) nor "
                                "files/wandb-summary.json (a wandb run folder)")
    base = home or run_dir
    free = load_pieces(base / FREE_DIR)
    if not free and summary is not None:  # media the training callback logged to wandb
        free = [Piece(p.stem, remi.read_midi(p)) for p in sorted((run_dir / "files").rglob("*.mid"))]
    return Run(dir=base, label=str(metrics.get("round") or base.name),
               seed=metrics.get("seed"), metrics=metrics, free=free,
               continuations=load_pieces(base / CONTINUE_DIR))


def real_files_for(runs: Sequence[Run]) -> list[Path]:
    """Held-out real pieces for a set of runs: the largest test split among their shard folders.

    Splits are fixed by file content, so a smaller data selection's test split (round 1's half)
    is a subset of the full one's: the largest is held out from every run.
    """
    best: list[Path] = []
    for run in runs:
        shard_dir = run.metrics.get("shard_dir")
        if shard_dir and Path(shard_dir).is_dir():
            files = test_split_files(shard_dir)
            if len(files) > len(best):
                best = files
    return best


# ---------------------------------------------------------------------------------------------
# Numbers


def prompt_bars_of(piece: Piece, default: int) -> int:
    prompt = piece.info.get("prompt") or {}
    return int(prompt.get("bars") or default)


def evaluate_run(run: Run, real_pieces: Sequence[dict], prompt_bars: int) -> dict:
    """Every number of one run: training figures, metric means, OA to real, continuation means."""
    per_piece = [M.piece_metrics(p.score) for p in run.free]
    summary = M.summarize(per_piece)
    errors = [p.info["token_errors"] for p in run.free if "token_errors" in p.info]
    summary["grammar_error_rate"] = float(np.mean(errors)) if errors else M.NAN
    cont = [M.continuation_consistency(p.score, prompt_bars_of(p, prompt_bars)) for p in run.continuations]
    return {
        "label": run.label,
        "seed": run.seed,
        "dir": str(run.dir),
        "run": {k: run.metrics.get(k) for k, _ in RUN_COLUMNS}
        | {k: run.metrics.get(k) for k in ("steps", "wall_time_s", "val_loss", "bpe", "tokenizer_hash")},
        "n_free": len(run.free),
        "n_continuations": len(run.continuations),
        "metrics": summary,
        "overlap": M.overlap_areas(per_piece, real_pieces, PIECE_COLUMNS),
        "continuation": {k: M.nanmean(c[k] for c in cont) for k, _ in CONTINUATION_COLUMNS},
        "pieces": per_piece,
    }


def evaluate_real(files: Sequence[Path], prompt_files: Sequence[Path], prompt_bars: int,
                  continuation_bars: int) -> dict:
    """The held-out real pieces' metrics, and the real continuations of the prompts."""
    per_piece = [M.piece_metrics(remi.read_midi(f)) for f in files]
    summary = M.summarize(per_piece)
    cont = [M.continuation_consistency(remi.read_midi(f), prompt_bars, prompt_bars + continuation_bars)
            for f in prompt_files]
    return {
        "files": [str(f) for f in files],
        "prompt_files": [str(f) for f in prompt_files],
        "metrics": summary,
        "continuation": {k: M.nanmean(c[k] for c in cont) for k, _ in CONTINUATION_COLUMNS},
        "pieces": per_piece,
    }


def main_table(rounds: dict[str, dict], real: dict) -> str:
    header = ["round", "seeds"] + [h for _, h in RUN_COLUMNS] + [h for _, h in SET_COLUMNS]
    header += [f"{M.PIECE_METRICS[k][1]} (OA)" for k in PIECE_COLUMNS]
    rows = []
    for label, agg in rounds.items():
        n = agg["n_seeds"]
        row = [label, str(n)] + [fmt_ms(agg["run"].get(k), n, 4) for k, _ in RUN_COLUMNS]
        row += [fmt_ms(agg["metrics"].get(k), n) for k, _ in SET_COLUMNS]
        row += [f"{fmt_ms(agg['metrics'].get(k), n)} ({fmt_ms(agg['overlap'].get(k), n, 2, fixed=True)})"
                for k in PIECE_COLUMNS]
        rows.append(row)
    m = real["metrics"]
    row = [REAL, "–"] + ["–"] * len(RUN_COLUMNS)
    row += [fmt(m.get(k)) if k != "grammar_error_rate" else "–" for k, _ in SET_COLUMNS]
    row += [fmt(m.get(k)) for k in PIECE_COLUMNS]
    rows.append(row)
    return markdown_table(header, rows)


def continuation_table(rounds: dict[str, dict], real: dict) -> str:
    header = ["round"] + [h for _, h in CONTINUATION_COLUMNS]
    rows = [[label] + [fmt_ms(agg["continuation"].get(k), agg["n_seeds"]) for k, _ in CONTINUATION_COLUMNS]
            for label, agg in rounds.items()]
    rows.append(["real continuation"] + [fmt(real["continuation"].get(k)) for k, _ in CONTINUATION_COLUMNS])
    return markdown_table(header, rows)


# ---------------------------------------------------------------------------------------------
# Plots


def plot_metrics(rounds: dict[str, dict], real: dict, path: Path) -> Path:
    """One panel per metric: the value per round (± spread over seeds), real pieces as a line."""
    from remi.media.pianoroll import plt, save_figure

    keys = [k for k, _ in RUN_COLUMNS if k == "val_bits_per_note"] + [k for k, _ in SET_COLUMNS] + list(PIECE_COLUMNS)
    labels = {**dict(RUN_COLUMNS), **dict(SET_COLUMNS), **{k: v[1] for k, v in M.PIECE_METRICS.items()}}
    cols = 4
    fig, axes = plt.subplots(-(-len(keys) // cols), cols, figsize=(4 * cols, 2.8 * -(-len(keys) // cols)), dpi=90,
                             squeeze=False)
    names = list(rounds)
    for ax, key in zip(axes.flat, keys):
        section = "run" if key == "val_bits_per_note" else "metrics"
        cells = [rounds[r][section].get(key) or {} for r in names]
        means = [c.get("mean") if c.get("mean") is not None else np.nan for c in cells]
        spreads = [c.get("spread") or 0.0 for c in cells]
        ax.errorbar(range(len(names)), means, yerr=spreads, marker="o", capsize=3)
        real_value = real["metrics"].get(key)
        if real_value is not None and math.isfinite(real_value) and key != "grammar_error_rate":
            ax.axhline(real_value, color="tab:red", linestyle="--", linewidth=1, label="real")
            ax.legend(fontsize="x-small")
        ax.set_xticks(range(len(names)), names, fontsize="small")
        ax.set_title(labels[key], fontsize="small")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_overlap(rounds: dict[str, dict], path: Path) -> Path:
    """Rounds x metrics heat map of the overlapping area with real music (1 = same distribution)."""
    from remi.media.pianoroll import plt, save_figure

    names = list(rounds)
    grid = np.array([[(rounds[r]["overlap"].get(k) or {}).get("mean") or np.nan for k in PIECE_COLUMNS] for r in names],
                    dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 * len(PIECE_COLUMNS) + 2, 0.6 * len(names) + 2.2), dpi=90)
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(len(names)):
        for j in range(len(PIECE_COLUMNS)):
            if math.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center",
                        color="white" if grid[i, j] < 0.6 else "black", fontsize="small")
    ax.set_yticks(range(len(names)), names)
    ax.set_xticks(range(len(PIECE_COLUMNS)), [M.PIECE_METRICS[k][1] for k in PIECE_COLUMNS], rotation=40,
                  ha="right", fontsize="small")
    ax.set_title("overlapping area with held-out real pieces (1 = indistinguishable)")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_pianorolls(runs: Sequence[Run], real_files: Sequence[Path], path: Path, max_bars: int = 16) -> Path | None:
    """The first free sample of each round (its first seed) next to a real piece."""
    from remi.media.pianoroll import save_comparison

    scores, labels, seen = [], [], set()
    for run in sorted(runs, key=lambda r: (natural_key(r.label), r.seed if r.seed is not None else 0)):
        if run.label in seen or not run.free:
            continue
        seen.add(run.label)
        scores.append(M.truncate_bars(run.free[0].score, max_bars))
        labels.append(f"{run.label} (seed {run.seed}): {run.free[0].name}")
    if real_files:
        scores.append(M.truncate_bars(remi.read_midi(real_files[0]), max_bars))
        labels.append(f"real: {Path(real_files[0]).stem}")
    if not scores:
        return None
    return save_comparison(scores, labels, path, title=f"a sample per round, first {max_bars} bars")


def plot_continuations(runs: Sequence[Run], prompt_files: Sequence[Path], prompt_bars: int,
                       continuation_bars: int, path: Path) -> Path | None:
    """For the first prompt: its real continuation and each round's, the prompt end marked."""
    from remi.media.pianoroll import save_comparison

    if not prompt_files:
        return None
    prompt = Path(prompt_files[0])
    real = M.truncate_bars(remi.read_midi(prompt), prompt_bars + continuation_bars)
    scores, labels, ends = [real], [f"real: {prompt.stem}"], [M.split_at_bar(real, prompt_bars)[2]]
    seen = set()
    for run in sorted(runs, key=lambda r: (natural_key(r.label), r.seed if r.seed is not None else 0)):
        if run.label in seen:
            continue
        match = [p for p in run.continuations if Path((p.info.get("prompt") or {}).get("file", "")).stem == prompt.stem]
        match = match or run.continuations[:1]
        if not match:
            continue
        seen.add(run.label)
        piece = match[0]
        bars = prompt_bars_of(piece, prompt_bars)
        scores.append(M.truncate_bars(piece.score, bars + continuation_bars))
        labels.append(f"{run.label} (seed {run.seed})")
        ends.append(M.split_at_bar(piece.score, bars)[2])
    return save_comparison(scores, labels, path, prompt_end_ticks=ends,
                           title=f"continuing the first {prompt_bars} bars of {prompt.stem}")


# ---------------------------------------------------------------------------------------------
# The report


def build_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    real_files: Sequence[str | Path] | None = None,
    prompt_files: Sequence[str | Path] | None = None,
    prompt_bars: int = 4,
    continuation_bars: int = 8,
    max_real: int | None = 64,
    command: str | None = None,
    settings: dict | None = None,
) -> dict:
    """Write report.md, report.json and plots/ into `out_dir`; return the JSON's content.

    real_files: held-out real pieces (default: the test split of the runs' shards, first
    `max_real`); prompt_files: the real pieces whose first bars were continued (default: the
    prompt files named in the continuations' JSON).
    """
    out_dir = Path(out_dir)
    runs = [load_run(d) for d in run_dirs]
    if not runs:
        raise ValueError("no run folders given")
    real = [Path(f) for f in real_files] if real_files is not None else real_files_for(runs)
    if max_real is not None:
        real = real[:max_real]
    if prompt_files is None:
        named = {(p.info.get("prompt") or {}).get("file") for r in runs for p in r.continuations}
        prompt_files = sorted(Path(f) for f in named if f and Path(f).is_file())
    prompt_files = [Path(f) for f in prompt_files]

    real_eval = evaluate_real(real, prompt_files, prompt_bars, continuation_bars)
    evals = [evaluate_run(r, real_eval["pieces"], prompt_bars) for r in runs]
    rounds = aggregate(evals)

    plots = out_dir / PLOTS_DIR
    figures = {
        "metrics": plot_metrics(rounds, real_eval, plots / "metrics_per_round.png"),
        "overlap": plot_overlap(rounds, plots / "overlap_per_round.png") if real else None,
        "pianorolls": plot_pianorolls(runs, real, plots / "pianorolls.png"),
        "continuation": plot_continuations(runs, prompt_files, prompt_bars, continuation_bars,
                                           plots / "continuation.png"),
    }
    result = {
        "command": command,
        "settings": dict(settings or {}, prompt_bars=prompt_bars, continuation_bars=continuation_bars,
                         n_real=len(real), n_prompts=len(prompt_files)),
        "rounds": rounds,
        "real": real_eval,
        "runs": evals,
        "plots": {k: str(v.relative_to(out_dir)) if v else None for k, v in figures.items()},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_JSON).write_text(json.dumps(plain(result), indent=1) + "\n")
    (out_dir / REPORT_MD).write_text(render_markdown(result))
    return result


def render_markdown(result: dict) -> str:
    rounds, real, s = result["rounds"], result["real"], result["settings"]
    seeds = sorted({seed for r in rounds.values() for seed in r["seeds"] if seed is not None})
    lines = ["# Ablation report", ""]
    if result.get("command"):
        lines += ["Produced by:", "", "```", result["command"], "```", ""]
    sampling = ", ".join(f"{k}={v}" for k, v in s.items()
                         if k in ("n_samples", "free_bars", "temperature", "sample_seed", "grammar", "max_new_tokens"))
    lines += [
        f"Rounds: {', '.join(rounds)}; seeds: {', '.join(map(str, seeds)) or '–'}. "
        f"Generated pieces are compared with {s['n_real']} held-out real pieces (the test split). "
        + (f"Sampling: {sampling}." if sampling else ""),
        "",
        "## The rounds",
        "",
        "Each metric cell: the mean over a run's pieces sampled from scratch"
        + (" (± the spread over seeds)" if any(r["n_seeds"] > 1 for r in rounds.values()) else "")
        + ", and in parentheses its overlapping area (OA) with the real pieces' distribution of "
        "that metric (Yang & Lerch; 1 = indistinguishable, 0 = disjoint). Data size is the train "
        "split; val bits/note is comparable across tokenizers and BPE.",
        "",
        main_table(rounds, real),
        "",
        "## Continuations",
        "",
        (f"The first {s['prompt_bars']} bars of {s['n_prompts']} held-out pieces, continued by each round; "
         if s["n_prompts"] else "No prompt was continued (none fitted the models' context). ")
        +
        f"the real continuation (the next {s['continuation_bars']} bars of the same pieces) is the reference. "
        "Key: Krumhansl–Schmuckler key of the prompt vs of the continuation; ratios are continuation / prompt.",
        "",
        continuation_table(rounds, real),
        "",
        "## Plots",
        "",
    ]
    captions = {"metrics": "metrics per round (real pieces: dashed line)",
                "overlap": "overlap with real music per round and metric",
                "pianorolls": "a sample per round, and a real piece",
                "continuation": "continuations of one prompt; the prompt is shaded"}
    for key, rel in result["plots"].items():
        if rel:
            lines += [f"![{captions[key]}]({rel})", ""]
    lines += ["All numbers, per run and per piece: `report.json`.", ""]
    return "\n".join(lines)
