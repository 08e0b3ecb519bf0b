"""The LightningModule: a built `GPT` plus the optimisation recipe and the validation metrics.

Handed a ready `GPT` (it never builds one), so the network stays a plain `nn.Module`. Adds:
AdamW with decay groups and warm-up + cosine (model.optim), per-token train/val loss, and
**val bits per note**: the summed negative log-likelihood of the fixed validation set (every val
song in full, see model.data.ValWindows) in bits, divided by those songs' note count. That
figure does not depend on how many tokens a note takes, so it compares tokenizers and BPE on/off.

Checkpoints get `checkpoint_extra` (plain data: tokenizer JSON, its hash, model config,
resolved config) merged in, and a checkpoint whose tokenizer hash differs is refused on load.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.optim.lr_scheduler import LambdaLR

from model.gpt import GPT
from model.optim import configure_optimizer, lr_at


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 6e-4            # peak learning rate, reached after warm-up
    min_lr: float = 6e-5        # end of the cosine decay
    warmup_steps: int = 100
    max_steps: int = 1000       # the cosine reaches min_lr here (= trainer.max_steps)
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0      # applied by the Trainer (gradient_clip_val)

    def __post_init__(self):
        """Each field checked once, here; a ValueError begins `field=value:` (pianolm.config's
        check_config names the config key from it)."""
        lr = check_field("lr", self.lr, float, lambda v: 0 < v < math.inf, "a finite number > 0 (the peak learning rate)")
        check_field("min_lr", self.min_lr, float, lambda v: 0 <= v <= lr, f"a number in [0, lr={lr}]")
        check_field("warmup_steps", self.warmup_steps, int, lambda v: v >= 0, "an integer >= 0")
        check_field("max_steps", self.max_steps, int, lambda v: v >= 1, "an integer >= 1")
        check_field("weight_decay", self.weight_decay, float, lambda v: v >= 0, "a number >= 0")
        b = list(self.betas) if isinstance(self.betas, (list, tuple)) else self.betas
        if not (isinstance(b, list) and len(b) == 2 and all(is_real(x) and 0 <= x < 1 for x in b)):
            raise ValueError(f"betas={b!r}: must be two numbers in [0, 1), e.g. [0.9, 0.95]")
        if self.grad_clip is not None:
            check_field("grad_clip", self.grad_clip, float, lambda v: v > 0, "a number > 0, or null (None) for no clipping")


def is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_field(name: str, value, kind: type, ok, allowed: str):
    """`value` if it is a `kind` (int; float also takes an int) for which `ok` holds, else
    ValueError("name=value: must be <allowed>")."""
    good = (isinstance(value, int) and not isinstance(value, bool)) if kind is int else is_real(value)
    if not good or not ok(value):
        raise ValueError(f"{name}={value!r}: must be {allowed}")
    return value


class TokenizerMismatchError(ValueError):
    """A checkpoint was made with another tokenizer than the data's."""


def check_tokenizer_hash(checkpoint: dict, expected: str | None, where: str = "checkpoint") -> None:
    """Raise TokenizerMismatchError when the checkpoint's tokenizer hash is not `expected`."""
    if expected is None:
        return
    found = checkpoint.get("tokenizer_hash")
    if found != expected:
        raise TokenizerMismatchError(
            f"{where} was trained with tokenizer hash {found!r}, but the data was tokenized with "
            f"{expected!r}: resuming would mix two vocabularies. Resume with the tokenizer/data "
            f"config of that run (its `cfg` is stored in the checkpoint) or start fresh (ckpt_path=null).")


class LitGPT(L.LightningModule):
    def __init__(self, gpt: GPT, optim: OptimConfig, val_notes: int | None = None,
                 checkpoint_extra: dict[str, Any] | None = None):
        super().__init__()
        self.gpt, self.optim = gpt, optim
        self.val_notes = val_notes                      # notes in the whole validation set
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.history: list[tuple[int, float]] = []      # (step, train loss) of this process's run
        self.last_val: dict[str, float] = {}
        self.last_val_step = -1
        self._val_nll = self._val_tokens = None

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.gpt(idx)

    # ------------------------------------------------------------------ training

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch                                    # (B, T) each
        _, loss = self.gpt(x, y)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.history.append((self.global_step, float(loss.detach())))

    def configure_optimizers(self):
        o = self.optim
        # Under mixed precision (bf16-mixed, 16-mixed) Lightning clips gradients itself and
        # refuses a fused optimizer ("performs unscaling of gradients internally"): unfused there.
        trainer = self._trainer
        mixed = trainer is not None and "mixed" in str(trainer.precision)
        opt = configure_optimizer(self.gpt, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas),
                                  device_type=self.device.type, fused=False if mixed else None)

        def factor(step: int) -> float:    # a plain function: LambdaLR stores no state for it
            return lr_at(step, o.warmup_steps, o.max_steps, o.lr, o.min_lr) / o.lr

        return {"optimizer": opt, "lr_scheduler": {"scheduler": LambdaLR(opt, factor), "interval": "step"}}

    # ---------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        self._val_nll = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_tokens = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch                                    # (B, T); y is -1 past a song's end
        _, nll = self.gpt(x, y, reduction="sum")        # summed over the targets that are not -1
        self._val_nll += nll.double()
        self._val_tokens += (y >= 0).sum().double()

    def on_validation_epoch_end(self) -> None:
        # Each rank scored its share of the windows; the totals are sums over ranks.
        nll = self.trainer.strategy.reduce(self._val_nll, reduce_op="sum")
        tokens = self.trainer.strategy.reduce(self._val_tokens, reduce_op="sum")
        metrics = {"val/loss": float(nll / tokens.clamp(min=1)), "val/tokens": float(tokens)}
        if self.val_notes:
            metrics["val/bits_per_note"] = float(nll) / math.log(2) / self.val_notes
        for k, v in metrics.items():
            self.log(k, v, prog_bar=k != "val/tokens", sync_dist=False)
        self.last_val, self.last_val_step = metrics, self.global_step

    # --------------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.update(self.checkpoint_extra)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_tokenizer_hash(checkpoint, self.checkpoint_extra.get("tokenizer_hash"))
