"""model.window: the window rule past the context, and windowed scoring of long sequences."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig
from model.window import check_stride, default_stride, sequence_nll, token_nll, window_start


def tiny(block_size: int = 16, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=29, block_size=block_size, n_layer=2, n_head=2, n_embd=16)).double().eval()
    with torch.no_grad():  # peaked predictions and strong positions: a wrong context shows in the NLL
        for p in gpt.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
        gpt.transformer.wpe.weight.mul_(3)
    return gpt


def reference_nll(gpt: GPT, ids: torch.Tensor, stride: int, block: int) -> torch.Tensor:
    """Each token scored alone, from a context whose start jumps by `stride` when it overflows."""
    out, lo = [], 0
    for t in range(1, len(ids)):
        while t - lo > block:
            lo += stride
        logits = gpt(ids[None, lo:t])[0, -1]
        out.append(-F.log_softmax(logits, dim=-1)[ids[t]])
    return torch.stack(out)


def test_window_start_moves_by_whole_strides_only_when_it_overflows():
    assert window_start(0, 16, 16, 4) == 0  # full, not over
    assert window_start(0, 17, 16, 4) == 4  # one over: one stride
    assert window_start(4, 20, 16, 4) == 4  # fits again until 20 tokens
    assert window_start(4, 21, 16, 4) == 8
    assert window_start(0, 30, 16, 4) == 16  # a long prompt: as many strides as it takes
    assert window_start(0, 30, 16, 1) == 14  # stride 1: the last block_size tokens
    assert window_start(0, 17, 16, 16) == 16  # stride = block: a fresh window of one token


def test_stride_defaults_and_bounds():
    assert default_stride(256) == 128 and default_stride(3) == 1 and default_stride(1) == 1
    assert check_stride(None, 256) == 128 and check_stride(1, 256) == 1 and check_stride(256, 256) == 256
    for bad in (0, 257, -3, 1.5, True):
        with pytest.raises(ValueError, match="stride must be an integer"):
            check_stride(bad, 256)


@pytest.mark.parametrize("stride", [1, 3, 7, 16])
def test_token_nll_scores_every_token_once_from_the_window_rule(stride):
    gpt = tiny(block_size=16)
    ids = torch.randint(0, 29, (61,), generator=torch.Generator().manual_seed(1))
    got = token_nll(gpt, ids, stride=stride, batch_size=3)  # several windows per batch, several batches
    torch.testing.assert_close(got, reference_nll(gpt, ids, stride, 16).float())


def test_stride_one_is_the_best_context_and_stride_block_is_the_validation_windows():
    gpt = tiny(block_size=16)
    ids = torch.randint(0, 29, (80,), generator=torch.Generator().manual_seed(2))
    # model.data.ValWindows: consecutive windows of 16 predicted tokens, each starting afresh
    x = torch.cat([ids[:-1], torch.zeros(1, dtype=torch.long)]).view(5, 16)
    y = torch.cat([ids[1:], torch.full((1,), -1)]).view(5, 16)
    val = float(gpt(x, y, reduction="sum")[1].detach())
    assert sequence_nll(gpt, ids, stride=16) == pytest.approx(val, rel=1e-6)
    assert sequence_nll(gpt, ids, stride=16, bits=True) == pytest.approx(val / math.log(2), rel=1e-6)
    # a shorter sequence than the context: every stride scores it the same, in one window
    short = ids[:12]
    assert sequence_nll(gpt, short, stride=1) == pytest.approx(sequence_nll(gpt, short, stride=16))


def test_shorter_block_size_than_the_model_and_bad_values():
    gpt = tiny(block_size=16)
    ids = torch.randint(0, 29, (40,), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(token_nll(gpt, ids, stride=2, block_size=8),
                               reference_nll(gpt, ids, 2, 8).float())
    assert token_nll(gpt, ids[:1]).numel() == 0
    with pytest.raises(ValueError, match="block_size must be in 1 .. the model's 16"):
        token_nll(gpt, ids, block_size=32)


def test_the_training_callback_generates_with_the_same_window():
    from model.callbacks import SampleCallback

    gpt = tiny(block_size=16)
    for stride in (1, 5):
        cb = SampleCallback(every_n_steps=1, n_samples=2, max_new_tokens=50, bos_id=0, seed=3, stride=stride)
        got = cb.generate(gpt, torch.device("cpu"), step=7)
        expected = gpt.generate(torch.zeros(2, 1, dtype=torch.long), 50, stride=stride,
                                generator=torch.Generator().manual_seed(3 * 1_000_003 + 7))
        assert got == expected.tolist()
