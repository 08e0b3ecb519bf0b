"""Sequences longer than the context: one window rule shared by generation and scoring.

GPT-2's positions are absolute, so a model of context `block_size` sees a window `ids[lo:n]` of
at most `block_size` tokens, and a cached window cannot roll by one token (every cached key would
sit at the wrong position). The rule here: the window keeps its start while it fits; when it
would hold more than `block_size` tokens, its start moves on by `stride` tokens. A token is then
predicted from between `block_size - stride + 1` and `block_size` tokens of context.

- `stride=1` is the exact sliding window: every token sees a full context, and generation
  recomputes the whole window for every token.
- `stride=block_size` cuts the sequence into windows that restart from nothing, the way the
  validation set is scored (model.data.ValWindows).
- In between, `GPT.generate` recomputes the cache once per shift and decodes cached in between,
  so the recomputation is shared by `stride` tokens; `sequence_nll` scores a sequence with
  exactly the contexts that generation with the same stride would use.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor


def default_stride(block_size: int) -> int:
    """The stride generation and scoring use when none is given: half the context.

    Each token then sees between half and all of the window (three quarters on average). Measured
    in docs/sampling.md ("Past the context"): bits per note within 1% of stride 1 (lower, on the
    checkpoint measured), and 4x the context generated at 1.1-1.3x the per-token cost inside the
    window on a CPU, where a quarter (three quarters kept) reaches 1.4-1.5x at batch 8.
    """
    return max(1, block_size // 2)


def check_stride(stride: int | None, block_size: int) -> int:
    """`stride` as an int in 1 .. block_size (None: `default_stride`), or a ValueError saying why."""
    if stride is None:
        return default_stride(block_size)
    if isinstance(stride, bool) or int(stride) != stride or not 1 <= int(stride) <= block_size:
        raise ValueError(f"stride must be an integer from 1 (the exact sliding window) to block_size "
                         f"{block_size}, got {stride!r}")
    return int(stride)


def window_start(lo: int, n: int, block_size: int, stride: int) -> int:
    """Start of the window over a sequence of `n` tokens, given that it started at `lo` before.

    Unchanged while `n - lo <= block_size`; otherwise moved on by as many strides as it takes
    (one at a time while generating, several for a long prompt).
    """
    over = n - lo - block_size
    return lo if over <= 0 else lo + -(-over // stride) * stride


@torch.no_grad()
def token_nll(gpt: nn.Module, ids, stride: int | None = None, block_size: int | None = None,
              batch_size: int = 16) -> Tensor:
    """Negative log-likelihood in nats (N - 1,) of each of ids[1:] given what precedes it.

    ids: (N,) token ids of one sequence (BOS first), any length. Token t is predicted from
    `ids[lo:t]` with `lo = window_start(0, t, block_size, stride)`: the same contexts that
    `GPT.generate(..., stride=stride)` uses when it writes a sequence from its first token.
    Each window is one forward pass that scores only its new tokens, and `batch_size` windows go
    through the model at once. block_size defaults to the model's context.
    """
    block = gpt.config.block_size if block_size is None else int(block_size)
    if not 1 <= block <= gpt.config.block_size:
        raise ValueError(f"block_size must be in 1 .. the model's {gpt.config.block_size}, got {block}")
    stride = check_stride(stride, block)
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    N = ids.numel()
    if N < 2:
        return torch.zeros(0)
    device = next(gpt.parameters()).device
    # Windows start at 0, stride, 2*stride, ...; the one at lo scores targets t in (lo + block - stride,
    # lo + block] (all of 1 .. block for the first), i.e. its inputs' last `stride` positions.
    starts = [0] + list(range(stride, N - 1 - block + stride, stride) if N - 1 > block else [])
    was_training = gpt.training
    gpt.eval()
    nll = torch.empty(N - 1)
    try:
        for i in range(0, len(starts), batch_size):
            group = starts[i : i + batch_size]
            x = torch.zeros(len(group), block, dtype=torch.long)
            y = torch.full((len(group), block), -1, dtype=torch.long)  # -1: not scored in this window
            for row, lo in enumerate(group):
                first = 0 if lo == 0 else block - stride  # first scored input position
                chunk = ids[lo : lo + block + 1]
                x[row, : len(chunk) - 1] = chunk[:-1]
                y[row, first : len(chunk) - 1] = chunk[first + 1 :]
            _, loss = gpt(x.to(device), y.to(device), reduction="none")  # (G, block), 0 where y is -1
            loss = loss.float().cpu()
            for row, lo in enumerate(group):
                scored = y[row] >= 0
                targets = lo + torch.nonzero(scored).flatten()  # index into ids[1:]
                nll[targets] = loss[row][scored]
    finally:
        gpt.train(was_training)
    return nll


def sequence_nll(gpt: nn.Module, ids, stride: int | None = None, block_size: int | None = None,
                 batch_size: int = 16, bits: bool = False) -> float:
    """Summed negative log-likelihood of ids[1:] (nats, or bits with `bits=True`), windowed as
    `token_nll` explains. Divided by the sequence's note count it gives bits per note."""
    total = float(token_nll(gpt, ids, stride, block_size, batch_size).sum())
    return total / math.log(2) if bits else total
