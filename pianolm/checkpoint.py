"""Checkpoint -> tokenizer + GPT (+ the run's config): the one reader, with every check in one place.

A checkpoint written by train.py carries, beside Lightning's `state_dict`, the tokenizer's JSON and
hash, the GPT's config and the run's resolved config (`model.lit.LitGPT` adds them), so it
rebuilds both halves alone. Plain data only: `model.ckptio.load_plain` never unpickles code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

import remi
from model import GPT, GPTConfig
from model.ckptio import load_plain

from .errors import CheckpointError

REQUIRED_KEYS = ("state_dict", "tokenizer", "model_config")


def resolve_checkpoint(path: str | Path) -> Path:
    """A .ckpt file, or a run folder holding checkpoints/last.ckpt (or last.ckpt)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"checkpoint folder {path} holds no checkpoints/last.ckpt; pass the .ckpt file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def match_state_dict(state: dict, expected: Sequence[str], where: str) -> dict:
    """The model's own keys out of a (Lightning) state dict whose keys carry a prefix ("gpt.").

    The prefix is found, not assumed: it is whatever precedes the model's first key in the
    checkpoint (so "gpt.", "model.", "gpt._orig_mod." or none all work).
    """
    probe = expected[0]
    for key in state:
        if key == probe or key.endswith("." + probe):
            prefix = key[: len(key) - len(probe)]
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            missing = [k for k in expected if k not in sub]
            if not missing:
                return {k: sub[k] for k in expected}
            raise CheckpointError(f"{where}: the weights lack {len(missing)} of the model's tensors, "
                                  f"e.g. {missing[0]!r}; was it written by another model version?")
    raise CheckpointError(f"{where}: no GPT weights in its state_dict (looked for a key ending in {probe!r})")


@dataclass
class Header:
    """What a checkpoint says about itself, checked: everything but the weights."""

    path: Path
    tokenizer: remi.Tokenizer
    model_config: GPTConfig
    raw: dict  # the whole checkpoint as plain data


def read_header(path: str | Path) -> Header:
    """The checkpoint's tokenizer and GPT config, each checked against the other."""
    path = resolve_checkpoint(path)
    try:
        ckpt = load_plain(path)
    except ValueError as e:  # a pickle error, a zip error, a text file: all mean "not a checkpoint"
        raise CheckpointError((str(e).strip().splitlines() or [""])[0][:600]) from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a pianolm checkpoint: it lacks {', '.join(map(repr, missing))} "
                              "(checkpoints written by train.py carry them)")
    try:
        tok = remi.Tokenizer.from_dict(ckpt["tokenizer"])
    except Exception as e:
        raise CheckpointError(f"{path}: its tokenizer does not load ({e})") from None
    if ckpt.get("tokenizer_hash") and ckpt["tokenizer_hash"] != tok.hash:
        raise CheckpointError(f"{path}: tokenizer hash {ckpt['tokenizer_hash'][:12]}… does not match its "
                              f"tokenizer JSON ({tok.hash[:12]}…); the checkpoint is inconsistent")
    try:
        config = GPTConfig.from_dict(dict(ckpt["model_config"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model_config does not load ({e})") from None
    if config.vocab_size != tok.vocab_size:
        raise CheckpointError(f"{path}: model vocab_size {config.vocab_size} != tokenizer vocab_size "
                              f"{tok.vocab_size}")
    return Header(path, tok, config, ckpt)


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[remi.Tokenizer, GPT, dict]:
    """(tokenizer, GPT in eval mode on `device`, the checkpoint's plain-data extras)."""
    head = read_header(path)
    path, config, ckpt = head.path, head.model_config, head.raw
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: its state_dict is not a mapping of tensors")
    # Before allocating anything: the config must describe the weights the file holds. A rough
    # count first (a damaged config can ask for tens of GB, or for a million layers), then every
    # tensor's shape against a model built on the meta device (shapes only, no memory).
    held = sum(v.numel() for v in state.values())
    described = 12 * config.n_layer * config.n_embd**2 + (config.padded_vocab_size + config.block_size) * config.n_embd
    if described > 1.5 * held + 1_000_000:
        raise CheckpointError(f"{path}: model_config {config.to_dict()} describes ~{described:,} parameters "
                              f"({described * 4 / 1e9:.1f} GB) but the checkpoint holds {held:,} weights; "
                              "the checkpoint is damaged or its model_config was edited")
    with torch.device("meta"):
        expected = GPT(config).state_dict()
    weights = match_state_dict(state, list(expected), str(path))
    for key, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{path}: tensor {key!r} has shape {tuple(tensor.shape)} but model_config "
                                  f"{config.to_dict()} needs {tuple(expected[key].shape)}; the checkpoint is damaged "
                                  "or its model_config was edited")
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor {key!r} holds NaN or infinite values; use an earlier checkpoint")
    gpt = GPT(config)
    gpt.load_state_dict(weights)
    extras = {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer_states")}
    return head.tokenizer, gpt.to(device).eval(), extras


# What resuming reads (Lightning: weights, optimizer and scheduler states, the loops' progress;
# LitGPT: the tokenizer hash), with the type each must have.
RESUME_KEYS = {"state_dict": dict, "optimizer_states": list, "lr_schedulers": list, "loops": dict, "tokenizer_hash": str}


def check_resume(ckpt_path: str | Path) -> dict:
    """The checkpoint `train.py ckpt_path=` resumes from, checked before any work: a file that
    loads as plain data and holds everything in RESUME_KEYS, else CheckpointError naming the file
    and what to do. Returns its small entries (tokenizer hash, step, config, ...) without the
    weights and optimizer states (Lightning reads the file again); once the data's tokenizer is
    known, `model.lit.check_tokenizer_hash` compares them."""
    path = Path(ckpt_path)
    todo = ("resume from the last.ckpt of an earlier train.py run (<run folder>/checkpoints/last.ckpt), "
            "or start fresh with ckpt_path=null")
    if path.is_dir():
        raise CheckpointError(f"ckpt_path={path} is a folder; pass the checkpoint file in it "
                              f"(e.g. {path / 'checkpoints' / 'last.ckpt'}), or start fresh with ckpt_path=null")
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={path}: no such file; {todo}")
    try:
        ckpt = load_plain(path)
    except ValueError as e:  # a truncated zip, a text file, pickled code: torch's first sentence
        cause = e.__cause__ or e
        why = f"{type(cause).__name__}: " + ((str(cause).strip().splitlines() or [""])[0].split(". ")[0])[:160]
        raise CheckpointError(f"ckpt_path={path} cannot be read as a checkpoint (truncated, damaged or not "
                              f"plain data: {why}); {todo}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"ckpt_path={path} holds a {type(ckpt).__name__}, not a training checkpoint; {todo}")
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    problems = ([f"it lacks {', '.join(map(repr, missing))}"] if missing else []) + [
        f"its {k!r} is a {type(ckpt[k]).__name__}" for k, kind in RESUME_KEYS.items() if k in ckpt and not isinstance(ckpt[k], kind)]
    if problems:
        raise CheckpointError(f"ckpt_path={path} is not a checkpoint train.py can resume from: {'; '.join(problems)} "
                              f"(a weights-only or another program's checkpoint?); {todo}")
    if not all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values()):
        raise CheckpointError(f"ckpt_path={path}: its state_dict is not a mapping of tensors; {todo}")
    return {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer_states")}
