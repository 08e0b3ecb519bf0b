"""`Linear`: nn.Linear whose fp32 CPU matmuls run on oneDNN instead of the BLAS behind `torch.mm`.

PyTorch's CPU `addmm`/`mm` call MKL's sgemm. MKL picks its AVX-512 kernels on Intel CPUs only;
on others (AMD EPYC here) it runs AVX2 code at about half of what the cores can do. oneDNN,
which PyTorch's x86 wheels also carry, chooses its kernels by instruction set. On this project's
2-core AMD machine a (1024 x 256) @ (256 x 1024) product takes 2.3 ms through `torch.mm` and
1.2 ms through oneDNN (`python benchmarks/bench_gpt.py` prints both matmuls side by side).

The math is the same fp32 product with fp32 accumulation (results differ from MKL's only in
rounding order, ~1e-6 relative). The oneDNN path is taken only where it is known to be right
and faster: CPU, fp32 input and weight, no autocast, not under torch.compile (Inductor chooses
its own kernels), at least `MIN_ROWS` rows (a single row is a matrix-vector product, where MKL
is faster), and an installed PyTorch whose oneDNN linear passed a check against `F.linear` on
first use. Everywhere else, and with `onednn(False)`, it is `F.linear`.

The backward pass is written here (input gradient dY @ W, weight gradient dY^T @ X, bias
gradient the column sums), each a oneDNN product too.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

MIN_ROWS = 2  # one row is a matrix-vector product, where MKL wins (batch-1 decoding)

_switch = {"on": True}
_probe: dict[str, bool] = {}


def _dense(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (N, in) @ weight (out, in)^T + bias through oneDNN; any strides, dense output (N, out)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def onednn_available() -> bool:
    """Whether this PyTorch has a oneDNN linear that matches F.linear (checked once per process)."""
    if "ok" not in _probe:
        ok = False
        try:
            if torch.backends.mkldnn.is_available():
                g = torch.Generator().manual_seed(0)
                x, w, b = (torch.randn(*s, generator=g) for s in ((8, 48), (40, 48), (40,)))
                y = _dense(x, w, b)  # (8, 40), and the two transposed products of the backward pass
                ok = (torch.allclose(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
                      and torch.allclose(_dense(y, w.t(), None), y @ w, rtol=1e-5, atol=1e-5)
                      and torch.allclose(_dense(y.t(), x.t(), None), y.t() @ x, rtol=1e-5, atol=1e-5))
                if not ok:
                    warnings.warn("oneDNN's linear disagrees with F.linear in this PyTorch; "
                                  "model.linear falls back to F.linear (slower on CPU)", stacklevel=2)
        except (AttributeError, RuntimeError, NotImplementedError) as e:
            warnings.warn(f"oneDNN linear unavailable ({type(e).__name__}: {str(e)[:120]}); "
                          "model.linear falls back to F.linear (slower on CPU)", stacklevel=2)
            ok = False
        _probe["ok"] = ok
    return _probe["ok"]


@contextlib.contextmanager
def onednn(enabled: bool) -> Iterator[None]:
    """Turn the oneDNN path on or off inside a block (benchmarks compare both; tests check both)."""
    before = _switch["on"]
    _switch["on"] = enabled
    try:
        yield
    finally:
        _switch["on"] = before


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # PyTorch < 2.4 spells it differently
        return torch.is_autocast_cpu_enabled()


def uses_onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether `linear(x, weight, ...)` takes the oneDNN path."""
    return (
        _switch["on"]
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.numel() >= MIN_ROWS * x.shape[-1] > 0
        and not torch.compiler.is_compiling()
        and not _autocast_on()
        and onednn_available()
    )


class _OneDnnLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # x (N, in)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _dense(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # grad (N, out)
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _dense(grad, weight.t(), None)  # (N, out) @ (out, in)
        if ctx.needs_input_grad[1]:
            out_f, in_f = weight.shape
            if out_f >= in_f:
                # (in, N) @ (N, out), transposed back: the faster order when out >= in
                grad_w = _dense(x.t(), grad.t(), None).t().contiguous()
            else:
                grad_w = _dense(grad.t(), x.t(), None)  # (out, N) @ (N, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(x, weight, bias)`, through oneDNN where `uses_onednn` says so."""
    if not uses_onednn(x, weight):
        return F.linear(x, weight, bias)
    x2 = x.reshape(-1, x.shape[-1])
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        y = _OneDnnLinear.apply(x2, weight, bias)
    else:
        y = _dense(x2, weight, bias)
    return y.view(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """nn.Linear (same parameters, names and init) whose forward is `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
