"""The ablation report builder on fake run folders, compare.py on them, and (slow) ablate.py end to end."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import remi
from experiments import ablation_report as A
from experiments import report as R
from remi import metrics as M

ROOT = Path(__file__).resolve().parents[1]
TPB = 480


@pytest.fixture(scope="module")
def tok():
    return remi.Tokenizer.from_yaml(ROOT / "conf" / "tokenizer" / "coarse.yaml")


def write_piece(tok, score: remi.Score, stem: Path, info: dict | None = None) -> Path:
    """score -> ids (the real tokenizer) -> .mid, plus a sample.py-like JSON sidecar."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    ids = tok.encode_score(score)
    tok.decode(ids).save(str(stem.with_suffix(".mid")))
    if info is not None:
        stem.with_suffix(".json").write_text(json.dumps({"token_errors": tok.token_errors(ids), **info}))
    return stem.with_suffix(".mid")


def scale_piece(n_bars: int, transpose: int = 0, chord: int = 1, start_bar: int = 0) -> list[tuple]:
    """Quarter notes of a C-major scale (transposed), `chord` notes stacked on each beat."""
    steps = [0, 2, 4, 5, 7, 9, 11, 12]
    octaves = [0, 12, 24, -12, -24, -36]  # distinct pitches: one pitch twice at one onset is one note
    rows = []
    for beat in range(4 * n_bars):
        t = (4 * start_bar + beat) * TPB
        for k in range(chord):
            rows.append((t, t + TPB, 60 + transpose + steps[beat % 8] + octaves[k], 80))
    return rows


def make_run(tok, folder: Path, label: str, seed: int, *, chord: int, gap_bars: int, bpn: float,
             prompt: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({
        "round": label, "seed": seed, "train_songs": 100, "train_tokens": 12345 + seed,
        "vocab_size": tok.vocab_size, "non_embedding_params": 800_000, "val_bits_per_note": bpn,
        "steps": 10,
    }))
    for i in range(3):
        rows = scale_piece(2, chord=chord) + scale_piece(2, chord=chord, start_bar=2 + gap_bars)
        write_piece(tok, remi.Score.from_notes(rows), folder / R.FREE_DIR / f"sample_{i:03d}",
                    {"temperature": 1.0, "prompt": None})
    # A continuation: the prompt's 4 bars in C, then 4 bars a tritone away (a key change).
    rows = scale_piece(4) + scale_piece(4, transpose=6, start_bar=4)
    write_piece(tok, remi.Score.from_notes(rows), folder / R.CONTINUE_DIR / "prompt_000",
                {"prompt": {"file": str(prompt), "bars": 4}})
    return folder


@pytest.fixture(scope="module")
def fake(tmp_path_factory, tok):
    base = tmp_path_factory.mktemp("ablation")
    real = [write_piece(tok, remi.Score.from_notes(scale_piece(8, transpose=t)), base / "real" / f"real_{t}")
            for t in (0, 2, 5, 7)]
    runs = [
        make_run(tok, base / "r1s0", "round1", 0, chord=6, gap_bars=3, bpn=5.0, prompt=real[0]),
        make_run(tok, base / "r1s1", "round1", 1, chord=6, gap_bars=3, bpn=6.0, prompt=real[0]),
        make_run(tok, base / "r2s0", "round2", 0, chord=1, gap_bars=0, bpn=3.0, prompt=real[0]),
    ]
    return base, runs, real


def test_report_from_fake_runs(fake):
    base, runs, real = fake
    out = base / "report"
    result = R.build_report(runs, out, real_files=real, prompt_bars=4, continuation_bars=4,
                            command="python experiments/compare.py ...")
    # Files.
    md = (out / R.REPORT_MD).read_text()
    data = json.loads((out / R.REPORT_JSON).read_text())
    for rel in data["plots"].values():
        assert rel and (out / rel).is_file() and (out / rel).stat().st_size > 1000
    # Rows: one per round (seeds merged), then the real pieces.
    table = [line for line in md.splitlines() if line.startswith("| round1") or line.startswith("| round2")]
    assert [line.split("|")[1].strip() for line in table] == ["round1", "round2", "round1", "round2"]  # 2 tables
    assert f"| {R.REAL} |" in md and "| real continuation |" in md
    r1, r2 = data["rounds"]["round1"], data["rounds"]["round2"]
    assert r1["n_seeds"] == 2 and r2["n_seeds"] == 1
    # Mean ± spread over seeds.
    assert r1["run"]["val_bits_per_note"]["mean"] == pytest.approx(5.5)
    assert r1["run"]["val_bits_per_note"]["spread"] == pytest.approx(np.std([5.0, 6.0], ddof=1))
    assert "5.5 ± 0.71" in md
    # The metrics see what the fake pieces hold: 6-note chords and a 3-bar gap in round 1.
    assert r1["metrics"]["notes_per_onset"]["mean"] == pytest.approx(6.0)
    assert r1["metrics"]["big_chord_share"]["mean"] == pytest.approx(1.0)
    assert r1["metrics"]["longest_gap_bars"]["mean"] == pytest.approx(3.0)
    assert r1["metrics"]["long_gap_share"]["mean"] == pytest.approx(1.0)
    assert r2["metrics"]["longest_gap_bars"]["mean"] == pytest.approx(0.0)
    assert r2["metrics"]["scale_consistency"]["mean"] == pytest.approx(1.0)
    assert r2["metrics"]["grammar_error_rate"]["mean"] == pytest.approx(0.0)
    # OA: round 2's one-note onsets match the real pieces, round 1's chords do not.
    assert r2["overlap"]["notes_per_onset"]["mean"] > 0.95
    assert r1["overlap"]["notes_per_onset"]["mean"] < 0.05
    # Continuations: the fake ones change key, the real one does not.
    assert r1["continuation"]["key_agree"]["mean"] == 0.0
    assert data["real"]["continuation"]["key_agree"] == 1.0
    assert data["real"]["continuation"]["density_ratio"] == pytest.approx(1.0)
    assert result["settings"]["n_real"] == 4 and result["settings"]["n_prompts"] == 1


def test_real_files_come_from_the_manifest_test_split(tmp_path, fake):
    base, runs, real = fake
    shard = tmp_path / "shards"
    shard.mkdir()
    (shard / "manifest.json").write_text(json.dumps({
        "sources": {"bundled": {"folder": str(real[0].parent)}},
        "files": [{"source": "bundled", "file": p.name, "split": s} for p, s in zip(real, ["test", "train", "test", "val"])],
    }))
    assert R.test_split_files(shard) == sorted([real[0], real[2]])
    run = R.load_run(runs[0])
    run.metrics["shard_dir"] = str(shard)
    assert R.real_files_for([run]) == sorted([real[0], real[2]])


def test_load_run_reads_wandb_offline_folder(tmp_path, fake):
    _, runs, _ = fake
    wandb_run = tmp_path / "wandb" / "offline-run-20250101_000000-abc"
    (wandb_run / "files").mkdir(parents=True)
    (wandb_run / "files" / "wandb-summary.json").write_text(json.dumps({"val_bits_per_note": 4.25, "_step": 3}))
    (wandb_run / "files" / "config.yaml").write_text("round:\n  value: round3\nseed:\n  value: 7\n")
    # The media the training callback logged: one piece.
    (wandb_run / "files" / "media").mkdir()
    src = next((runs[0] / R.FREE_DIR).glob("*.mid"))
    (wandb_run / "files" / "media" / "s.mid").write_bytes(src.read_bytes())
    run = R.load_run(wandb_run)
    assert (run.label, run.seed, run.metrics["val_bits_per_note"]) == ("round3", 7, 4.25)
    assert len(run.free) == 1 and "_step" not in run.metrics


def test_load_run_refuses_a_folder_without_numbers(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither metrics.json"):
        R.load_run(tmp_path)


def test_compare_cli_builds_the_report(fake, tmp_path):
    base, runs, real = fake
    out = tmp_path / "cmp"
    cmd = [sys.executable, str(ROOT / "experiments" / "compare.py"), *map(str, runs), f"out={out}",
           f"real={real[0].parent}", "continuation_bars=4", "sample=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / R.REPORT_JSON).read_text())
    assert list(data["rounds"]) == ["round1", "round2"] and data["settings"]["n_real"] == 4
    assert "compare.py" in data["command"]


def test_ablate_plans_commands(tmp_path):
    from experiments import ablate

    cfg = ablate.parse_args(["scale=tiny", "data=bundled", "seeds=[0,1]", "rounds=[1,3]", f"out={tmp_path}",
                             "trainer.max_steps=7"])
    cmds = ablate.train_commands(cfg)
    assert len(cmds) == 4
    first = cmds[0]
    assert "+experiment=round1" in first.argv and "seed=0" in first.argv and "trainer.max_steps=7" in first.argv
    assert "scale=tiny" in first.argv and "data=bundled" in first.argv
    assert f"hydra.run.dir={tmp_path / 'runs' / 'round1-seed0'}" in first.argv
    assert {c.run_dir.name for c in cmds} == {"round1-seed0", "round1-seed1", "round3-seed0", "round3-seed1"}
    # An explicit trainer.max_steps wins over `steps`; without one, `steps` sets it once.
    assert sum(a.startswith("trainer.max_steps=") for a in first.argv) == 1
    plain = ablate.train_commands(ablate.parse_args(["rounds=[2]", "steps=11"]))[0].argv
    assert [a for a in plain if a.startswith("trainer.")] == ["trainer.max_steps=11"]
    # the data-vs-grid arm is a round by name; a round without a config is refused before anything runs
    arm = ablate.train_commands(ablate.parse_args(["rounds=[1,1c]", "steps=11"]))
    assert [c.run_dir.name for c in arm] == ["round1-seed0", "round1c-seed0"]
    assert "+experiment=round1c" in arm[1].argv and "trainer.max_steps=11" in arm[1].argv
    with pytest.raises(SystemExit, match=r"names round 5, which has no conf/experiment/round5.yaml; the rounds are "
                                         r"1, 1c, 2, 3, 4"):
        ablate.train_commands(ablate.parse_args(["rounds=[1,5]"]))


def test_a_kept_run_trained_by_other_code_is_flagged(tmp_path):
    from experiments import ablate
    from pianolm.runinfo import code_fingerprint

    now = code_fingerprint()
    assert len(now) == 16 and now == code_fingerprint(ROOT)
    run = tmp_path / "round1-seed0"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"code_fingerprint": now}))
    assert "WARNING" not in ablate.kept_message(run, now)
    (run / "metrics.json").write_text(json.dumps({"code_fingerprint": "0123456789abcdef"}))
    msg = ablate.kept_message(run, now)
    assert "WARNING" in msg and "0123456789abcdef" in msg and "retrain=true" in msg
    (run / "metrics.json").write_text(json.dumps({"steps": 3}))  # written before fingerprints existed
    assert "not recorded" in ablate.kept_message(run, now)
    # the fingerprint follows the code: a changed source file changes it
    copy = tmp_path / "repo"
    for d in ("remi", "model", "pianolm"):
        shutil.copytree(ROOT / d, copy / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "train.py", copy / "train.py")
    assert code_fingerprint(copy) == now
    (copy / "model" / "data.py").write_text((copy / "model" / "data.py").read_text() + "\n# changed\n")
    assert code_fingerprint(copy) != now


def test_a_committed_record_without_its_checkpoint_is_kept(tmp_path):
    """A clone on a new machine has a run's record (metrics.json, eval/evaluation.json) and no
    checkpoint: the run counts as trained and evaluated, and is not trained again."""
    from experiments import ablate

    real = "experiments/results/x/test-pieces"
    run = tmp_path / "round1-seed0"
    (run / "eval").mkdir(parents=True)
    assert not ablate.finished(run) and not ablate.evaluated(run, Path(real))
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"part-way")
    assert not ablate.finished(run)  # stopped part-way: it resumes
    (run / "metrics.json").write_text(json.dumps({"code_fingerprint": "0123456789abcdef"}))
    assert ablate.finished(run) and not ablate.recorded(run) and not ablate.evaluated(run, Path(real))
    (run / "eval" / "evaluation.json").write_text(json.dumps({"real_folder": real}))
    assert ablate.evaluated(run, Path(real))
    os.utime(run / "eval" / "evaluation.json", (1, 1))  # older than the checkpoint: evaluated again
    assert not ablate.evaluated(run, Path(real))
    (run / "checkpoints" / "last.ckpt").unlink()  # the clone: only what git keeps
    assert ablate.recorded(run) and ablate.finished(run) and ablate.evaluated(run, Path(real))
    assert not ablate.evaluated(run, Path("elsewhere"))
    assert "its record" in ablate.kept_message(run, "0123456789abcdef")
    cfg = ablate.parse_args([f"out={tmp_path}"])
    cmd = ablate.TrainCommand("round1", 0, run, ["python", "train.py"])
    progress = ablate.Progress(cfg, [cmd])
    assert not progress.todo  # nothing left to train
    with pytest.raises(SystemExit, match="round1-seed0 has no checkpoints/last.ckpt.*retrain=true"):
        ablate.evaluate_run(cfg, cmd, Path("elsewhere"), progress, {})
    # .gitignore commits exactly the record of a run folder, nothing heavier
    kept = tracked_by_gitignore(tmp_path / "repo", {
        "runs/round1-seed0/metrics.json": "", "runs/round1-seed0/eval/evaluation.json": "",
        "runs/round1-seed0/machines.json": "",
        "runs/round1-seed0/checkpoints/last.ckpt": "", "runs/round1-seed0/eval/samples/sample_00.mid": "",
        "runs/round1-seed0/eval/eval.log": "", "runs/round1-seed0/.hydra/config.yaml": "",
        "runs/round1-seed0.train.log": "", "test-pieces/a.mid": "", "report.md": "",
        "media/round1/sample_00.ogg": ""})
    assert kept == {"runs/round1-seed0/metrics.json", "runs/round1-seed0/eval/evaluation.json", "report.md",
                    "runs/round1-seed0/machines.json", "runs/round1-seed0.train.log", "media/round1/sample_00.ogg"}


def test_a_run_records_the_machines_that_trained_it(tmp_path):
    from experiments import ablate
    from experiments.common import machine, machine_name

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    m = machine(cpuinfo)
    assert m["cpu"] == "AMD EPYC 7B13" and m["instructions"] == ["avx2", "avx512f", "avx512_bf16"]
    assert machine_name(m) == f"AMD EPYC 7B13 (avx2, avx512f, avx512_bf16), {m['cores']} cores"
    assert machine(tmp_path / "absent")["cpu"] is None
    run = tmp_path / "round1-seed0"
    ablate.record_machine(run, None, fresh=True)
    ablate.record_machine(run, 250, fresh=False)  # resumed at step 250
    seen = json.loads((run / "machines.json").read_text())
    assert [s["from_step"] for s in seen] == [0, 250] and seen[0]["cpu"] == machine()["cpu"]
    ablate.record_machine(run, None, fresh=True)  # trained again from step 0: the list starts over
    assert len(json.loads((run / "machines.json").read_text())) == 1


def tracked_by_gitignore(repo: Path, files: dict[str, str | bytes]) -> set[str]:
    """Which of `files` (paths inside an ablation's out folder) the repository's .gitignore lets
    `git add` take, with the folder at experiments/results/study/ of a scratch repository."""
    base = repo / "experiments" / "results" / "study"
    for rel, content in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(content if isinstance(content, bytes) else content.encode())
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    listed = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "experiments"], cwd=repo,
                            check=True, capture_output=True, text=True).stdout.split()
    return {str(Path(f).relative_to("experiments/results/study")) for f in listed}


def fake_evaluation(bpn: float, gap: float, chords: float, errors: float, overlap: float) -> dict:
    """An evaluate.py --json result with the numbers the claims read."""
    from experiments.evaluate import KEY_METRICS

    metrics = {k: {"mean": 1.0, "real_mean": 1.0, "overlap": overlap} for k in M.PIECE_METRICS}
    metrics["longest_gap_bars"] = {"mean": gap, "real_mean": 0.2, "overlap": overlap}
    metrics["big_chord_share"] = {"mean": chords, "real_mean": 0.03, "overlap": overlap}
    assert set(KEY_METRICS) <= set(metrics)
    return {"bits_per_note": bpn, "metrics": metrics, "grammar_error_rate": errors, "empty_pieces": 0,
            "continuation": {"key_agree": 0.5, "key_agree_real": 0.6}, "real_folder": "REAL",
            "media": {"png": ["pianoroll_samples.png"], "audio": []}}


def test_ablation_report_judges_each_claim_against_the_seed_spread(tmp_path):
    # round -> per seed (bits/note, longest gap, big-chord share, grammar errors, overlap)
    table = {1: [(9.0, 3.0, 0.30, 0.05, 0.50), (9.2, 2.8, 0.34, 0.05, 0.52)],
             2: [(8.0, 0.5, 0.05, 0.04, 0.70), (8.2, 0.7, 0.07, 0.04, 0.72)],
             3: [(7.0, 0.5, 0.05, 0.02, 0.80), (7.2, 0.5, 0.05, 0.02, 0.82)],
             4: [(7.1, 0.5, 0.05, 0.02, 0.81), (6.9, 0.5, 0.05, 0.02, 0.79)]}
    dirs = []
    for r, seeds in table.items():
        for seed, row in enumerate(seeds):
            d = tmp_path / "runs" / f"round{r}-seed{seed}"
            (d / A.EVAL_DIR).mkdir(parents=True)
            (d / "metrics.json").write_text(json.dumps({"round": f"round{r}", "seed": seed, "steps": 100 + r,
                                                        "wall_time_s": 60.0, "val_bits_per_note": row[0]}))
            (d / A.EVAL_DIR / A.EVALUATION_JSON).write_text(json.dumps(fake_evaluation(*row)))
            machines = [{"from_step": 0, "cpu": "EPYC", "instructions": ["avx2", "avx512_bf16"], "cores": 2}]
            if r == 2 and seed == 1:  # resumed at step 50 on a machine without AVX-512
                machines.append({"from_step": 50, "cpu": "EPYC", "instructions": ["avx2"], "cores": 2})
            if r != 4:  # round 4's runs were trained before runs recorded their machines
                (d / "machines.json").write_text(json.dumps(machines))
            if r in (3, 4):  # training losses: round 4 starts 0.3 above round 3 and ends 0.1 below
                lines = [f"[train] step {k}/1000  loss {5 - k / 500 + (0.3 - k / 2500 if r == 4 else 0) + seed / 100:.4f}"
                         "  9,000 tokens/s  left 1m" for k in range(25, 1001, 25)]
                if seed == 1:  # killed at step 600, resumed from its checkpoint at 500: the rerun's lines win
                    lines = lines[:24] + ["[train] step 550/1000  loss 9.0000", "$ python train.py ckpt_path=x"] + lines[19:]
                (d.parent / f"{d.name}.train.log").write_text("\n".join(lines) + "\n")
            dirs.append(d)
    out = tmp_path / "report"
    result = A.build_ablation_report(dirs, out, command="python experiments/ablate.py ...")
    rounds = result["rounds"]
    assert list(rounds) == ["round1", "round2", "round3", "round4"]
    assert rounds["round1"]["numbers"]["bits_per_note"]["mean"] == pytest.approx(9.1)
    assert rounds["round1"]["numbers"]["bits_per_note"]["spread"] == pytest.approx(np.std([9.0, 9.2], ddof=1))
    claims = {c["first"] + "/" + c["second"]: c for c in result["claims"]}
    assert set(claims) == {"round1/round2", "round2/round1", "round3/round2", "round4/round3"}
    tests = {t["number"]: t["verdict"] for t in claims["round2/round1"]["tests"]}
    assert tests["metrics.longest_gap_bars.mean"] == "holds"  # 0.6 vs 2.9
    tests = {t["number"]: t["verdict"] for t in claims["round3/round2"]["tests"]}
    assert tests["bits_per_note"] == "holds" and tests["mean_overlap"] == "holds"
    tests = {t["number"]: t["verdict"] for t in claims["round4/round3"]["tests"]}
    assert tests["bits_per_note"] == "cannot tell"  # 7.0 ± 0.14 vs 7.1 ± 0.14
    assert claims["round4/round3"]["overall"] == "cannot tell"
    # A reversed finding is called reversed.
    verdict, diff = A.judge({"mean": 8.0, "spread": 0.1}, {"mean": 7.0, "spread": 0.1}, "lower")
    assert verdict == "reversed" and diff == pytest.approx(1.0)
    md = (out / R.REPORT_MD).read_text()
    assert "9.1 ± 0.14" in md and "claim by claim" in md and "cannot tell" in md
    assert "runs/round1-seed0/eval/pianoroll_samples.png" in md
    line = next(x for x in md.splitlines() if x.startswith("Machines that trained the runs"))
    assert ("EPYC (avx2, avx512_bf16), 2 cores: round1-seed0, round1-seed1, round2-seed0, round2-seed1, "
            "round3-seed0, round3-seed1; EPYC (avx2), 2 cores: round2-seed1; not recorded: round4-seed0, "
            "round4-seed1.") in line
    assert "round floats differently" in line and "(resumed): round2-seed1." in line
    curve = A.train_loss_curve(dirs[5])  # round3-seed1, resumed
    assert len(curve) == 40 and curve[550] == pytest.approx(5 - 1.1 + 0.01)
    assert A.loss_at(curve, 500) == pytest.approx(np.mean([5 - k / 500 + 0.01 for k in (425, 450, 475, 500)]))
    assert A.loss_at(curve, 10) is None and A.train_loss_curve(tmp_path / "nowhere") == {}
    table = md[md.index("Training loss per token"):].split("\n\n")[1].splitlines()
    assert table[0] == "| round | step 500 | step 1000 |"
    gap = lambda k: np.mean([0.3 - j / 2500 for j in range(k - 75, k + 1, 25)])  # noqa: E731
    assert table[-1] == f"| round4 − round3 (same seed) | {gap(500):.3f} ± 0.000 | {gap(1000):.3f} ± 0.000 |"
    assert table[2].startswith("| round3 | ") and len(table) == 5  # rounds 1 and 2 have no logs here
    # A run without its evaluation is named, with the command that makes it.
    (dirs[0] / A.EVAL_DIR / A.EVALUATION_JSON).unlink()
    with pytest.raises(FileNotFoundError, match="round1-seed0.*evaluate.py"):
        A.build_ablation_report(dirs, out)


@pytest.mark.slow
def test_the_test_pieces_do_not_depend_on_which_round_trains_first(tmp_path):
    """Round 1 reads a part of the corpus: evaluated first, it must not set the study's test pieces
    to its own smaller test split. They come from every round's shards, prepared up front."""
    from experiments import ablate
    from experiments.common import test_split_files

    cfg = ablate.parse_args(["scale=tiny", "data=bundled", "data.limit=40", "rounds=[1,3]", f"out={tmp_path / 'out'}",
                             f"paths.cache_dir={tmp_path / 'cache'}", f"paths.data_dir={tmp_path / 'data'}"])
    commands = ablate.train_commands(cfg)
    round1, round3 = ablate.base_shards(commands)  # nothing trained yet
    assert round1 != round3 and "bpe" not in round1.name
    n1, n3 = len(test_split_files(round1)), len(test_split_files(round3))
    assert 0 < n1 < n3  # round 1 reads a fixed half of the bundled files
    assert {p.name for p in test_split_files(round1)} <= {p.name for p in test_split_files(round3)}
    folder = ablate.real_folder(cfg, commands, tmp_path / "out")
    assert len(list(folder.iterdir())) == n3


@pytest.mark.slow
def test_ablate_end_to_end_tiny(tmp_path):
    """Two rounds, a handful of steps, each evaluated by evaluate.py: the whole pipeline writes its
    report, a second call resumes (keeps every run and evaluation), and a clone holding only what
    git commits of the study (on a new machine) keeps every run and rebuilds the same report."""
    rel = Path("experiments") / "results" / "study"  # relative, as in the README's command
    work = tmp_path / "work"
    out = work / rel
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    cmd = [sys.executable, str(ROOT / "experiments" / "ablate.py"), "scale=tiny", "data=bundled",
           "rounds=[3,4]", "seeds=[0]", f"out={rel}", "steps=4", "eval_n=2", "eval_pieces=3", "eval_bars=2",
           "eval_max_new_tokens=160", "data.limit=40", "logger=csv",
           f"paths.cache_dir={tmp_path / 'cache'}", f"paths.data_dir={tmp_path / 'data'}"]
    work.mkdir()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=work, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / R.REPORT_JSON).read_text())
    assert list(data["rounds"]) == ["round3", "round4"]
    runs = {r["label"]: r for r in data["runs"]}
    assert runs["round3"]["run"]["steps"] == 4 and runs["round4"]["run"]["steps"] == 3  # 4 / 1.5
    # the test split of 40 bundled pieces, linked; evaluate.py reads at most eval_pieces=3 of them
    n_test = min(3, len(list((out / "test-pieces").glob("*.mid"))))
    assert 1 <= n_test <= 3
    for label in ("round3", "round4"):
        n = runs[label]["numbers"]
        assert n["bits_per_note"] > 0 and 0 <= n["grammar_error_rate"] <= 1
        evaluation = json.loads((work / runs[label]["dir"] / "eval" / "evaluation.json").read_text())
        assert evaluation["pieces"]["real"] == n_test and evaluation["pieces"]["sampled"] == 2
    assert [c["first"] for c in data["claims"]] == ["round4"]
    # Resume: nothing is trained or evaluated again.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already trained, kept" in proc.stderr and "already evaluated" in proc.stderr
    assert "training" not in proc.stderr.replace("already trained", "")
    # A new machine: a clone has only the files that .gitignore lets git commit.
    files = {str(f.relative_to(out)): f.read_bytes() for f in out.rglob("*") if f.is_file()}
    kept = tracked_by_gitignore(tmp_path / "repo", files)
    assert {"runs/round3-seed0/metrics.json", "runs/round3-seed0/eval/evaluation.json",
            "runs/round3-seed0/machines.json"} <= kept
    from experiments.common import machine, machine_name
    assert f"Machines that trained the runs: {machine_name(machine())}: round3-seed0, round4-seed0." in (
        out / R.REPORT_MD).read_text()
    assert not any("checkpoints" in f or f.startswith("test-pieces") for f in kept)
    clone = tmp_path / "clone"
    for f in kept:
        (clone / rel / f).parent.mkdir(parents=True, exist_ok=True)
        (clone / rel / f).write_bytes(files[f])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=clone, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("its record") == 2 and proc.stderr.count("already evaluated") == 2
    assert "training" not in proc.stderr.replace("already trained", "") and "evaluating" not in proc.stderr
    again = json.loads((clone / rel / R.REPORT_JSON).read_text())
    assert again["rounds"] == data["rounds"] and again["claims"] == data["claims"]
    assert again["media"] == data["media"] and data["media"]  # the media the first report copied, kept
    for label, shown in data["media"].items():
        assert all((clone / rel / f).is_file() for f in shown["files"] + shown["png"])
