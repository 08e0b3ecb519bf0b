"""The NumPy CPU decoder (model/cpu_decode.py) against GPT.decode_step, the engine choice of
`model.generate.generate`, and the decoding thread rule (model/threads.py)."""
from __future__ import annotations

import pytest
import torch

from model import GPT, GPTConfig
from model import threads as T
from model.cpu_decode import CpuDecoder, usable
from model.generate import Sampler, generate, only_eos_after


def _gpt(dtype=torch.float32, bias=True, pad=64, block=48, seed=0) -> GPT:
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=50, block_size=block, n_layer=2, n_head=4, n_embd=32, bias=bias,
                        pad_vocab_multiple=pad)).eval().to(dtype)
    with torch.no_grad():  # weights far from their init, so every part of the step matters
        for p in gpt.parameters():
            p.normal_(0, 0.4)
    return gpt


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 5e-6), (torch.float64, 1e-13)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("B", [1, 3])
def test_steps_match_decode_step(dtype, tol, bias, B):
    """Prefill, one-token steps, a multi-token step after a cached prefix and a rebuild at 0: the
    logits agree with the torch path up to rounding."""
    gpt = _gpt(dtype, bias)
    ids = torch.randint(0, 50, (B, 48))
    caches, dec = gpt.new_caches(), CpuDecoder(gpt, B)
    worst = 0.0
    with torch.no_grad():
        for chunk in [(0, 7), *((j, j + 1) for j in range(7, 30)), (30, 36), (0, 20), (20, 21)]:
            lo, hi = chunk
            a = gpt.decode_step(ids[:, lo:hi], caches, lo)
            b = dec.step(ids[:, lo:hi], lo)
            assert b.shape == (B, 50) and b.dtype == dtype
            worst = max(worst, _max_rel(a, b))
    assert worst < tol


def test_each_decoder_reads_the_weights_as_they_are_when_built():
    """generate builds a decoder per call, so a model trained in between is decoded as trained."""
    gpt = _gpt()
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        before = CpuDecoder(gpt, 1).step(ids, 0)
        gpt.transformer.h[1].mlp.c_fc.weight.mul_(2.0)  # an optimizer step does the same in place
        gpt.transformer.ln_f.bias.add_(0.5)
        after = CpuDecoder(gpt, 1).step(ids, 0)
        assert _max_rel(gpt.decode_step(ids, gpt.new_caches(), 0), after) < 5e-6
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("kind", ["numpy", "fused"])
def test_decoder_refuses_positions_past_the_context_and_other_batches(kind):
    from model.fused_decode import FusedDecoder

    gpt = _gpt(block=16)
    dec = (CpuDecoder if kind == "numpy" else FusedDecoder)(gpt, 2)
    with pytest.raises(ValueError, match="exceeds block_size 16"):
        dec.step(torch.zeros(2, 3, dtype=torch.long), 14)
    with pytest.raises(ValueError, match="caches for 2 rows"):
        dec.step(torch.zeros(1, 1, dtype=torch.long), 0)


def _draw(gpt, engine, **kw):
    g = torch.Generator().manual_seed(7)
    idx = torch.tensor([[1, 5, 9]] * 3)
    bias = torch.zeros(50, dtype=gpt.lm_head.weight.dtype)
    bias[2] = -30.0  # EOS only where the mask forces it: after a row's fourth id 4
    return generate(gpt, idx, 150, Sampler(temperature=1.0, top_p=0.95), eos_id=2, generator=g, engine=engine,
                    allowed=only_eos_after([4], 3, 2, 50), logit_bias=bias, **kw)


@pytest.mark.parametrize("kw", [{}, {"keep": 2, "stride": 10}])
def test_float64_engines_draw_the_same_ids(kw):
    """At float64 the rounding difference is ~1e-15: the same seed gives the same ids through both
    engines, past the context (the window slides and the cache is rebuilt), with a mask and EOS."""
    gpt = _gpt(torch.float64)
    a, b = _draw(gpt, "numpy", **kw), _draw(gpt, "torch", **kw)
    assert a.shape[1] > gpt.config.block_size  # the window moved
    assert torch.equal(a, b)


def test_numpy_engine_steps_through_the_numpy_decoder_and_auto_takes_torch_where_it_does_not_apply(monkeypatch):
    gpt = _gpt()
    idx = torch.tensor([[1]])
    calls = []
    real_step = CpuDecoder.step
    monkeypatch.setattr(CpuDecoder, "step", lambda self, *a: calls.append(type(self)) or real_step(self, *a))
    generate(gpt, idx, 5, engine="numpy")
    assert calls == [CpuDecoder] * 5
    calls.clear()
    generate(gpt, idx, 5, engine="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not usable(gpt, idx)
        generate(gpt, idx, 5)  # auto under autocast: the torch path
    assert calls == []
    bf16 = _gpt().to(torch.bfloat16)
    assert not usable(bf16, idx)
    with pytest.raises(ValueError, match="engine='numpy' needs a CPU model in float32 or float64"):
        generate(bf16, idx, 5, engine="numpy")
    with pytest.raises(ValueError, match="engine='fast': must be one of auto, fused, numpy, torch"):
        generate(gpt, idx, 5, engine="fast")


def test_thread_rule_and_restore():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    assert T.decode_threads(1) == 1 and T.decode_threads(48) == 1  # the NumPy decoder
    assert T.decode_threads(T.SINGLE_THREAD_MAX_BATCH, numpy=False) == 1
    assert T.decode_threads(48, numpy=False) == torch.get_num_threads()
    torch_before, blas_before = torch.get_num_threads(), blas_threads()
    seen = []
    gpt = _gpt()
    real_step = CpuDecoder.step

    def spy(self, *a):
        seen.append((torch.get_num_threads(), blas_threads()))
        return real_step(self, *a)

    CpuDecoder.step, restore = spy, CpuDecoder.step
    try:
        generate(gpt, torch.tensor([[1]]), 2, engine="numpy")
    finally:
        CpuDecoder.step = restore
    assert {s[0] for s in seen} == {1} and all(set(s[1]) <= {1} for s in seen)
    assert torch.get_num_threads() == torch_before and blas_threads() == blas_before
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=f"threads={bad!r}: must be an integer >= 1"):
            generate(gpt, torch.tensor([[1]]), 2, threads=bad)


def test_api_load_checks_threads(tmp_path):
    from pianolm.api import check_threads
    from pianolm.errors import InputError

    assert check_threads(3) == 3
    with pytest.raises(InputError, match="threads=0: must be an integer >= 1"):
        check_threads(0)
