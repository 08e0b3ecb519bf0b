"""model.sampling: the pure filters and draw, and the grammar hook of GPT.generate."""
from __future__ import annotations

import pytest
import torch

from model import GPT, GPTConfig
from model.sampling import apply_temperature, mask_disallowed, next_token, sample, top_k_filter, top_p_filter

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
