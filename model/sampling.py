"""Pure sampling functions: logits (B, V) in, filtered logits or token ids (B,) out.

Each step of `GPT.generate` is `next_token(logits, ...)`, which composes the pieces below in a
fixed order:

    grammar mask -> logit bias -> repetition penalty -> temperature (0: argmax here) -> top-k -> top-p -> min-p -> draw

The order is Hugging Face's (`transformers` applies the repetition penalty to the raw scores,
then temperature, then top-k, top-p and min-p), so an exported model's `generation_config.json`
means the same thing in both. The repetition penalty comes before the greedy argmax, so it also
steers greedy decoding. Min-p comes after temperature because its threshold is relative to the
most likely token, whose lead temperature changes. Every control left at its default (None) is
skipped entirely, so results for a seed are the same as before the control existed.
None of them touches the model, and none mutates its input, so each is testable alone.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def mask_disallowed(logits: Tensor, allowed: Tensor) -> Tensor:
    """Logits (B, V) with every position where `allowed` (B, V) bool is False set to -inf."""
    check_mask_shape(allowed.shape, logits.shape)
    if allowed.dtype != torch.bool:
        raise ValueError(f"allowed mask must be a bool tensor, got {allowed.dtype}")
    check_some_allowed(allowed.any(dim=-1))
    return torch.where(allowed, logits, float("-inf"))


def check_mask_shape(mask_shape, logits_shape) -> None:
    """The ValueError for an allowed mask whose shape is not the logits' (B, V)."""
    if tuple(mask_shape) != tuple(logits_shape):
        raise ValueError(f"allowed mask has shape {tuple(mask_shape)}, logits have {tuple(logits_shape)}")


def check_some_allowed(some) -> None:
    """The ValueError for a mask row that permits nothing; `some` (B,) bool: whether row b permits
    any id (a tensor or a NumPy array; one check per step, the rows only when it fails)."""
    if not bool(some.all()):
        rows = [b for b, ok in enumerate(some.tolist()) if not ok]
        raise ValueError(f"allowed mask permits no token at all in batch row(s) {rows}; the grammar is stuck")


def is_number(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def check_temperature(t, greedy_ok: bool = True) -> float:
    """`t` as a float, or the one ValueError for a bad temperature (0 is greedy where allowed):
    every caller that takes a temperature comes here (`model.generate.Sampler` for generation)."""
    if not is_number(t) or t < 0 or (t == 0 and not greedy_ok):
        floor = ">= 0 (0 is greedy)" if greedy_ok else "> 0 here (0 means greedy, see next_token)"
        raise ValueError(f"temperature={t!r}: must be a finite number {floor}")
    return float(t)


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Logits divided by `temperature` (> 0); temperature 0 (greedy) is handled by `next_token`."""
    check_temperature(temperature, greedy_ok=False)
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


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Min-p filter: keep tokens whose probability is at least `min_p` x the top token's, the rest -inf.

    Aria's default sampler (also `transformers`' `MinPLogitsWarper`). Unlike top-p, the kept set
    widens when the model is unsure (a flat distribution) and narrows when it is confident.
    `min_p` in [0, 1]: 0 keeps everything, 1 keeps only the most likely token(s).
    """
    if not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    if min_p == 0.0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)  # (B, V)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)  # (B, 1)
    return logits.masked_fill(probs < threshold, float("-inf"))


def repetition_penalty(logits: Tensor, recent: Tensor, penalty: float, penalized: Tensor | None = None) -> Tensor:
    """CTRL's repetition penalty on every token that occurs in `recent` (B, W) ids.

    A seen token's logit is divided by `penalty` when positive and multiplied by it when negative
    (Keskar et al. 2019; `transformers`' `RepetitionPenaltyLogitsProcessor`, llama.cpp's
    `repeat_penalty`), once however often it occurs. `penalty` > 1 discourages repeats, < 1
    encourages them, 1 changes nothing. `penalized`: optional (V,) bool mask of the ids the
    penalty may touch (e.g. only pitches, since bar lines and durations repeat by nature);
    None touches every id. Entries of `recent` below 0 are padding and ignored.
    """
    if not (penalty > 0.0 and math.isfinite(penalty)):
        raise ValueError(f"repetition_penalty must be a finite number > 0 (1 = off), got {penalty}")
    if recent.dim() != 2 or recent.size(0) != logits.size(0):
        raise ValueError(f"recent ids must be (B, W) with B = {logits.size(0)}, got {tuple(recent.shape)}")
    if recent.numel() and int(recent.max()) >= logits.size(-1):
        raise ValueError(f"recent ids must be < vocabulary size {logits.size(-1)}, got {int(recent.max())}")
    if penalty == 1.0 or recent.numel() == 0:
        return logits
    B, V = logits.shape
    # padding (-1) goes to an extra column V that is dropped: scattering it onto a real id could
    # overwrite that id's mark
    cols = torch.where(recent >= 0, recent, V).to(logits.device)
    seen = torch.zeros(B, V + 1, dtype=torch.bool, device=logits.device).scatter_(-1, cols, True)[:, :V]  # (B, V)
    if penalized is not None:
        if penalized.shape != logits.shape[-1:] or penalized.dtype != torch.bool:
            raise ValueError(f"penalized must be a bool mask of shape ({logits.size(-1)},), "
                             f"got {penalized.dtype} {tuple(penalized.shape)}")
        seen &= penalized.to(seen.device)
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scaled, logits)


def add_logit_bias(logits: Tensor, bias: Tensor) -> Tensor:
    """Logits (B, V) plus a fixed bias (V,) or (B, V): a soft preference (negative: fewer of those
    ids) that, unlike a mask, never forbids anything. -inf (masked) entries stay -inf."""
    check_logit_bias(bias, tuple(logits.shape))
    return logits + bias.to(device=logits.device, dtype=logits.dtype)


def check_logit_bias(bias: Tensor, logits_shape: tuple[int, int]) -> None:
    """The ValueError for a bias that is not (V,) or (B, V), or not finite."""
    if tuple(bias.shape) not in (tuple(logits_shape[-1:]), tuple(logits_shape)):
        raise ValueError(f"logit bias must have shape ({logits_shape[-1]},) or {tuple(logits_shape)}, "
                         f"got {tuple(bias.shape)}")
    if not torch.isfinite(bias).all():
        raise ValueError("logit bias must be finite (use the allowed mask to forbid ids)")


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
    min_p: float | None = None,
    recent: Tensor | None = None,
    penalty: float | None = None,
    penalized: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """The next id (B,) from last-position logits (B, V); temperature 0.0 means greedy (argmax).

    `recent` (B, W) are the ids the repetition `penalty` looks at (see `repetition_penalty`);
    `bias` (V,) is added to the logits (`add_logit_bias`); the order of the steps is the module
    docstring's.
    """
    if allowed is not None:
        logits = mask_disallowed(logits, allowed)
    if bias is not None:
        logits = add_logit_bias(logits, bias)
    if penalty is not None:
        if recent is None:
            raise ValueError("a repetition penalty needs the recent ids it looks at (recent=(B, W) tensor)")
        logits = repetition_penalty(logits, recent, penalty, penalized)
    if temperature == 0.0:
        return torch.argmax(logits, dim=-1)
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    if min_p is not None:
        logits = min_p_filter(logits, min_p)
    return sample(logits, generator)
