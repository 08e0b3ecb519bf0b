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

ENGINES = ("auto", "fused", "numpy", "torch")  # model.generate.generate's engine=
_GELU_C = math.sqrt(2.0 / math.pi)


def usable(gpt, idx: Tensor) -> bool:
    """Whether the NumPy decoder computes what `gpt.decode_step` would for ids `idx`."""
    p = gpt.lm_head.weight
    return (p.device.type == "cpu" and idx.device.type == "cpu" and p.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu") and not torch.is_grad_enabled())


def _np(p: Tensor | None) -> np.ndarray | None:
    """A parameter as a new float64 array (folding is done in float64), or None."""
    return None if p is None else p.detach().numpy().astype(np.float64)


_PRODUCTS = ("qkv", "proj", "fc", "out")  # a block's four products, in the order of a step


def _block_products(block) -> dict:
    """One block's products by name: (weight (out, in), bias or None, the LayerNorm before it or
    None, a scale of its outputs or None, a factor on its inputs), folded by `_fold_into` so a step
    needs few NumPy calls:

    - each LayerNorm's gain and bias are folded into the product after it, and its 1/sqrt(C) too
      (LN(x) @ W + c = (x - mean) / sqrt(sum((x - mean)^2) + C eps) @ (sqrt(C) diag(g) W) + (b W + c));
    - attention's 1/sqrt(head size) is folded into the query's outputs, GELU's 1/2 into the MLP's
      output product.
    """
    a, m = block.attn, block.mlp
    scale = np.ones(3 * a.n_embd)
    scale[:a.n_embd] = 1.0 / math.sqrt(a.head_size)
    return {"qkv": (a.c_attn.weight, a.c_attn.bias, block.ln_1, scale, 1.0),
            "proj": (a.c_proj.weight, a.c_proj.bias, None, None, 1.0),
            "fc": (m.c_fc.weight, m.c_fc.bias, block.ln_2, None, 1.0),
            "out": (m.c_proj.weight, m.c_proj.bias, None, None, 0.5)}


def _fold_into(dest: np.ndarray, weight: Tensor, bias, ln, out_scale, in_factor: float,
               scratch: np.ndarray) -> np.ndarray:
    """Write W' into `dest` (out, in), a view in the model's dtype, and return c' (out,) in float64,
    with (LN(x) @ weight.T + bias) * out_scale == _normalized(x) @ W'.T + c' (without `ln`: x, not
    _normalized(x); the inputs then arrive times 1 / `in_factor`). Folded in float64 in `scratch` (reused: a decoder is built per
    `generate` call, and fresh memory costs a page fault per 4 KiB), rounded once into `dest`: the
    products differ from the torch path's by rounding only."""
    w = scratch[: weight.numel()].reshape(weight.shape)
    np.copyto(w, weight.detach().numpy())
    c = np.zeros(w.shape[0]) if bias is None else _np(bias)
    if ln is not None:
        if ln.bias is not None:
            c += w @ _np(ln.bias)
        w *= math.sqrt(w.shape[1]) * _np(ln.weight)
    if in_factor != 1.0:
        w *= in_factor
    if out_scale is None:
        np.copyto(dest, w, casting="unsafe")
    else:
        np.multiply(w, np.reshape(out_scale, (-1, 1)), out=dest, casting="unsafe")
        c *= out_scale
    return c


def _folded_weights(gpt, dtype, transposed: bool) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """Every block's products stacked by name, (L, in, out), or (L, out, in) if `transposed`; their
    biases (L, out) (zeros where the model has none); the tied head's weight (C, V) or (V, C) and
    bias. The weights share one buffer (large allocations get huge pages)."""
    t, V = gpt.transformer, gpt.config.vocab_size
    blocks = [_block_products(block) for block in t.h]
    shapes = {n: tuple(blocks[0][n][0].shape) for n in _PRODUCTS}  # (out, in)
    L, C = len(blocks), gpt.config.n_embd
    buf = np.empty(sum(L * o * i for o, i in shapes.values()) + V * C, dtype)
    scratch = np.empty(max(max(o * i for o, i in shapes.values()), V * C))
    weights, biases, at = {}, {}, 0
    for n, (o, i) in shapes.items():
        weights[n] = buf[at:at + L * o * i].reshape((L, o, i) if transposed else (L, i, o))
        at += L * o * i
        biases[n] = np.array([_fold_into(weights[n][j] if transposed else weights[n][j].T, *blocks[j][n], scratch)
                              for j in range(L)], dtype)
    head_w = buf[at:].reshape((V, C) if transposed else (C, V))
    head_c = _fold_into(head_w if transposed else head_w.T, t.wte.weight[:V], None, t.ln_f, None, 1.0, scratch)
    return weights, biases, head_w, head_c.astype(dtype)


class _Layer:
    """One block's products (w (in, out), c (out,)) as views of its decoder's stacked arrays, and
    its part of the key-value cache, laid out once: (B, heads, positions, hs)."""

    def __init__(self, dec: CpuDecoder, i: int):
        for name in _PRODUCTS:
            w = dec.weights[name][i]
            setattr(self, name, (w.T if dec.transposed else w, dec.biases[name][i]))
        self.k, self.v = dec.k[i], dec.v[i]


def _normalized(x: np.ndarray, eps_c: float) -> np.ndarray:
    """(x - mean) / sqrt(sum((x - mean)^2) + C eps) over the last axis of x (N, C): a new array
    (LayerNorm without its gain, bias and sqrt(C), which `_fold_into` moved into the next product)."""
    d = x - np.add.reduce(x, axis=-1, keepdims=True) * (1.0 / x.shape[-1])
    ss = np.add.reduce(d * d, axis=-1, keepdims=True)
    ss += eps_c
    np.sqrt(ss, out=ss)
    d /= ss
    return d


def _affine(x: np.ndarray, wc) -> np.ndarray:
    w, c = wc
    y = x @ w
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
    per `generate` call): later changes to the model are not seen. `transposed` stores every
    product's weight as (out, in), the layout of `model.fused_decode`, which steps through this
    class where BLAS is faster (the NumPy products then read the weights transposed).
    """

    def __init__(self, gpt, batch: int, transposed: bool = False):
        c = gpt.config
        t = gpt.transformer
        dtype = t.wte.weight.detach().numpy().dtype
        self.n_head, self.head_size, self.n_embd = c.n_head, c.head_size, c.n_embd
        self.block_size, self.batch, self.transposed = c.block_size, batch, transposed
        self.eps_c = 1e-5 * c.n_embd  # GPT-2's LayerNorm eps, times C (see _normalized)
        self.wte, self.wpe = t.wte.weight.detach().numpy(), t.wpe.weight.detach().numpy()
        self.weights, self.biases, self.head_w, head_c = _folded_weights(gpt, dtype, transposed)
        self.head = (self.head_w.T if transposed else self.head_w, head_c)  # the tied head
        self.k = np.zeros((c.n_layer, batch, c.n_head, c.block_size, c.head_size), dtype)  # (L, B, nh, T, hs)
        self.v = np.zeros_like(self.k)
        self.layers = [_Layer(self, i) for i in range(c.n_layer)]

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

