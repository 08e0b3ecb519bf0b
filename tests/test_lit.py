"""model.lit / model.callbacks / model.ckptio under a real Lightning Trainer, on synthetic tokens.

Bits per note of a uniform model, plain-data checkpoints written atomically, refusal of a
checkpoint made with another tokenizer, and the NaN guard keeping the last good checkpoint.
"""
from __future__ import annotations

import math
import os
import pickle
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from model.callbacks import NaNGuard, NonFiniteLossError, SampleCallback
from model.ckptio import AtomicCheckpointIO, load_plain, save_atomic
from model.data import WindowConfig, WindowDataModule
from model.gpt import GPT, GPTConfig
from model.lit import LitGPT, OptimConfig, TokenizerMismatchError
from tests.stubs import ZeroLogits

V = 40


def synthetic(n_songs=12, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(40, 120, size=n_songs)
    # a learnable pattern: mostly counting up mod 37, plus noise
    songs = [np.concatenate([[1], (np.arange(n - 2) + rng.integers(37)) % 37 + 3, [2]]) for n in lengths]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    notes = np.maximum(1, (lengths - 2) // 3)
    return np.concatenate(songs).astype(np.uint16), offsets, notes


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=1, n_head=2, n_embd=16))


def make(gpt=None, steps=6, tokenizer_hash="abc", out=None, callbacks=(), ckpt_every=3, precision="32-true"):
    tokens, offsets, notes = synthetic()
    lit = LitGPT(gpt or tiny_gpt(), OptimConfig(lr=1e-2, min_lr=1e-3, warmup_steps=2, max_steps=steps),
                 val_notes=int(notes.sum()),
                 checkpoint_extra={"tokenizer": {"kind": "test", "vocab": list(range(V))},
                                   "tokenizer_hash": tokenizer_hash, "model_config": {"n_layer": 1}})
    dm = WindowDataModule(tokens, tokens, offsets, WindowConfig(block_size=32, batch_size=4, seed=5))
    cbs = list(callbacks)
    if out is not None:
        cbs.append(ModelCheckpoint(dirpath=out, save_last=True, save_top_k=0, every_n_train_steps=ckpt_every))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, val_check_interval=steps,
                        check_val_every_n_epoch=None, num_sanity_val_steps=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=cbs,
                        enable_checkpointing=out is not None, plugins=[AtomicCheckpointIO()],
                        use_distributed_sampler=False, gradient_clip_val=1.0, precision=precision)
    return lit, dm, trainer, (tokens, offsets, notes)


def test_uniform_model_bits_per_note_is_tokens_per_note_times_log2_v():
    lit, dm, trainer, (tokens, offsets, notes) = make()
    lit.gpt = ZeroLogits(V)
    [res] = trainer.validate(lit, datamodule=dm, verbose=False)
    predicted = int(offsets[-1] - (len(offsets) - 1))             # every token but each song's BOS
    assert res["val/tokens"] == predicted
    assert res["val/loss"] == pytest.approx(math.log(V), rel=1e-6)
    assert res["val/bits_per_note"] == pytest.approx(predicted / notes.sum() * math.log2(V), rel=1e-6)


def test_training_lowers_loss_and_logs_lr_schedule():
    lit, dm, trainer, _ = make(steps=30)
    trainer.fit(lit, datamodule=dm)
    losses = [loss for _, loss in lit.history]
    assert len(losses) == 30 and trainer.global_step == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    assert lit.last_val_step == 30 and lit.last_val["val/loss"] < math.log(V)
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.get_last_lr()[0] == pytest.approx(1e-3)             # cosine ended at min_lr
    decay, no_decay = trainer.optimizers[0].param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_bf16_mixed_trains_with_gradient_clipping():
    """trainer=gpu's precision (bf16-mixed), here on the CPU: autocast, fp32 weights and an
    unfused AdamW (Lightning refuses to clip a fused optimizer's gradients under mixed precision)."""
    lit, dm, trainer, _ = make(steps=30, precision="bf16-mixed")
    trainer.fit(lit, datamodule=dm)
    losses = [loss for _, loss in lit.history]
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    assert all(p.dtype == torch.float32 for p in lit.gpt.parameters())
    assert not trainer.optimizers[0].defaults.get("fused")
    plain, _, fp32, _ = make(steps=1)
    fp32.fit(plain, datamodule=dm)
    assert fp32.optimizers[0].defaults.get("fused") is True       # fused where nothing forbids it


def test_checkpoint_is_plain_data_and_carries_the_extras(tmp_path):
    lit, dm, trainer, _ = make(out=tmp_path)
    trainer.fit(lit, datamodule=dm)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)    # no arbitrary pickle needed
    assert ckpt["tokenizer_hash"] == "abc" and ckpt["tokenizer"]["vocab"] == list(range(V))
    assert ckpt["global_step"] == 6 and ckpt["optimizer_states"]
    assert "hyper_parameters" not in ckpt
    assert torch.equal(ckpt["state_dict"]["gpt.transformer.wpe.weight"], lit.gpt.transformer.wpe.weight)
    assert ckpt["WindowDataModule"] == {"position": 6, "seed": 5}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_resume_refuses_a_checkpoint_of_another_tokenizer(tmp_path):
    lit, dm, trainer, _ = make(out=tmp_path)
    trainer.fit(lit, datamodule=dm)
    lit2, dm2, trainer2, _ = make(steps=9, tokenizer_hash="other")
    with pytest.raises(TokenizerMismatchError, match="abc"):
        trainer2.fit(lit2, datamodule=dm2, ckpt_path=str(tmp_path / "last.ckpt"))


def test_atomic_save_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save_atomic({"step": torch.tensor(1)}, path)

    def killed(*a, **k):
        raise KeyboardInterrupt("killed mid-save")
    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert int(load_plain(path)["step"]) == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_load_plain_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"obj": Path("x")}, path)                           # a class instance: needs pickle
    with pytest.raises(ValueError, match=r"evil.ckpt does not load as plain data .*Unsupported global.*PosixPath"):
        load_plain(path)


def test_load_plain_says_which_kind_of_bad_file(tmp_path):
    """Each way a file fails to be a checkpoint gets its own sentence, naming the file."""
    good = tmp_path / "good.ckpt"
    save_atomic({"w": torch.arange(50_000.0)}, good)
    data = good.read_bytes()
    cases = {"empty.ckpt": (b"", "empty.ckpt is empty"),
             "text.ckpt": (b"step: 3\n", "text.ckpt is not a checkpoint: neither a torch archive nor a pickle"),
             "cut.ckpt": (data[: len(data) // 2], "cut.ckpt is damaged or incomplete"),
             "pickle.ckpt": (pickle.dumps({"w": 1}, protocol=4), "pickle.ckpt does not load as plain data")}
    for name, (content, said) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=re.escape(said)):
            load_plain(tmp_path / name)
    assert torch.equal(load_plain(good)["w"], torch.arange(50_000.0))


class PoisonAt(L.Callback):
    """Sets a weight to NaN before the given step, so that step's loss is NaN."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.gpt.transformer.wpe.weight[0, 0] = float("nan")


def test_nan_loss_stops_with_a_clear_message_and_keeps_last_good_checkpoint(tmp_path):
    lit, dm, trainer, _ = make(steps=20, out=tmp_path, callbacks=[NaNGuard(), PoisonAt(7)])
    with pytest.raises(NonFiniteLossError, match=r"nan at step \d+.*Last good checkpoint: .*last.ckpt"):
        trainer.fit(lit, datamodule=dm)
    ckpt = load_plain(tmp_path / "last.ckpt")
    assert ckpt["global_step"] == 6                                 # saved at step 6, before the NaN
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


def test_sample_callback_hands_ids_to_render(tmp_path):
    seen = []

    def render(samples, out_dir):
        seen.append((samples, out_dir))
        return {"grammar_error_rate": 0.25, "midi": []}
    cb = SampleCallback(every_n_steps=4, n_samples=3, max_new_tokens=10, out_dir=tmp_path, render=render,
                        bos_id=1, eos_id=2)
    lit, dm, trainer, _ = make(steps=6, callbacks=[cb])
    trainer.fit(lit, datamodule=dm)
    assert [r["step"] for r in cb.results] == [4, 6]                # every 4 steps, and at the end
    samples, out_dir = seen[0]
    assert out_dir == tmp_path / "step_000004" and len(samples) == 3
    for s in samples:
        assert s[0] == 1 and 2 <= len(s) <= 11 and all(0 <= t < V for t in s)
        assert 2 not in s[1:-1]                                     # cut right after EOS
