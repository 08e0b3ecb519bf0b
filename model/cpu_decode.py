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
    """A parameter as a float64 array (folding is done in float64), or None."""
    return None if p is None else p.detach().numpy().astype(np.float64)


class _Layer:
    """One block's weights, prepared once per decoder so a step needs few NumPy calls:

    - each LayerNorm's gain and bias are folded into the product after it, and its 1/sqrt(C) too
      (LN(x) @ W + c = (x - mean) / sqrt(sum((x - mean)^2) + C eps) @ (sqrt(C) diag(g) W) + (b W + c));
    - attention's 1/sqrt(head size) is folded into the query's columns, GELU's 1/2 into the MLP's
      output product.
    Folding is done in float64 and stored in the model's dtype: the products differ from the
    torch path's by rounding only. The key-value cache is laid out once: (B, heads, positions, hs).
    """

    def __init__(self, block, B: int, block_size: int, dtype):
        a, m = block.attn, block.mlp
        C = a.n_embd
        scale = np.ones(3 * C)
        scale[:C] = 1.0 / math.sqrt(a.head_size)
        self.qkv = _fold(block.ln_1, _np(a.c_attn.weight).T, _np(a.c_attn.bias), dtype, scale)
        self.fc = _fold(block.ln_2, _np(m.c_fc.weight).T, _np(m.c_fc.bias), dtype)
        self.proj = (_np(a.c_proj.weight).T.astype(dtype), _bias(a.c_proj, dtype))
        self.out = ((0.5 * _np(m.c_proj.weight).T).astype(dtype), _bias(m.c_proj, dtype))
        self.k = np.zeros((B, a.n_head, block_size, a.head_size), dtype)
        self.v = np.zeros((B, a.n_head, block_size, a.head_size), dtype)


def _bias(linear, dtype):
    return None if linear.bias is None else _np(linear.bias).astype(dtype)


def _fold(ln, w: np.ndarray, c: np.ndarray | None, dtype, col_scale=None) -> tuple[np.ndarray, np.ndarray]:
    """(W', c') with LN(x) @ w + c == _normalized(x) @ W' + c' for a product w (in, out) with bias
    c (None: none) after the LayerNorm `ln` (see `_Layer`)."""
    g = _np(ln.weight)
    c = np.zeros(w.shape[1]) if c is None else c
    if ln.bias is not None:
        c = c + _np(ln.bias) @ w
    w = (math.sqrt(w.shape[0]) * g)[:, None] * w
    if col_scale is not None:
        w, c = w * col_scale, c * col_scale
    return np.ascontiguousarray(w, dtype=dtype), c.astype(dtype)


def _normalized(x: np.ndarray, eps_c: float) -> np.ndarray:
    """(x - mean) / sqrt(sum((x - mean)^2) + C eps) over the last axis of x (N, C): a new array
    (LayerNorm without its gain, bias and sqrt(C), which `_fold` moved into the next product)."""
    d = x - np.add.reduce(x, axis=-1, keepdims=True) * (1.0 / x.shape[-1])
    ss = np.add.reduce(d * d, axis=-1, keepdims=True)
    ss += eps_c
    np.sqrt(ss, out=ss)
    d /= ss
    return d


def _affine(x: np.ndarray, wc) -> np.ndarray:
    w, c = wc
    y = x @ w
    if c is not None:
        y += c
    return y


def _gelu_tanh_2x(u: np.ndarray) -> np.ndarray:
    """2 x GPT-2's GELU (the tanh approximation), in place on u: u (1 + tanh(k u + k 0.044715 u^3));
    the 1/2 lives in the next product's weights."""
    g = u * u
    g *= _GELU_C * 0.044715
    g += _GELU_C
    g *= u
    np.tanh(g, out=g)
    g += 1.0
    u *= g
    return u


class CpuDecoder:
    """Decoding steps of one `GPT` for `batch` rows: `step(ids (B, t), start)` -> logits (B, V).

    Same contract as `GPT.decode_step` with its caches: the ids sit at positions start .. start +
    t - 1, attend to the cached positions before `start` and to each other causally, and are
    cached in turn (start 0 begins afresh). The weights are read when the decoder is built (one
    per `generate` call): later changes to the model are not seen.
    """

    def __init__(self, gpt, batch: int):
        c = gpt.config
        t = gpt.transformer
        dtype = t.wte.weight.detach().numpy().dtype
        self.n_head, self.head_size, self.n_embd = c.n_head, c.head_size, c.n_embd
        self.block_size, self.batch = c.block_size, batch
        self.eps_c = 1e-5 * c.n_embd  # GPT-2's LayerNorm eps, times C (see _normalized)
        self.wte, self.wpe = t.wte.weight.detach().numpy(), t.wpe.weight.detach().numpy()
        self.head = _fold(t.ln_f, _np(t.wte.weight)[: c.vocab_size].T, None, dtype)  # the tied head, (C, V)
        self.layers = [_Layer(block, batch, c.block_size, dtype) for block in t.h]

    def step(self, idx: Tensor, start: int) -> Tensor:
        B, t = idx.shape
        end = start + t
        if B != self.batch:
            raise ValueError(f"this decoder holds caches for {self.batch} rows, got ids for {B}")
        if start < 0 or end > self.block_size:
            raise ValueError(f"sequence of {end} positions exceeds block_size {self.block_size}; crop the input")
        x = self.wte[idx.numpy()].reshape(B * t, self.n_embd)  # a new array: the residual stream
        x += np.tile(self.wpe[start:end], (B, 1)) if B > 1 else self.wpe[start:end]
        for layer in self.layers:
            self._attend(layer, _normalized(x, self.eps_c), x, B, t, start)
            x += _affine(_gelu_tanh_2x(_affine(_normalized(x, self.eps_c), layer.fc)), layer.out)
        last = x.reshape(B, t, self.n_embd)[:, -1]
        return torch.from_numpy(_affine(_normalized(last, self.eps_c), self.head))

    def _attend(self, layer: _Layer, h: np.ndarray, x: np.ndarray, B: int, t: int, start: int) -> None:
        """x += attention(h) for the t new positions, writing their keys and values to the cache."""
        nh, hs, end = self.n_head, self.head_size, start + t
        qkv = _affine(h, layer.qkv).reshape(B, t, 3, nh, hs)
        layer.k[:, :, start:end] = qkv[:, :, 1].transpose(0, 2, 1, 3)
        layer.v[:, :, start:end] = qkv[:, :, 2].transpose(0, 2, 1, 3)
        s = qkv[:, :, 0].transpose(0, 2, 1, 3) @ layer.k[:, :, :end].swapaxes(-1, -2)  # (B, nh, t, end), scaled
        if t > 1:  # query i sees keys 0 .. start + i
            s[..., np.triu(np.ones((t, end), dtype=bool), k=start + 1)] = -np.inf
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        y = s @ layer.v[:, :, :end]  # (B, nh, t, hs), softmax's division after the product (fewer numbers)
        y /= np.add.reduce(s, axis=-1, keepdims=True)
        x += _affine(y.transpose(0, 2, 1, 3).reshape(B * t, self.n_embd), layer.proj)

