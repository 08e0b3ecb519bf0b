"""Train a piano-music GPT: `python train.py [+experiment=roundN] [scale=tiny|small|full] [key=value ...]`.

Thin on purpose: compose the config (conf/), build the tokenizer and token shards, the GPT, the
LightningModule, DataModule, loggers and callbacks (the pieces live in `pianolm`), then `trainer.fit`.
`train(cfg)` is a plain function (tests call it); `main` is its Hydra wrapper.

With no arguments: the `tiny` scale on the offline `bundled` corpus, logged to wandb offline
(online when credentials exist). The run folder (hydra.run.dir) receives checkpoints/last.ckpt,
samples/, the wandb run and metrics.json.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from model.callbacks import NonFiniteLossError, SampleCallback, WallClock
from model.ckptio import AtomicCheckpointIO
from model.gpt import GPT
from model.lit import LitGPT, OptimConfig, TokenizerMismatchError, check_tokenizer_hash
from pianolm.checkpoint import check_resume
from pianolm.config import ConfigError, check_config, model_config
from pianolm.errors import CheckpointError
from pianolm.runinfo import code_fingerprint, gather, weights_digest
from pianolm.training import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    cpu_flags,
    emulated_bf16_warning,
    prepare_data,
    validation_set,
    wandb_save,
)
from remi.corpus.datasets import DatasetMissingError

# ----------------------------------------------------------------------------- train

def train(cfg: DictConfig, callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Train as `cfg` says; return {"metrics": dict, "trainer", "lit", "tokenizer", "datamodule"}.

    `callbacks` are added to the configured ones (tests use it to inject faults).
    """
    start = time.time()
    check_config(cfg)
    ckpt_path = cfg.get("ckpt_path")
    resume = check_resume(ckpt_path) if ckpt_path else None  # the file, before the data is prepared
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tok, shard_dir, train_split, val_split = prepare_data(cfg)
    prepared = time.time()
    gpt = GPT(model_config(cfg, tok.vocab_size))
    if cfg.get("compile"):
        # in place (nn.Module.compile): parameter names, and so checkpoints, stay as without it
        gpt.compile(backend="inductor" if cfg.compile is True else str(cfg.compile))
    extra = {"tokenizer": tok.to_dict(), "tokenizer_hash": tok.hash, "model_config": gpt.config.to_dict(),
             "cfg": OmegaConf.to_container(cfg, resolve=True)}
    val = validation_set(cfg, val_split)
    lit = LitGPT(gpt, OptimConfig(**OmegaConf.to_container(cfg.optim, resolve=True)),
                 val_notes=val.notes, checkpoint_extra=extra)
    dm = build_datamodule(cfg, train_split, val, tok)
    if resume is not None:
        check_tokenizer_hash(resume, tok.hash, where=f"checkpoint {ckpt_path}")

    clock = WallClock.resuming(resume, start)
    trainer, loggers, cbs = build_trainer(cfg, tok, out_dir, extra["cfg"], [clock] + list(callbacks or []))
    trainer.fit(lit, datamodule=dm, ckpt_path=ckpt_path or None)
    if lit.last_val_step != trainer.global_step:
        trainer.validate(lit, datamodule=dm, verbose=False)

    metrics = run_metrics(cfg, tok, trainer, lit, dm, loggers, cbs, train_split, val)
    metrics.update(clock.figures(None if resume is None else int(resume.get("global_step") or 0)))
    metrics.update({"prepare_time_s": round(prepared - start, 2),
                    "shard_dir": str(shard_dir), "output_dir": str(out_dir), "code_fingerprint": code_fingerprint()})
    if trainer.is_global_zero:
        finish(metrics, loggers, out_dir)
    return {"metrics": metrics, "trainer": trainer, "lit": lit, "tokenizer": tok, "datamodule": dm,
            "callbacks": cbs}


def build_trainer(cfg: DictConfig, tok, out_dir: Path, resolved: dict, callbacks: list[L.Callback] | None):
    """(Lightning Trainer, loggers, callbacks) as configured, the resolved config logged and
    written beside the run (and into the wandb run)."""
    warning = emulated_bf16_warning(cfg.trainer, cpu_flags())
    if warning:
        print(warning, file=sys.stderr, flush=True)
    loggers = build_loggers(cfg)
    cbs = build_callbacks(cfg, tok) + list(callbacks or [])
    if not loggers:  # `logger=none`: LearningRateMonitor refuses to run without a logger
        cbs = [cb for cb in cbs if not isinstance(cb, LearningRateMonitor)]
    trainer = L.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), logger=loggers or False,
                        callbacks=cbs, plugins=[AtomicCheckpointIO()], use_distributed_sampler=False,
                        default_root_dir=str(out_dir))
    for lg in loggers:
        lg.log_hyperparams(resolved)
    if trainer.is_global_zero:
        (out_dir / "run_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        wandb_save(loggers, out_dir / "run_config.yaml")
    return trainer, loggers, cbs


def run_metrics(cfg: DictConfig, tok, trainer: L.Trainer, lit: LitGPT, dm, loggers: list, cbs: list,
                train_split, val) -> dict[str, Any]:
    """The finished run's figures (every rank computes them: the digests are gathered)."""
    gpt, c = lit.gpt, lit.gpt.config
    digests = gather(weights_digest(gpt))
    first_batches = gather(hashlib.sha256(dm.train_dataloader().dataset.batch(0)[0].numpy().tobytes())
                            .hexdigest())
    wandb_dir = None
    for lg in loggers:
        if isinstance(lg, WandbLogger) and trainer.is_global_zero:
            wandb_dir = str(Path(lg.experiment.dir).parent)   # .../wandb/<offline-run-...>
    sample_cb = next((cb for cb in cbs if isinstance(cb, SampleCallback)), None)
    ckpt_cb = trainer.checkpoint_callback
    last_ckpt = (Path(ckpt_cb.dirpath) / "last.ckpt") if ckpt_cb is not None else None
    return {
        "round": cfg.get("round"), "tags": list(cfg.get("tags") or []), "seed": cfg.seed,
        "val_loss": lit.last_val.get("val/loss"), "val_bits_per_note": lit.last_val.get("val/bits_per_note"),
        "non_embedding_params": gpt.num_params(non_embedding=True), "params": gpt.num_params(non_embedding=False),
        "n_layer": c.n_layer, "n_embd": c.n_embd, "block_size": c.block_size,
        "vocab_size": tok.vocab_size, "tokenizer_hash": tok.hash, "bpe": bool(cfg.tokenizer.get("bpe_vocab_size")),
        "train_songs": len(train_split.offsets) - 1, "train_tokens": int(len(train_split.tokens)),
        "train_notes": int(train_split.notes.sum()), "val_songs": len(val.songs),
        "val_tokens": int(len(val.tokens)), "val_notes": val.notes,
        "steps": trainer.global_step, "world_size": trainer.world_size,
        "tokens_per_step": dm.config.batch_size * c.block_size * trainer.world_size * trainer.accumulate_grad_batches,
        "data_position": dm.position(),
        "rank_weight_digests": digests, "rank_first_batch_digests": first_batches,
        "checkpoint": str(last_ckpt) if last_ckpt and last_ckpt.exists() else None,
        "samples": str(sample_cb.out_dir) if sample_cb and sample_cb.results else None,
        "wandb_dir": wandb_dir,
    }


def finish(metrics: dict[str, Any], loggers: list, out_dir: Path) -> None:
    """Rank 0: metrics.json beside the run and in the wandb run (its summary too), and where
    everything is, printed."""
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    wandb_save(loggers, out_dir / "metrics.json")
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.summary.update({k: v for k, v in metrics.items()
                                          if isinstance(v, (int, float)) and v is not None})
            lg.experiment.finish()
    resumed = metrics.get("resumed_from_step")
    process = "" if resumed is None else (f", this process {metrics['process_wall_time_s']:.0f} s from step {resumed}"
                                          + ("" if metrics["wall_time_covers_run"] else
                                             " (the checkpoint recorded no earlier time)"))
    print(f"\n[train] done in {metrics['wall_time_s']:.0f} s ({metrics['prepare_time_s']:.0f} s preparing data{process}), "
          f"{metrics['steps']} steps, val bits/note {metrics['val_bits_per_note']}")
    print(f"[train] checkpoint: {metrics['checkpoint']}")
    print(f"[train] samples:    {metrics['samples']}")
    wandb_dir = metrics["wandb_dir"]
    if wandb_dir:
        offline = "offline-run" in Path(wandb_dir).name
        print(f"[train] wandb run:  {wandb_dir}" + (f"  (upload: wandb sync {wandb_dir})" if offline else ""))
    print(f"[train] metrics:    {out_dir / 'metrics.json'}")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except ConfigError as e:
        print(f"[train] config error: {e}", file=sys.stderr)
        sys.exit(2)
    except (NonFiniteLossError, TokenizerMismatchError, DatasetMissingError, CheckpointError) as e:
        print(f"[train] stopped: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
