"""train.py end to end on the bundled corpus (a few dozen pieces), with tiny models and few steps.

Every experiment trains; checkpoints are plain data with the tokenizer inside; resuming equals a
straight run; a mismatched tokenizer is refused; bits per note of a uniform model is
tokens-per-note x log2(V) on BPE and plain shards of the same songs.
The CLI, wandb and DDP runs are in test_train_cli.py.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

import train
from model.data import WindowConfig, WindowDataModule
from model.lit import LitGPT, OptimConfig, TokenizerMismatchError

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 40  # bundled pieces: enough for a val split, quick to convert and tokenize
# A model and batch small enough that a step takes milliseconds on 2 cores.
FAST = ["data=bundled", f"data.limit={LIMIT}", "scale=tiny", "scale.n_layer=2", "scale.n_head=2",
        "scale.n_embd=32", "scale.block_size=64", "scale.batch_size=4", "scale.warmup_steps=2",
        "scale.val_every=4", "scale.ckpt_every=2", "trainer.max_steps=4", "callbacks.samples.max_new_tokens=24",
        "callbacks.samples.n_samples=1", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "logger=csv", "torch_threads=1"]


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
    assert math.isfinite(m["val_loss"]) and m["val_bits_per_note"] > 0
    assert m["non_embedding_params"] == result["lit"].gpt.num_params(non_embedding=True)
    assert m["bpe"] == (cfg.tokenizer.bpe_vocab_size > 0)
    tok = result["tokenizer"]
    if m["bpe"]:
        assert tok.vocab_size > train.remi.Tokenizer(tok.config.__class__(
            **{**tok.config.__dict__, "bpe_vocab_size": 0})).vocab_size
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert ckpt["tokenizer_hash"] == tok.hash == m["tokenizer_hash"]
    assert train.remi.Tokenizer.from_dict(ckpt["tokenizer"]).hash == tok.hash   # rebuilt from the file alone
    assert ckpt["model_config"]["n_layer"] == cfg.model.n_layer == m["n_layer"]
    assert ckpt["model_config"]["vocab_size"] == tok.vocab_size
    assert ckpt["cfg"]["round"] == experiment
    samples = sorted((tmp_path / "samples").rglob("*.mid"))
    assert samples and all(p.stat().st_size > 0 for p in samples)
    assert sorted((tmp_path / "samples").rglob("*.png"))


def _straight_and_resumed(tmp_path, cache_dir):
    common = ["+experiment=round3", "scale.ckpt_every=10", "scale.val_every=30", "optim.max_steps=60",
              "callbacks.samples=null"]
    straight = train.train(compose_cfg(tmp_path / "straight", cache_dir, *common, "trainer.max_steps=60"))
    # The first leg stops at 30 (as a killed job would after its step-30 checkpoint); the cosine
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


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_made_with_another_tokenizer(tmp_path, cache_dir):
    train.train(compose_cfg(tmp_path / "a", cache_dir, "+experiment=round3", "callbacks.samples=null"))
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    other = compose_cfg(tmp_path / "b", cache_dir, "+experiment=round3", "tokenizer.num_velocities=8",
                        f"ckpt_path={ckpt}", "trainer.max_steps=8")
    with pytest.raises(TokenizerMismatchError, match="tokenizer hash"):
        train.train(other)
    assert not (tmp_path / "b" / "checkpoints").exists()            # refused before training


class ZeroLogits(nn.Module):
    """The uniform model over V tokens: all logits 0."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size, self.unused = vocab_size, nn.Parameter(torch.zeros(()))

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, self.vocab_size)


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
