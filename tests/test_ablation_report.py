"""The ablation report's uncertainty (bootstrap intervals over pieces, the verdict rule), its
media beside the report, the progress lines of train.py and ablate.py, and a study that is
killed part-way and resumed."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import remi
from experiments import ablate
from experiments import ablation_report as A
from model.callbacks import ProgressLog
from remi import metrics as M
from remi.midi_io import score_to_midifile

ROOT = Path(__file__).resolve().parents[1]


def fake_per_piece(rng: np.random.Generator, n_real: int = 48, n_free: int = 48, shift: float = 0.0,
                   bits_scale: float = 1.0) -> dict:
    """evaluate.py's `per_piece` for synthetic pieces: every metric drawn from N(shift, 1)."""
    notes = rng.integers(200, 400, n_real)
    return {
        "real": {"file": [f"piece_{i:02d}.mid" for i in range(n_real)],
                 "bits": list(notes * bits_scale * rng.uniform(8, 12, n_real)), "notes": list(notes),
                 "seconds": list(rng.uniform(60, 120, n_real)),
                 "metrics": {k: list(rng.normal(0, 1, n_real)) for k in M.PIECE_METRICS}},
        "free": {"metrics": {k: list(rng.normal(shift, 1, n_free)) for k in M.PIECE_METRICS},
                 "errors": list(rng.integers(0, 5, n_free)), "tokens": [500] * n_free, "empty": [False] * n_free},
        "continuations": {"file": [f"piece_{i:02d}.mid" for i in range(n_real)],
                          "errors": list(rng.integers(0, 5, n_real)), "tokens": [300] * n_real,
                          "key_agree": list(rng.integers(0, 2, n_real).astype(float)),
                          "key_agree_real": list(rng.integers(0, 2, n_real).astype(float))},
    }


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_pieces():
    rng = np.random.default_rng(0)
    small = [fake_per_piece(rng, 24, 24), fake_per_piece(rng, 24, 24)]
    small[1]["real"]["file"] = small[0]["real"]["file"]
    ci = A.bootstrap_intervals(small, resamples=200)
    # the point estimate (per seed, then averaged) lies inside its interval
    bpn = np.mean([np.sum(pp["real"]["bits"]) / np.sum(pp["real"]["notes"]) for pp in small])
    assert ci["bits_per_note"][0] < bpn < ci["bits_per_note"][1]
    oa = np.mean([M.overlap_area(pp["free"]["metrics"]["polyphony"], pp["real"]["metrics"]["polyphony"])
                  for pp in small])
    lo, hi = ci["metrics.polyphony.overlap"]
    assert lo < oa < hi and 0 <= lo < hi <= 1
    for name in ("bits_per_second", "grammar_error_rate", "mean_overlap", "mean_kl", "metrics.polyphony.kl",
                 "continuation.key_agree", "continuation.key_agree_real"):
        assert ci[name][0] <= ci[name][1], name
    # four times the pieces: a narrower interval
    big = [fake_per_piece(rng, 96, 96), fake_per_piece(rng, 96, 96)]
    big[1]["real"]["file"] = big[0]["real"]["file"]
    wide = A.bootstrap_intervals(big, resamples=200)
    assert np.diff(wide["bits_per_note"])[0] < np.diff(ci["bits_per_note"])[0]
    assert np.diff(wide["metrics.polyphony.mean"])[0] < np.diff(ci["metrics.polyphony.mean"])[0]
    # the same seed of the bootstrap gives the same intervals
    assert A.bootstrap_intervals(small, resamples=200) == ci


def test_bootstrap_refuses_seeds_scored_on_different_pieces():
    rng = np.random.default_rng(1)
    a, b = fake_per_piece(rng, 10, 10), fake_per_piece(rng, 10, 10)
    b["real"]["file"] = [f"other_{i}.mid" for i in range(10)]
    with pytest.raises(ValueError, match="different real pieces"):
        A.bootstrap_intervals([a, b], resamples=5)


def test_a_claim_holds_only_beyond_both_the_seed_spreads_and_the_intervals():
    a = {"mean": 7.0, "spread": 0.1, "ci95": [6.8, 7.2]}
    b = {"mean": 8.0, "spread": 0.1, "ci95": [7.8, 8.2]}
    assert A.judge(a, b, "lower") == ("holds", pytest.approx(-1.0))
    assert A.judge(a, b, "higher")[0] == "reversed"
    # beyond the spreads, but the intervals overlap: cannot tell
    assert A.judge(a, dict(b, ci95=[7.1, 8.9]), "lower")[0] == "cannot tell"
    # disjoint intervals, but within the seed spreads: cannot tell
    assert A.judge(dict(a, spread=0.6), dict(b, spread=0.6), "lower")[0] == "cannot tell"
    assert A.judge(None, b, "lower")[0] == "not measured"


def _write_midi(path: Path, pitch: int, bars: int = 8) -> None:
    rows = [(i * 480, 480, pitch + (i % 5), 80) for i in range(bars * 4)]
    path.parent.mkdir(parents=True, exist_ok=True)
    score_to_midifile(remi.Score.from_notes(rows)).save(str(path))


def _fake_run(root: Path, r: int | str, seed: int, per_piece: dict, bits: float) -> Path:
    d = root / "runs" / f"round{r}-seed{seed}"
    ev = d / A.EVAL_DIR
    n = int(str(r)[0])  # round 1c: 1
    for i in range(2):
        _write_midi(ev / "samples" / f"sample_{i:02d}.mid", 60 + n)
        _write_midi(ev / "continuations" / f"continuation_{i:02d}.mid", 62 + n, bars=16)
        _write_midi(ev / "continuations" / f"real_{i:02d}.mid", 64, bars=16)
    (d / "metrics.json").write_text(json.dumps({"round": f"round{r}", "seed": seed, "steps": 100,
                                                "tokens_per_step": 8192, "non_embedding_params": 1000 * n,
                                                "code_fingerprint": "abc"}))
    metrics = {k: {"mean": 0.0, "real_mean": 0.0, "overlap": 0.8, "kl": 0.1} for k in M.PIECE_METRICS}
    (ev / A.EVALUATION_JSON).write_text(json.dumps({
        "bits_per_note": bits, "bits_per_second": bits * 3, "metrics": metrics, "grammar_error_rate": 0.01,
        "empty_pieces": 0, "continuation": {"key_agree": 0.5, "key_agree_real": 0.6}, "real_folder": "REAL",
        "per_piece": per_piece}, default=lambda o: o.item()))
    return d


def test_report_gives_every_number_an_interval_and_copies_seed_zeros_pieces(tmp_path):
    rng = np.random.default_rng(2)
    dirs = []
    files = None
    for r, scale in ((3, 1.0), (4, 0.8)):   # round 4's pieces cost 20% fewer bits
        for seed in (0, 1):
            pp = fake_per_piece(rng, 32, 32, bits_scale=scale)
            files = files or pp["real"]["file"]
            pp["real"]["file"] = files
            bpn = float(np.sum(pp["real"]["bits"]) / np.sum(pp["real"]["notes"]))
            dirs.append(_fake_run(tmp_path, r, seed, pp, bpn))
    out = tmp_path / "report"
    result = A.build_ablation_report(dirs, out, command="python experiments/ablate.py ...", resamples=100)
    data = json.loads((out / "report.json").read_text())
    cell = data["rounds"]["round3"]["numbers"]["bits_per_note"]
    assert set(cell) >= {"mean", "spread", "ci95"} and cell["ci95"][0] < cell["mean"] < cell["ci95"][1]
    assert "ci95" in data["rounds"]["round4"]["numbers"]["metrics.polyphony.kl"]
    claim = next(c for c in result["claims"] if c["first"] == "round4")
    verdicts = {t["number"]: t["verdict"] for t in claim["tests"]}
    assert verdicts["bits_per_note"] == "holds"   # 20% fewer bits, far beyond the intervals
    # round 4's compute is its parameters' share of round 3's: 6 N D
    assert data["rounds"]["round4"]["run"]["train_compute"]["mean"] == pytest.approx(6 * 4000 * 100 * 8192)
    # ... printed in FLOP beside its ratio to the round that spent least (round 3: 3,000 parameters)
    md = (out / "report.md").read_text()
    training = md.split("## Training")[1].split("##")[0]
    training = {line.split(" | ")[0]: line for line in training.splitlines() if line.startswith("| round")}
    assert training["| round4"].endswith(f"| {6 * 4000 * 100 * 8192:.3g} (×1.33) |")
    assert training["| round3"].endswith("(×1.00) |")
    assert A.BOOTSTRAP_BIAS in md   # why an overlap may sit above its interval
    assert A.GRID_BITS in md        # why round 1's bits are not compared with the others'
    # seed 0's pieces of each round, copied, with piano rolls of exactly those
    for label in ("round3", "round4"):
        m = data["media"][label]
        assert sorted(Path(p).name for p in m["files"]) == [
            "continuation_00.mid", "continuation_01.mid", "real_00.mid", "real_01.mid",
            "sample_00.mid", "sample_01.mid"]
        assert all((out / p).is_file() for p in m["files"] + m["png"]) and len(m["png"]) == 2
        assert "seed0" in "".join(r["dir"] for r in data["runs"] if r["label"] == label)
    copied = remi.read_midi(out / "media" / "round4" / "sample_00.mid")
    assert int(copied.notes[:, remi.score.PITCH].min()) == 64   # round 4's own sample (pitch 60 + 4)
    md = (out / "report.md").read_text()
    assert "media/round3/pianoroll_continuations.png" in md and "same prompts" in md
    assert "interval of the difference excludes 0" in md and "per_piece" not in json.dumps(data["runs"])


def test_progress_log_prints_plain_lines_with_time_left_when_not_a_terminal():
    stream = io.StringIO()
    cb = ProgressLog(every=5, stream=stream)
    trainer = SimpleNamespace(is_global_zero=True, global_step=0, max_steps=20, world_size=1)
    batch = (torch.zeros(4, 8, dtype=torch.long),)
    for step in range(1, 21):
        trainer.global_step = step
        cb.on_train_batch_end(trainer, None, {"loss": torch.tensor(2.5)}, batch, step)
    lines = stream.getvalue().splitlines()
    assert [ln.split()[2] for ln in lines] == ["5/20", "10/20", "15/20", "20/20"]
    assert all("loss 2.5000" in ln and "tokens/s" in ln and "left" in ln for ln in lines)
    assert lines[-1].endswith("left 0s")
    assert ablate.PROGRESS.search(lines[0]).groups() == ("5", "20")

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    quiet = ProgressLog(every=5, stream=tty)
    for step in range(1, 11):
        trainer.global_step = step
        quiet.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, batch, step)
    assert tty.getvalue() == ""   # a terminal has Lightning's progress bar


def test_ablate_progress_estimates_the_whole_study(tmp_path, capsys):
    cfg = ablate.parse_args(["rounds=[3,4]", "seeds=[0]", f"out={tmp_path}", "steps=100"])
    cmds = ablate.train_commands(cfg)
    p = ablate.Progress(cfg, cmds, every_s=0.0)
    p.start(cmds[0])
    p.line("[train] step 10/100  loss 3.0", now=0.0)
    p.line("[train] step 20/100  loss 2.9", now=10.0)  # 10 s per 10 steps: one second a step
    err = capsys.readouterr().err
    assert "round3-seed0: step 20/100" in err
    # 80 steps of round 3 at 1 s, then round 4's 67 steps at 1.5 s each
    assert p.study_left() == pytest.approx(80 + 67 * 1.5, rel=0.01)
    # stopped for 1,000 s, then 10 s a step: the pause leaves the estimate ten minutes on
    p.line("[train] step 21/100", now=1010.0)
    assert p.rate > 40
    for step in range(22, 100):
        p.line(f"[train] step {step}/100", now=1010.0 + 10 * (step - 21))
    assert p.rate == pytest.approx(10.0)


def test_recent_span_keeps_the_newest_point_at_least_a_window_old():
    from model.callbacks import RecentSpan

    r = RecentSpan(window_s=100)
    for t in range(0, 301, 50):
        r.add(float(t), t // 10)
    assert r.span() == (100.0, (10,))   # from t=200, the newest point 100 s old, to t=300
    r.add(1000.0, 40)
    assert r.span() == (700.0, (10,))   # t=300 is the newest point at least 100 s before 1000


@pytest.mark.slow
def test_a_killed_study_resumes_from_its_checkpoint_and_ends_with_the_same_weights(tmp_path):
    """A run killed part-way (by a callback that exits the process without clean-up) resumes from
    its last.ckpt on the same command, not from step 0, and ends where a straight run ends."""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    common = ["scale=tiny", "data=bundled", "rounds=[3]", "seeds=[0]", "steps=12",
              "callbacks.checkpoint.every_n_train_steps=4",
              "eval_n=1", "eval_pieces=2", "eval_bars=2", "eval_max_new_tokens=64", "data.limit=40",
              "logger=none", "callbacks.samples=null", "torch_threads=1",
              f"paths.cache_dir={tmp_path / 'cache'}", f"paths.data_dir={tmp_path / 'data'}"]

    def run(out: Path, *extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(ROOT / "experiments" / "ablate.py"), f"out={out}", *common, *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)

    straight = run(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run(tmp_path / "killed", "+callbacks.crash._target_=tests.stubs.CrashAt", "+callbacks.crash.at_step=6")
    assert killed.returncode != 0 and "training round3-seed0 failed" in killed.stderr
    run_dir = tmp_path / "killed" / "runs" / "round3-seed0"
    assert not (run_dir / "metrics.json").exists()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    resumed = run(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming round3-seed0" in resumed.stderr and "(step 4)" in resumed.stderr
    log = (tmp_path / "killed" / "runs" / "round3-seed0.train.log").read_text()
    assert "ckpt_path=" in log and "[train] step 12/12" in log   # both legs' lines kept in one log
    a = torch.load(tmp_path / "straight" / "runs" / "round3-seed0" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 12
    assert a["WindowDataModule"] == b["WindowDataModule"]
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "killed" / "report.json").read_text())["rounds"]["round3"]["n_seeds"] == 1


def test_progress_log_rates_come_from_the_last_ten_minutes(monkeypatch):
    import model.callbacks as cbm

    clock_now = [0.0]
    monkeypatch.setattr(cbm.time, "perf_counter", lambda: clock_now[0])
    stream = io.StringIO()
    cb = ProgressLog(every=10, stream=stream)
    trainer = SimpleNamespace(is_global_zero=True, global_step=0, max_steps=800, world_size=1)
    batch = (torch.zeros(4, 8, dtype=torch.long),)   # 32 tokens a step
    for step in range(1, 801):
        clock_now[0] += 1000.0 if step == 50 else 1.0   # one long stop at step 50, else 1 s a step
        trainer.global_step = step
        cb.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, batch, step)
    lines = stream.getvalue().splitlines()
    assert "  32 tokens/s" in lines[-2] and lines[-2].endswith("left 10s")   # step 790: the stop ended 740 s before
    at_50 = next(ln for ln in lines if " 50/800" in ln)
    assert int(at_50.split("  ")[2].split()[0].replace(",", "")) < 2       # the stop dominates right after it


def test_claim_one_compares_each_rounds_excess_over_the_real_pieces_on_its_own_grid(tmp_path):
    """Round 1's finer grid leaves the real pieces fewer notes per onset than round 2's coarser one:
    a claim about big chords must compare each round with its own real pieces, not raw means."""
    rng = np.random.default_rng(5)
    claim1 = ("big_chord_share", "notes_per_onset", "short_ioi_share")
    dirs, files = [], None
    for r, real_at, free_at in ((1, -2.0, 0.0), (2, 0.0, 0.3)):   # raw means: round 2's higher; excess: round 1's
        pp = fake_per_piece(rng, 48, 48)
        files = files or pp["real"]["file"]
        pp["real"]["file"] = pp["continuations"]["file"] = files
        for k in claim1:
            pp["real"]["metrics"][k] = list(rng.normal(real_at, 1, 48))
            pp["free"]["metrics"][k] = list(rng.normal(free_at, 1, 48))
        d = _fake_run(tmp_path, r, 0, pp, 10.0)
        ev = json.loads((d / A.EVAL_DIR / A.EVALUATION_JSON).read_text())
        for k in claim1:
            ev["metrics"][k].update(mean=float(np.mean(pp["free"]["metrics"][k])),
                                    real_mean=float(np.mean(pp["real"]["metrics"][k])))
        (d / A.EVAL_DIR / A.EVALUATION_JSON).write_text(json.dumps(ev, default=lambda o: o.item()))
        dirs.append(d)
    result = A.build_ablation_report(dirs, tmp_path / "report", resamples=100, media=False)
    n1 = result["rounds"]["round1"]["numbers"]
    assert n1["metrics.notes_per_onset.excess"]["mean"] == pytest.approx(
        n1["metrics.notes_per_onset.mean"]["mean"] - n1["metrics.notes_per_onset.real_mean"]["mean"])
    lo, hi = n1["metrics.notes_per_onset.excess"]["ci95"]
    assert lo < n1["metrics.notes_per_onset.excess"]["mean"] < hi and lo > 1.0
    assert n1["metrics.notes_per_onset.mean"]["mean"] < result["rounds"]["round2"]["numbers"][
        "metrics.notes_per_onset.mean"]["mean"]
    claim = next(c for c in result["claims"] if c["first"] == "round1")
    verdicts = {t["number"]: t["verdict"] for t in claim["tests"]}
    assert {verdicts[f"metrics.{k}.excess"] for k in claim1} == {"holds"}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| real, round1's grid |" in md and "| real, round2's grid |" in md


def test_the_data_vs_grid_arm_says_whether_round_1s_data_or_its_tokenizer_makes_the_difference(tmp_path):
    """Round 1c (round 2's tokenizer on round 1's data) slams keys as round 1 does and round 2 does
    not: the data makes the difference, the tokenizer cannot be told. The causes are judged only
    where the arm was trained."""
    rng = np.random.default_rng(7)
    claim1 = ("big_chord_share", "notes_per_onset", "short_ioi_share")
    dirs, files = [], None
    for r, excess in ((1, 1.5), ("1c", 1.5), (2, 0.0)):
        pp = fake_per_piece(rng, 48, 48)
        files = files or pp["real"]["file"]
        pp["real"]["file"] = pp["continuations"]["file"] = files
        for k in claim1:
            pp["free"]["metrics"][k] = list(rng.normal(excess, 1, 48))
        pp["free"]["metrics"]["groove_consistency"] = list(rng.normal(-excess, 1, 48))
        d = _fake_run(tmp_path, r, 0, pp, 10.0)
        ev = json.loads((d / A.EVAL_DIR / A.EVALUATION_JSON).read_text())
        for k in claim1:
            ev["metrics"][k].update(mean=float(np.mean(pp["free"]["metrics"][k])),
                                    real_mean=float(np.mean(pp["real"]["metrics"][k])))
        ev["metrics"]["groove_consistency"]["overlap"] = 0.9 - 0.2 * excess
        (d / A.EVAL_DIR / A.EVALUATION_JSON).write_text(json.dumps(ev, default=lambda o: o.item()))
        dirs.append(d)
    result = A.build_ablation_report(dirs, tmp_path / "report", resamples=100, media=False)
    slams = [c for c in result["causes"] if "slam" in c["claim"]]
    assert [(c["first"], c["second"]) for c in slams] == [("round1", "round1c"), ("round1c", "round2")]
    grid_effect, data_effect = ({t["number"]: t["verdict"] for t in c["tests"]} for c in slams)
    assert {data_effect[f"metrics.{k}.excess"] for k in claim1} == {"holds"}
    assert {grid_effect[f"metrics.{k}.excess"] for k in claim1} == {"cannot tell"}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## What makes round 1 differ: the data-vs-grid arm (round 1c)" in md
    assert "**Round 1's data makes it slam keys (round 1c vs round 2: the same tokenizer): " in md
    # without the arm there is nothing to judge and no section
    plain = A.build_ablation_report([dirs[0], dirs[2]], tmp_path / "plain", resamples=50, media=False)
    assert plain["causes"] == [] and "data-vs-grid" not in (tmp_path / "plain" / "report.md").read_text()


def test_report_only_reports_the_runs_trained_and_evaluated_so_far_and_trains_nothing(tmp_path, capsys, monkeypatch):
    from functools import partial
    monkeypatch.setattr(A, "build_ablation_report", partial(A.build_ablation_report, resamples=50))  # for time
    rng = np.random.default_rng(6)
    out, real = tmp_path / "study", tmp_path / "pieces"
    real.mkdir()
    files = None
    for r in (1, 2, 3):
        pp = fake_per_piece(rng, 16, 16)
        files = files or pp["real"]["file"]
        pp["real"]["file"] = files
        d = _fake_run(out, r, 0, pp, 10.0)
        ckpt = d / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir()
        ckpt.write_bytes(b"weights")
        os.utime(ckpt, (1, 1))                      # older than the evaluation
        ev = d / A.EVAL_DIR / A.EVALUATION_JSON
        data = json.loads(ev.read_text())
        data["real_folder"] = str(real) if r < 3 else "another folder"   # round 3: evaluated elsewhere
        ev.write_text(json.dumps(data))
    args = ["rounds=[1,2,3,4]", "seeds=[0]", f"out={out}", f"real={real}", "scale=tiny"]
    assert ablate.main(args + ["report_only=true"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert sorted(Path(r["dir"]).name for r in report["runs"]) == ["round1-seed0", "round2-seed0"]
    assert "report_only=" not in report["command"] and f"real={real}" in report["command"]
    err = capsys.readouterr().err
    assert "round3-seed0: not evaluated on" in err and "round4-seed0: not trained" in err
    md = (out / "report.md").read_text()
    assert "**A partial report**" in md and "round3-seed0, round4-seed0" in md
    assert not (out / "runs" / "round4-seed0").exists()   # nothing trained
    with pytest.raises(SystemExit, match="no run under .* is trained and evaluated"):
        ablate.main(["rounds=[4]", "seeds=[0]", f"out={out}", f"real={real}", "report_only=true"])


def test_claims_compare_rounds_piece_by_piece_where_every_run_scored_the_same_pieces():
    """Bits per note of the same real pieces: pieces differ far more from each other than the
    rounds do, so each round's own interval is wide and the two overlap; the paired interval of
    the difference (one draw of pieces for both rounds) is narrow and clear of 0."""
    rng = np.random.default_rng(7)
    first, second = [], []
    for _ in range(2):                                    # two seeds a round
        a, b = fake_per_piece(rng, 48, 48), fake_per_piece(rng, 48, 48)
        first.append(a)
        second.append(b)
    for pp in first + second:                             # the same pieces, notes and lengths everywhere
        for k in ("file", "notes", "seconds"):
            pp["real"][k] = first[0]["real"][k]
    hard = rng.uniform(6, 14, 48)                         # how hard each piece is, shared by the rounds
    for pp in first:
        pp["real"]["bits"] = list(np.asarray(first[0]["real"]["notes"]) * hard * 0.96)   # 4% fewer bits
    for pp in second:
        pp["real"]["bits"] = list(np.asarray(first[0]["real"]["notes"]) * hard)
    own_a, own_b = A.bootstrap_intervals(first, resamples=100), A.bootstrap_intervals(second, resamples=100)
    assert own_a["bits_per_note"][1] > own_b["bits_per_note"][0]        # the rounds' own intervals overlap
    paired = A.difference_intervals(first, second, ["bits_per_note"], resamples=100)["bits_per_note"]
    assert paired[1] < 0
    cell = lambda pps: {"mean": float(np.mean([np.sum(pp["real"]["bits"]) / np.sum(pp["real"]["notes"])
                                               for pp in pps])), "spread": 0.0}
    assert A.judge(dict(cell(first), ci95=own_a["bits_per_note"]), dict(cell(second), ci95=own_b["bits_per_note"]),
                   "lower")[0] == "cannot tell"
    assert A.judge(cell(first), cell(second), "lower", paired)[0] == "holds"
    # scored on different pieces: no pairing, so the difference's interval is the wide, unpaired one
    for pp in second:
        pp["real"]["file"] = [f"other_{i}.mid" for i in range(48)]
    unpaired = A.difference_intervals(first, second, ["bits_per_note"], resamples=100)["bits_per_note"]
    assert unpaired[1] - unpaired[0] > 3 * (paired[1] - paired[0]) and unpaired[0] < 0 < unpaired[1]


def test_a_resumed_runs_wall_time_is_marked_when_it_is_the_last_process_alone(tmp_path):
    rng = np.random.default_rng(5)
    pp = fake_per_piece(rng, 16, 16)
    dirs = {r: _fake_run(tmp_path, r, 0, pp, 10.0) for r in (2, 3, 4)}
    for r, wall in ((2, 500.0), (3, 100.0), (4, 900.0)):
        m = json.loads((dirs[r] / "metrics.json").read_text()) | {"wall_time_s": wall}
        if r == 4:   # today's train.py: the time carried across its resume
            m |= {"wall_time_covers_run": True, "resumed_from_step": 50}
        (dirs[r] / "metrics.json").write_text(json.dumps(m))
    # the ablation's logs beside the run folders: round 3 was resumed, round 2 ran once
    runs = tmp_path / "runs"
    (runs / "round2-seed0.train.log").write_text("$ python train.py +experiment=round2 seed=0\n[train] done\n")
    (runs / "round3-seed0.train.log").write_text(
        "$ python train.py +experiment=round3 seed=0\n[train] step 25/100\n"
        "$ python train.py +experiment=round3 seed=0 ckpt_path=runs/round3-seed0/checkpoints/last.ckpt\n")
    result = A.build_ablation_report(list(dirs.values()), tmp_path / "report", command="...", resamples=20)
    assert {r["label"]: r["wall_time_covers_run"] for r in result["runs"]} == {
        "round2": True, "round3": False, "round4": True}
    md = (tmp_path / "report" / "report.md").read_text()
    training = md.split("## Training")[1].split("## ")[0]
    rows = {line.split(" | ")[0]: line.split(" | ")[3] for line in training.splitlines() if line.startswith("| round") and "wall s" not in line}
    assert rows == {"| round2": "500", "| round3": "100*", "| round4": "900"}
    assert "last process only" in training and "round3-seed0 were resumed" in training
    assert "round2-seed0" not in training.split("last process only")[1]
