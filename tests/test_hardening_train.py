"""train.py checks every component's settings before any work (issue 15): a bad value is a
ConfigError naming the key, the value and what is allowed, raised before data preparation.
A `ckpt_path=` that cannot be resumed from (missing, truncated, not a checkpoint) stops with one
`[train] stopped:` line naming the file, also before data preparation (issue 29)."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import train
from remi.corpus.prepare import hash_split
from tests.midi_bytes import midi_file, note_events, track

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path: Path, *overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}",
                                           "logger=none", *overrides])


@pytest.fixture
def no_work(monkeypatch):
    """Fail loudly if training gets as far as preparing data."""
    def prepare_data(cfg):
        raise AssertionError("data preparation started before the config was checked")
    monkeypatch.setattr(train, "prepare_data", prepare_data)


@pytest.mark.parametrize("override, message", [
    ("datamodule.batch_size=0", r"datamodule.batch_size=0: must be an integer >= 1"),
    ("datamodule.val_songs=0", r"datamodule.val_songs=0: must be an integer >= 1, or null"),
    ("datamodule.val_batch_size=-2", r"datamodule.val_batch_size=-2: must be an integer >= 1, or null"),
    ("trainer.accumulate_grad_batches=-2", r"trainer.accumulate_grad_batches=-2: must be an integer >= 1"),
    ("optim.lr=-1", r"optim.lr=-1: must be a finite number > 0"),
    ("optim.lr=0", r"optim.lr=0: must be a finite number > 0"),
    ("optim.min_lr=1.0", r"optim.min_lr=1.0: must be a number in \[0, optim.lr"),
    ("optim.betas=[2,0.95]", r"optim.betas=\[2, 0.95\]: must be two numbers in \[0, 1\)"),
    ("optim.betas=[0.9]", r"optim.betas=\[0.9\]: must be two numbers"),
    ("optim.weight_decay=-0.1", r"optim.weight_decay=-0.1: must be a number >= 0"),
    ("optim.grad_clip=0", r"optim.grad_clip=0: must be a number > 0, or null"),
    ("model.n_head=3", r"model.n_embd=128 is not divisible by model.n_head=3"),
    ("model.dropout=1.5", r"model.dropout=1.5: must be a number in \[0, 1\)"),
    ("depth_factor=0", r"model.n_layer \(= \$\{mul_int:4,\$\{depth_factor\}\}\)=0: must be an integer >= 1"),
    ("model.n_layer=abc", r"model.n_layer='abc': must be an integer >= 1"),
    ("model.block_size=0", r"model.block_size=0: must be an integer >= 1"),
    ("datamodule.block_size=128", r"datamodule.block_size=128 differs from model.block_size=256: .*set model.block_size"),
    ("trainer.max_steps=0", r"trainer.max_steps=0: must be an integer >= 1"),
    ("seed=-5", r"seed=-5: must be an integer in \[0, 2\*\*32\)"),
    ("tokenizer.pitch_range=[90,20]", r"tokenizer: TokenizerConfig.pitch_range must be"),
    ("tokenizer.num_velocities=0", r"tokenizer: TokenizerConfig.num_velocities must be in 1..127"),
    ("tokenizer.bpe_vocab_size=10", r"tokenizer.bpe_vocab_size=10: must be 0 \(no BPE\) or larger than the base vocabulary"),
    ("data.val_fraction=2", r"data: data.val_fraction \+ test_fraction must be in \[0, 1\)"),
    ("data.val_fraction=0", r"data.val_fraction=0: training needs a validation split, .*set data.val_fraction > 0"),
    ("augment.transpose=13", r"augment.transpose=13: must be an integer in \[0, 12\]"),
    ("augment.transpose=-1", r"augment.transpose=-1: must be an integer in \[0, 12\]"),
])
def test_bad_values_are_named_before_any_work(tmp_path, no_work, override, message):
    cfg = _cfg(tmp_path, override)
    with pytest.raises(train.ConfigError, match=message):
        train.train(cfg)


def test_transposition_with_bpe_is_refused_before_any_work(tmp_path, no_work):
    cfg = _cfg(tmp_path, "augment.transpose=5", "tokenizer.bpe_vocab_size=1000")
    with pytest.raises(train.ConfigError, match=r"augment.transpose=5 with tokenizer.bpe_vocab_size=1000: .*without BPE"):
        train.train(cfg)


def test_the_default_config_passes_the_checks(tmp_path):
    train.check_config(_cfg(tmp_path))
    for experiment in sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")):
        train.check_config(_cfg(tmp_path, f"+experiment={experiment}"))
    for scale in ("tiny", "small", "full"):
        train.check_config(_cfg(tmp_path, f"scale={scale}"))


def _cli(tmp_path: Path, *overrides) -> subprocess.CompletedProcess:
    """`python train.py` as a user types it, its outputs and cache under tmp_path."""
    return subprocess.run([sys.executable, "train.py", "logger=none", f"paths.output_dir={tmp_path}",
                           f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path}", *overrides],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_command_line_prints_one_line_and_exits_2(tmp_path):
    r = _cli(tmp_path, "optim.lr=-1")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "[train] config error: optim.lr=-1: must be a finite number > 0" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "cache").exists()


def test_val_fraction_0_is_a_config_error_before_any_tokenizing(tmp_path):
    r = _cli(tmp_path, "data.val_fraction=0")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("[train] config error:")]
    assert len(lines) == 1 and "data.val_fraction=0" in lines[0] and "set data.val_fraction > 0" in lines[0]
    assert "Traceback" not in r.stderr and not (tmp_path / "cache").exists()   # nothing converted or tokenized


def test_val_fraction_0_is_allowed_where_a_source_brings_its_own_validation_split(tmp_path):
    train.check_config(_cfg(tmp_path, "data=maestro", "data.val_fraction=0"))   # MAESTRO's CSV holds songs out


def test_an_empty_validation_split_after_preparation_is_a_config_error(tmp_path):
    """The backstop: a corpus so small that val_fraction > 0 still holds out no song."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k in range(3):
        data = midi_file([track(note_events([(i * 240, i * 240 + 200, 50 + k + i, 80) for i in range(16)]))])
        assert hash_split(hashlib.sha256(data).hexdigest(), 0.01, 0.01) == "train"   # the premise
        (corpus / f"piece{k}.mid").write_bytes(data)
    cfg = _cfg(tmp_path, f"data.sources=[{corpus}]", "data.name=three", "data.val_fraction=0.01",
               "data.test_fraction=0.01")
    with pytest.raises(train.ConfigError, match=r"validation split of .* is empty \(the train split holds 3 songs\) "
                                                r"with data.val_fraction=0.01 and data.limit=None; raise data.val_fraction"):
        train.train(cfg)


def _truncated(path: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(4096)}, "optimizer_states": [], "lr_schedulers": [], "loops": {},
                "tokenizer_hash": "0" * 64}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])   # a copy cut short
    return path


@pytest.mark.parametrize("name, write, says", [
    ("truncated.ckpt", _truncated, "cannot be read as a checkpoint (truncated, damaged or not plain data"),
    ("list.ckpt", lambda p: torch.save([1, 2, 3], p), "holds a list, not a training checkpoint"),
    ("weights_only.ckpt", lambda p: torch.save({"state_dict": {"w": torch.zeros(2)}}, p),
     "it lacks 'optimizer_states', 'lr_schedulers', 'loops', 'tokenizer_hash'"),
    ("missing.ckpt", lambda p: None, "no such file"),
])
def test_a_checkpoint_that_cannot_be_resumed_stops_with_one_line_before_any_work(tmp_path, name, write, says):
    ckpt = tmp_path / name
    write(ckpt)
    r = _cli(tmp_path, f"ckpt_path={ckpt}")
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("[train] stopped:")]
    assert len(lines) == 1, r.stderr[-2000:]
    assert f"ckpt_path={ckpt}" in lines[0] and says in lines[0]
    assert "start fresh with ckpt_path=null" in lines[0]           # what to do
    assert not (tmp_path / "cache").exists()                       # refused before the corpus was touched
