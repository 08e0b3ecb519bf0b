"""The ablation of the four rounds: train each, sample each, measure, write one report.

    python experiments/ablate.py scale=tiny data=bundled [seeds=[0,1]] [out=DIR] [key=value ...]

Steps (each a subprocess of the repository's own entry points, so what is measured is exactly
what a user runs), seed by seed: every round of seed 0 is trained and evaluated before seed 1
starts, so a study stopped part-way already compares the rounds; each run is evaluated as soon as
it is trained, so every run that ends is complete on its own:
1. `train.py +experiment=roundN seed=S hydra.run.dir=OUT/runs/roundN-seedS`
   (a run folder that holds metrics.json and checkpoints/last.ckpt is kept; one with only a
   last.ckpt, a run stopped part-way, resumes from it with `ckpt_path=`). Progress lines, at
   most one a minute, say the step, the time left in the run and in the whole study;
2. one folder of real pieces for every run: `real=FOLDER`, or the test split of the rounds' base
   shards (remi.corpus.prepare's content-hash split, the same for every round; the largest, from
   every round's shards prepared up front, so not whichever round trained first), linked into
   OUT/test-pieces/;
3. `experiments/evaluate.py` on the run's last checkpoint into RUN/eval/ with the recipe's
   protocol (bits per note of `eval_pieces` real pieces, `eval_n` pieces from scratch, a
   continuation of every piece's first 4 bars by 12 with the prompt kept in the window, grammar
   constraint off, one `temperature` and `sample_seed`); an evaluation newer than its
   checkpoint, on the same folder, is kept;
4. experiments/ablation_report.py `build_ablation_report`: OUT/report.md and OUT/report.json, per round the
   mean, seed spread and a bootstrap interval over pieces of every number, and the original
   findings judged claim by claim.

Every step resumes: an interrupted ablation is run again with the same command.

A run's record, RUN/metrics.json, RUN/eval/evaluation.json (per-piece figures included: the
report's intervals are computed from them), RUN/machines.json (the CPU of every process that
trained it) and runs/<run>.train.log (its commands and losses), is small and committed
(.gitignore keeps the checkpoints and samples out). A clone that has a run's record but not its checkpoint (a new
machine) keeps the run as it is and builds the report from the records, so a study that moves
between machines loses at most the run in progress; `retrain=true` trains it again.
With `steps=N`, round 4 trains `N / round4_step_cost` steps (equal compute for its 1.5x layers);
without it every round trains the scale's own max_steps (equal steps, as the original work).

`rounds` names conf/experiment/roundN files: 1-4 by default; `1c`, the data-vs-grid arm (round 2's
tokenizer on round 1's data), is added with 'rounds=[1,2,3,4,1c]' and judged in its own section.

Keys of this script (everything else goes to train.py as a Hydra override, e.g. `scale=tiny`,
`data=bundled`, `logger=none`, `data.limit=200`, `trainer.max_steps=300`):
"""
from __future__ import annotations

import json
import re
import shlex
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

from experiments.common import MACHINES_JSON, ROOT, AblationConfig, machine, parse_args, run_logged
from model.callbacks import RecentSpan, clock


@dataclass
class TrainCommand:
    label: str
    seed: int
    run_dir: Path
    argv: list[str]


def train_commands(cfg: AblationConfig) -> list[TrainCommand]:
    out = Path(cfg.out)
    experiments = ROOT / "conf" / "experiment"
    cmds = []
    for r in cfg.rounds:
        label = f"round{r}"
        if not (experiments / f"{label}.yaml").is_file():
            known = ", ".join(sorted(p.stem.removeprefix("round") for p in experiments.glob("round*.yaml")))
            raise SystemExit(f"ablate: rounds={list(cfg.rounds)} names round {r!r}, which has no "
                             f"conf/experiment/{label}.yaml; the rounds are {known}")
        for seed in cfg.seeds:
            run_dir = out / "runs" / f"{label}-seed{seed}"
            argv = [cfg.python, str(ROOT / "train.py"), f"+experiment={label}", f"seed={seed}",
                    f"hydra.run.dir={run_dir}"]
            if cfg.steps is not None and not any(o.startswith("trainer.max_steps=") for o in cfg.overrides):
                steps = cfg.steps if r != 4 else max(1, round(cfg.steps / cfg.round4_step_cost))
                argv.append(f"trainer.max_steps={steps}")
            argv += list(cfg.overrides)
            cmds.append(TrainCommand(label, int(seed), run_dir, argv))
    return cmds


PROGRESS = re.compile(r"\[train\] step (\d+)/(\d+)")


class Progress:
    """What the ablation prints while it trains: each run's progress lines (at most one a
    minute) with the time left in that run and in the whole study.

    The study's estimate: every run's steps times its step cost (`round4_step_cost` for round 4,
    1 for the others) times the seconds per unit step measured so far (the current run's own rate
    over about its last ten minutes, `model.callbacks.RecentSpan`, once it has one), plus, per
    evaluation still to run, the mean evaluation time measured so far.
    """

    def __init__(self, cfg: AblationConfig, commands: Sequence[TrainCommand], every_s: float = 60.0):
        self.cfg, self.every_s = cfg, every_s
        self.todo = {c.run_dir.name: c for c in commands if not finished(c.run_dir) or cfg.retrain}
        self.evals_left = len(commands)
        self.rate: float | None = None       # seconds per unit step, from the runs so far
        self.eval_times: list[float] = []
        self.current: TrainCommand | None = None
        self.step = self.max_steps = 0
        self._last_print = 0.0
        self._recent = RecentSpan()

    def cost(self, c: TrainCommand) -> float:
        return self.cfg.round4_step_cost if c.label == "round4" else 1.0

    def steps_of(self, c: TrainCommand) -> int | None:
        for a in reversed(c.argv):
            if a.startswith("trainer.max_steps="):
                return int(a.split("=", 1)[1])
        return self.max_steps or None      # the scale's own: as the run in progress reports it

    def start(self, c: TrainCommand) -> None:
        self.current, self._recent, self.step = c, RecentSpan(), 0

    def line(self, text: str, now: float | None = None) -> None:
        m = PROGRESS.search(text)
        if m is None or self.current is None:
            return
        self.step, self.max_steps = int(m.group(1)), int(m.group(2))
        now = time.time() if now is None else now
        self._recent.add(now, self.step)
        seconds, (steps,) = self._recent.span()
        if steps > 0:
            self.rate = seconds / steps / self.cost(self.current)
        if now - self._last_print >= self.every_s or self.step == self.max_steps:
            self._last_print = now
            left = self.study_left()
            print(f"[ablate] {self.current.run_dir.name}: {text.strip().removeprefix('[train] ')}"
                  + (f"; study left ~{clock(left)}" if left is not None else ""), file=sys.stderr, flush=True)

    def done(self, c: TrainCommand) -> None:
        self.todo.pop(c.run_dir.name, None)
        self.current = None

    def evaluated(self, seconds: float | None) -> None:
        self.evals_left -= 1
        if seconds is not None:
            self.eval_times.append(seconds)

    def study_left(self) -> float | None:
        if self.rate is None:
            return None
        left = 0.0
        for name, c in self.todo.items():
            steps = self.steps_of(c) or 0
            done = self.step if self.current is not None and name == self.current.run_dir.name else 0
            left += max(0, steps - done) * self.cost(c) * self.rate
        if self.eval_times:
            left += self.evals_left * sum(self.eval_times) / len(self.eval_times)
        return left


def recorded(run_dir: Path) -> bool:
    """The run's committed record is here without its checkpoint: trained and evaluated elsewhere."""
    return ((run_dir / "metrics.json").is_file() and (run_dir / "eval" / "evaluation.json").is_file()
            and not (run_dir / "checkpoints" / "last.ckpt").is_file())


def finished(run_dir: Path) -> bool:
    """Trained to the end: metrics.json beside its last checkpoint, or the run's record."""
    return (run_dir / "metrics.json").is_file() and ((run_dir / "checkpoints" / "last.ckpt").is_file()
                                                     or recorded(run_dir))


def kept_message(run_dir: Path, current_code: str) -> str:
    """What to say about a finished run that is kept, warning when other code trained it."""
    trained_by = json.loads((run_dir / "metrics.json").read_text()).get("code_fingerprint")
    msg = f"[ablate] {run_dir.name}: already trained, kept"
    if recorded(run_dir):
        msg += " (its record, metrics.json and eval/evaluation.json; the checkpoint is not on this machine)"
    if trained_by != current_code:
        msg += (f" -- WARNING: trained by other code (fingerprint {trained_by or 'not recorded'}, now "
                f"{current_code}); pass retrain=true to train it again")
    return msg


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        for f in fields(AblationConfig):
            if f.name not in ("overrides", "python"):
                default = f.default_factory() if callable(f.default_factory) else f.default
                print(f"  {f.name}={default}")
        return 0
    cfg = parse_args(argv)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    timings: dict[str, float] = {}
    commands = train_commands(cfg)
    from pianolm.runinfo import code_fingerprint  # imported here: it pulls in torch

    if cfg.report_only:
        return report_only(cfg, argv, commands, out)
    current_code = code_fingerprint(ROOT)
    progress = Progress(cfg, commands)
    # Seed by seed: every round of one seed is trained and evaluated before the next seed starts,
    # so a study stopped part-way already compares all rounds on its first seeds; each run is
    # evaluated right after its training, so its record is complete before the next run starts.
    for seed in cfg.seeds:
        for c in (c for c in commands if c.seed == int(seed)):
            train_run(cfg, c, progress, current_code, timings)
            real = real_folder(cfg, commands, out)
            evaluate_run(cfg, c, real, progress, timings)

    t = time.time()
    result = write_report(cfg, argv, [c.run_dir for c in commands], out)
    timings["report"] = round(time.time() - t, 1)
    timings["total"] = round(time.time() - t0, 1)
    (out / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    print(f"[ablate] report: {out / 'report.md'} ({len(result['runs'])} runs, {timings['total']:.0f} s)",
          file=sys.stderr)
    return 0


def write_report(cfg: AblationConfig, argv: Sequence[str], run_dirs: Sequence[Path], out: Path,
                 left_out: Sequence[str] = ()) -> dict:
    """OUT/report.md and report.json of `run_dirs`, with the command and the settings that made them
    (`left_out`: the study's runs not in this report yet)."""
    from experiments.ablation_report import build_ablation_report

    settings = {k: getattr(cfg, k) for k in ("rounds", "seeds", "steps", "round4_step_cost", "eval_n",
                                             "eval_pieces", "eval_bars", "temperature", "keep_prompt",
                                             "sample_seed")}
    settings["train_overrides"] = cfg.overrides
    settings["left_out"] = list(left_out)
    command = "python experiments/ablate.py " + shlex.join([a for a in argv if not a.startswith("report_only=")])
    return build_ablation_report(run_dirs, out, command=command, settings=settings)


def report_only(cfg: AblationConfig, argv: Sequence[str], commands: Sequence[TrainCommand], out: Path) -> int:
    """`report_only=true`: the report of the runs trained and evaluated so far; nothing is trained."""
    real = Path(cfg.real) if cfg.real is not None else out / "test-pieces"
    ready = [c.run_dir for c in commands if finished(c.run_dir) and evaluated(c.run_dir, real)]
    for c in commands:
        if c.run_dir not in ready:
            state = "not evaluated on " + str(real) if finished(c.run_dir) else "not trained"
            print(f"[ablate] {c.run_dir.name}: {state}, left out of the report", file=sys.stderr)
    if not ready:
        raise SystemExit(f"ablate: report_only=true, but no run under {out / 'runs'} is trained and evaluated "
                         "yet; run the same command without report_only first")
    result = write_report(cfg, argv, ready, out, left_out=[c.run_dir.name for c in commands if c.run_dir not in ready])
    print(f"[ablate] report: {out / 'report.md'} ({len(result['runs'])} of {len(commands)} runs)", file=sys.stderr)
    return 0


def train_run(cfg: AblationConfig, c: TrainCommand, progress: Progress, current_code: str,
              timings: dict[str, float]) -> None:
    """Train one run; a run folder with a last.ckpt but no metrics.json (a run stopped part-way)
    resumes from that checkpoint (`ckpt_path=`), so a killed study loses at most `ckpt_every` steps."""
    if finished(c.run_dir) and not cfg.retrain:
        print(kept_message(c.run_dir, current_code), file=sys.stderr)
        return
    argv, last, step = list(c.argv), c.run_dir / "checkpoints" / "last.ckpt", 0
    if last.is_file() and not cfg.retrain:
        import torch

        step = torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("global_step")
        print(f"[ablate] resuming {c.run_dir.name} from {last} (step {step}) ...", file=sys.stderr, flush=True)
        argv.append(f"ckpt_path={last}")
    else:
        print(f"[ablate] training {c.run_dir.name} ...", file=sys.stderr, flush=True)
    record_machine(c.run_dir, step, fresh=cfg.retrain or not last.is_file())
    t = time.time()
    progress.start(c)
    run_logged(argv, c.run_dir.parent / f"{c.run_dir.name}.train.log", f"training {c.run_dir.name}", progress.line)
    progress.done(c)
    timings[f"train {c.run_dir.name}"] = round(time.time() - t, 1)


def record_machine(run_dir: Path, step: int | None, fresh: bool) -> None:
    """RUN/machines.json (part of the run's record): the machine of every process that trained the
    run, with the step it started from (a run resumed on another machine lists both)."""
    path = run_dir / MACHINES_JSON
    seen = [] if fresh or not path.is_file() else json.loads(path.read_text())
    seen.append({"from_step": step or 0, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **machine()})
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(seen, indent=1) + "\n")
    tmp.replace(path)


def evaluate_run(cfg: AblationConfig, c: TrainCommand, real: Path, progress: Progress,
                 timings: dict[str, float]) -> None:
    if evaluated(c.run_dir, real) and not cfg.retrain:
        print(f"[ablate] {c.run_dir.name}: already evaluated on {real}, kept", file=sys.stderr)
        progress.evaluated(None)
        return
    if not (c.run_dir / "checkpoints" / "last.ckpt").is_file():
        raise SystemExit(f"ablate: {c.run_dir} has no checkpoints/last.ckpt to evaluate (its record was "
                         f"evaluated on another folder of real pieces than {real}); pass retrain=true to "
                         "train it again, or real= the folder it was evaluated on")
    print(f"[ablate] evaluating {c.run_dir.name} ...", file=sys.stderr, flush=True)
    t = time.time()
    (c.run_dir / "eval.log").unlink(missing_ok=True)
    run_logged(evaluate_argv(cfg, c.run_dir, real), c.run_dir / "eval.log", f"evaluating {c.run_dir.name}")
    timings[f"evaluate {c.run_dir.name}"] = round(time.time() - t, 1)
    progress.evaluated(time.time() - t)


def real_folder(cfg: AblationConfig, commands: Sequence[TrainCommand], out: Path) -> Path:
    """The folder of real pieces every run is evaluated on: `real`, or the test split of the
    rounds' shards (the largest among their shard folders, `base_shards`: splits are fixed by
    content, so it holds the others'), linked into OUT/test-pieces as `experiments/link_pieces.py` links them,
    so `evaluate.py --max-pieces` picks the same pieces as for the recipe (kept when present, so a
    resumed ablation evaluates on the same pieces; links, never copies of the corpus)."""
    from experiments.common import test_split_files
    from experiments.link_pieces import link_split

    if cfg.real is not None:
        folder = Path(cfg.real)
        if not folder.is_dir():
            raise SystemExit(f"ablate: real={cfg.real} is not a folder of MIDI files")
        return folder
    folder = out / "test-pieces"
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    best, best_n = None, 0
    for shard_dir in base_shards(commands):
        n = len(test_split_files(shard_dir))
        if n > best_n:
            best, best_n = shard_dir, n
    if best is None:
        raise SystemExit("ablate: the rounds' shard manifests list no test-split pieces; "
                         "raise data.test_fraction or data.limit, or pass real=FOLDER")
    link_split(best, folder)
    return folder


def base_shards(commands: Sequence[TrainCommand]) -> list[Path]:
    """The base (BPE-free) shard folder of every round of the study, prepared where the cache has
    none, from each round's own train.py overrides composed the way train.py composes them. The
    test split is fixed by file content, so the largest of these holds every round's test pieces,
    whichever round trains first (round 1 reads MAESTRO alone)."""
    from hydra import compose, initialize_config_dir

    import remi
    from pianolm.config import tokenizer_config
    from remi.corpus.prepare import base_tokenizer, prepare

    folders: dict[str, Path] = {}
    for c in commands:
        if c.label in folders:
            continue
        overrides = [a for a in c.argv[2:] if not a.startswith(("hydra.", "ckpt_path="))]
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        tok = base_tokenizer(remi.Tokenizer(tokenizer_config(cfg)))
        folders[c.label] = prepare(cfg.data, tok, cfg.paths.data_dir, cfg.paths.cache_dir, progress=False).dir
    return list(folders.values())


def evaluate_argv(cfg: AblationConfig, run_dir: Path, real: Path) -> list[str]:
    return [cfg.python, str(ROOT / "experiments" / "evaluate.py"), str(run_dir / "checkpoints" / "last.ckpt"),
            "--real", str(real), "--n", str(cfg.eval_n), "--seed", str(cfg.sample_seed),
            "--max-pieces", str(cfg.eval_pieces), "--bars", str(cfg.eval_bars),
            "--temperature", str(cfg.temperature), "--max-new-tokens", str(cfg.eval_max_new_tokens),
            "--out", str(run_dir / "eval")] + (["--keep-prompt"] if cfg.keep_prompt else [])


def evaluated(run_dir: Path, real: Path) -> bool:
    """A run's evaluation is current: written after its last checkpoint (or the run's record, whose
    checkpoint is elsewhere), on the same real folder."""
    result, ckpt = run_dir / "eval" / "evaluation.json", run_dir / "checkpoints" / "last.ckpt"
    if not (ckpt.is_file() or recorded(run_dir)):
        return False
    if not result.is_file() or (ckpt.is_file() and result.stat().st_mtime < ckpt.stat().st_mtime):
        return False
    try:
        return json.loads(result.read_text()).get("real_folder") == str(real)
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    raise SystemExit(main())
