"""pianolm.training: the data module built from the config alone (every batch size a key), the
fixed validation set; train.py only calls these."""
from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from pianolm.training import build_datamodule, validation_set, window_config
from remi.shards import ShardSplit
from tests.conftest import ROOT


def cfg_of(*overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=/tmp/pianolm-unused", *overrides])


def split(lengths, first_note_count=3) -> ShardSplit:
    """Songs of the given lengths (token i of song s is 1000 * s + i), song s with s + first_note_count notes."""
    tokens = np.concatenate([1000 * s + np.arange(n) for s, n in enumerate(lengths)]).astype(np.uint16)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return ShardSplit(tokens, offsets, np.arange(len(lengths), dtype=np.int64) + first_note_count)


@pytest.mark.parametrize("overrides, batch, val_batch, share", [
    ([], 16, 16, 0.0625),                                              # tiny: val_batch_size null -> batch_size
    (["datamodule.batch_size=6", "datamodule.val_batch_size=5", "datamodule.song_start_share=0.5"], 6, 5, 0.5),
    (["datamodule.song_start_share=null"], 16, 16, 0.0),
])
def test_every_batch_size_is_a_key_that_reaches_the_data_module(overrides, batch, val_batch, share):
    cfg = cfg_of("scale=tiny", "seed=11", "model.block_size=8", *overrides)
    wc = window_config(cfg)
    assert (wc.block_size, wc.batch_size, wc.seed, wc.song_start_share) == (8, batch, 11, share)
    assert (wc.val_batch_size or wc.batch_size) == val_batch
    train, val = split([40, 30, 50]), split([20] * 12)
    dm = build_datamodule(cfg, train, validation_set(cfg, val))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (batch, 8)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])               # y is x shifted by one
    vx, vy = next(iter(dm.val_dataloader()))
    assert vx.shape == (val_batch, 8)


def test_validation_set_is_the_fixed_spread_of_val_songs():
    val = split([10 + s for s in range(9)])                          # song s: 10 + s tokens, s + 3 notes
    everything = validation_set(cfg_of("scale=tiny", "datamodule.val_songs=null"), val)
    np.testing.assert_array_equal(everything.songs, np.arange(9))
    assert everything.tokens is val.tokens and everything.notes == sum(s + 3 for s in range(9))
    three = validation_set(cfg_of("scale=tiny", "datamodule.val_songs=3"), val)
    np.testing.assert_array_equal(three.songs, [0, 4, 8])             # spread evenly, first and last kept
    np.testing.assert_array_equal(three.tokens, np.concatenate([val.song(s) for s in (0, 4, 8)]))
    np.testing.assert_array_equal(three.offsets, [0, 10, 24, 42])
    assert three.notes == 3 + 7 + 11


def test_train_py_builds_no_data_settings_by_hand():
    source = (ROOT / "train.py").read_text()
    assert "build_datamodule(" in source and "validation_set(" in source
    for name in ("WindowConfig", "WindowDataModule", "batch_size=", "spread_songs"):
        assert name not in source, f"train.py wires {name} itself; pianolm.training builds it from cfg"


def test_augment_transpose_reaches_the_windows_with_the_tokenizers_pitch_ids():
    from omegaconf import OmegaConf

    import remi
    cfg = cfg_of("scale=tiny", "model.block_size=8", "augment.transpose=5")
    tok = remi.Tokenizer(remi.TokenizerConfig(**OmegaConf.to_container(cfg.tokenizer, resolve=True)))
    wc = window_config(cfg, tok)
    first, last = wc.pitch_ids
    assert wc.transpose == 5 and tok.tokens([first, last]) == ["Pitch_21", "Pitch_108"]
    assert last - first == 87                                        # one id a semitone
    assert window_config(cfg_of("scale=tiny")).transpose == 0        # off by default
    with pytest.raises(ValueError, match="tokenizer"):
        window_config(cfg)                                           # the Pitch ids come from the tokenizer
    bpe = remi.Tokenizer(tok.config).train_bpe([list(range(3, 90)) * 4], tok.base_vocab_size + 8)
    with pytest.raises(ValueError, match="without BPE"):
        window_config(cfg, bpe)


def test_cpu_flags_reads_linux_cpuinfo_and_gives_none_where_it_cannot(tmp_path):
    from pianolm.training import cpu_flags
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\n"
                   "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 sve\n")
    assert cpu_flags(x86) == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_flags(arm) == {"fp", "asimd", "bf16", "sve"}
    assert cpu_flags(tmp_path / "absent") is None
    (tmp_path / "bare").write_text("processor\t: 0\n")
    assert cpu_flags(tmp_path / "bare") is None


@pytest.mark.parametrize("trainer, flags, warns", [
    ("cpu_bf16", {"avx2", "fma"}, True),                 # AVX2-only: torch emulates bf16
    ("cpu_bf16", {"avx2", "avx512_bf16"}, False),
    ("cpu_bf16", {"avx2", "amx_bf16"}, False),
    ("cpu_bf16", None, False),                           # flags unknown (not Linux): no guess
    ("cpu", {"avx2"}, False),                            # fp32
    ("gpu", {"avx2"}, False),                            # bf16 there runs on the GPU
])
def test_bf16_autocast_on_a_cpu_without_bf16_instructions_warns_and_names_the_fix(trainer, flags, warns):
    from pianolm.training import emulated_bf16_warning
    cfg = cfg_of(f"trainer={trainer}", *(["trainer.precision=bf16-mixed"] if trainer == "gpu" else []))
    warning = emulated_bf16_warning(cfg.trainer, flags)
    assert (warning is not None) == warns
    if warns:
        assert "trainer.precision=bf16-mixed" in warning and "trainer=cpu" in warning


def test_train_py_prints_the_emulated_bf16_warning_before_training(tmp_path, monkeypatch, capsys):
    import remi
    import train
    monkeypatch.setattr(train, "cpu_flags", lambda: {"avx2"})
    cfg = cfg_of("trainer=cpu_bf16", "logger=none", f"paths.output_dir={tmp_path}")
    train.build_trainer(cfg, remi.Tokenizer(), tmp_path, {}, None)
    assert "torch emulates bf16" in capsys.readouterr().err
    monkeypatch.setattr(train, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    train.build_trainer(cfg, remi.Tokenizer(), tmp_path, {}, None)
    assert "emulates" not in capsys.readouterr().err
