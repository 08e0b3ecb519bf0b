"""model.gpt: parity with Hugging Face GPT-2, cached generation, config, optimiser and FLOPs."""
from __future__ import annotations

import math

import pytest
import torch

from model import GPT, GPTConfig, configure_optimizer, flops_per_token, lr_at, peak_flops

transformers = pytest.importorskip("transformers")


def hf_gpt2(vocab, n_positions, n_embd, n_layer, n_head, attn="eager", seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=1,
        attn_implementation=attn,
    )
    return transformers.GPT2LMHeadModel(config).eval()


def tiny(**overrides) -> GPT:
    torch.manual_seed(overrides.pop("seed", 0))
    args = dict(vocab_size=61, block_size=64, n_layer=2, n_head=4, n_embd=32)
    args.update(overrides)
    return GPT(GPTConfig(**args)).eval()


# --------------------------------------------------------------------------- parity

PARITY_CONFIGS = [
    # vocab, n_positions, n_embd, n_layer, n_head, attention implementation
    (50, 32, 16, 1, 2, "eager"),
    (97, 64, 48, 3, 4, "sdpa"),
    (300, 128, 64, 2, 8, "eager"),
    (1000, 96, 128, 4, 4, "sdpa"),
]


@pytest.mark.parametrize("vocab,n_pos,n_embd,n_layer,n_head,attn", PARITY_CONFIGS)
def test_from_hf_gives_same_logits_loss_and_gradients(vocab, n_pos, n_embd, n_layer, n_head, attn):
    hf = hf_gpt2(vocab, n_pos, n_embd, n_layer, n_head, attn, seed=n_layer * 7 + n_head)
    # HF's default init leaves biases at zero and LN at identity; randomise them so the
    # mapping of every tensor (not just the weights) is exercised.
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gpt = GPT.from_hf(hf).eval()
    assert gpt.config.block_size == n_pos and gpt.config.vocab_size == vocab

    g = torch.Generator().manual_seed(vocab)
    idx = torch.randint(0, vocab, (3, n_pos), generator=g)
    torch.testing.assert_close(gpt(idx), hf(idx).logits, atol=1e-5, rtol=1e-5)

    # HF shifts labels inside; ours takes explicit next-token targets. Positions HF ignores
    # (-100) are -1 for us.
    labels = idx.clone()
    labels[0, 5:9] = -100
    targets = labels[:, 1:].clone()
    targets[targets == -100] = -1
    hf_loss = hf(idx, labels=labels).loss
    _, loss = gpt(idx[:, :-1], targets)
    torch.testing.assert_close(loss, hf_loss, atol=1e-4, rtol=1e-4)

    hf_loss.backward()
    loss.backward()
    hf_params = dict(hf.named_parameters())
    checked = 0
    for name, p in gpt.named_parameters():
        ref = hf_params[name].grad
        if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            ref = ref.t()
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, ref, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")
        checked += 1
    assert checked == 2 + 12 * n_layer + 2  # wte(=lm_head), wpe, 12 tensors per block, ln_f


def test_from_hf_refuses_what_it_cannot_represent():
    config = transformers.GPT2Config(vocab_size=20, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                     activation_function="relu", n_inner=32, bos_token_id=0, eos_token_id=1)
    with pytest.raises(ValueError, match="activation_function.*n_inner"):
        GPT.from_hf(transformers.GPT2LMHeadModel(config))


# ------------------------------------------------------------------------ forward

def test_targets_give_mean_and_per_token_losses_ignoring_minus_one():
    gpt = tiny()
    idx = torch.randint(0, 61, (2, 12))
    targets = torch.randint(0, 61, (2, 12))
    targets[1, 3:] = -1
    logits, mean = gpt(idx, targets)
    _, per_token = gpt(idx, targets, reduction="none")
    assert logits.shape == (2, 12, 61) and per_token.shape == (2, 12)
    assert torch.all(per_token[1, 3:] == 0)
    keep = targets != -1
    manual = -torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(per_token[keep], manual[keep])
    torch.testing.assert_close(mean, manual[keep].mean())


def test_padded_vocab_is_invisible_outside():
    gpt = tiny(vocab_size=61, pad_vocab_multiple=64)
    assert gpt.config.padded_vocab_size == 64 and gpt.lm_head.weight.shape == (64, 32)
    idx = torch.randint(0, 61, (2, 9))
    assert gpt(idx).shape == (2, 9, 61)
    out = gpt.generate(idx, 30, temperature=2.0, generator=torch.Generator().manual_seed(0))
    assert out.max() < 61


def test_too_long_input_is_an_error_naming_block_size():
    with pytest.raises(ValueError, match="block_size 64"):
        tiny()(torch.zeros(1, 65, dtype=torch.long))


def test_gpt2_init_and_tied_head():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=2000, block_size=256, n_layer=8, n_head=4, n_embd=256))
    assert gpt.lm_head.weight is gpt.transformer.wte.weight
    residual = gpt.transformer.h[3].mlp.c_proj.weight.std().item()
    assert residual == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert gpt.transformer.h[3].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(gpt.transformer.h[0].attn.c_attn.bias == 0)


def test_num_params_non_embedding_excludes_wte_and_wpe_once():
    c = GPTConfig(vocab_size=100, block_size=40, n_layer=3, n_head=2, n_embd=24)
    gpt = GPT(c)
    per_block = 12 * 24 * 24 + 13 * 24  # weights + (c_attn 3C, c_proj C, c_fc 4C, c_proj C, 2 LN x 2C)
    non_embedding = 3 * per_block + 2 * 24  # + ln_f
    assert gpt.num_params(non_embedding=True) == non_embedding
    assert gpt.num_params(non_embedding=False) == non_embedding + 100 * 24 + 40 * 24  # head tied: once


def test_config_validates_and_round_trips_through_a_dict():
    c = GPTConfig(vocab_size=70, block_size=32, n_layer=2, n_head=4, n_embd=64, pad_vocab_multiple=64)
    assert (c.head_size, c.padded_vocab_size) == (16, 128)
    assert GPTConfig.from_dict(c.to_dict()) == c
    from dataclasses import asdict
    assert GPTConfig.from_dict(asdict(c)) == c
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="unknown GPTConfig key"):
        GPTConfig.from_dict({"n_embed": 3})


def test_works_under_bf16_autocast():
    gpt = tiny()
    idx = torch.randint(0, 61, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = gpt(idx, idx)
        out = gpt.generate(idx[:, :4], 10, temperature=0.0)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    assert out.shape == (2, 14)
    loss.backward()
    assert gpt.transformer.wte.weight.grad is not None


# --------------------------------------------------------------------- generation

def reference_greedy(gpt: GPT, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding without a cache: the whole (cropped) sequence through the model each step."""
    for _ in range(n):
        logits = gpt(idx[:, -gpt.config.block_size:])[:, -1]
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx


def sharpened(gpt: GPT) -> GPT:
    # Larger weights than GPT-2's init give peaked, varied predictions, so greedy paths are
    # non-trivial; float64 makes cached-vs-recomputed rounding far too small to flip an argmax.
    with torch.no_grad():
        for p in gpt.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return gpt.double()


def test_cached_greedy_equals_recomputing_every_step_for_256_tokens():
    gpt = sharpened(tiny(block_size=300, n_embd=16, seed=2))
    with torch.no_grad():  # strong positions: a key cached at the wrong place would change the path
        gpt.transformer.wpe.weight.mul_(3)
    prompt = torch.randint(0, 61, (2, 7), generator=torch.Generator().manual_seed(3))
    cached = gpt.generate(prompt, 256, temperature=0.0)
    assert cached.shape == (2, 263)
    assert torch.equal(cached[:, :7], prompt)
    assert torch.equal(cached, reference_greedy(gpt, prompt, 256))
    assert all(len(set(row[-50:].tolist())) > 5 for row in cached)  # a real path to the end, no loop


def reference_strided_greedy(gpt: GPT, idx: torch.Tensor, n: int, stride: int) -> torch.Tensor:
    """Greedy decoding without a cache over a window that jumps `stride` tokens when it overflows."""
    lo = 0
    for _ in range(n):
        while idx.size(1) - lo > gpt.config.block_size:
            lo += stride
        logits = gpt(idx[:, lo:])[:, -1]
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx


def test_stride_one_equals_the_full_sliding_window():
    gpt = sharpened(tiny(block_size=24, seed=2))
    prompt = torch.randint(0, 61, (2, 30), generator=torch.Generator().manual_seed(4))  # longer than context
    cached = gpt.generate(prompt, 60, temperature=0.0, stride=1)
    assert torch.equal(cached, reference_greedy(gpt, prompt, 60))


@pytest.mark.parametrize("stride", [5, 12, 24])
def test_strided_window_rebuilds_the_cache_exactly(stride):
    gpt = sharpened(tiny(block_size=24, seed=2))
    with torch.no_grad():  # strong positions: keys left at their old positions would change the path
        gpt.transformer.wpe.weight.mul_(3)
    for prompt_len in (1, 30):  # from one token, and from a prompt longer than the context
        prompt = torch.randint(0, 61, (2, prompt_len), generator=torch.Generator().manual_seed(4))
        cached = gpt.generate(prompt, 100, temperature=0.0, stride=stride)  # four shifts at least
        assert torch.equal(cached, reference_strided_greedy(gpt, prompt, 100, stride))
    # and a stride is not the full sliding window: contexts differ, and so does the path
    assert not torch.equal(gpt.generate(prompt, 100, temperature=0.0, stride=stride),
                           gpt.generate(prompt, 100, temperature=0.0, stride=1))


def reference_kept_greedy(gpt: GPT, idx: torch.Tensor, n: int, stride: int, keep: int) -> torch.Tensor:
    """Greedy decoding without a cache: the first `keep` ids, then a tail window that jumps
    `stride` tokens when head + tail overflow the context."""
    lo = keep
    for _ in range(n):
        while keep + idx.size(1) - lo > gpt.config.block_size:
            lo += stride
        logits = gpt(torch.cat([idx[:, :keep], idx[:, lo:]], dim=1))[:, -1]
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx


@pytest.mark.parametrize("stride", [1, 5, 12])
def test_kept_prompt_stays_at_the_front_of_every_window(stride):
    gpt = sharpened(tiny(block_size=24, seed=2))
    with torch.no_grad():
        gpt.transformer.wpe.weight.mul_(3)
    prompt = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(5))
    kept = gpt.generate(prompt, 80, temperature=0.0, stride=stride, keep=9)
    assert torch.equal(kept, reference_kept_greedy(gpt, prompt, 80, stride, 9))
    # It differs from plain sliding (the prompt is still seen), and keep=0 is plain sliding.
    assert not torch.equal(kept, gpt.generate(prompt, 80, temperature=0.0, stride=stride))
    assert torch.equal(gpt.generate(prompt, 80, temperature=0.0, stride=stride, keep=0),
                       reference_strided_greedy(gpt, prompt, 80, stride))


def test_keep_beyond_the_prompt_or_half_the_context_is_refused():
    gpt = tiny(block_size=16)
    for bad in (-1, 4, 9, 2.5, True):  # the prompt has 3 ids; half the context is 8
        with pytest.raises(ValueError, match="keep must be an integer from 0"):
            gpt.generate(torch.zeros(1, 3, dtype=torch.long), 3, keep=bad)


def test_allowed_sees_the_whole_sequence_across_window_shifts():
    gpt = tiny(block_size=16)
    lengths = []

    def allowed(ids):
        lengths.append(ids.size(1))
        return torch.ones(ids.size(0), 61, dtype=torch.bool)

    out = gpt.generate(torch.zeros(3, 2, dtype=torch.long), 70, allowed=allowed, stride=4,
                       generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 72) and lengths == list(range(2, 72))


def test_stride_outside_one_to_block_size_is_refused():
    gpt = tiny(block_size=16)
    for bad in (0, 17, 2.5):
        with pytest.raises(ValueError, match="stride must be an integer from 1"):
            gpt.generate(torch.zeros(1, 1, dtype=torch.long), 3, stride=bad)


def test_fp32_cache_decoding_matches_full_forward_logits():
    gpt = tiny(block_size=64)
    from model.gpt import LayerCache

    idx = torch.randint(0, 61, (2, 40))
    full = gpt(idx)
    caches = [LayerCache(64) for _ in range(gpt.config.n_layer)]
    steps = [gpt._head(gpt._hidden(idx[:, :25], caches, 0))]
    steps.append(gpt._head(gpt._hidden(idx[:, 25:31], caches, 25)))  # several new tokens at once
    steps += [gpt._head(gpt._hidden(idx[:, t : t + 1], caches, t)) for t in range(31, 40)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_sampling_is_reproducible_with_a_seed_and_varies_without():
    gpt = sharpened(tiny(seed=5)).float()
    prompt = torch.zeros(4, 1, dtype=torch.long)
    a = gpt.generate(prompt, 50, temperature=1.0, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(7))
    b = gpt.generate(prompt, 50, temperature=1.0, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(7))
    c = gpt.generate(prompt, 50, temperature=1.0, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.manual_seed(11)
    d = gpt.generate(prompt, 50)
    torch.manual_seed(11)
    assert torch.equal(d, gpt.generate(prompt, 50))


def test_eos_stops_when_every_row_is_done_and_pads_finished_rows():
    gpt = sharpened(tiny(seed=6)).float()
    eos = 3
    # Shift the final hidden state along EOS's head row: its logit rises by 1, so rows finish
    # early, at different steps.
    with torch.no_grad():
        w = gpt.lm_head.weight[eos]
        gpt.transformer.ln_f.bias += w / w.norm() ** 2
    out = gpt.generate(torch.zeros(6, 2, dtype=torch.long), 200, eos_id=eos,
                       generator=torch.Generator().manual_seed(0))
    new = out[:, 2:]
    assert out.shape[1] < 202, "every row finished, so generation must stop early"
    first = [(row == eos).nonzero()[0].item() for row in new]
    assert max(first) == new.size(1) - 1  # stopped right when the last row finished
    assert len(set(first)) > 1  # rows did finish at different steps
    for row, f in zip(new, first):
        assert torch.all(row[f:] == eos)


def test_generate_restores_training_mode():
    gpt = tiny()
    gpt.train()
    gpt.generate(torch.zeros(1, 1, dtype=torch.long), 3)
    assert gpt.training


# ------------------------------------------------------------------ optim, flops

def test_optimizer_decays_only_matmul_weights():
    gpt = tiny()
    opt = configure_optimizer(gpt, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}
    assert id(gpt.transformer.wte.weight) in ids(no_decay["params"])
    assert id(gpt.transformer.wpe.weight) in ids(no_decay["params"])
    assert id(gpt.transformer.h[0].ln_1.weight) in ids(no_decay["params"])
    assert id(gpt.transformer.h[0].attn.c_attn.bias) in ids(no_decay["params"])
    assert id(gpt.transformer.h[1].mlp.c_fc.weight) in ids(decay["params"])
    assert len(decay["params"]) == 4 * gpt.config.n_layer
    total = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert total == gpt.num_params(non_embedding=False)  # each tensor exactly once


def test_lr_schedule_warms_up_then_follows_cosine_to_min():
    kw = dict(warmup_steps=10, max_steps=110, max_lr=1.0, min_lr=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)  # half way: midpoint of max and min
    assert lr_at(110, **kw) == pytest.approx(0.1) and lr_at(500, **kw) == pytest.approx(0.1)
    lrs = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_flops_per_token_counts_matmuls_of_the_model():
    c = GPTConfig(vocab_size=100, block_size=40, n_layer=3, n_head=2, n_embd=24)
    matmul_weights = sum(
        m.weight.numel() for m in GPT(c).modules() if isinstance(m, torch.nn.Linear)
    )
    assert flops_per_token(c) == 6 * matmul_weights + 12 * 3 * 40 * 24
    assert flops_per_token(c, seq_len=10) == 6 * matmul_weights + 12 * 3 * 10 * 24
    assert peak_flops("cpu") is None
