"""Train a piano-music GPT: `python train.py [+experiment=roundN] [scale=tiny|small|full] [key=value ...]`.

Thin on purpose: compose the config (conf/), build the tokenizer and token shards (remi), the
GPT (model), the LightningModule, DataModule, loggers and callbacks, then `trainer.fit`.
`train(cfg)` is a plain function (tests call it); `main` is its Hydra wrapper.

With no arguments: the `tiny` scale on the offline `bundled` corpus, logged to wandb offline
(online when credentials exist). The run folder (hydra.run.dir) receives checkpoints/last.ckpt,
samples/, the wandb run and metrics.json.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import netrc
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

import remi
import remi.datasets
from remi.datasets import DatasetMissingError
from model.callbacks import NonFiniteLossError, SampleCallback
from model.ckptio import AtomicCheckpointIO, load_plain
from model.data import WindowConfig, WindowDataModule, spread_songs, take_songs
from model.gpt import GPT, GPTConfig
from model.lit import LitGPT, OptimConfig, TokenizerMismatchError, check_tokenizer_hash


# The sources whose code decides what a run trains and how: a run records their fingerprint.
CODE_DIRS = ("remi", "model")
CODE_FILES = ("train.py",)


def code_fingerprint(root: Path | None = None) -> str:
    """16 hex digits of sha256 over remi/, model/ and train.py: which code trained a run.

    `experiments/ablate.py` compares it with a kept run's, so results from older code are not
    silently mixed with new ones."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent
    files = sorted(p for d in CODE_DIRS for p in (root / d).rglob("*.py")) + [root / f for f in CODE_FILES]
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _mul_int(value: Any, factor: Any) -> int:
    """`${mul_int:${scale.n_layer},1.5}`: an integer product, refusing to round silently."""
    product = float(value) * float(factor)
    if abs(product - round(product)) > 1e-9:
        raise ValueError(f"mul_int: {value} x {factor} = {product} is not a whole number; "
                         f"choose a scale whose n_layer makes it one")
    return int(round(product))


OmegaConf.register_new_resolver("mul_int", _mul_int, replace=True)


# ----------------------------------------------------------------------------- pieces

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


def build_loggers(cfg: DictConfig) -> list:
    loggers = []
    for name, conf in (cfg.get("logger") or {}).items():
        if conf is None:
            continue
        conf = OmegaConf.to_container(conf, resolve=True)
        if conf["_target_"].endswith("WandbLogger"):
            conf["mode"] = wandb_mode(conf.get("mode"))
            conf["offline"] = conf["mode"] != "online"
            Path(conf["save_dir"]).mkdir(parents=True, exist_ok=True)
        loggers.append(instantiate(conf))
    return loggers


def make_render(tok: "remi.Tokenizer"):
    """The MIDI side of the sample callback: ids -> .mid + piano-roll .png (+ .wav if FluidSynth)."""
    from remi.audio import INSTALL_HINT, find_renderer, render_wav
    from remi.render import mean_token_errors, render_many

    synth = find_renderer()
    if synth is None:  # said once per run, not at every sampling step
        print(f"[train] {INSTALL_HINT}", file=sys.stderr)

    def render(samples: list[list[int]], out_dir: Path) -> dict:
        rendered = render_many(tok, samples, out_dir)
        audio = []
        if synth is not None:
            for r in rendered:
                try:
                    audio.append(render_wav(r.midi, r.midi.with_suffix(".wav"), synth))
                except RuntimeError as e:
                    print(f"[train] sample audio skipped: {e}", file=sys.stderr)
        return {"midi": [r.midi for r in rendered], "images": [r.png for r in rendered], "audio": audio,
                "grammar_error_rate": mean_token_errors(rendered),
                "notes_mean": sum(r.n_notes for r in rendered) / max(1, len(rendered))}

    return render


def build_callbacks(cfg: DictConfig, tok: "remi.Tokenizer") -> list[L.Callback]:
    callbacks = []
    for name, conf in (cfg.get("callbacks") or {}).items():
        if conf is None:
            continue
        if conf["_target_"].endswith("SampleCallback"):
            callbacks.append(instantiate(conf, render=make_render(tok), bos_id=tok.bos_id,
                                         eos_id=tok.eos_id, seed=cfg.seed))
        else:
            callbacks.append(instantiate(conf))
    return callbacks


@contextmanager
def _file_lock(path: Path):
    """Serialise corpus preparation between processes that start together (torchrun, SLURM):
    the first converts, the others then find the cache ready."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare_data(cfg: DictConfig):
    """(tokenizer with BPE if configured, train split, val split), shards cached under paths.cache_dir."""
    from remi.prepare import prepare_for_training
    from remi.shards import load_split

    tok = remi.Tokenizer(remi.TokenizerConfig(**OmegaConf.to_container(cfg.tokenizer, resolve=True)))
    cache_dir = Path(cfg.paths.cache_dir)
    with _file_lock(cache_dir / ".prepare.lock"):
        tok, shard_dir = prepare_for_training(cfg.data, tok, Path(cfg.paths.data_dir), cache_dir)
    train = load_split(shard_dir, "train", expect_hash=tok.hash)
    val = load_split(shard_dir, "val", expect_hash=tok.hash)
    if len(val.offsets) < 2:
        raise ValueError(f"the validation split of {shard_dir} is empty; raise data.val_fraction "
                         f"or data.limit so at least one song is held out")
    return tok, Path(shard_dir), train, val


class ConfigError(ValueError):
    """A composed config value that cannot work: the message names the key, its value and what
    is allowed. Raised by `check_config` before any data is prepared or model built."""


def _key(cfg: DictConfig, dotted: str) -> str:
    """`optim.lr`, or `optim.lr (= ${scale.lr})` when the value comes from an interpolation,
    so the message says which key to change."""
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
    for key in ("scale.batch_size", "scale.accumulate", "model.n_layer", "model.n_head", "model.n_embd",
                "model.block_size", "model.pad_vocab_multiple", "trainer.max_steps"):
        _number(cfg, key, int, pos_int, "an integer >= 1")
    n_embd, n_head = cfg.model.n_embd, cfg.model.n_head
    if n_embd % n_head:
        raise ConfigError(f"{_key(cfg, 'model.n_embd')}={n_embd} is not divisible by {_key(cfg, 'model.n_head')}={n_head}: "
                          f"each head gets n_embd / n_head channels (e.g. n_head={_divisor_near(n_embd, n_head)})")
    for key in ("scale.val_songs", "scale.val_batch_size"):  # optional: null means all / batch_size
        if OmegaConf.select(cfg, key) is not None:
            _number(cfg, key, int, pos_int, "an integer >= 1, or null")
    if OmegaConf.select(cfg, "scale.song_start_share") is not None:
        _number(cfg, "scale.song_start_share", float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
    _number(cfg, "model.dropout", float, lambda v: 0 <= v < 1, "a number in [0, 1)")
    lr = _number(cfg, "optim.lr", float, lambda v: 0 < v < float("inf"), "a finite number > 0 (the peak learning rate)")
    _number(cfg, "optim.min_lr", float, lambda v: 0 <= v <= lr, f"a number in [0, optim.lr={lr}]")
    _number(cfg, "optim.warmup_steps", int, lambda v: v >= 0, "an integer >= 0")
    _number(cfg, "optim.max_steps", int, pos_int, "an integer >= 1")
    _number(cfg, "optim.weight_decay", float, lambda v: v >= 0, "a number >= 0")
    betas = OmegaConf.select(cfg, "optim.betas")
    betas_ok = (OmegaConf.is_list(betas) or isinstance(betas, (list, tuple))) and len(betas) == 2 and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)
    if not betas_ok:
        raise ConfigError(f"optim.betas={_plain(betas)!r}: must be two numbers in [0, 1), e.g. [0.9, 0.95]")
    if OmegaConf.select(cfg, "optim.grad_clip") is not None:
        _number(cfg, "optim.grad_clip", float, lambda v: v > 0, "a number > 0, or null for no clipping")
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed!r}: must be an integer in [0, 2**32)")
    # The dataclasses' own checks, with the group named.
    try:
        tok_cfg = remi.TokenizerConfig(**OmegaConf.to_container(cfg.tokenizer, resolve=True))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"tokenizer: {e}") from None
    try:
        remi.datasets.DataConfig.from_mapping(cfg.data)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"data: {e}") from None
    base_vocab = remi.Tokenizer(tok_cfg).base_vocab_size if tok_cfg.bpe_vocab_size else 0
    if tok_cfg.bpe_vocab_size and tok_cfg.bpe_vocab_size <= base_vocab:
        raise ConfigError(f"{_key(cfg, 'tokenizer.bpe_vocab_size')}={tok_cfg.bpe_vocab_size}: must be 0 (no BPE) or "
                          f"larger than the base vocabulary ({base_vocab})")
    try:
        GPTConfig(vocab_size=max(1, tok_cfg.bpe_vocab_size), **OmegaConf.to_container(cfg.model, resolve=True))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model: {e}") from None


def _divisor_near(n: int, k: int) -> int:
    """The divisor of n closest to k (a suggestion for n_head)."""
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - k), d))


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def model_config(cfg: DictConfig, vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, **OmegaConf.to_container(cfg.model, resolve=True))


def check_resume(ckpt_path: str | Path, tokenizer_hash: str) -> dict:
    """Load a checkpoint (plain data only) and refuse it when its tokenizer differs from the data's."""
    ckpt = load_plain(ckpt_path)
    check_tokenizer_hash(ckpt, tokenizer_hash, where=f"checkpoint {ckpt_path}")
    return ckpt


def weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _wandb_save(loggers: list, path: Path) -> None:
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.save(str(path), base_path=str(path.parent), policy="now")


def _gather(obj: Any) -> list:
    """obj from every rank (a one-element list without a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- train

def train(cfg: DictConfig, callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Train as `cfg` says; return {"metrics": dict, "trainer", "lit", "tokenizer", "datamodule"}.

    `callbacks` are added to the configured ones (tests use it to inject faults).
    """
    start = time.time()
    check_config(cfg)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tok, shard_dir, train_split, val_split = prepare_data(cfg)
    prepared = time.time()
    gpt_config = model_config(cfg, tok.vocab_size)
    gpt = GPT(gpt_config)
    if cfg.get("compile"):
        # in place (nn.Module.compile): parameter names, and so checkpoints, stay as without it
        gpt.compile(backend="inductor" if cfg.compile is True else str(cfg.compile))
    extra = {"tokenizer": tok.to_dict(), "tokenizer_hash": tok.hash, "model_config": gpt_config.to_dict(),
             "cfg": OmegaConf.to_container(cfg, resolve=True)}
    # The fixed validation set: every val song, or `scale.val_songs` of them spread evenly.
    songs = spread_songs(len(val_split.offsets) - 1, cfg.scale.get("val_songs"))
    val_tokens, val_offsets = take_songs(val_split.tokens, val_split.offsets, songs)
    val_notes = int(np.asarray(val_split.notes)[songs].sum())
    lit = LitGPT(gpt, OptimConfig(**OmegaConf.to_container(cfg.optim, resolve=True)),
                 val_notes=val_notes, checkpoint_extra=extra)
    dm = WindowDataModule(train_split.tokens, val_tokens, val_offsets,
                          WindowConfig(block_size=gpt_config.block_size, batch_size=cfg.scale.batch_size,
                                       seed=cfg.seed, val_batch_size=cfg.scale.get("val_batch_size"),
                                       song_start_share=float(cfg.scale.get("song_start_share") or 0.0)),
                          train_offsets=train_split.offsets)

    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        check_resume(ckpt_path, tok.hash)

    loggers = build_loggers(cfg)
    cbs = build_callbacks(cfg, tok) + list(callbacks or [])
    if not loggers:  # `logger=none`: LearningRateMonitor refuses to run without a logger
        cbs = [cb for cb in cbs if not isinstance(cb, LearningRateMonitor)]
    trainer = L.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), logger=loggers or False,
                        callbacks=cbs, plugins=[AtomicCheckpointIO()], use_distributed_sampler=False,
                        default_root_dir=str(out_dir))
    for lg in loggers:
        lg.log_hyperparams(extra["cfg"])
    if trainer.is_global_zero:  # the resolved config next to the run, and inside the wandb run
        (out_dir / "run_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(extra["cfg"])))
        _wandb_save(loggers, out_dir / "run_config.yaml")

    trainer.fit(lit, datamodule=dm, ckpt_path=ckpt_path or None)
    if lit.last_val_step != trainer.global_step:
        trainer.validate(lit, datamodule=dm, verbose=False)

    digests = _gather(weights_digest(gpt))
    first_batches = _gather(hashlib.sha256(dm.train_dataloader().dataset.batch(0)[0].numpy().tobytes())
                            .hexdigest())
    wandb_dir = None
    for lg in loggers:
        if isinstance(lg, WandbLogger) and trainer.is_global_zero:
            wandb_dir = str(Path(lg.experiment.dir).parent)   # .../wandb/<offline-run-...>
    sample_cb = next((c for c in cbs if isinstance(c, SampleCallback)), None)
    ckpt_cb = trainer.checkpoint_callback
    last_ckpt = (Path(ckpt_cb.dirpath) / "last.ckpt") if ckpt_cb is not None else None

    metrics = {
        "round": cfg.get("round"), "tags": list(cfg.get("tags") or []), "seed": cfg.seed,
        "val_loss": lit.last_val.get("val/loss"), "val_bits_per_note": lit.last_val.get("val/bits_per_note"),
        "non_embedding_params": gpt.num_params(non_embedding=True), "params": gpt.num_params(non_embedding=False),
        "n_layer": gpt_config.n_layer, "n_embd": gpt_config.n_embd, "block_size": gpt_config.block_size,
        "vocab_size": tok.vocab_size, "tokenizer_hash": tok.hash, "bpe": bool(cfg.tokenizer.get("bpe_vocab_size")),
        "train_songs": len(train_split.offsets) - 1, "train_tokens": int(len(train_split.tokens)),
        "train_notes": int(train_split.notes.sum()), "val_songs": len(songs),
        "val_tokens": int(len(val_tokens)), "val_notes": val_notes,
        "steps": trainer.global_step, "world_size": trainer.world_size,
        "tokens_per_step": cfg.scale.batch_size * gpt_config.block_size * trainer.world_size * trainer.accumulate_grad_batches,
        "wall_time_s": round(time.time() - start, 2), "prepare_time_s": round(prepared - start, 2),
        "data_position": dm.position(),
        "rank_weight_digests": digests, "rank_first_batch_digests": first_batches,
        "shard_dir": str(shard_dir), "output_dir": str(out_dir),
        "checkpoint": str(last_ckpt) if last_ckpt and last_ckpt.exists() else None,
        "samples": str(sample_cb.out_dir) if sample_cb and sample_cb.results else None,
        "wandb_dir": wandb_dir,
        "code_fingerprint": code_fingerprint(),
    }
    if trainer.is_global_zero:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        _wandb_save(loggers, out_dir / "metrics.json")
        for lg in loggers:
            if isinstance(lg, WandbLogger):
                lg.experiment.summary.update({k: v for k, v in metrics.items()
                                              if isinstance(v, (int, float)) and v is not None})
                lg.experiment.finish()
        print(f"\n[train] done in {metrics['wall_time_s']:.0f} s ({metrics['prepare_time_s']:.0f} s preparing data), "
              f"{metrics['steps']} steps, "
              f"val bits/note {metrics['val_bits_per_note']}")
        print(f"[train] checkpoint: {metrics['checkpoint']}")
        print(f"[train] samples:    {metrics['samples']}")
        if wandb_dir:
            offline = "offline-run" in Path(wandb_dir).name
            print(f"[train] wandb run:  {wandb_dir}" + (f"  (upload: wandb sync {wandb_dir})" if offline else ""))
        print(f"[train] metrics:    {out_dir / 'metrics.json'}")
    return {"metrics": metrics, "trainer": trainer, "lit": lit, "tokenizer": tok, "datamodule": dm,
            "callbacks": cbs}


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except ConfigError as e:
        print(f"[train] config error: {e}", file=sys.stderr)
        sys.exit(2)
    except (NonFiniteLossError, TokenizerMismatchError, DatasetMissingError) as e:
        print(f"[train] stopped: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
