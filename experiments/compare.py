"""The ablation report from runs already trained (local run folders or wandb offline runs).

    python experiments/compare.py RUN_DIR... [out=DIR] [real=DIR] [prompts=DIR] [sample=true] [key=value ...]

RUN_DIR: a train.py output folder (metrics.json, checkpoints/last.ckpt), or a wandb offline run
folder (wandb/offline-run-*). A run folder without eval samples but with a checkpoint is sampled
first, exactly as ablate.py does (`sample=false` skips that and uses what is there), so
full-scale GPU runs are compared the same way as the tiny ablation.

real=DIR     held-out real pieces (default: the test split of the runs' shards, `n_real` of them)
prompts=DIR  pieces whose first `prompt_bars` bars are continued (default: `n_prompts` of the
             test split; with sample=false, the prompts the continuations name)
Other keys as in ablate.py: n_samples, free_bars, n_prompts, prompt_bars, max_bars, n_real,
temperature, sample_seed, grammar, max_new_tokens, continuation_bars (= max_bars).
"""
from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import Sequence

from experiments.common import ROOT, AblationConfig, parse_args, run_logged, spread
from experiments.report import CONTINUE_DIR, FREE_DIR, build_report, load_run, real_files_for

OWN = ("real", "prompts", "sample", "continuation_bars")


def midi_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"compare: {folder} is not a folder of MIDI files")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi"))


def sample_argv(cfg: AblationConfig, ckpt: Path, out_dir: Path, n: int, max_bars: int,
                prompt: Path | None = None) -> list[str]:
    argv = [cfg.python, str(ROOT / "sample.py"), f"ckpt={ckpt}", f"out_dir={out_dir}", f"n_samples={n}",
            f"seed={cfg.sample_seed}", f"temperature={cfg.temperature}", f"grammar={str(cfg.grammar).lower()}",
            f"max_bars={max_bars}", f"max_new_tokens={cfg.max_new_tokens}", "audio=false", "progress=false"]
    if prompt is not None:
        argv += [f"prompt={prompt}", f"prompt_bars={cfg.prompt_bars}"]
    return argv


def sample_run(cfg: AblationConfig, run_dir: Path, prompts: Sequence[Path]) -> None:
    """Free pieces, and continuations of `prompts`, from a run's last checkpoint (fresh folders).

    The prompts are copied into RUN/eval/prompts so that one sample.py call continues them all
    (a prompt that does not fit this run's context should have been left out by `fitting`).
    """
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    free, cont, folder = run_dir / FREE_DIR, run_dir / CONTINUE_DIR, run_dir / "eval" / "prompts"
    for d in (free, cont, folder):
        shutil.rmtree(d, ignore_errors=True)
    run_logged(sample_argv(cfg, ckpt, free, cfg.n_samples, cfg.free_bars), run_dir / "eval" / "free.log",
               f"sampling {run_dir.name}")
    if not prompts:
        return
    folder.mkdir(parents=True)
    for p in prompts:
        shutil.copyfile(p, folder / p.name)
    run_logged(sample_argv(cfg, ckpt, cont, 1, cfg.max_bars, folder), run_dir / "eval" / "continue.log",
               f"continuing prompts with {run_dir.name}")


def checkpoint_tokenizer(run_dir: Path):
    """(tokenizer, context length) of a run's last checkpoint, or None without one."""
    from pianolm.checkpoint import read_header

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        return None
    head = read_header(ckpt)
    return head.tokenizer, head.model_config.block_size


def prompt_tokens(tok, path: Path, prompt_bars: int) -> int:
    """Tokens of the first `prompt_bars` bars of a MIDI file, as sample.py cuts them."""
    from remi.bars import cut_bars

    return len(cut_bars(tok, tok.encode(path), prompt_bars)[0])


def pick_prompts(candidates: Sequence[Path], n: int, min_bars: int, run_dirs: Sequence[Path] = (),
                 prompt_bars: int = 4) -> list[Path]:
    """n held-out pieces with at least `min_bars` bars, spread over the split, whose first
    `prompt_bars` bars take at most 3/4 of every run's context (so the model has room to go on).

    When fewer than n fit every run, the rest are those that fit the most runs (each run then
    continues the ones that fit it, see `fitting`).
    """
    import remi
    from remi import metrics as M

    models = [m for m in (checkpoint_tokenizer(d) for d in run_dirs) if m is not None]
    scored = []
    for path in spread(candidates, max(8 * n, 64)):
        score = remi.read_midi(path)
        if not len(score) or len(M.bar_starts(score, score.end_tick)) - 1 < min_bars:
            continue
        fit = sum(prompt_tokens(tok, path, prompt_bars) <= block * 3 // 4 for tok, block in models)
        if models and fit == 0:
            continue
        scored.append((-fit, len(scored), path))
    return [p for _, _, p in sorted(scored)[:n]]


def fitting(run_dir: Path, prompts: Sequence[Path], prompt_bars: int) -> list[Path]:
    """The prompts whose first bars fit in this run's context (all of them without a checkpoint)."""
    model = checkpoint_tokenizer(run_dir)
    if model is None:
        return list(prompts)
    tok, block = model
    return [p for p in prompts if prompt_tokens(tok, p, prompt_bars) < block]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0 if argv else 2
    run_dirs = [Path(a) for a in argv if "=" not in a]
    kv = [a for a in argv if "=" in a]
    extra = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in kv if a.split("=", 1)[0] in OWN}
    cfg = parse_args([a for a in kv if a.split("=", 1)[0] not in OWN])
    if cfg.overrides:
        raise SystemExit(f"compare: unknown keys {', '.join(cfg.overrides)} (see --help)")
    if cfg.out == "outputs/ablation":
        cfg.out = "outputs/compare"
    continuation_bars = int(extra.get("continuation_bars", cfg.max_bars))
    do_sample = extra.get("sample", "true").lower() in ("true", "1", "yes")
    out = Path(cfg.out)

    runs = [load_run(d) for d in run_dirs]
    test_files = real_files_for(runs)
    real = midi_files(extra["real"]) if "real" in extra else spread(test_files, cfg.n_real)
    if not real:
        print("compare: no held-out real pieces (give real=DIR); overlap with real music is left out",
              file=sys.stderr)

    prompts: list[Path] | None = None
    if "prompts" in extra:
        prompts = midi_files(extra["prompts"])
    elif do_sample and test_files:
        prompts = pick_prompts(test_files, cfg.n_prompts, cfg.prompt_bars + cfg.max_bars,
                               [r.dir for r in runs], cfg.prompt_bars)
    if do_sample:
        if prompts:  # stable copies, so the continuations' JSON names files that stay
            prompts_dir = out / "prompts"
            shutil.rmtree(prompts_dir, ignore_errors=True)
            prompts_dir.mkdir(parents=True)
            copies = []
            for i, p in enumerate(prompts):
                copies.append(prompts_dir / f"{i:02d}_{p.parent.name}_{p.name}")
                shutil.copyfile(p, copies[-1])
            prompts = copies
        for run in runs:
            has_samples = (run.dir / FREE_DIR).is_dir() and (run.dir / CONTINUE_DIR).is_dir()
            if not has_samples and (run.dir / "checkpoints" / "last.ckpt").is_file():
                print(f"[compare] sampling {run.dir} ...", file=sys.stderr, flush=True)
                sample_run(cfg, run.dir, fitting(run.dir, prompts or [], cfg.prompt_bars))
    build_report([r.dir if (r.dir / "metrics.json").is_file() else d for r, d in zip(runs, run_dirs)], out,
                 real_files=real, prompt_files=prompts, prompt_bars=cfg.prompt_bars,
                 continuation_bars=continuation_bars, max_real=None,
                 command="python experiments/compare.py " + shlex.join(argv),
                 settings={k: getattr(cfg, k) for k in ("n_samples", "temperature", "sample_seed", "grammar")})
    print(f"[compare] report: {out / 'report.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
