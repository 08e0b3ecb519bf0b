"""The NumPy loop (`model.generate._numpy_loop`): a sampler without a repetition penalty, over the
CPU decoders, does its step's bookkeeping in NumPy and draws the exponential races in blocks. It
must give the ids the general loop (`_torch_loop`) gives for the same seed, and leave the
generator where the general loop leaves it (a caller that draws again after `generate` sees the
same numbers), including when EOS stops every row part-way through a block of races."""
from __future__ import annotations

import pytest
import torch

import model.generate as G
from model import GPT, GPTConfig

V = 201


def _gpt(dtype=torch.float32) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, block_size=64, n_layer=2, n_head=4, n_embd=64)).to(dtype).eval()


def _general(monkeypatch) -> None:
    """Send `generate` through the general loop where it would take the NumPy loop."""
    def general(gpt, idx, n, sampler, eos, allowed, gen, keep, stride, steps, bias, on_token):
        return G._torch_loop(gpt, idx, n, sampler, eos, allowed, gen, keep, stride, steps, None, bias, on_token)

    monkeypatch.setattr(G, "_numpy_loop", general)


def _both(monkeypatch, gpt, idx, n, sampler, generator_seed=1, **kw):
    """(ids, the next 5 numbers of the generator) through the NumPy loop, then the general one."""
    runs = []
    for numpy_loop in (True, False):
        with monkeypatch.context() as m:
            if not numpy_loop:
                _general(m)
            if generator_seed is None:  # the global generator
                torch.manual_seed(3)
                out = G.generate(gpt, idx, n, sampler, **kw)
                after = torch.rand(5)
            else:
                g = torch.Generator().manual_seed(generator_seed)
                out = G.generate(gpt, idx, n, sampler, generator=g, **kw)
                after = torch.rand(5, generator=g)
        runs.append((out, after))
    return runs


CASES = [  # (dtype, rows, sampler, eos, grammar-like mask, bias, engine)
    (torch.float32, 1, {"temperature": 1.0}, None, False, False, "fused"),
    (torch.float32, 1, {"temperature": 0.9}, 5, True, False, "fused"),
    (torch.float32, 3, {"temperature": 1.3}, 5, True, True, "fused"),
    (torch.float32, 3, {"temperature": 0.7}, None, False, True, "numpy"),
    (torch.float32, 1, {"temperature": 0.0}, 5, True, True, "fused"),
    (torch.float32, 1, {"temperature": 1.0, "top_p": 0.95}, 5, True, False, "fused"),  # the page's default
    (torch.float32, 3, {"temperature": 0.8, "top_k": 20, "min_p": 0.05}, 5, True, True, "fused"),
    (torch.float64, 1, {"temperature": 0.9}, 5, True, False, "fused"),
    (torch.float64, 3, {"temperature": 1.0, "top_p": 0.9}, None, True, True, "numpy"),
    (torch.float64, 1, {"temperature": 0.0}, None, False, False, "numpy"),
]


@pytest.mark.parametrize("dtype, B, sampler, eos, mask, bias, engine", CASES)
def test_the_numpy_loop_draws_the_ids_of_the_general_loop(monkeypatch, dtype, B, sampler, eos, mask, bias, engine):
    gpt = _gpt(dtype)
    torch.manual_seed(B)
    idx = torch.randint(0, V, (B, 5))
    # every third id counts: rows are told to stop (only EOS) part-way through, at different steps
    allowed = G.only_eos_after(list(range(0, V, 3)), 20 + 7 * B, eos if eos is not None else 3, V) if mask else None
    logit_bias = torch.randn(V) if bias else None
    (a, after_a), (b, after_b) = _both(monkeypatch, gpt, idx, 150, G.Sampler(**sampler), eos_id=eos,
                                       allowed=allowed, logit_bias=logit_bias, engine=engine)
    assert torch.equal(a, b)
    assert torch.equal(after_a, after_b)  # the generator is left where the per-step draws leave it
    if eos is not None and mask and sampler["temperature"] > 0:  # (greedy may repeat an id that does not count)
        assert a.shape[1] < 5 + 150  # EOS stopped every row before the end


@pytest.mark.parametrize("stop_after", [37, 64, 65])
def test_eos_inside_a_block_of_races_leaves_the_generator_where_per_step_draws_leave_it(monkeypatch, stop_after):
    """Every row may only end after `stop_after` new ids: the loop stops inside the second block of
    64 races (37: inside the first; 64: at its edge), and the generator must still end where the
    general loop leaves it."""
    gpt = _gpt()
    eos = 5

    def only_eos_late(rows):
        mask = torch.ones(rows.shape[0], V, dtype=torch.bool)
        mask[:, eos] = False
        if rows.shape[1] >= 2 + stop_after:
            mask[:] = False
            mask[:, eos] = True
        return mask

    (a, after_a), (b, after_b) = _both(monkeypatch, gpt, torch.zeros(2, 2, dtype=torch.long), 150, G.Sampler(),
                                       eos_id=eos, allowed=only_eos_late)
    assert a.shape[1] == 2 + stop_after + 1
    assert torch.equal(a, b) and torch.equal(after_a, after_b)


def test_the_numpy_loop_slides_the_window_and_uses_the_global_generator(monkeypatch):
    gpt = _gpt()
    idx = torch.randint(0, V, (2, 3))
    (a, after_a), (b, after_b) = _both(monkeypatch, gpt, idx, 140, G.Sampler(temperature=1.0), generator_seed=None,
                                       keep=2, stride=10)
    assert a.shape[1] == 143 > gpt.config.block_size
    assert torch.equal(a, b) and torch.equal(after_a, after_b)


def test_the_cpu_decoders_take_the_numpy_loop_unless_a_repetition_penalty_is_asked(monkeypatch):
    gpt = _gpt()
    seen = []
    real = G._numpy_loop
    monkeypatch.setattr(G, "_numpy_loop", lambda *a: seen.append(True) or real(*a))
    idx = torch.zeros(1, 1, dtype=torch.long)
    G.generate(gpt, idx, 3, G.Sampler(temperature=0.8))
    G.generate(gpt, idx, 3, G.Sampler(temperature=0.0), engine="numpy")
    for sampler in (G.Sampler(top_k=5), G.Sampler(top_p=0.9), G.Sampler(min_p=0.1)):
        G.generate(gpt, idx, 3, sampler)
    assert seen == [True] * 5
    G.generate(gpt, idx, 3, G.Sampler(repetition_penalty=1.2))
    G.generate(gpt, idx, 3, G.Sampler(), engine="torch")
    assert seen == [True] * 5


def test_the_numpy_loop_gives_the_general_loops_errors():
    gpt = _gpt()
    idx = torch.zeros(2, 1, dtype=torch.long)

    def stuck(rows):
        mask = torch.ones(rows.shape[0], V, dtype=torch.bool)
        mask[1] = False
        return mask

    with pytest.raises(ValueError, match=r"permits no token at all in batch row\(s\) \[1\]; the grammar is stuck"):
        G.generate(gpt, idx, 3, G.Sampler(), allowed=stuck)
    # a mask for one row would broadcast over both in NumPy: refused, as the general loop refuses it
    with pytest.raises(ValueError, match=r"allowed mask has shape \(1, 201\), logits have \(2, 201\)"):
        G.generate(gpt, idx, 3, G.Sampler(), allowed=lambda rows: torch.ones(1, V, dtype=torch.bool))
    with pytest.raises(ValueError, match="logit bias must be finite"):
        G.generate(gpt, idx, 3, G.Sampler(), logit_bias=torch.full((V,), float("inf")))
    with pytest.raises(ValueError, match=r"logit bias must have shape \(201,\)"):
        G.generate(gpt, idx, 3, G.Sampler(), logit_bias=torch.zeros(V + 1))


@pytest.mark.parametrize("sampler", [{"temperature": 0.37}, {"temperature": 0.9, "top_p": 0.9}, {"temperature": 1.0},
                                     {"temperature": 1.7, "top_k": 30, "min_p": 0.1}])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_pick_computes_what_next_token_computes_bit_for_bit(dtype, sampler):
    """The scaled logits the filters see are torch's own, bit for bit (a reciprocal multiplied
    instead of the division would differ in the last bit), and so are the ids."""
    from model.sampling import add_logit_bias, apply_temperature, mask_disallowed, next_token

    torch.manual_seed(0)
    logits = (torch.randn(64, V) * 6).to(dtype)
    mask = torch.rand(64, V) > 0.3
    bias = torch.randn(V)
    t = sampler["temperature"]
    expected = apply_temperature(add_logit_bias(mask_disallowed(logits.float(), mask), bias), t)
    races = G._Races(torch.Generator().manual_seed(5), 64, V, steps=1)
    pick = G._Pick(64, V, G.Sampler(**sampler), bias, races)
    ids = pick(logits.numpy(), mask.numpy())
    assert torch.equal(torch.from_numpy(pick.x), expected)
    want = next_token(logits.float(), t, sampler.get("top_k"), sampler.get("top_p"), allowed=mask, bias=bias,
                      generator=torch.Generator().manual_seed(5), min_p=sampler.get("min_p"))
    assert torch.equal(torch.from_numpy(ids), want)
