"""Pure sampling functions: logits (B, V) in, filtered logits or token ids (B,) out.

Each step of `GPT.generate` is `next_token(logits, ...)`, which composes the pieces below in a
fixed order: grammar mask -> temperature -> top-k -> top-p -> draw. None of them touches the
model, and none mutates its input, so each is testable alone.
"""
from __future__ import annotations

import torch
from torch import Tensor


def mask_disallowed(logits: Tensor, allowed: Tensor) -> Tensor:
    """Logits (B, V) with every position where `allowed` (B, V) bool is False set to -inf."""
    if allowed.shape != logits.shape:
        raise ValueError(f"allowed mask has shape {tuple(allowed.shape)}, logits have {tuple(logits.shape)}")
    if allowed.dtype != torch.bool:
        raise ValueError(f"allowed mask must be a bool tensor, got {allowed.dtype}")
    empty = ~allowed.any(dim=-1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"allowed mask permits no token at all in batch row(s) {rows}; the grammar is stuck")
    return logits.masked_fill(~allowed, float("-inf"))


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Logits divided by `temperature` (> 0); temperature 0 (greedy) is handled by `next_token`."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 here (0 means greedy, see next_token), got {temperature}")
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep exactly the `k` largest logits per row (ties broken by `torch.topk`), the rest -inf."""
    if k <= 0:
        raise ValueError(f"top_k must be a positive integer, got {k}")
    if k >= logits.size(-1):
        return logits
    values, indices = torch.topk(logits, k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(-1, indices, values)


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sums to >= p.

    A token survives when the probability of all tokens ranked above it is still below p, so the
    most likely token always survives and the kept set is minimal.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p == 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs  # (B, V): probability of tokens ranked strictly higher
    drop_sorted = mass_above >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw one id per row (B,) from softmax(logits).

    Uses argmax(p / E) with E ~ Exp(1), which picks index i with probability p_i (the exponential
    race), and avoids `torch.multinomial`'s host sync on GPU.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    race = torch.empty_like(probs).exponential_(generator=generator)
    return torch.argmax(probs / race, dim=-1)


def next_token(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    allowed: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The next id (B,) from last-position logits (B, V); temperature 0.0 means greedy (argmax)."""
    if allowed is not None:
        logits = mask_disallowed(logits, allowed)
    if temperature == 0.0:
        return torch.argmax(logits, dim=-1)
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return sample(logits, generator)
