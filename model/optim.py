"""Training knobs: AdamW with weight-decay groups, and the warm-up + cosine learning rate."""
from __future__ import annotations

import math

import torch
from torch import nn


def configure_optimizer(
    gpt: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    device_type: str = "cpu",
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW where only matmul weights decay; norms, biases and embeddings (wte/wpe) do not.

    Parameters are taken once each (the tied wte/lm_head matrix counts as the embedding).
    `fused=True` on CUDA and CPU (PyTorch >= 2.4 has both kernels): one pass over each tensor
    instead of a dozen element-wise ops; elsewhere (e.g. MPS) the default multi-tensor update.
    `fused=False` forces the multi-tensor update (Lightning refuses to clip the gradients of a
    fused optimizer under mixed precision); None: fused where the kernel exists.
    """
    decay, no_decay = [], []
    for name, p in gpt.named_parameters():  # named_parameters() yields a shared tensor once
        if not p.requires_grad:
            continue
        is_embedding = name.endswith(("wte.weight", "wpe.weight"))
        (no_decay if p.dim() < 2 or is_embedding else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    extra = {"fused": True} if device_type in ("cuda", "cpu") and fused is not False else {}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), **extra)


def lr_at(step: int, warmup_steps: int, max_steps: int, max_lr: float, min_lr: float) -> float:
    """Linear warm-up from max_lr/warmup_steps to max_lr, cosine decay to min_lr at max_steps, then flat."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)
