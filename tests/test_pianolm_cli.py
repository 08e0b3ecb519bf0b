"""`python -m pianolm`: one dispatcher; bad input is one line and exit status 2."""
from __future__ import annotations

import json

from pianolm.__main__ import COMMANDS, main
from pianolm.runinfo import code_fingerprint


def test_fingerprint_prints_the_code_fingerprint(capsys):
    assert main(["fingerprint"]) == 0
    assert capsys.readouterr().out.strip() == code_fingerprint()


def test_unknown_or_missing_command_lists_the_commands(capsys):
    assert main([]) == 2 and main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in COMMANDS)


def test_info_of_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"pianolm info: error: checkpoint {tmp_path / 'nope.ckpt'} does not exist"


def test_info_reads_a_checkpoint_header(tmp_path, capsys):
    import torch

    import remi
    from model import GPT, GPTConfig

    tok = remi.Tokenizer()
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"gpt.{k}": v for k, v in GPT(config).state_dict().items()},
                "tokenizer": tok.to_dict(), "tokenizer_hash": tok.hash, "model_config": config.to_dict(),
                "global_step": 12, "cfg": {"round": "round3", "tags": ["x"]}}, path)
    assert main(["info", str(tmp_path)]) == 0  # a run folder holding last.ckpt works too
    out = json.loads(capsys.readouterr().out)
    assert out["global_step"] == 12 and out["tokenizer_hash"] == tok.hash and out["round"] == "round3"
    assert out["model_config"]["n_embd"] == 16
