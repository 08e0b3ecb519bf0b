"""sample.py refuses bad options and damaged checkpoints before any work (issue 15): an InputError
naming the option or the checkpoint, never a traceback from inside generation or torch."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import pianolm.checkpoint
import remi
import sample
from model.gpt import GPT, GPTConfig
from pianolm.checkpoint import load_checkpoint
from pianolm.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**overrides):
    args = [f"{k}={'null' if v is None else v}" for k, v in {"ckpt": "unused.ckpt", **overrides}.items()]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("sample", overrides=args)


@pytest.mark.parametrize("override, message", [
    ({"top_p": 2}, r"top_p=2: must be a number in \(0, 1\]"),
    ({"top_p": 0}, r"top_p=0: must be a number in \(0, 1\]"),
    ({"top_k": 0}, r"top_k=0: must be an integer >= 1"),
    ({"top_k": 2.5}, r"top_k=2.5: must be an integer >= 1"),
    ({"temperature": "inf"}, r"temperature=inf: must be a finite number >= 0"),
    ({"temperature": -1}, r"temperature=-1: must be a finite number >= 0"),
])
def test_bad_sampling_options_fail_before_the_checkpoint_is_read(monkeypatch, override, message):
    monkeypatch.setattr(sample.PianoLM, "load", lambda *a, **k: pytest.fail("checkpoint loaded before the options were checked"))
    with pytest.raises(InputError, match=message):
        sample.sample(_cfg(**override))


def test_good_sampling_options_pass():
    sample.check_config(_cfg(top_p=0.9, top_k=5, temperature=0))


def _checkpoint(path: Path, **config_changes) -> Path:
    """A small, genuine checkpoint, then its model_config changed as given."""
    tok = remi.Tokenizer.from_yaml(ROOT / "conf" / "tokenizer" / "coarse.yaml")
    config = GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=32)
    gpt = GPT(config)
    torch.save({"state_dict": {f"gpt.{k}": v for k, v in gpt.state_dict().items()}, "tokenizer": tok.to_dict(),
                "tokenizer_hash": tok.hash, "model_config": {**config.to_dict(), **config_changes}}, path)
    return path


def test_a_genuine_checkpoint_loads(tmp_path):
    tok, gpt, _ = load_checkpoint(_checkpoint(tmp_path / "ok.ckpt"))
    assert gpt.config.n_embd == 16 and tok.vocab_size == gpt.config.vocab_size


def test_an_absurd_model_config_is_refused_before_allocating(tmp_path, monkeypatch):
    path = _checkpoint(tmp_path / "absurd.ckpt", n_layer=48, n_embd=12800, n_head=100)  # ~94 G parameters
    monkeypatch.setattr(pianolm.checkpoint, "GPT", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(InputError, match=rf"{path}: model_config .* describes ~[\d,]+ parameters \(\d+\.\d GB\)"):
        load_checkpoint(path)


def test_mismatched_shapes_name_the_checkpoint_and_the_tensor(tmp_path):
    path = _checkpoint(tmp_path / "shapes.ckpt", block_size=40)  # wpe holds 32 rows
    with pytest.raises(InputError, match=rf"{path}: tensor 'transformer.wpe.weight' has shape \(32, 16\) "
                                                  r"but model_config .* needs \(40, 16\)"):
        load_checkpoint(path)


def test_a_model_config_that_does_not_load_is_a_sample_error(tmp_path):
    path = _checkpoint(tmp_path / "bad.ckpt", n_head=3)  # 16 channels do not split into 3 heads
    with pytest.raises(InputError, match=rf"{path}: its model_config does not load .*divisible by n_head"):
        load_checkpoint(path)


def test_non_finite_weights_are_refused(tmp_path):
    path = _checkpoint(tmp_path / "nan.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["gpt.transformer.ln_f.weight"][0] = float("nan")
    torch.save(ckpt, path)
    with pytest.raises(InputError, match=r"'transformer.ln_f.weight' holds NaN"):
        load_checkpoint(path)
