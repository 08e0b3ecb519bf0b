"""What identifies a run: the code that trained it and the weights and batches it ended with."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

# The sources whose code decides what a run trains and how: a run records their fingerprint.
CODE_DIRS = ("remi", "model", "pianolm")
CODE_FILES = ("train.py",)


def source_root() -> Path:
    """The folder holding remi/, model/ and pianolm/ (a checkout, or site-packages when installed)."""
    return Path(__file__).resolve().parents[1]


def code_fingerprint(root: str | Path | None = None) -> str:
    """16 hex digits of sha256 over remi/, model/, pianolm/ and train.py: which code trained a run.

    `experiments/ablate.py` compares it with a kept run's, so results from older code are not
    silently mixed with new ones. A file that is absent (train.py in an installed copy) is left out.
    """
    root = Path(root) if root is not None else source_root()
    files = sorted(p for d in CODE_DIRS for p in (root / d).rglob("*.py"))
    files += [root / f for f in CODE_FILES if (root / f).is_file()]
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's tensors in name order: equal exactly when the weights are equal."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def gather(obj: object) -> list:
    """obj from every rank (a one-element list without a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out
