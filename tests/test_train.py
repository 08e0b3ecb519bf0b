"""train.py end to end on the bundled corpus (a few dozen pieces), with tiny models and few steps.

Every experiment trains; checkpoints are plain data with the tokenizer inside; resuming equals a
straight run; a mismatched tokenizer is refused; bits per note of a uniform model is
tokens-per-note x log2(V) on BPE and plain shards of the same songs.
`python train.py` as a newcomer runs it, its wandb offline run, and 2-process CPU DDP.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import mido
import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

import remi
import train
from model.data import WindowConfig, WindowDataModule
from model.lit import LitGPT, OptimConfig, TokenizerMismatchError
from tests.stubs import ZeroLogits

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 40  # bundled pieces: enough for a val split, quick to convert and tokenize
# A model and batch small enough that a step takes milliseconds on 2 cores.
FAST = ["data=bundled", "scale=tiny", "logger=csv", "+debug=fast"]  # conf/debug/fast.yaml: data.limit=LIMIT, 4 steps


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One corpus cache for the session (set PIANOLM_TEST_CACHE to keep it between sessions)."""
    keep = os.environ.get("PIANOLM_TEST_CACHE")
    return Path(keep) if keep else tmp_path_factory.mktemp("cache")


def compose_cfg(out: Path, cache: Path, *overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*FAST, f"paths.output_dir={out}", f"paths.cache_dir={cache}",
                                           f"paths.data_dir={cache / 'data'}", *overrides])


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_trains_a_few_steps(experiment, tmp_path, cache_dir):
    cfg = compose_cfg(tmp_path, cache_dir, f"+experiment={experiment}")
    result = train.train(cfg)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["steps"] == 4 and m["round"] == experiment and m["train_songs"] > 0
    assert m["code_fingerprint"] == train.code_fingerprint()
    assert math.isfinite(m["val_loss"]) and m["val_bits_per_note"] > 0
    assert m["non_embedding_params"] == result["lit"].gpt.num_params(non_embedding=True)
    assert m["bpe"] == (cfg.tokenizer.bpe_vocab_size > 0)
    tok = result["tokenizer"]
    if m["bpe"]:
        assert tok.vocab_size > remi.Tokenizer(tok.config.__class__(
            **{**tok.config.__dict__, "bpe_vocab_size": 0})).vocab_size
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert ckpt["tokenizer_hash"] == tok.hash == m["tokenizer_hash"]
    assert remi.Tokenizer.from_dict(ckpt["tokenizer"]).hash == tok.hash   # rebuilt from the file alone
    assert ckpt["model_config"]["n_layer"] == cfg.model.n_layer == m["n_layer"]
    assert ckpt["model_config"]["vocab_size"] == tok.vocab_size
    assert ckpt["cfg"]["round"] == experiment
    samples = sorted((tmp_path / "samples").rglob("*.mid"))
    assert samples and all(p.stat().st_size > 0 for p in samples)
    assert sorted((tmp_path / "samples").rglob("*.png"))


def _straight_and_resumed(tmp_path, cache_dir):
    common = ["+experiment=round3", "callbacks.checkpoint.every_n_train_steps=7", "trainer.val_check_interval=30",
              "optim.max_steps=60",
              "callbacks.samples=null"]
    straight = train.train(compose_cfg(tmp_path / "straight", cache_dir, *common, "trainer.max_steps=60"))
    # The first leg stops at 30 (periodic saves at 7, 14, .., 28, then the final one at 30); the cosine
    # schedule still spans 60 steps (optim.max_steps), as in the straight run.
    first = train.train(compose_cfg(tmp_path / "resumed", cache_dir, *common, "trainer.max_steps=30"))
    ckpt30 = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt30, weights_only=True)["global_step"] == 30
    resumed = train.train(compose_cfg(tmp_path / "resumed", cache_dir, *common, "trainer.max_steps=60",
                                      f"ckpt_path={ckpt30}"))
    return straight, first, resumed


@pytest.mark.slow
def test_resume_from_last_ckpt_equals_a_straight_run(tmp_path, cache_dir):
    straight, first, resumed = _straight_and_resumed(tmp_path, cache_dir)
    assert resumed["metrics"]["steps"] == straight["metrics"]["steps"] == 60
    assert resumed["metrics"]["data_position"] == straight["metrics"]["data_position"] == 60
    # loss curves (by step after the update): 1-30 from the first leg, 31-60 from the resumed one, against the straight run
    curve = dict(first["lit"].history) | dict(resumed["lit"].history)
    assert sorted(curve) == [s for s, _ in straight["lit"].history] == list(range(1, 61))
    np.testing.assert_allclose([curve[s] for s in range(1, 61)], [l for _, l in straight["lit"].history],
                               rtol=1e-4, atol=1e-5)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 60
    assert a["WindowDataModule"] == b["WindowDataModule"] == {"position": 60, "seed": 1337}
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-4, atol=1e-5)
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert int(sa[i]["step"]) == int(sb[i]["step"]) == 60
        torch.testing.assert_close(sa[i]["exp_avg"], sb[i]["exp_avg"], rtol=1e-3, atol=1e-6)
        torch.testing.assert_close(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"], rtol=1e-3, atol=1e-8)
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == 60
    assert resumed["metrics"]["val_loss"] == pytest.approx(straight["metrics"]["val_loss"], rel=1e-4)


def test_wall_time_is_carried_across_a_resume(tmp_path, cache_dir):
    common = ["logger=none", "callbacks.samples=null", "optim.max_steps=6"]
    first = train.train(compose_cfg(tmp_path / "run", cache_dir, *common, "trainer.max_steps=3"))["metrics"]
    assert first["resumed_from_step"] is None and first["wall_time_covers_run"] is True
    assert first["wall_time_s"] == first["process_wall_time_s"] > 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 3 and 0 < saved["wall_time_s"] <= first["wall_time_s"]
    old = tmp_path / "old.ckpt"   # a checkpoint of code that recorded no wall time
    torch.save({k: v for k, v in saved.items() if k != "wall_time_s"}, old)

    resumed = train.train(compose_cfg(tmp_path / "run", cache_dir, *common, "trainer.max_steps=6",
                                      f"ckpt_path={ckpt}"))["metrics"]
    assert resumed["steps"] == 6 and resumed["resumed_from_step"] == 3 and resumed["wall_time_covers_run"]
    # the run's time: the checkpoint's seconds plus this process's (rounded to 0.01 s each)
    assert resumed["wall_time_s"] == pytest.approx(saved["wall_time_s"] + resumed["process_wall_time_s"], abs=0.02)
    assert torch.load(ckpt, weights_only=True)["wall_time_s"] == pytest.approx(resumed["wall_time_s"], abs=0.5)

    from_old = train.train(compose_cfg(tmp_path / "old", cache_dir, *common, "trainer.max_steps=6",
                                       f"ckpt_path={old}"))["metrics"]
    assert from_old["resumed_from_step"] == 3 and from_old["wall_time_covers_run"] is False
    assert from_old["wall_time_s"] == from_old["process_wall_time_s"]
    assert torch.load(tmp_path / "old" / "checkpoints" / "last.ckpt", weights_only=True)["wall_time_s"] is None


def test_compile_trains_the_same_model_and_keeps_parameter_names(tmp_path, cache_dir):
    # aot_eager traces with TorchDynamo and AOTAutograd like Inductor does, without a C++ compiler
    runs = {c: train.train(compose_cfg(tmp_path / str(c), cache_dir, f"compile={c}", "logger=none"))
            for c in (False, "aot_eager")}
    assert runs["aot_eager"]["lit"].gpt._compiled_call_impl is not None  # the forward really was compiled
    assert runs[False]["lit"].gpt._compiled_call_impl is None
    eager, compiled = (runs[c]["metrics"] for c in (False, "aot_eager"))
    assert compiled["steps"] == eager["steps"] == 4
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-4)
    ckpt = torch.load(tmp_path / "aot_eager" / "checkpoints" / "last.ckpt", weights_only=True)
    plain = torch.load(tmp_path / "False" / "checkpoints" / "last.ckpt", weights_only=True)
    assert list(ckpt["state_dict"]) == list(plain["state_dict"])


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_made_with_another_tokenizer(tmp_path, cache_dir):
    train.train(compose_cfg(tmp_path / "a", cache_dir, "+experiment=round3", "callbacks.samples=null"))
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    other = compose_cfg(tmp_path / "b", cache_dir, "+experiment=round3", "tokenizer.num_velocities=8",
                        f"ckpt_path={ckpt}", "trainer.max_steps=8")
    with pytest.raises(TokenizerMismatchError, match="tokenizer hash"):
        train.train(other)
    assert not (tmp_path / "b" / "checkpoints").exists()            # refused before training


def _uniform_bits_per_note(cfg):
    tok, _, _, val = train.prepare_data(cfg)
    lit = LitGPT(ZeroLogits(tok.vocab_size), OptimConfig(), val_notes=int(val.notes.sum()))
    dm = WindowDataModule(val.tokens, val.tokens, val.offsets, WindowConfig(block_size=64, batch_size=8))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    [res] = trainer.validate(lit, datamodule=dm, verbose=False)
    return tok, val, res["val/bits_per_note"]


@pytest.mark.slow
def test_uniform_model_bits_per_note_on_bpe_and_plain_shards_of_the_same_songs(tmp_path, cache_dir):
    plain_tok, plain, plain_bpn = _uniform_bits_per_note(compose_cfg(tmp_path, cache_dir, "+experiment=round3"))
    bpe_tok, bpe, bpe_bpn = _uniform_bits_per_note(compose_cfg(tmp_path, cache_dir, "+experiment=round2"))
    assert bpe_tok.vocab_size > plain_tok.vocab_size
    assert np.array_equal(plain.notes, bpe.notes)                   # the same songs, the same notes
    assert len(bpe.tokens) < len(plain.tokens)                      # BPE did merge
    for tok, split, bpn in ((plain_tok, plain, plain_bpn), (bpe_tok, bpe, bpe_bpn)):
        tokens_per_note = (len(split.tokens) - (len(split.offsets) - 1)) / split.notes.sum()  # BOS not predicted
        assert bpn == pytest.approx(tokens_per_note * math.log2(tok.vocab_size), rel=1e-6)


# ----------------------------------------------------------------------------- the command line

def _cli(args, tmp_path, env_extra=None, timeout=600):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1", **(env_extra or {})})  # no credentials
    (tmp_path / "home").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, cache_dir):
    """`python train.py` as a newcomer runs it (fresh HOME, no wandb account), made short."""
    tmp = tmp_path_factory.mktemp("default_run")
    run_dir = tmp / "run"
    proc = _cli([f"data.limit={LIMIT}", "trainer.max_steps=6", "trainer.val_check_interval=3",
                 "callbacks.samples.every_n_steps=3", "trainer.log_every_n_steps=2",
                 "callbacks.samples.max_new_tokens=32", "torch_threads=1",
                 f"paths.cache_dir={cache_dir}", f"paths.data_dir={cache_dir / 'data'}",
                 f"hydra.run.dir={run_dir}"], tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, run_dir


@pytest.mark.slow
def test_python_train_py_finishes_offline_and_the_printed_paths_exist(default_run):
    proc, run_dir = default_run
    printed = dict(re.findall(r"^\[train\] (checkpoint|samples|wandb run|metrics):\s+(\S+)", proc.stdout, re.M))
    assert set(printed) == {"checkpoint", "samples", "wandb run", "metrics"}, proc.stdout[-2000:]
    for path in printed.values():
        assert Path(path).exists() and Path(path).is_relative_to(run_dir)
    assert Path(printed["checkpoint"]) == run_dir / "checkpoints" / "last.ckpt"
    assert "offline-run" in Path(printed["wandb run"]).name         # no credentials: offline
    m = json.loads(Path(printed["metrics"]).read_text())
    assert m["steps"] == 6 and m["round"] == "dev" and m["val_bits_per_note"] > 0
    for key in ("val_loss", "non_embedding_params", "vocab_size", "train_songs", "train_tokens", "wall_time_s"):
        assert m[key] is not None


@pytest.mark.slow
def test_wandb_offline_run_holds_config_metrics_and_sample_media(default_run):
    _, run_dir = default_run
    [wandb_run] = (run_dir / "wandb").glob("offline-run-*")
    files = wandb_run / "files"
    cfg = yaml.safe_load((files / "run_config.yaml").read_text())
    assert cfg["model"]["n_layer"] == 4 and cfg["data"]["name"] == "bundled" and cfg["round"] == "dev"
    assert json.loads((files / "metrics.json").read_text())["steps"] == 6
    assert sorted((files / "media" / "images").rglob("*.png"))     # piano rolls as wandb images
    midi = sorted((files / "samples").rglob("*.mid"))
    assert len(midi) == 2 * 2                                       # 2 pieces at step 3 and at step 6
    for p in midi:  # the run's own sample files, byte for byte, and each a MIDI file mido reads
        assert p.read_bytes() == (run_dir / p.relative_to(files)).read_bytes()
        assert mido.MidiFile(p).ticks_per_beat > 0
    # the run's own record (history, config, summary) holds the logged metrics
    [record] = wandb_run.glob("run-*.wandb")
    blob = record.read_bytes()
    for key in (b"train/loss", b"val/loss", b"val/bits_per_note", b"lr-AdamW", b"perf/tokens_per_s",
                b"samples/grammar_error_rate", b"samples/pianoroll", b"non_embedding_params"):
        assert key in blob, key


@pytest.mark.slow
def test_two_process_cpu_ddp_trains_and_ranks_end_identical(tmp_path, cache_dir):
    run_dir = tmp_path / "ddp"
    proc = _cli(["trainer=ddp_cpu", "+experiment=round3", *FAST, "trainer.max_steps=6", "callbacks.samples=null",
                 f"paths.cache_dir={cache_dir}", f"paths.data_dir={cache_dir / 'data'}",
                 f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["steps"] == 6
    assert m["tokens_per_step"] == 2 * 4 * 64
    digests, firsts = m["rank_weight_digests"], m["rank_first_batch_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]           # DDP kept the replicas identical
    assert len(firsts) == 2 and firsts[0] != firsts[1]              # ...while each rank saw its own windows
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("logger", ["none", "csv", "tensorboard"])
def test_every_logger_choice_trains_and_leaves_its_record(logger, tmp_path, cache_dir):
    cfg = compose_cfg(tmp_path, cache_dir, f"logger={logger}", "trainer.log_every_n_steps=1")
    train.train(cfg)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["steps"] == 4 and math.isfinite(m["val_bits_per_note"])
    if logger == "csv":
        header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
        assert "val/bits_per_note" in header and "train/loss" in header
    elif logger == "tensorboard":
        assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    else:
        assert not (tmp_path / "csv").exists() and not (tmp_path / "tensorboard").exists()


def test_a_missing_corpus_stops_with_one_line_naming_it_and_the_fetch_command(tmp_path):
    # round 4 reads the four real corpora (data=piano); none is under this empty data folder
    proc = _cli(["+experiment=round4", f"paths.data_dir={tmp_path / 'data'}", f"paths.cache_dir={tmp_path / 'cache'}",
                 f"hydra.run.dir={tmp_path / 'run'}", "logger=csv"], tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("[train] stopped:"))
    assert "maestro" in line and str(tmp_path / "data" / "maestro") in line
    assert "python -m remi.datasets download maestro" in line
