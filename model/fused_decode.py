"""The fused decoder: GPT-2's whole decoding step as one compiled call (numba) per token.

The NumPy decoder (`model.cpu_decode`) spends most of a batch-1 step in ~170 NumPy calls of
1-3 µs each around 16 matrix-vector products; here embedding, every layer (normalize, q/k/v,
the key-value cache, attention, projections, GELU, residuals), the final normalize and the tied
head are loops compiled by numba (LLVM) into one function, so a token costs one call and the
weight reads (12.6 MB in float32 for the recipe's 4 x 256) are most of its time.

It is `CpuDecoder` with its folded weights (`cpu_decode._fold_into`) stored (out, in), and the
same key-value cache: a step of more than `FUSED_MAX_ROWS` rows (a long prompt, a rebuilt
window) is the NumPy step, whose BLAS products win there. The arithmetic is the same, in
another order:

- every product is a dot product over contiguous memory, which LLVM vectorizes once told it may
  reassociate sums (`fastmath` "reassoc" and "contract" (FMA) only: no assumption about NaN or
  inf, no approximate functions); rows four at a time, so a weight read once serves four rows of
  a batch or prompt;
- float32 GELU's tanh is the odd rational 13/6 function that Eigen, XLA and ONNX Runtime's MLAS
  use, and softmax's exp a Cody-Waite reduction and Cephes' expf polynomial with 2^n written
  into the exponent bits: both vectorize, where libm's are a call per number (tanh cost ~60 µs a
  token). float64 keeps libm's tanh and exp.

Results differ from the torch path by rounding only: ~5e-7 of the logits' scale in float32
(float32 GELU within 3.3e-7 of |u|, NumPy's with libm's tanh 2.2e-7), ~1e-15 in float64, where
the pinned cases of tests/test_generation_pins.py give the same ids through every engine
(tests/test_fused_decode.py).

Compiled code is cached on disk (`cache=True`: in `__pycache__` next to this file, or numba's
user cache directory where that is read-only): a fresh install compiles on its first call,
later processes load the machine code (docs/sampling.md has both times).
"""
from __future__ import annotations

import math

import llvmlite.ir as ir
import numpy as np
import torch
from numba import njit, types
from numba.extending import intrinsic
from torch import Tensor

from model.cpu_decode import _PRODUCTS, CpuDecoder

_FM = {"contract", "reassoc"}  # FMA and reassociated sums; no assumption about NaN or inf
# error_model "numpy": a float division by zero gives inf as in NumPy, not a check per division
# (which kept LLVM from vectorizing any loop with one)
_jit = njit(cache=True, fastmath=_FM, error_model="numpy", nogil=True, boundscheck=False)

FUSED_MAX_ROWS = 16  # rows (batch x new ids) up to which a step is the compiled one (docs/sampling.md)

# The kernel's scalars live in one array of the model's dtype, read by these indices: numba would
# carry float32 arithmetic with a Python float literal out in float64.
_ZERO, _ONE, _HALF, _EPS_C, _INV_C, _GELU_A, _GELU_B, _TANH_CLAMP, _EXP_FLOOR, _LOG2E, _LN2_HI, _LN2_LO = range(12)
_TANH_P = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
           -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)  # odd numerator: x^1 .. x^13
_TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)  # x^0 .. x^6
_EXP_C = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
_P0 = _LN2_LO + 1  # where the coefficients start
_Q0 = _P0 + len(_TANH_P)
_E0 = _Q0 + len(_TANH_Q)


def _constants(dtype, eps_c: float, n_embd: int) -> np.ndarray:
    """The kernel's scalars in the model's dtype (the _ZERO .. indices, then the coefficients)."""
    gelu_a = math.sqrt(2.0 / math.pi)
    named = [0.0, 1.0, 0.5, eps_c, 1.0 / n_embd, gelu_a, gelu_a * 0.044715, 7.90531110763549805, -87.0,
             1.4426950408889634, 0.693359375, -2.12194440e-4]
    return np.array([*named, *_TANH_P, *_TANH_Q, *_EXP_C], dtype)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of the integer `bits` (a plain LLVM
    bitcast, so a loop that uses it still vectorizes)."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)), ir.FloatType())

    return types.float32(bits), codegen


@_jit
def _normalize(x, h, k):
    """h[r] = (x[r] - mean) / sqrt(sum((x[r] - mean)^2) + C eps) for rows r of x (R, C)."""
    R, C = x.shape
    inv_c = k[_INV_C]
    for r in range(R):
        s = k[_ZERO]
        for i in range(C):
            s += x[r, i]
        mean = s * inv_c
        ss = k[_ZERO]
        for i in range(C):
            d = x[r, i] - mean
            ss += d * d
        den = math.sqrt(ss + k[_EPS_C])
        for i in range(C):
            h[r, i] = (x[r, i] - mean) / den


@_jit
def _tile4(w, h, r, j, k):
    """h[r .. r+3] . w[j]: the weight row read once for four rows (more rows or outputs at a time
    ran slower below 16 rows)."""
    a0 = a1 = a2 = a3 = k[_ZERO]
    for i in range(h.shape[1]):
        u = w[j, i]
        a0 += u * h[r, i]
        a1 += u * h[r + 1, i]
        a2 += u * h[r + 2, i]
        a3 += u * h[r + 3, i]
    return a0, a1, a2, a3


@_jit
def _dot(w, h, r, j, k):
    """h[r] . w[j] (for a single row, one output at a time streamed the weights fastest)."""
    a = k[_ZERO]
    for i in range(h.shape[1]):
        a += w[j, i] * h[r, i]
    return a


@_jit
def _put(y, r, j, value, add):
    y[r, j] = y[r, j] + value if add else value


@_jit
def _product(w, b, h, y, add, k):
    """y[r] = h[r] @ w.T + b (add: y[r] += that) for rows r: w (out, in), b (out,), h (R, in).
    Rows four at a time, those left over (all of them at batch 1) one at a time."""
    R = h.shape[0]
    R4 = R - R % 4
    for j in range(w.shape[0]):
        for r in range(0, R4, 4):
            a = _tile4(w, h, r, j, k)
            for m in range(4):
                _put(y, r + m, j, a[m] + b[j], add)
        for r in range(R4, R):
            _put(y, r, j, _dot(w, h, r, j, k) + b[j], add)


@_jit
def _gelu_2x(u, precise, k):
    """2 x GELU(tanh) in place: u (1 + tanh(a u + b u^3)); the 1/2 is in the next product."""
    R, n = u.shape
    one, ga, gb = k[_ONE], k[_GELU_A], k[_GELU_B]
    if precise:
        for r in range(R):
            for i in range(n):
                v = u[r, i]
                u[r, i] = v * (one + math.tanh(v * (ga + gb * v * v)))
        return
    c = k[_TANH_CLAMP]
    p0, p1, p2, p3, p4, p5, p6 = k[_P0:_Q0]
    q0, q1, q2, q3 = k[_Q0:_E0]
    for r in range(R):
        for i in range(n):  # tanh as an odd 13/6 rational function of x, clamped where tanh is +-1
            v = u[r, i]
            x = min(max(v * (ga + gb * v * v), -c), c)
            x2 = x * x
            p = ((((((p6 * x2 + p5) * x2 + p4) * x2 + p3) * x2 + p2) * x2 + p1) * x2 + p0) * x
            q = ((q3 * x2 + q2) * x2 + q1) * x2 + q0
            u[r, i] = v * (one + p / q)


@_jit
def _cache_kv(qkv, kc, vc, t, start, nh, hs):
    """Write the keys and values of the R = B t rows (row r: batch r // t, position start + r % t)."""
    C = nh * hs
    for r in range(qkv.shape[0]):
        b, p = r // t, start + r % t
        for hd in range(nh):
            for d in range(hs):
                kc[b, hd, p, d] = qkv[r, C + hd * hs + d]
                vc[b, hd, p, d] = qkv[r, 2 * C + hd * hs + d]


@_jit
def _attend(qkv, kc, vc, att, t, start, nh, hs, scores, precise, k):
    """att[r] = softmax(q k^T) v per head over positions 0 .. p of row r's batch (causal: keys up
    to its own position; the query is pre-scaled by 1/sqrt(hs))."""
    zero = k[_ZERO]
    for r in range(qkv.shape[0]):
        b, n = r // t, start + r % t + 1
        for hd in range(nh):
            q0 = hd * hs
            for s in range(n):
                a = zero
                for d in range(hs):
                    a += qkv[r, q0 + d] * kc[b, hd, s, d]
                scores[s] = a
            total = _softmax_numerators(scores, n, precise, k)
            for d in range(hs):
                att[r, q0 + d] = zero
            for s in range(n):
                e = scores[s]
                for d in range(hs):
                    att[r, q0 + d] += e * vc[b, hd, s, d]
            for d in range(hs):  # softmax's division after the product (fewer numbers)
                att[r, q0 + d] /= total


@_jit
def _softmax_numerators(scores, n, precise, k):
    """scores[:n] = exp(scores[:n] - their max), in place; returns their sum. float32: exp as
    Cody-Waite reduction to [-ln2/2, ln2/2], a degree-7 polynomial (Cephes' expf) and 2^n put in
    the exponent bits, vectorizable and within 1 ulp (libm's expf is a call per number)."""
    top = scores[0]
    for s in range(1, n):
        top = max(top, scores[s])
    total = k[_ZERO]
    if precise:
        for s in range(n):
            scores[s] = math.exp(scores[s] - top)
            total += scores[s]
        return total
    floor, log2e, hi, lo, half, one = k[_EXP_FLOOR], k[_LOG2E], k[_LN2_HI], k[_LN2_LO], k[_HALF], k[_ONE]
    c0, c1, c2, c3, c4, c5 = k[_E0:_E0 + 6]
    for s in range(n):
        x = max(scores[s] - top, floor)  # below -87 exp is under float32's normal range: ~1e-38
        m = np.floor(x * log2e + half)
        f = x - m * hi - m * lo
        p = (((((c0 * f + c1) * f + c2) * f + c3) * f + c4) * f + c5) * (f * f) + f + one
        scores[s] = p * _float32_from_bits((np.int32(m) + 127) << 23)
        total += scores[s]
    return total


@_jit
def _embed(ids, wte, wpe, x, t, start):
    """x[r] = wte[id] + wpe[position] for the R = B t rows; False if an id is outside wte."""
    for r in range(x.shape[0]):
        tok = ids[r // t, r % t]
        if tok < 0 or tok >= wte.shape[0]:
            return False
        for i in range(x.shape[1]):
            x[r, i] = wte[tok, i] + wpe[start + r % t, i]
    return True


@_jit
def _forward(ids, start, wte, wpe, w, kc, vc, head_w, head_b, logits, nh, precise, k):
    """The step: logits (B, V) of the last of the ids (B, t) at positions start .. start + t - 1,
    after writing all their keys and values into kc, vc (L, B, nh, positions, hs). `w` holds the
    layers' weights stacked (see `FusedDecoder`). False if an id lies outside the embedding."""
    B, t = ids.shape
    R, C = B * t, wte.shape[1]
    hs = C // nh
    wqkv, bqkv, wproj, bproj, wfc, bfc, wout, bout = w
    x = np.empty((R, C), wte.dtype)  # the residual stream, one row per (batch, position)
    h = np.empty((R, C), wte.dtype)
    qkv = np.empty((R, 3 * C), wte.dtype)
    u = np.empty((R, wfc.shape[1]), wte.dtype)
    scores = np.empty(kc.shape[3], wte.dtype)
    if not _embed(ids, wte, wpe, x, t, start):
        return False
    for layer in range(wqkv.shape[0]):
        _normalize(x, h, k)
        _product(wqkv[layer], bqkv[layer], h, qkv, False, k)
        _cache_kv(qkv, kc[layer], vc[layer], t, start, nh, hs)
        _attend(qkv, kc[layer], vc[layer], h, t, start, nh, hs, scores, precise, k)  # h: attention's output
        _product(wproj[layer], bproj[layer], h, x, True, k)
        _normalize(x, h, k)
        _product(wfc[layer], bfc[layer], h, u, False, k)
        _gelu_2x(u, precise, k)
        _product(wout[layer], bout[layer], u, x, True, k)
    last = np.empty((B, C), wte.dtype)
    for b in range(B):
        last[b] = x[b * t + t - 1]
    _normalize(last, h[:B], k)
    _product(head_w, head_b, h[:B], logits, False, k)
    return True


class FusedDecoder(CpuDecoder):
    """Decoding steps of one `GPT` for `batch` rows: `step(ids (B, t), start)` -> logits (B, V),
    the contract of `CpuDecoder.step`, over the same folded weights stored (out, in) and the same
    key-value cache. A step of at most `FUSED_MAX_ROWS` rows (B t) is one call of the compiled
    `_forward`; a larger one (a long prompt, a rebuilt window, a big batch) is the NumPy step,
    whose BLAS products are faster there."""

    def __init__(self, gpt, batch: int):
        super().__init__(gpt, batch, transposed=True)
        self.w = tuple(a for n in _PRODUCTS for a in (self.weights[n], self.biases[n]))
        self.head_b = self.head[1]
        self.consts = _constants(self.wte.dtype, self.eps_c, self.n_embd)
        self.precise = self.wte.dtype != np.float32

    def step(self, idx: Tensor, start: int) -> Tensor:
        B, t = idx.shape
        if B * t > FUSED_MAX_ROWS:
            return super().step(idx, start)
        if B != self.batch:
            raise ValueError(f"this decoder holds caches for {self.batch} rows, got ids for {B}")
        if start < 0 or start + t > self.block_size:
            raise ValueError(f"sequence of {start + t} positions exceeds block_size {self.block_size}; crop the input")
        ids = np.ascontiguousarray(idx.numpy(), dtype=np.int64)  # one compiled signature for any ids
        logits = np.empty((B, self.head_w.shape[0]), self.wte.dtype)
        if not _forward(ids, start, self.wte, self.wpe, self.w, self.k, self.v, self.head_w, self.head_b, logits,
                        self.n_head, self.precise, self.consts):
            raise IndexError(f"token ids must lie in [0, {self.wte.shape[0]}), got {int(idx.min())}..{int(idx.max())}")
        return torch.from_numpy(logits)
