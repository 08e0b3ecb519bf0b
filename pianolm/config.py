"""The run's config: the `mul_int` resolver the yaml uses, and every value checked before any work.

`check_config(cfg)` reads the composed Hydra config (conf/train.yaml and its groups) and raises
ConfigError naming the key, its value and what is allowed. What a dataclass checks
(remi.TokenizerConfig, remi.corpus.datasets.DataConfig, model.GPTConfig, model.lit.OptimConfig) it
checks once, itself: check_config builds it and names the config key in its error.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

import remi
from model import GPTConfig
from model.lit import OptimConfig
from remi.corpus.datasets import SOURCES, DataConfig

from .errors import ConfigError


def mul_int(value: Any, factor: Any) -> int:
    """`${mul_int:4,${depth_factor}}` (a scale preset's model.n_layer): an integer product,
    refusing to round silently."""
    product = float(value) * float(factor)
    if abs(product - round(product)) > 1e-9:
        raise ValueError(f"mul_int: {value} x {factor} = {product} is not a whole number; "
                         f"choose a depth_factor (or a model.n_layer) whose product is one")
    return int(round(product))


OmegaConf.register_new_resolver("mul_int", mul_int, replace=True)  # on import: conf/ uses it


def _key(cfg: DictConfig, dotted: str) -> str:
    """`optim.lr`, or `model.n_layer (= ${mul_int:4,${depth_factor}})` when the value comes from
    an interpolation, so the message says which key to change."""
    group, _, name = dotted.rpartition(".")
    node = OmegaConf.select(cfg, group) if group else cfg
    raw = OmegaConf.to_container(node, resolve=False).get(name) if isinstance(node, DictConfig) else None
    return f"{dotted} (= {raw})" if isinstance(raw, str) and "${" in raw else dotted


def _number(cfg: DictConfig, dotted: str, kind: type, ok, allowed: str):
    """The value at `dotted` as `kind` (int or float), or ConfigError naming key, value and `allowed`."""
    try:
        value = OmegaConf.select(cfg, dotted, throw_on_missing=True)
    except Exception as e:  # noqa: BLE001 — a missing key or a broken interpolation
        raise ConfigError(f"{dotted}: cannot be read ({e}); it must be {allowed}") from None
    is_int = isinstance(value, int) and not isinstance(value, bool)
    good_type = is_int if kind is int else (is_int or isinstance(value, float))
    if not good_type or not ok(value):
        raise ConfigError(f"{_key(cfg, dotted)}={value!r}: must be {allowed}")
    return value


def check_config(cfg: DictConfig) -> None:
    """Every component's settings, checked before any work (data preparation takes minutes on
    the bundled corpus, hours on a full one). Raises ConfigError naming the key, the value and
    what is allowed; the dataclasses' own checks (TokenizerConfig, DataConfig, GPTConfig) run here too."""
    pos_int = lambda v: v >= 1  # noqa: E731
    for key in ("datamodule.batch_size", "trainer.accumulate_grad_batches", "trainer.max_steps"):
        _number(cfg, key, int, pos_int, "an integer >= 1")
    # The network's and the optimizer's fields are checked by their dataclasses, once.
    _build(cfg, "model", lambda **kw: GPTConfig(vocab_size=1, **kw), GPTConfig)
    _build(cfg, "optim", OptimConfig, OptimConfig)
    for key in ("datamodule.val_songs", "datamodule.val_batch_size"):  # optional: null means all / batch_size
        if OmegaConf.select(cfg, key) is not None:
            _number(cfg, key, int, pos_int, "an integer >= 1, or null")
    if OmegaConf.select(cfg, "datamodule.song_start_share") is not None:
        _number(cfg, "datamodule.song_start_share", float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
    window = OmegaConf.select(cfg, "datamodule.block_size")
    if window != cfg.model.block_size:  # the model sees exactly the windows it is trained on
        raise ConfigError(f"{_key(cfg, 'datamodule.block_size')}={window!r} differs from model.block_size="
                          f"{cfg.model.block_size!r}: the training window is the model's context; "
                          "set model.block_size (datamodule.block_size follows it)")
    transpose = OmegaConf.select(cfg, "augment.transpose")
    if transpose is not None:
        _number(cfg, "augment.transpose", int, lambda v: 0 <= v <= 12, "an integer in [0, 12] (semitones; 0: none)")
        if transpose and OmegaConf.select(cfg, "tokenizer.bpe_vocab_size"):
            raise ConfigError(f"augment.transpose={transpose} with tokenizer.bpe_vocab_size="
                              f"{OmegaConf.select(cfg, 'tokenizer.bpe_vocab_size')}: transposition needs a vocabulary without "
                              "BPE (a merged token holds pitches that cannot be shifted alone); set one of them to 0")
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed!r}: must be an integer in [0, 2**32)")
    # The dataclasses' own checks, with the group named.
    try:
        data = DataConfig.from_mapping(cfg.data)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"data: {e}") from None
    try:
        tok_cfg = tokenizer_config(cfg)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"tokenizer: {e}") from None
    if data.infill_share and tok_cfg.bpe_vocab_size:
        raise ConfigError(f"data.infill_share={data.infill_share} with tokenizer.bpe_vocab_size={tok_cfg.bpe_vocab_size}: "
                          "infilling cuts pieces at Bar tokens, which BPE merges with what follows them; "
                          "set one of them to 0")
    # Validation (val loss, bits per note) needs held-out songs: with val_fraction 0 a hash-split
    # source holds none out, and only a source with its own split (MAESTRO's CSV) supplies some.
    own_split = [s for s in data.active_sources() if s in SOURCES and SOURCES[s].split != "hash"]
    if data.val_fraction == 0 and not own_split:
        raise ConfigError(f"{_key(cfg, 'data.val_fraction')}=0: training needs a validation split, and sources "
                          f"{list(data.active_sources())} split by content hash would hold out no song; "
                          "set data.val_fraction > 0 (e.g. 0.05)")
    base_vocab = remi.Tokenizer(tok_cfg).base_vocab_size if tok_cfg.bpe_vocab_size else 0
    if tok_cfg.bpe_vocab_size and tok_cfg.bpe_vocab_size <= base_vocab:
        raise ConfigError(f"{_key(cfg, 'tokenizer.bpe_vocab_size')}={tok_cfg.bpe_vocab_size}: must be 0 (no BPE) or "
                          f"larger than the base vocabulary ({base_vocab})")


def tokenizer_config(cfg: DictConfig) -> remi.TokenizerConfig:
    """The tokenizer of a training config: `cfg.tokenizer`, with the Infill tokens when
    `data.infill_share > 0` (the rewritten windows use them; without infilling the vocabulary, its
    ids and its hash are those of `cfg.tokenizer` alone)."""
    values = OmegaConf.to_container(cfg.tokenizer, resolve=True)
    if float(OmegaConf.select(cfg, "data.infill_share") or 0) > 0:
        values["infill_tokens"] = True
    return remi.TokenizerConfig(**values)


def _build(cfg: DictConfig, group: str, make, cls) -> Any:
    """`make(**cfg.<group>)`, its ValueError turned into a ConfigError that names the config keys:
    the dataclass's `field=value` becomes `group.field=value` (with the interpolation it came
    from, `_key`), for every field of `cls` the message mentions."""
    try:
        values = OmegaConf.to_container(cfg[group], resolve=True)
    except Exception as e:  # noqa: BLE001 — a missing key or a broken interpolation
        raise ConfigError(f"{group}: cannot be read ({e})") from None
    try:
        return make(**values)
    except TypeError as e:  # an unknown or missing key
        raise ConfigError(f"{group}: {e}") from None
    except ValueError as e:
        names = sorted((f.name for f in dataclasses.fields(cls) if f.init), key=len, reverse=True)
        pattern = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, names)) + r")=")
        raise ConfigError(pattern.sub(lambda m: f"{_key(cfg, f'{group}.{m.group(1)}')}=", str(e))) from None


def model_config(cfg: DictConfig, vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, **OmegaConf.to_container(cfg.model, resolve=True))
