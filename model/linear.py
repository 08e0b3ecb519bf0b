"""`Linear`: nn.Linear whose fp32 CPU matmuls run on oneDNN instead of the BLAS behind `torch.mm`.

PyTorch's CPU `addmm`/`mm` call MKL's sgemm. On the AMD EPYC this project is built on, that
reaches about half of what the cores can do (MKL is known to choose its AVX-512 code by CPU
vendor), while oneDNN, which PyTorch's x86 wheels also carry, runs its AVX-512 kernels
(`ONEDNN_VERBOSE=1` shows `brg_matmul:avx512_core`). `python benchmarks/bench_gpt.py` prints
both side by side: on 2 cores, a (1024 x 256) @ (256 x 1024) product runs at ~210 GFLOP/s
through `torch.mm` and ~430 through oneDNN. On a CPU where MKL already runs AVX-512, expect
the two to be closer.

The math is the same fp32 product with fp32 accumulation (results differ from MKL's only in
rounding order, ~1e-6 relative). The oneDNN path is taken only where it is known to be right
and faster: CPU, fp32 input and weight, no autocast, not under torch.compile (Inductor chooses
its own kernels), at least `min_rows` rows (a single row is a matrix-vector product, where MKL
is faster while the weights stay in cache: see `min_rows_for`), and an installed PyTorch whose
oneDNN linear passed a check against `F.linear` on first use. Everywhere else, and with
`onednn(False)`, it is `F.linear`.

The backward pass is written here (input gradient dY @ W, weight gradient dY^T @ X, bias
gradient the column sums), each a oneDNN product too.
"""
from __future__ import annotations

import contextlib
import platform
import warnings
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

MIN_ROWS = 2  # one row is a matrix-vector product: MKL wins while the weights stay in cache

_switch = {"on": True}
_probe: dict[str, bool] = {}


def cache_bytes() -> int:
    """The CPU's last-level cache in bytes (Linux sysfs); 32 MiB where it cannot be read."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    for index in (3, 2):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size") as f:
                text = f.read().strip()
            return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
        except (OSError, ValueError):
            continue
    return 32 << 20


def min_rows_for(weight_bytes: int) -> int:
    """Fewest rows for the oneDNN path in a model whose matmul weights take `weight_bytes`.

    One-row products (batch-1 decoding) read every weight once per token. While the weights fit
    in half the last-level cache, MKL's matrix-vector kernel is faster; beyond it each step
    streams them from memory, where oneDNN's is about twice as fast. `python
    benchmarks/profile_gpt.py` times both: 4 x 256 wide (15 MB), 16.5 vs 24.8 us a product;
    6 x 512 wide (76 MB), 165 vs 82 us.
    """
    return 1 if weight_bytes > cache_bytes() // 2 else MIN_ROWS


def _dense(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (N, in) @ weight (out, in)^T + bias through oneDNN; any strides, dense output (N, out)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def onednn_available() -> bool:
    """Whether this PyTorch has a oneDNN linear that matches F.linear (checked once per process)."""
    if "ok" not in _probe:
        ok = False
        try:
            # x86 only: elsewhere (e.g. ARM) the BLAS behind torch.mm has not been measured against it
            if torch.backends.mkldnn.is_available() and platform.machine().lower() in ("x86_64", "amd64"):
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


def uses_onednn(x: Tensor, weight: Tensor, min_rows: int = MIN_ROWS) -> bool:
    """Whether `linear(x, weight, ..., min_rows)` takes the oneDNN path."""
    return (
        _switch["on"]
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.numel() >= min_rows * x.shape[-1] > 0
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled("cpu")
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


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, min_rows: int = MIN_ROWS) -> Tensor:
    """`F.linear(x, weight, bias)`, through oneDNN where `uses_onednn` says so."""
    if not uses_onednn(x, weight, min_rows):
        return F.linear(x, weight, bias)
    x2 = x.reshape(-1, x.shape[-1])
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        y = _OneDnnLinear.apply(x2, weight, bias)
    else:
        y = _dense(x2, weight, bias)
    return y.view(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """nn.Linear (same parameters, names and init) whose forward is `linear`.

    `min_rows` (default MIN_ROWS) is set per model by its owner, see `min_rows_for`.
    """

    min_rows: int = MIN_ROWS

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self.min_rows)
