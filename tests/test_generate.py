"""pianolm.generate: the grammar mask read through the incremental automaton gives the very samples
that re-reading each row's whole prefix gives, for the same seed, also past the context window."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import remi
from model import GPT, GPTConfig
from pianolm.generate import make_allowed

TOK = remi.Tokenizer()


def whole_prefix_allowed(tok: remi.Tokenizer, prompt_len: int):
    """The reference: the same rules as make_allowed (grammar, no specials inside a piece, EOS
    ends a row, no empty piece), with the grammar read from the whole prefix at every step."""
    not_special = np.ones(tok.vocab_size, dtype=bool)
    not_special[[tok.bos_id, tok.pad_id, tok.mask_id]] = False
    only_eos = np.zeros(tok.vocab_size, dtype=bool)
    only_eos[tok.eos_id] = True

    def allowed(ids: torch.Tensor) -> torch.Tensor:
        masks = []
        for row in ids.tolist():
            if tok.eos_id in row[prompt_len:]:
                masks.append(only_eos)
                continue
            mask = tok.allowed_next(row) & not_special
            if not mask.any():
                mask = only_eos
            if len(row) == prompt_len and (mask & ~only_eos).any():
                mask = mask & ~only_eos
            masks.append(mask)
        return torch.from_numpy(np.stack(masks))

    return allowed


def without_eos(allowed):
    """The same mask with EOS taken out, so every row runs to full length and the automaton
    is exercised at every step (an untrained model says EOS early)."""
    def masked(ids: torch.Tensor) -> torch.Tensor:
        mask = allowed(ids).clone()
        mask[:, TOK.eos_id] = False
        return mask
    return masked


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: extra threads only wait on each other on a busy machine
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("seed", [0, 1])
def test_incremental_grammar_gives_the_same_samples_as_the_whole_prefix(seed, one_thread):
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    prompt = torch.full((2, 1), TOK.bos_id, dtype=torch.long)
    n = 60  # almost four contexts: the window moves on, the automaton must not lose its place
    runs = []
    for allowed in (make_allowed(TOK, 1, grammar=True, max_bars=None, continue_bars=False),
                    whole_prefix_allowed(TOK, 1)):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            runs.append(gpt.generate(prompt, n, temperature=1.5, allowed=without_eos(allowed), generator=g))
    ours, reference = runs
    assert ours.shape == (2, 1 + n)
    assert torch.equal(ours, reference)
    for row in ours.tolist():  # and the grammar held all the way
        assert TOK.token_errors(row) == 0 and TOK.count_notes(row) > 0
