"""model.linear: the oneDNN path gives F.linear's values and gradients, and is taken only where meant."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig
from model import linear as L

needs_onednn = pytest.mark.skipif(not L.onednn_available(), reason="this PyTorch has no usable oneDNN linear")


def reference(x, w, b):
    """F.linear and its gradients in float64, for upstream gradient g."""
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = None if b is None else b.detach().double().requires_grad_()
    return x64, w64, b64, F.linear(x64, w64, b64)


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # fp32 products of a few hundred terms: a few ulps of the largest value
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected, rtol=0, atol=2e-6 * scale)


@needs_onednn
@pytest.mark.parametrize("shape,out_f,bias,view", [
    ((6, 300), 80, True, None),          # in > out
    ((2, 9, 96), 384, True, None),       # (B, T, C) input, out > in
    ((40, 128), 128, False, None),       # no bias, square
    ((7, 64), 2048, False, "rows"),      # every other row of a taller tensor (a strided view)
    ((5, 256), 96, True, "last"),        # the last position of (B, T, C), as generation slices it
])
def test_onednn_linear_matches_f_linear_in_values_and_gradients(shape, out_f, bias, view):
    g = torch.Generator().manual_seed(0)
    in_f = shape[-1]
    if view == "rows":
        x = torch.randn(2 * shape[0], in_f, generator=g)[::2]
    elif view == "last":
        x = torch.randn(shape[0], 11, in_f, generator=g)[:, -1]
    else:
        x = torch.randn(*shape, generator=g)
    x.requires_grad_()
    w = (0.1 * torch.randn(out_f, in_f, generator=g)).requires_grad_()
    b = torch.randn(out_f, generator=g).requires_grad_() if bias else None
    assert L.uses_onednn(x, w)

    y = L.linear(x, w, b)
    up = torch.randn(y.shape, generator=g)
    y.backward(up)
    x64, w64, b64, y64 = reference(x, w, b)
    y64.backward(up.double())

    assert y.shape == y64.shape and y.dtype == torch.float32
    close(y, y64)
    close(x.grad, x64.grad)
    close(w.grad, w64.grad)
    if bias:
        close(b.grad, b64.grad)


@needs_onednn
def test_no_grad_calls_skip_autograd_and_give_the_same_values():
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(8, 64, generator=g), torch.randn(32, 64, generator=g), torch.randn(32, generator=g)
    with torch.no_grad():
        y = L.linear(x, w.requires_grad_(), b)
    assert y.grad_fn is None
    close(y, reference(x, w, b)[3].detach())


def test_other_inputs_take_f_linear_exactly():
    g = torch.Generator().manual_seed(2)
    w, b = torch.randn(16, 32, generator=g), torch.randn(16, generator=g)
    one_row = torch.randn(1, 32, generator=g)          # a matrix-vector product: MKL is faster
    doubles = torch.randn(5, 32, generator=g, dtype=torch.float64)
    rows = torch.randn(5, 32, generator=g)
    assert not L.uses_onednn(one_row, w)
    assert not L.uses_onednn(doubles, w.double())
    assert torch.equal(L.linear(one_row, w, b), F.linear(one_row, w, b))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not L.uses_onednn(rows, w)
        y = L.linear(rows, w, b)
        assert y.dtype == torch.bfloat16 and torch.equal(y, F.linear(rows, w, b))
    with L.onednn(False):
        assert not L.uses_onednn(rows, w)
        assert torch.equal(L.linear(rows, w, b), F.linear(rows, w, b))
    assert L.uses_onednn(rows, w) == L.onednn_available()  # the switch is restored on leaving


@needs_onednn
def test_gpt_training_step_agrees_between_onednn_and_f_linear():
    """One forward + backward of a GPT (tied head included) through both kernels."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=96, block_size=32, n_layer=2, n_head=2, n_embd=64))
    x, y = torch.randint(0, 96, (3, 32)), torch.randint(0, 96, (3, 32))
    grads, losses = {}, {}
    for on in (True, False):
        gpt.zero_grad(set_to_none=True)
        with L.onednn(on):
            _, loss = gpt(x, y)
            loss.backward()
        losses[on] = loss.item()
        grads[on] = {n: p.grad.clone() for n, p in gpt.named_parameters()}
    assert abs(losses[True] - losses[False]) < 1e-5
    assert grads[True].keys() == grads[False].keys()
    for name in grads[True]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-4, atol=1e-6, msg=name)


def test_one_row_products_use_onednn_only_when_the_model_outgrows_the_cache(monkeypatch):
    monkeypatch.setattr(L, "cache_bytes", lambda: 4 << 20)  # a 4 MiB last-level cache
    small = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=64))    # ~0.2 MB of weights
    large = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=256))   # ~6.4 MB
    assert {m.min_rows for m in small.modules() if isinstance(m, L.Linear)} == {L.MIN_ROWS}
    assert {m.min_rows for m in large.modules() if isinstance(m, L.Linear)} == {1}
    row = torch.randn(1, 1, 256)
    head = large.lm_head
    assert L.uses_onednn(row, head.weight, head.min_rows) == L.onednn_available()
    assert not L.uses_onednn(row, head.weight, L.MIN_ROWS)
    with torch.no_grad():  # one-row decoding through oneDNN gives F.linear's logits
        torch.testing.assert_close(head(row), F.linear(row, head.weight), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("files,expected", [
    ({3: "1024K\n", 2: "512K\n"}, 1 << 20),   # the last level (index3) when there is one
    ({2: "2M\n"}, 2 << 20),                   # else index2
    ({}, 32 << 20),                           # unreadable sysfs: 32 MiB
])
def test_cache_size_comes_from_sysfs(monkeypatch, files, expected):
    import io

    def fake_open(path, *args, **kwargs):
        index = int(str(path).split("index")[1].split("/")[0])
        if index not in files:
            raise FileNotFoundError(path)
        return io.StringIO(files[index])

    monkeypatch.setattr(L, "open", fake_open, raising=False)
    assert L.cache_bytes() == expected
