"""Pinned pieces: the ids every generation path gives today for fixed weights, seeds and settings.

Recorded from the code of 2026-12-06, before generation moves into one module (issue 27) and
gets a faster decode path (issue 28): both must leave these ids unchanged. The weights come from
numpy's bit-reproducible generator and the model runs in float64, so the same ids come back on
any CPU (a float32 model could round differently on another instruction set). Each case is a
sha256 over the ids, with the first ids spelled out so a failure shows where the paths part.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import remi
from experiments.evaluate import generate as evaluate_generate
from model import GPT, GPTConfig
from model.callbacks import SampleCallback
from pianolm.generate import Sampling, sample_ids

TOK = remi.Tokenizer()


@pytest.fixture(scope="module")
def gpt() -> GPT:
    return pinned_model()


def pinned_model() -> GPT:
    """A 2-layer GPT in float64, context 64 (so 150 new tokens slide the window), weights from numpy."""
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
    rng = np.random.default_rng(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".weight") and p.dim() == 1:   # layer norms: around 1
                values = 1.0 + 0.1 * rng.standard_normal(p.shape)
            else:
                values = 0.3 * rng.standard_normal(p.shape)
            p.copy_(torch.from_numpy(values))
    return model.double().eval()


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def digest(rows) -> str:
    return hashlib.sha256(repr([[int(i) for i in r] for r in rows]).encode()).hexdigest()[:16]


def prompt_ids() -> list[int]:
    """BOS and the first bar of a small piece: a C major scale in quarters, then a chord."""
    notes = [(i * 480, 480, p, 70) for i, p in enumerate((60, 62, 64, 65, 67, 69, 71, 72))]
    notes += [(8 * 480, 960, p, 80) for p in (48, 55, 64)]
    ids = TOK.encode(remi.Score.from_notes(notes))
    return ids[:-1]   # without EOS: a prompt to continue


def test_gpt_generate_plain_sliding_past_the_context(gpt):
    g = torch.Generator().manual_seed(0)
    out = gpt.generate(torch.full((3, 1), TOK.bos_id), 150, temperature=1.0, generator=g)
    assert out.shape == (3, 151)
    assert out[0, :6].tolist() == PINS["plain_head"]
    assert digest(out.tolist()) == PINS["plain"]


def test_gpt_generate_with_every_knob(gpt):
    prompt = prompt_ids()
    bias = torch.zeros(TOK.vocab_size)
    bias[TOK.pitch_id_range[0]:TOK.pitch_id_range[0] + 12] = -2.0
    bias[TOK.eos_id] = -6.0   # long rows: the window slides
    g = torch.Generator().manual_seed(7)
    out = gpt.generate(torch.tensor([prompt] * 2), 120, temperature=0.8, top_k=40, top_p=0.9, min_p=0.02,
                       repetition_penalty=1.3, repetition_window=16, logit_bias=bias, eos_id=TOK.eos_id,
                       keep=8, stride=16, generator=g)
    assert digest(out.tolist()) == PINS["knobs"]


def no_eos() -> torch.Tensor:
    bias = torch.zeros(TOK.vocab_size)
    bias[TOK.eos_id] = -6.0   # an untrained model says EOS early: keep the rows going
    return bias


def test_sample_ids_with_the_grammar_and_a_bar_limit(gpt):
    s = Sampling(temperature=1.1, grammar=True, max_new_tokens=200, max_bars=3, keep_prompt=True).check()
    rows = sample_ids(gpt, TOK, prompt_ids(), 3, s, torch.Generator().manual_seed(3), continue_bars=True,
                      logit_bias=no_eos())
    assert [why for _, why in rows] == PINS["sample_ids_why"]
    assert digest([ids for ids, _ in rows]) == PINS["sample_ids"]


def test_evaluate_generate_to_a_bar_count(gpt):
    rows = evaluate_generate(gpt, TOK, prompt_ids(), 2, total_bars=4, max_new_tokens=180, temperature=0.9,
                             seed=11, keep_prompt=True, logit_bias=no_eos())
    assert digest(rows) == PINS["evaluate"]


def test_training_callback_samples(gpt):
    cb = SampleCallback(every_n_steps=10, n_samples=2, max_new_tokens=90, temperature=1.0,
                        bos_id=TOK.bos_id, eos_id=TOK.eos_id, seed=5)
    rows = cb.generate(gpt, torch.device("cpu"), step=30)
    assert digest(rows) == PINS["callback"]


PINS = {
    "plain_head": [1, 257, 65, 222, 211, 176],
    "plain": "13054d6ba8b19a05",
    "knobs": "c10626ef2f8bbdad",          # 2 rows of 50 + 120 ids
    "sample_ids_why": ["eos", "max_bars", "eos"],
    "sample_ids": "dfda544df96c00c5",     # 111, 150 and 176 ids
    "evaluate": "ee501149f9aa5a31",       # 2 rows of 230 ids
    "callback": "0d85dcbf9a83211f",       # 74 and 19 ids
}
