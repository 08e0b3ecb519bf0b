"""The CPU decoder: GPT-2's decoding step written in NumPy over the model's own weights.

At batch 1 a step is ~60 small operations on vectors of 256-1,024 numbers and 16 matrix-vector
products. Through torch each operation costs several microseconds of dispatch, and torch's
matrix-vector product (MKL's sgemv) reads the weights at about half the speed of NumPy's
(OpenBLAS) on the AMD EPYC this project is built on: `python benchmarks/bench_decode.py` prints
both paths side by side. This module does the same arithmetic as `GPT.decode_step` (LayerNorm,
one q/k/v product, attention over a key-value cache laid out once, GELU, residuals, the tied
head) with NumPy, in place where it can, with no per-step allocation of the cache and no host
sync (the logits come back as a tensor sharing NumPy's memory).

The weights are views of the model's parameters (no copy): a decoder built after training sees
the trained weights. Results differ from the torch path by float rounding only (a different
order of summation): ~1e-6 of the logits' scale in float32, ~1e-15 in float64, where the pinned
cases of tests/test_generation_pins.py give the same ids through both.

`usable(gpt, idx)` says where it applies: CPU, float32 or float64 weights, no autocast, no
gradient needed. `model.generate.generate` takes it there unless told `engine="torch"`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

ENGINES = ("auto", "numpy", "torch")
_GELU_C = math.sqrt(2.0 / math.pi)


def usable(gpt, idx: Tensor) -> bool:
    """Whether the NumPy decoder computes what `gpt.decode_step` would for ids `idx`."""
    p = gpt.lm_head.weight
    return (p.device.type == "cpu" and idx.device.type == "cpu" and p.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu") and not torch.is_grad_enabled())


def _np(p: Tensor | None) -> np.ndarray | None:
    return None if p is None else p.detach().numpy()


class _Layer:
    """One block's weights as NumPy views, the products' weights transposed (in, out) as views."""

    def __init__(self, block, B: int, block_size: int):
        a, m = block.attn, block.mlp
        self.ln1 = (_np(block.ln_1.weight), _np(block.ln_1.bias))
        self.ln2 = (_np(block.ln_2.weight), _np(block.ln_2.bias))
        self.qkv = (_np(a.c_attn.weight).T, _np(a.c_attn.bias))
        self.proj = (_np(a.c_proj.weight).T, _np(a.c_proj.bias))
        self.fc = (_np(m.c_fc.weight).T, _np(m.c_fc.bias))
        self.out = (_np(m.c_proj.weight).T, _np(m.c_proj.bias))
        dtype = self.ln1[0].dtype
        # the cache, laid out once: (B, heads, positions, head size)
        self.k = np.zeros((B, a.n_head, block_size, a.head_size), dtype)
        self.v = np.zeros((B, a.n_head, block_size, a.head_size), dtype)


def _layer_norm(x: np.ndarray, wb) -> np.ndarray:
    """LayerNorm over the last axis of x (N, C), eps 1e-5 as GPT-2: a new array."""
    w, b = wb
    inv_c = 1.0 / x.shape[-1]
    d = x - np.add.reduce(x, axis=-1, keepdims=True) * inv_c
    var = np.add.reduce(d * d, axis=-1, keepdims=True)
    var *= inv_c
    var += 1e-5
    np.sqrt(var, out=var)
    d /= var
    d *= w
    if b is not None:
        d += b
    return d


def _affine(x: np.ndarray, wb) -> np.ndarray:
    w, b = wb
    y = x @ w
    if b is not None:
        y += b
    return y


def _gelu_tanh(u: np.ndarray) -> np.ndarray:
    """GPT-2's GELU (the tanh approximation), in place on u."""
    g = u * u
    g *= u
    g *= 0.044715
    g += u
    g *= _GELU_C
    np.tanh(g, out=g)
    g += 1.0
    g *= 0.5
    u *= g
    return u


class CpuDecoder:
    """Decoding steps of one `GPT` for `batch` rows: `step(ids (B, t), start)` -> logits (B, V).

    Same contract as `GPT.decode_step` with its caches: the ids sit at positions start .. start +
    t - 1, attend to the cached positions before `start` and to each other causally, and are
    cached in turn (start 0 begins afresh).
    """

    def __init__(self, gpt, batch: int):
        c = gpt.config
        t = gpt.transformer
        self.n_head, self.head_size, self.n_embd = c.n_head, c.head_size, c.n_embd
        self.block_size, self.batch = c.block_size, batch
        self.wte, self.wpe = _np(t.wte.weight), _np(t.wpe.weight)
        self.head = self.wte[: c.vocab_size].T  # tied: (C, V) view
        self.ln_f = (_np(t.ln_f.weight), _np(t.ln_f.bias))
        self.layers = [_Layer(block, batch, c.block_size) for block in t.h]
        self.scale = self.wte.dtype.type(1.0 / math.sqrt(c.head_size))

    def step(self, idx: Tensor, start: int) -> Tensor:
        B, t = idx.shape
        end = start + t
        if B != self.batch:
            raise ValueError(f"this decoder holds caches for {self.batch} rows, got ids for {B}")
        if start < 0 or end > self.block_size:
            raise ValueError(f"sequence of {end} positions exceeds block_size {self.block_size}; crop the input")
        ids = idx.numpy()
        x = self.wte[ids].reshape(B * t, self.n_embd)  # a new array: the residual stream
        x += np.tile(self.wpe[start:end], (B, 1)) if B > 1 else self.wpe[start:end]
        for layer in self.layers:
            self._attend(layer, _layer_norm(x, layer.ln1), x, B, t, start)
            h = _gelu_tanh(_affine(_layer_norm(x, layer.ln2), layer.fc))
            x += _affine(h, layer.out)
        last = x.reshape(B, t, self.n_embd)[:, -1]
        return torch.from_numpy(_layer_norm(last, self.ln_f) @ self.head)

    def _attend(self, layer: _Layer, h: np.ndarray, x: np.ndarray, B: int, t: int, start: int) -> None:
        """x += attention(h) for the t new positions, writing their keys and values to the cache."""
        nh, hs, end = self.n_head, self.head_size, start + t
        qkv = _affine(h, layer.qkv).reshape(B, t, 3, nh, hs)
        layer.k[:, :, start:end] = qkv[:, :, 1].transpose(0, 2, 1, 3)
        layer.v[:, :, start:end] = qkv[:, :, 2].transpose(0, 2, 1, 3)
        q = qkv[:, :, 0].transpose(0, 2, 1, 3)  # (B, nh, t, hs)
        s = q @ layer.k[:, :, :end].swapaxes(-1, -2)  # (B, nh, t, end)
        s *= self.scale
        if t > 1:  # query i sees keys 0 .. start + i
            s[..., np.triu(np.ones((t, end), dtype=bool), k=start + 1)] = -np.inf
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= np.add.reduce(s, axis=-1, keepdims=True)
        y = (s @ layer.v[:, :, :end]).transpose(0, 2, 1, 3).reshape(B * t, self.n_embd)
        x += _affine(y, layer.proj)
