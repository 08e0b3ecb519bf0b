"""The pieces train.py assembles: data (tokenizer + token shards, the fixed validation set, the
data module with every batch size from the config), loggers and callbacks from the config.
Behaviour follows the configured classes' types (`issubclass(cls, WandbLogger)`), never their names.
"""
from __future__ import annotations

import fcntl
import netrc
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

import remi
from model.callbacks import SampleCallback
from model.data import Infill, WindowConfig, WindowDataModule, spread_songs, take_songs
from remi.corpus.prepare import prepare_for_training
from remi.shards import ShardSplit, load_split

from .config import tokenizer_config
from .errors import ConfigError
from .media import MediaWriter

# ----------------------------------------------------------------------------- data

@contextmanager
def file_lock(path: Path):
    """Serialise corpus preparation between processes that start together (torchrun, SLURM):
    the first converts, the others then find the cache ready."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare_data(cfg: DictConfig) -> tuple[remi.Tokenizer, Path, ShardSplit, ShardSplit]:
    """(tokenizer with BPE if configured, shard folder, train split, val split); shards cached
    under paths.cache_dir."""
    tok = remi.Tokenizer(tokenizer_config(cfg))
    cache_dir = Path(cfg.paths.cache_dir)
    with file_lock(cache_dir / ".prepare.lock"):
        tok, shard_dir = prepare_for_training(cfg.data, tok, Path(cfg.paths.data_dir), cache_dir)
    train = load_split(shard_dir, "train", expect_hash=tok.hash)
    val = load_split(shard_dir, "val", expect_hash=tok.hash)
    if len(val.offsets) < 2:  # check_config refuses val_fraction 0; a small corpus can still hold out none
        raise ConfigError(f"the validation split of {shard_dir} is empty (the train split holds {len(train.offsets) - 1} "
                          f"songs) with data.val_fraction={cfg.data.val_fraction} and data.limit={cfg.data.limit}; "
                          "raise data.val_fraction, or data.limit (null: every file), so at least one song is held out")
    return tok, Path(shard_dir), train, val


@dataclass(frozen=True)
class Validation:
    """The fixed validation set: every val song, or `datamodule.val_songs` of them spread evenly."""

    songs: np.ndarray    # indices into the val split
    tokens: np.ndarray   # those songs' tokens, concatenated
    offsets: np.ndarray  # their offsets into `tokens` (len(songs) + 1)
    notes: int           # their notes (the denominator of bits per note)


def validation_set(cfg: DictConfig, val: ShardSplit) -> Validation:
    songs = spread_songs(len(val.offsets) - 1, cfg.datamodule.get("val_songs"))
    tokens, offsets = take_songs(val.tokens, val.offsets, songs)
    return Validation(songs, tokens, offsets, int(np.asarray(val.notes)[songs].sum()))


def window_config(cfg: DictConfig, tok: remi.Tokenizer | None = None) -> WindowConfig:
    """The data module's settings: `datamodule.block_size` (= `model.block_size`),
    `datamodule.batch_size`, `datamodule.val_batch_size` (null: batch_size),
    `datamodule.song_start_share` (null: 0), `augment.transpose` (null or absent: 0; its Pitch ids
    come from `tok`, which must then be given and have no BPE), `data.infill_share` (its Infill ids
    come from `tok` too) and `seed`."""
    transpose = int(OmegaConf.select(cfg, "augment.transpose") or 0)
    pitch_ids = key_first = None
    if transpose:
        if tok is None:
            raise ValueError("augment.transpose > 0: window_config needs the tokenizer (its Pitch token ids)")
        if tok.bpe is not None:
            raise ValueError(f"augment.transpose={transpose} needs a vocabulary without BPE (tokenizer.bpe_vocab_size=0): "
                             "a merged token holds pitches that cannot be shifted alone")
        pitch_ids = tok.pitch_id_range
        key_first = tok.key_id(0) if tok.config.key_tokens else None
    share = float(OmegaConf.select(cfg, "data.infill_share") or 0.0)
    infill = None
    if share > 0:
        if tok is None or tok.infill_ids is None:
            raise ValueError(f"data.infill_share={share}: window_config needs the tokenizer with its Infill tokens "
                             "(pianolm.config.tokenizer_config adds them)")
        infill = Infill(*tok.infill_ids, bar=tok.bar_id, eos=tok.eos_id, pad=tok.pad_id)
    dm = cfg.datamodule
    return WindowConfig(block_size=int(dm.block_size), batch_size=int(dm.batch_size), seed=int(cfg.seed),
                        val_batch_size=dm.get("val_batch_size"),
                        song_start_share=float(dm.get("song_start_share") or 0.0),
                        transpose=transpose, pitch_ids=pitch_ids, key_first=key_first,
                        infill_share=share, infill=infill)


def build_datamodule(cfg: DictConfig, train: ShardSplit, val: Validation,
                     tok: remi.Tokenizer | None = None) -> WindowDataModule:
    """Training windows over the train split, the fixed validation set, settings from `window_config`."""
    return WindowDataModule(train.tokens, val.tokens, val.offsets, window_config(cfg, tok), train_offsets=train.offsets)


# ----------------------------------------------------------------------------- trainer

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags as Linux lists them, or None where they cannot be read (another OS)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def emulated_bf16_warning(trainer: Any, flags: set[str] | None) -> str | None:
    """The warning for bf16 autocast on a CPU without bf16 instructions, or None.

    There torch emulates bf16 and a step runs several times slower than in fp32: on an AVX2-only
    2-core EPYC, the recipe with `trainer=cpu_bf16` had not logged its first 100 steps after 7
    minutes, where fp32 takes about 4. Silent, `make train-real` would look hung on such a machine."""
    if str(trainer.get("accelerator")) != "cpu" or "bf16" not in str(trainer.get("precision")):
        return None
    if flags is None or any(f in flags for f in NATIVE_BF16_FLAGS):
        return None
    return (f"warning: trainer.precision={trainer.get('precision')} on a CPU without "
            f"{' or '.join(NATIVE_BF16_FLAGS)}: torch emulates bf16 there and trains several times "
            "slower than fp32. Use trainer=cpu (fp32) on this machine; its steps cost about 1.3x "
            "those of native bf16, so lower trainer.max_steps to keep the wall time.")


# ----------------------------------------------------------------------------- loggers

def wandb_has_credentials() -> bool:
    """WANDB_API_KEY is set, or ~/.netrc holds an entry for the wandb API host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(requested: str | None) -> str:
    """'online' or 'offline' (or 'disabled'). WANDB_MODE in the environment wins; 'auto' means
    online exactly when credentials exist, so a fresh machine never prompts for a login."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return "offline" if env == "dryrun" else env
    if requested in (None, "auto"):
        return "online" if wandb_has_credentials() else "offline"
    return requested


def _configured(group: Any) -> list[tuple[type, dict]]:
    """(class, resolved kwargs with _target_) of every entry of a logger/callbacks group."""
    out = []
    for conf in (group or {}).values():
        if conf is not None:
            conf = OmegaConf.to_container(conf, resolve=True)
            out.append((get_class(conf["_target_"]), conf))
    return out


def build_loggers(cfg: DictConfig) -> list:
    loggers = []
    for cls, conf in _configured(cfg.get("logger")):
        if issubclass(cls, WandbLogger):
            conf["mode"] = wandb_mode(conf.get("mode"))
            conf["offline"] = conf["mode"] != "online"
            Path(conf["save_dir"]).mkdir(parents=True, exist_ok=True)
        loggers.append(instantiate(conf))
    return loggers


def build_callbacks(cfg: DictConfig, tok: remi.Tokenizer) -> list[L.Callback]:
    """The configured callbacks; the sample callback gets the MIDI side (render) from here."""
    callbacks = []
    for cls, conf in _configured(cfg.get("callbacks")):
        if issubclass(cls, SampleCallback):
            media = MediaWriter.find(tok, who="train")
            callbacks.append(instantiate(conf, render=media.samples, bos_id=tok.bos_id,
                                         eos_id=tok.eos_id, seed=cfg.seed))
        else:
            callbacks.append(instantiate(conf))
    return callbacks


def wandb_save(loggers: list, path: Path) -> None:
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.save(str(path), base_path=str(path.parent), policy="now")
