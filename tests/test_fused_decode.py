"""The fused decoder (model/fused_decode.py) against GPT.decode_step and the other engines: logits
up to rounding at every kind of step (one token, prompts through the compiled step and through
BLAS, a full window, batches), the same ids at float64 through every engine (window slides
included), the engine choice of `model.generate.generate`, and the float32 tanh's error."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model import GPT, GPTConfig
from model import fused_decode as F
from model.cpu_decode import CpuDecoder
from model.fused_decode import FUSED_MAX_ROWS, FusedDecoder
from model.generate import Sampler, generate
from tests.test_cpu_decode import _draw, _gpt, _max_rel

# Tolerances on max |fused - torch| / max |torch| of the logits, weights ~ N(0, 0.4) so that every
# part of the step matters: float32 rounding (~1e-7 a product) grows through the layers to ~5e-7;
# float64 sits at ~1e-15.
TOL = {torch.float32: 5e-6, torch.float64: 1e-13}


def _chunks(block: int) -> list[tuple[int, int]]:
    """(lo, hi) steps: a compiled prompt, one-token steps, a compiled multi-token step after a
    cached prefix, a BLAS prompt, steps to the end of the context, a rebuild at 0 of a full window."""
    small = FUSED_MAX_ROWS // 3  # rows of a compiled prompt at batch 3
    return [(0, small), *((j, j + 1) for j in range(small, 12)), (12, 12 + small), (0, 30),
            *((j, j + 1) for j in range(30, 36)), (36, block - 2), (block - 2, block - 1), (block - 1, block),
            (0, block)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("B", [1, 3])
def test_steps_match_decode_step(dtype, bias, B):
    """Every kind of step, up to the last position of the context, agrees with the torch path up
    to rounding; the compiled step and the BLAS step share one cache (a prompt through BLAS, then
    compiled steps after it)."""
    gpt = _gpt(dtype, bias, block=64)
    ids = torch.randint(0, 50, (B, 64))
    caches, dec = gpt.new_caches(), FusedDecoder(gpt, B)
    worst = 0.0
    with torch.no_grad():
        for lo, hi in _chunks(64):
            a = gpt.decode_step(ids[:, lo:hi], caches, lo)
            b = dec.step(ids[:, lo:hi], lo)
            assert b.shape == (B, 50) and b.dtype == dtype
            worst = max(worst, _max_rel(a, b))
    assert worst < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_512_window_and_an_odd_vocabulary(dtype):
    """The recipe's context: one-token steps up to position 511 attend over the whole window; a
    vocabulary of 51 (odd: the head's last output is a tile of its own)."""
    torch.manual_seed(1)
    gpt = GPT(GPTConfig(vocab_size=51, block_size=512, n_layer=2, n_head=2, n_embd=32, pad_vocab_multiple=64))
    gpt = gpt.eval().to(dtype)
    with torch.no_grad():
        for p in gpt.parameters():
            p.normal_(0, 0.3)
        ids = torch.randint(0, 51, (1, 512))
        caches, dec = gpt.new_caches(), FusedDecoder(gpt, 1)
        a = gpt.decode_step(ids[:, :500], caches, 0)
        b = dec.step(ids[:, :500], 0)
        worst = _max_rel(a, b)
        for j in range(500, 512):
            a, b = gpt.decode_step(ids[:, j:j + 1], caches, j), dec.step(ids[:, j:j + 1], j)
            worst = max(worst, _max_rel(a, b))
    assert b.shape == (1, 51)
    assert worst < TOL[dtype]


def test_compiled_and_blas_steps_are_taken_by_rows(monkeypatch):
    """Up to FUSED_MAX_ROWS rows (batch x new ids) a step is one compiled call, beyond it the BLAS step."""
    gpt = _gpt(block=64)
    calls = []
    real_forward, real_step = F._forward, CpuDecoder.step
    monkeypatch.setattr(F, "_forward", lambda ids, *a: calls.append(("compiled", ids.size)) or real_forward(ids, *a))
    monkeypatch.setattr(CpuDecoder, "step", lambda self, ids, s: calls.append(("blas", ids.numel())) or real_step(self, ids, s))
    dec = FusedDecoder(gpt, 2)
    with torch.no_grad():
        dec.step(torch.zeros(2, FUSED_MAX_ROWS // 2 + 1, dtype=torch.long), 0)
        dec.step(torch.zeros(2, FUSED_MAX_ROWS // 2, dtype=torch.long), 0)
        dec.step(torch.zeros(2, 1, dtype=torch.long), FUSED_MAX_ROWS // 2)
    assert calls == [("blas", FUSED_MAX_ROWS + 2), ("compiled", FUSED_MAX_ROWS), ("compiled", 2)]


@pytest.mark.parametrize("kw", [{}, {"keep": 2, "stride": 10}])
def test_float64_engines_draw_the_same_ids(kw):
    """The same seed gives the same ids through the fused, NumPy and torch engines at float64, past
    the context (the window slides and the cache is rebuilt), with a mask, a bias and EOS."""
    gpt = _gpt(torch.float64)
    fused, numpy_, torch_ = (_draw(gpt, engine, **kw) for engine in ("fused", "numpy", "torch"))
    assert fused.shape[1] > gpt.config.block_size  # the window moved
    assert torch.equal(fused, torch_) and torch.equal(numpy_, torch_)


def test_auto_takes_the_fused_decoder_for_small_batches_and_numpy_for_large(monkeypatch):
    import model.generate as G

    gpt = _gpt()
    seen = []
    real = G._loop
    monkeypatch.setattr(G, "_loop", lambda *a: seen.append(type(a[9])) or real(*a))
    generate(gpt, torch.zeros(1, 1, dtype=torch.long), 2)
    generate(gpt, torch.zeros(FUSED_MAX_ROWS, 1, dtype=torch.long), 2)
    generate(gpt, torch.zeros(FUSED_MAX_ROWS + 1, 1, dtype=torch.long), 2)
    generate(gpt, torch.zeros(FUSED_MAX_ROWS + 1, 1, dtype=torch.long), 2, engine="fused")
    assert seen == [FusedDecoder, FusedDecoder, CpuDecoder, FusedDecoder]
    with pytest.raises(ValueError, match="engine='fused' needs a CPU model in float32 or float64"):
        generate(_gpt().to(torch.bfloat16), torch.zeros(1, 1, dtype=torch.long), 2, engine="fused")


def test_decoder_refuses_ids_outside_the_vocabulary():
    # positions past the context and other batches: tests/test_cpu_decode.py, for both decoders
    gpt = _gpt(block=16)
    dec = FusedDecoder(gpt, 2)
    with pytest.raises(IndexError, match=r"token ids must lie in \[0, 64\), got 0..64"):
        dec.step(torch.tensor([[0], [64]]), 0)  # 64: past the padded embedding
    with pytest.raises(IndexError, match=r"got -1..0"):
        dec.step(torch.tensor([[-1], [0]]), 0)


def test_float32_gelu_with_the_rational_tanh_is_as_close_as_libm_tanh_in_float32():
    """2 x GELU in float32 through the rational tanh, against libm's tanh in float64, over the range
    GELU sees and past the clamp: within 4e-7 of |u| (3.3e-7 measured), where the NumPy decoder's
    float32 with libm's tanh is within 2.2e-7 (for negative u, 1 + tanh cancels in both)."""
    from model.cpu_decode import _gelu_tanh_2x

    u = np.concatenate([np.linspace(-12, 12, 200_001), [0.0, 1e-30, -1e-30, 3e-4, 40.0, -40.0]]).astype(np.float32)
    exact = u.astype(np.float64) * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u.astype(np.float64) ** 3)))
    got = u[None].copy()
    F._gelu_2x(got, False, F._constants(np.float32, 1e-5, 32))
    scale = np.abs(u.astype(np.float64)) + 1e-38
    assert (np.abs(got[0] - exact) / scale).max() < 4e-7
    assert (np.abs(_gelu_tanh_2x(u.copy()) - exact) / scale).max() < 4e-7  # the reference's own rounding


@pytest.fixture(scope="module")
def pinned_gpt() -> GPT:
    """The model of tests/test_generation_pins.py (float64, context 64, weights from numpy's seed 1234)."""
    from tests.test_generation_pins import pinned_model

    return pinned_model()


@pytest.mark.parametrize("engine", ["fused", "numpy", "torch"])
def test_pinned_pieces_through_every_engine(pinned_gpt, engine):
    """GPT.generate's two pinned cases (tests/test_generation_pins.py: plain past the context, and
    every knob with keep and stride) give the pinned ids through each engine named."""
    from tests.test_generation_pins import PINS, TOK, digest, prompt_ids

    plain = generate(pinned_gpt, torch.full((3, 1), TOK.bos_id), 150, Sampler(temperature=1.0),
                     generator=torch.Generator().manual_seed(0), engine=engine)
    assert digest(plain.tolist()) == PINS["plain"]
    bias = torch.zeros(TOK.vocab_size)
    bias[TOK.pitch_id_range[0]:TOK.pitch_id_range[0] + 12] = -2.0
    bias[TOK.eos_id] = -6.0
    knobs = generate(pinned_gpt, torch.tensor([prompt_ids()] * 2), 120, Sampler(0.8, 40, 0.9, 0.02, 1.3, 16),
                     eos_id=TOK.eos_id, generator=torch.Generator().manual_seed(7), stride=16, keep=8,
                     logit_bias=bias, engine=engine)
    assert digest(knobs.tolist()) == PINS["knobs"]
