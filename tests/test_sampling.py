"""model.sampling: the pure filters and draw, and the grammar hook of GPT.generate."""
from __future__ import annotations

import pytest
import torch

from model import GPT, GPTConfig
from model.sampling import (
    apply_temperature,
    mask_disallowed,
    min_p_filter,
    next_token,
    repetition_penalty,
    sample,
    top_k_filter,
    top_p_filter,
)

NEG = float("-inf")


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 2.5], [5.0, 4.0, 3.0, 2.0, 1.0]])
    out = top_k_filter(logits, 2)
    assert torch.equal(torch.isfinite(out), torch.tensor([[0, 1, 0, 0, 1], [1, 1, 0, 0, 0]], dtype=torch.bool))
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])  # kept values unchanged
    assert torch.equal(top_k_filter(logits, 5), logits) and torch.equal(top_k_filter(logits, 9), logits)


def test_top_k_with_ties_still_keeps_exactly_k():
    out = top_k_filter(torch.tensor([[1.0, 1.0, 1.0, 0.0]]), 2)
    assert torch.isfinite(out).sum().item() == 2


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15], [0.9, 0.05, 0.03, 0.02]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p)).int().tolist()
    assert kept(0.5) == [[1, 0, 0, 0], [1, 0, 0, 0]]  # the first token alone already reaches p
    assert kept(0.6) == [[1, 0, 1, 0], [1, 0, 0, 0]]
    assert kept(0.79) == [[1, 0, 1, 0], [1, 0, 0, 0]]  # 0.5 + 0.3 reaches 0.79: no third token
    assert kept(0.81) == [[1, 0, 1, 1], [1, 0, 0, 0]]
    assert kept(0.96) == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert kept(0.01) == [[1, 0, 0, 0], [1, 0, 0, 0]]  # the most likely token always survives
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_top_p_respects_already_masked_tokens():
    logits = torch.tensor([[2.0, NEG, 1.0, 0.0]])
    out = top_p_filter(logits, 0.99)
    assert out[0, 1] == NEG and torch.isfinite(out[0, [0, 2, 3]]).all()


def test_temperature_scales_and_zero_means_argmax():
    logits = torch.tensor([[1.0, 4.0, 2.0], [0.0, -1.0, 3.0]])
    torch.testing.assert_close(apply_temperature(logits, 2.0), logits / 2)
    assert next_token(logits, temperature=0.0).tolist() == [1, 2]
    allowed = torch.tensor([[True, False, True], [True, True, False]])
    assert next_token(logits, temperature=0.0, allowed=allowed).tolist() == [2, 0]
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(logits, -1.0)


def test_sample_follows_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1, 0.0])
    logits = probs.log().expand(20000, 4)
    draws = sample(logits, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    assert freq[3] == 0


def test_next_token_only_draws_permitted_tokens_after_all_filters():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(500, 30, generator=g)
    allowed = torch.rand(500, 30, generator=g) < 0.3
    allowed[:, 0] = True
    tok = next_token(logits, temperature=1.5, top_k=5, top_p=0.8, allowed=allowed, generator=g)
    assert allowed[torch.arange(500), tok].all()
    top5 = torch.topk(mask_disallowed(logits, allowed), 5).indices
    assert (top5 == tok[:, None]).any(dim=1).all()


def test_min_p_keeps_tokens_at_least_min_p_times_the_top_probability():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15], [0.9, 0.05, 0.03, 0.02], [0.25, 0.25, 0.25, 0.25]])
    logits = probs.log()
    kept = lambda m: torch.isfinite(min_p_filter(logits, m)).int().tolist()
    assert kept(0.2) == [[1, 0, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]  # thresholds 0.1, 0.18, 0.05
    assert kept(0.5) == [[1, 0, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]  # a flat row keeps everything
    assert kept(0.05) == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert kept(1.0) == [[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]  # only the top (ties all kept)
    out = min_p_filter(logits, 0.2)
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])  # kept values unchanged
    assert torch.equal(min_p_filter(logits, 0.0), logits)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="min_p"):
            min_p_filter(logits, bad)


def test_min_p_respects_already_masked_tokens():
    out = min_p_filter(torch.tensor([[2.0, NEG, 1.9, -5.0]]), 0.5)
    assert torch.isfinite(out).int().tolist() == [[1, 0, 1, 0]]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    recent = torch.tensor([[0, 1, 1, -1], [4, 4, 2, 2]])  # -1 is padding; repeats count once
    out = repetition_penalty(logits, recent, 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0, 0.5, 3.0, -2.0], [1.0, 1.0, 0.5, 1.0, 0.5]]))
    assert torch.equal(logits[0], torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0]))  # input untouched
    # below 1 encourages repeats; 1 and an empty window change nothing
    torch.testing.assert_close(repetition_penalty(logits, recent, 0.5)[0], torch.tensor([4.0, -0.5, 0.5, 3.0, -2.0]))
    assert torch.equal(repetition_penalty(logits, recent, 1.0), logits)
    assert torch.equal(repetition_penalty(logits, recent[:, :0], 3.0), logits)
    # `penalized` limits the ids it may touch
    only = torch.tensor([False, True, False, False, True])
    torch.testing.assert_close(repetition_penalty(logits, recent, 2.0, only),
                               torch.tensor([[2.0, -2.0, 0.5, 3.0, -2.0], [1.0, 1.0, 1.0, 1.0, 0.5]]))
    assert torch.isinf(repetition_penalty(torch.tensor([[NEG, 1.0]]), torch.tensor([[0]]), 2.0)[0, 0])


def test_repetition_penalty_refuses_bad_input():
    logits = torch.zeros(2, 5)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="repetition_penalty"):
            repetition_penalty(logits, torch.zeros(2, 1, dtype=torch.long), bad)
    with pytest.raises(ValueError, match=r"\(B, W\) with B = 2"):
        repetition_penalty(logits, torch.zeros(3, 1, dtype=torch.long), 1.2)
    with pytest.raises(ValueError, match="< vocabulary size 5"):
        repetition_penalty(logits, torch.tensor([[1], [5]]), 1.2)
    with pytest.raises(ValueError, match="penalized"):
        repetition_penalty(logits, torch.zeros(2, 1, dtype=torch.long), 1.2, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="recent ids"):
        next_token(logits, penalty=1.2)


def test_min_p_and_repetition_penalty_equal_transformers():
    """The oracle: transformers' own processors, on random scores with repeated ids."""
    pytest.importorskip("transformers")
    from transformers.generation.logits_process import MinPLogitsWarper, RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 50, generator=g) * 3
    ids = torch.randint(0, 50, (64, 30), generator=g)
    for penalty in (0.7, 1.3, 2.0):
        ref = RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone())
        torch.testing.assert_close(repetition_penalty(scores, ids, penalty), ref, rtol=0, atol=0)
    for m in (0.02, 0.1, 0.5):
        ref = MinPLogitsWarper(m)(ids, scores.clone())
        assert torch.equal(torch.isfinite(min_p_filter(scores, m)), torch.isfinite(ref)), m


def test_next_token_with_min_p_draws_only_tokens_above_the_threshold():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2000, 40, generator=g) * 2
    probs = torch.softmax(logits / 0.8, dim=-1)  # min-p sees the temperature-scaled distribution
    tok = next_token(logits, temperature=0.8, min_p=0.3, generator=g)
    chosen = probs[torch.arange(2000), tok]
    assert (chosen >= 0.3 * probs.max(dim=-1).values).all()
    unfiltered = next_token(logits, temperature=0.8, generator=torch.Generator().manual_seed(2))
    assert not (probs[torch.arange(2000), unfiltered] >= 0.3 * probs.max(dim=-1).values).all()


def test_repetition_penalty_steers_greedy_decoding():
    logits = torch.tensor([[3.0, 2.0, -1.0]])
    recent = torch.tensor([[0]])
    assert next_token(logits, temperature=0.0).item() == 0
    assert next_token(logits, temperature=0.0, recent=recent, penalty=2.0).item() == 1  # 3 / 2 < 2


def test_mask_with_no_permitted_token_is_an_error_naming_the_row():
    allowed = torch.ones(3, 4, dtype=torch.bool)
    allowed[1] = False
    with pytest.raises(ValueError, match=r"row\(s\) \[1\]"):
        mask_disallowed(torch.zeros(3, 4), allowed)


# ----------------------------------------------------------------- grammar hook

def toy_grammar(vocab: int):
    """Odd ids must be followed by an even id greater than them; even ids by any odd id.

    Returns the `allowed` callable GPT.generate takes and a checker for whole sequences.
    """
    ids = torch.arange(vocab)

    def allowed(seq: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, V)
        last = seq[:, -1:]
        after_odd = (ids % 2 == 0) & (ids > last)
        after_even = ids % 2 == 1
        return torch.where(last % 2 == 1, after_odd, after_even)

    def breaks(seq: list[int]) -> bool:
        for a, b in zip(seq, seq[1:]):
            if a % 2 == 1 and not (b % 2 == 0 and b > a):
                return True
            if a % 2 == 0 and b % 2 == 0:
                return True
        return False

    return allowed, breaks


def test_no_sampled_sequence_breaks_the_grammar():
    vocab = 41  # odd ids up to 39, each has an even successor above it
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=vocab, block_size=48, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():  # peaked predictions, so the unconstrained model would break it constantly
        for p in gpt.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    allowed, breaks = toy_grammar(vocab)
    prompt = torch.tensor([[1], [2], [7], [30]] * 2)
    free = gpt.generate(prompt, 40, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert sum(breaks(row) for row in free.tolist()) > 4  # the test would notice a missing mask
    for settings in (dict(temperature=1.0), dict(temperature=0.7, top_k=5), dict(temperature=1.3, top_p=0.9),
                     dict(temperature=0.0)):
        # 60 new tokens outgrow block_size 48, so the sliding window is constrained too
        out = gpt.generate(prompt, 60, allowed=allowed, generator=torch.Generator().manual_seed(1), **settings)
        assert out.shape == (8, 61)
        assert not any(breaks(row) for row in out.tolist()), settings


# ------------------------------------------------- new controls inside GPT.generate

def sharp_gpt(seed: int = 0, vocab: int = 41, block: int = 24) -> GPT:
    """float64 (so cached and recomputed logits agree far below any sampling decision) and peaked."""
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        for p in gpt.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return gpt.double().eval()


def reference_decode(gpt, prompt, n, seed, temperature=1.0, top_k=None, top_p=None,
                     min_p=None, penalty=None, window=None):
    """The documented pipeline by hand: the whole sequence through the model each step (sliding
    window of block_size), then penalty -> temperature -> top-k -> top-p -> min-p -> draw."""
    g = torch.Generator().manual_seed(seed)
    idx = prompt
    for _ in range(n):
        logits = gpt(idx[:, -gpt.config.block_size:])[:, -1].float()
        if penalty is not None:
            logits = repetition_penalty(logits, idx if window is None else idx[:, -window:], penalty)
        logits = apply_temperature(logits, temperature)
        if top_k is not None:
            logits = top_k_filter(logits, top_k)
        if top_p is not None:
            logits = top_p_filter(logits, top_p)
        if min_p is not None:
            logits = min_p_filter(logits, min_p)
        idx = torch.cat([idx, sample(logits, g)[:, None]], dim=1)
    return idx


def test_generate_defaults_give_the_same_ids_for_a_seed_as_before():
    """Nothing new runs, nor draws a random number, unless asked: with the new controls left at
    their defaults (or set to values that change nothing) generate equals the pre-existing
    pipeline (temperature -> top-k -> top-p -> draw) step for step."""
    gpt = sharp_gpt()
    prompt = torch.randint(0, 41, (3, 5), generator=torch.Generator().manual_seed(1))
    for kw in (dict(), dict(top_k=10, top_p=0.9, temperature=0.9)):
        ref = reference_decode(gpt, prompt, 40, seed=3, **kw)
        assert torch.equal(gpt.generate(prompt, 40, stride=1, generator=torch.Generator().manual_seed(3), **kw), ref)
        neutral = dict(min_p=0.0, repetition_penalty=1.0, repetition_window=8)
        assert torch.equal(gpt.generate(prompt, 40, stride=1, generator=torch.Generator().manual_seed(3),
                                        **kw, **neutral), ref)
        # and the controls do change the result when set
        assert not torch.equal(gpt.generate(prompt, 40, stride=1, generator=torch.Generator().manual_seed(3),
                                            min_p=0.3, repetition_penalty=2.0, **kw), ref)


@pytest.mark.parametrize("window", [None, 1, 6, 100])
def test_generate_applies_min_p_and_the_windowed_penalty_like_the_reference(window):
    gpt = sharp_gpt(seed=4)
    prompt = torch.randint(0, 41, (3, 9), generator=torch.Generator().manual_seed(2))
    kw = dict(temperature=1.2, top_p=0.95, min_p=0.05)
    ref = reference_decode(gpt, prompt, 40, seed=5, penalty=1.8, window=window, **kw)
    out = gpt.generate(prompt, 40, stride=1, generator=torch.Generator().manual_seed(5),
                       repetition_penalty=1.8, repetition_window=window, **kw)
    assert torch.equal(out, ref)


def test_penalty_breaks_greedy_loops_and_only_touches_the_given_ids():
    gpt = sharp_gpt(seed=7, block=64)
    prompt = torch.zeros(4, 1, dtype=torch.long)

    def repeats(out, window):  # new tokens already present among the `window` tokens before them
        return sum(int(row[t]) in row[max(0, t - window):t].tolist() for row in out for t in range(1, out.size(1)))

    plain = gpt.generate(prompt, 60, temperature=0.0)
    damped = gpt.generate(prompt, 60, temperature=0.0, repetition_penalty=3.0, repetition_window=8)
    assert repeats(damped, 8) < repeats(plain, 8) / 2, (repeats(damped, 8), repeats(plain, 8))
    # restricted to ids the greedy path never takes, the penalty changes nothing
    unused = sorted(set(range(41)) - set(plain.flatten().tolist()))
    assert unused
    assert torch.equal(gpt.generate(prompt, 60, temperature=0.0, repetition_penalty=3.0,
                                    repetition_window=8, repetition_ids=torch.tensor(unused)), plain)
    with pytest.raises(ValueError, match="repetition_window"):
        gpt.generate(prompt, 5, repetition_penalty=1.2, repetition_window=0)
    with pytest.raises(ValueError, match=r"repetition_ids must lie in \[0, 41\)"):
        gpt.generate(prompt, 5, repetition_penalty=1.2, repetition_ids=[3, 41])


def test_logit_bias_shifts_without_forbidding_and_keeps_the_mask():
    from model.sampling import add_logit_bias, next_token

    logits = torch.zeros(2, 4)
    bias = torch.tensor([0.0, -3.0, 0.0, 0.0])
    out = add_logit_bias(logits.masked_fill(torch.tensor([[False, False, True, False]] * 2), float("-inf")), bias)
    assert out[0, 1] == -3.0 and out[0, 2] == float("-inf") and out[0, 0] == 0.0
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        add_logit_bias(logits, torch.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        add_logit_bias(logits, torch.tensor([0.0, float("-inf"), 0.0, 0.0]))
    # drawn many times: the biased id comes e^3 ~ 20 times less often than each other one, never 0 times
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([next_token(torch.zeros(256, 4), bias=bias, generator=gen) for _ in range(20)])
    counts = torch.bincount(draws, minlength=4).float()
    assert 0 < counts[1] < counts[0] / 8
    assert torch.equal(next_token(torch.zeros(1, 4), temperature=0.0, bias=torch.tensor([0.0, 0.0, 1.0, 0.0])),
                       torch.tensor([2]))
