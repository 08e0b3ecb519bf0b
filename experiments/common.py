"""What the experiment scripts share: their key=value parser, running a logged subprocess,
reading run folders' JSON and shard manifests, numbers over seeds, and report formatting.

    python -m experiments.ablate ...    python -m experiments.compare ...    python -m experiments.evaluate ...

(`python experiments/<name>.py` runs them too: the package is installed with the project.)
"""
from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
REPORT_MD, REPORT_JSON = "report.md", "report.json"
MACHINES_JSON = "machines.json"  # in a run folder: experiments/ablate.py's record of where it trained


# ---------------------------------------------------------------------------------------------
# The key=value arguments of ablate.py and compare.py


@dataclass
class AblationConfig:
    rounds: list = field(default_factory=lambda: [1, 2, 3, 4])  # which conf/experiment/roundN
    seeds: list = field(default_factory=lambda: [0])  # training seeds; > 1 gives mean ± spread
    out: str = "outputs/ablation"  # report.md, report.json, plots/, runs/, prompts/
    # trainer.max_steps per run (None: the scale's own, 300 at tiny: ~75 s per run on 2 idle cores).
    steps: int | None = None
    # Sampling keys of experiments/compare.py (which shares this parser), unused by the ablation:
    n_samples: int = 8  # pieces from scratch per run
    free_bars: int = 8  # bars of each piece from scratch
    n_prompts: int = 4  # held-out pieces whose first bars are continued
    prompt_bars: int = 4
    max_bars: int = 4  # bars generated after each prompt (the real reference uses as many)
    n_real: int = 64  # held-out real pieces the metrics are compared with
    temperature: float = 0.9  # the recipe's evaluation temperature (docs/training.md's sweep)
    sample_seed: int = 0
    grammar: bool = False  # constrain sampling by the REMI grammar (False: errors are measured)
    # Cap per piece (free pieces also stop after free_bars bars). Past the context (256 tokens at
    # tiny) every step recomputes the whole window, so long pieces dominate the sampling time.
    max_new_tokens: int = 512
    retrain: bool = False  # train again even where a finished run folder exists
    # Build OUT/report.md and report.json from the runs already trained and evaluated, and train or
    # evaluate nothing: a partial report while a study runs (seed 0 before seeds 1-2), or the
    # report of finished runs rebuilt by newer report code.
    report_only: bool = False
    # Equal compute for the deeper round 4: its steps are `steps` divided by its step cost relative
    # to round 3 (1.5x the layers: about 1.5x; measured figures are in each run's metrics.json).
    round4_step_cost: float = 1.5
    # The evaluation (experiments/evaluate.py) of every run on one folder of real pieces. None: the
    # test split of the runs' shards, `eval_pieces` of them spread evenly, copied to OUT/test-pieces.
    real: str | None = None
    eval_n: int = 48  # pieces sampled from scratch per run (the recipe's evaluation: 48)
    keep_prompt: bool = True  # continuations keep the prompt in the window (evaluate.py --keep-prompt)
    eval_pieces: int = 48  # real pieces (each also continued: 4 bars of prompt, 12 generated)
    eval_bars: int = 16
    eval_max_new_tokens: int = 2048
    python: str = sys.executable
    overrides: list = field(default_factory=list)  # passed through to train.py

    def own_keys(self) -> set[str]:
        return {f.name for f in fields(self)} - {"overrides"}


def parse_args(argv: Sequence[str]) -> AblationConfig:
    """`key=value` arguments: this script's keys into the config, the rest are train.py overrides."""
    cfg = AblationConfig()
    own, rest = [], []
    for arg in argv:
        key = arg.split("=", 1)[0]
        (own if "=" in arg and key in cfg.own_keys() else rest).append(arg)
    merged = OmegaConf.merge(OmegaConf.structured(cfg), OmegaConf.from_dotlist(own))
    cfg = AblationConfig(**OmegaConf.to_container(merged))
    cfg.overrides = rest
    return cfg


# Instruction sets that change how fast (bf16, AVX-512) or with which float rounding a CPU trains.
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def machine(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """The machine a run trains on: CPU model, the instruction sets in CPU_FEATURES it has, cores
    and torch's version. Runs of one study trained on different CPUs differ in float rounding
    (and in seconds), so each run records where it trained."""
    import os
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    flags = set(flags.group(1).split()) if flags else set()
    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = None
    return {"cpu": model.group(1).strip() if model else None,
            "instructions": [f for f in CPU_FEATURES if f in flags], "cores": os.cpu_count(),
            "torch": torch_version}


def machine_name(m: dict) -> str:
    """`AMD EPYC (avx2, avx512f, avx512_bf16), 2 cores`"""
    instructions = ", ".join(m.get("instructions") or []) or "no AVX2"
    return f"{m.get('cpu') or 'unknown CPU'} ({instructions}), {m.get('cores')} cores"


def run_logged(argv: list[str], log: Path, what: str, on_line: Callable[[str], None] | None = None) -> None:
    """Run a command with its output in `log` (appended: a resumed run keeps the first part's
    lines), each line also handed to `on_line`; on failure, show the log's tail and stop. It runs
    in the caller's folder, so a relative path on the user's command line (`out=`, `paths.data_dir=`)
    names the same place for this script and for every step it runs."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write("$ " + shlex.join(argv) + "\n")
        f.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            f.flush()
            if on_line is not None:
                on_line(line)
        proc.wait()
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise SystemExit(f"ablate: {what} failed (exit {proc.returncode}); its log {log} ends:\n{tail}")


# ---------------------------------------------------------------------------------------------
# Run folders and shard manifests


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def test_split_files(shard_dir: str | Path, split: str = "test") -> list[Path]:
    """The held-out test pieces of a shard folder (or those of another `split`: "val", "train"),
    from its manifest (sources' folders + files)."""
    manifest = read_json(Path(shard_dir) / "manifest.json")
    if manifest is None:
        raise FileNotFoundError(f"{shard_dir}/manifest.json is missing or unreadable")
    folders = {name: Path(s["folder"]) for name, s in manifest.get("sources", {}).items() if s.get("folder")}
    out = []
    for f in manifest.get("files", []):
        if f.get("split") == split and f["source"] in folders:
            out.append(folders[f["source"]] / f["file"])
    return sorted(p for p in out if p.is_file())


def spread(items: Sequence, n: int) -> list:
    """n items evenly spread over a sorted list (so every collection of the corpus shows up)."""
    if n >= len(items):
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Numbers over seeds


def aggregate(evals: Sequence[dict], sections: Sequence[str] = ("run", "metrics", "overlap", "continuation")
              ) -> dict[str, dict]:
    """Per row label: mean and spread over seeds of every number in `sections` (spread 0 with one seed)."""
    rows: dict[str, list[dict]] = {}
    for e in evals:
        rows.setdefault(e["label"], []).append(e)
    out = {}
    for label in sorted(rows, key=natural_key):
        group = rows[label]
        out[label] = {"n_seeds": len(group), "seeds": [e["seed"] for e in group]}
        for section in sections:
            keys = {k for e in group for k in e[section]}
            out[label][section] = {k: mean_spread([e[section].get(k) for e in group]) for k in sorted(keys)}
    return out


def mean_spread(values: Iterable) -> dict:
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None]
    nums = [v for v in nums if math.isfinite(v)]
    if not nums:
        return {"mean": None, "spread": None, "n": 0}
    spread = float(np.std(nums, ddof=1)) if len(nums) > 1 else 0.0
    return {"mean": float(np.mean(nums)), "spread": spread, "n": len(nums)}


def natural_key(label: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", label)]


# ---------------------------------------------------------------------------------------------
# Formatting


def fmt(x: float | None, digits: int = 3, fixed: bool = False) -> str:
    """`digits` significant digits (thousands separated when larger); fixed: `digits` decimals."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    x = float(x)
    if fixed:
        return f"{x:.{digits}f}"
    if x != 0 and abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def fmt_ms(cell: dict | None, n_seeds: int, digits: int = 3, fixed: bool = False) -> str:
    """mean ± seed spread (with several seeds) [95% interval] (where the cell has `ci95`)."""
    if not cell or cell.get("mean") is None:
        return "–"
    text = fmt(cell["mean"], digits, fixed)
    if n_seeds > 1:
        text += f" ± {fmt(cell['spread'], 2, fixed)}"
    if cell.get("ci95"):
        lo, hi = cell["ci95"]
        text += f" [{fmt(lo, digits, fixed)}, {fmt(hi, digits, fixed)}]"
    return text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plain(x):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, paths -> str."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x
