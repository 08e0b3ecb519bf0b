"""model.hf: export to a Hugging Face GPT-2 folder, parity through transformers, and loading back."""
from __future__ import annotations

import doctest
import json

import pytest
import torch

import model.hf as hf_mod
from model import GPT, GPTConfig
from model.hf import export_hf, hf_state_dict, load_hf, model_card, read_generation_config

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")


def trained_like(seed: int = 0, **overrides) -> GPT:
    """A small GPT whose every tensor (biases and LayerNorms too) is non-trivial, so a mapping
    that dropped or mis-transposed any one of them would change the logits."""
    torch.manual_seed(seed)
    args = dict(vocab_size=149, block_size=40, n_layer=2, n_head=4, n_embd=32, pad_vocab_multiple=64)
    args.update(overrides)
    gpt = GPT(GPTConfig(**args))
    with torch.no_grad():
        for p in gpt.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return gpt.eval()


@pytest.mark.parametrize("overrides", [dict(), dict(pad_vocab_multiple=1, vocab_size=64),
                                       dict(bias=False, n_layer=3, n_head=2)])
def test_transformers_reads_the_export_to_equal_logits_and_we_read_it_back(tmp_path, overrides):
    gpt = trained_like(**overrides)
    out = export_hf(gpt, tmp_path / "hf", generation={"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                                                      "temperature": 0.9, "top_p": 0.95})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    idx = torch.randint(0, gpt.config.vocab_size, (3, gpt.config.block_size), generator=torch.Generator().manual_seed(1))
    ours = gpt(idx)

    theirs = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    # the exported vocabulary is the tokenizer's, not the padded row count
    assert theirs.config.vocab_size == gpt.config.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, ours, atol=1e-5, rtol=1e-5)
    gen = transformers.GenerationConfig.from_pretrained(out)
    assert (gen.bos_token_id, gen.eos_token_id, gen.temperature, gen.top_p, gen.top_k) == (1, 2, 0.9, 0.95, 0)

    back = load_hf(out)
    assert back.config == gpt.config  # pad_vocab_multiple and bias come back too
    assert torch.equal(back(idx), ours)
    # and our in-memory import of transformers' model agrees with the folder loader
    torch.testing.assert_close(GPT.from_hf(theirs).eval()(idx), ours, atol=1e-6, rtol=1e-6)


def test_greedy_generation_agrees_with_transformers(tmp_path):
    gpt = trained_like(seed=3)
    with torch.no_grad():  # peaked predictions: a real path rather than ties
        for p in gpt.parameters():
            if p.dim() == 2:
                p.mul_(8)
    out = export_hf(gpt, tmp_path, generation={"bos_token_id": 1, "eos_token_id": 2})
    theirs = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    prompt = torch.tensor([[1, 40, 41], [1, 7, 90]])
    ref = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=20,
                          min_new_tokens=20, eos_token_id=None, pad_token_id=0)
    assert torch.equal(gpt.generate(prompt, 20, temperature=0.0), ref)


def test_export_state_dict_has_transformers_names_and_shapes():
    gpt = trained_like()
    sd = hf_state_dict(gpt)
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=149, n_positions=40, n_layer=2, n_head=4, n_embd=32)).state_dict()
    theirs.pop("lm_head.weight")
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert gpt.transformer.wte.weight.shape[0] == 192  # padded to a multiple of 64 inside, 149 outside


def test_extra_files_and_model_card_are_written(tmp_path):
    card = model_card({"name": "pianolm-tiny", "license": "mit", "data": ["bundled corpus (music21)"],
                       "config": {"model": {"n_layer": 2, "n_embd": 32}, "tokenizer": "fine"},
                       "metrics": {"val_bits_per_token": 1.234567891, "pipe|name": 2.0}})
    tok = tmp_path / "tok.json"
    tok.write_text('{"vocab": ["PAD_None"]}')
    out = export_hf(trained_like(), tmp_path / "hf", extra_files={"README.md": card, "tokenizer.json": tok,
                                                                   "raw.bin": b"\x00\x01"})
    text = (out / "README.md").read_text()
    assert text.startswith("---\nlibrary_name: transformers") and "license: mit" in text
    assert "| model.n_layer | 2 |" in text and "| val_bits_per_token | 1.23457 |" in text
    assert "| pipe\\|name | 2 |" in text and "- bundled corpus (music21)" in text
    assert (out / "tokenizer.json").read_text() == tok.read_text()
    assert (out / "raw.bin").read_bytes() == b"\x00\x01"


def test_bad_input_names_the_key_or_file(tmp_path):
    gpt = trained_like()
    with pytest.raises(ValueError, match=r"unknown generation key\(s\) \['topk'\]"):
        export_hf(gpt, tmp_path / "a", generation={"topk": 5})
    for name in ("config.json", "../x", "sub/x"):
        with pytest.raises(ValueError, match="extra file name"):
            export_hf(gpt, tmp_path / "b", extra_files={name: "x"})
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_hf(tmp_path / "missing")
    out = export_hf(gpt, tmp_path / "c")
    cfg = json.loads((out / "config.json").read_text())
    cfg["n_layer"] = 5
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config.json: 'pianolm.gpt_config' disagrees.*n_layer: 2 vs 5"):
        load_hf(out)
    cfg["n_layer"], cfg["activation_function"] = 2, "relu"
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="cannot represent.*activation_function='relu'"):
        load_hf(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_hf(out)
    out = export_hf(gpt, tmp_path / "d")
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        load_hf(out)
    with pytest.raises(ValueError, match="model_card: info needs a 'name'"):
        model_card({})


def test_a_plain_transformers_gpt2_folder_loads(tmp_path):
    """Not only our exports: a GPT-2 saved by transformers itself (no 'pianolm' entry)."""
    torch.manual_seed(0)
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50, n_positions=16, n_layer=1, n_head=2, n_embd=16, bos_token_id=0, eos_token_id=1)).eval()
    theirs.save_pretrained(tmp_path)
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(load_hf(tmp_path)(idx), theirs(idx).logits, atol=1e-5, rtol=1e-5)
    assert read_generation_config(tmp_path).get("eos_token_id") == 1


def test_docstring_example_runs():
    result = doctest.testmod(hf_mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0
