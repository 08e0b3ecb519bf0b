"""Checkpoint files that are never half-written, and that load without arbitrary pickle.

`AtomicCheckpointIO` writes to a temporary file in the same folder, fsyncs it and renames it
over the target (`os.replace` is atomic on POSIX and Windows), so a kill during a save leaves
the previous `last.ckpt` intact. It loads with `torch.load(weights_only=True)`: a checkpoint
that needs arbitrary pickle (anything but tensors and plain containers) is refused, the same
rule `sample.py` applies to a downloaded checkpoint.
"""
from __future__ import annotations

import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save `obj` to `path` via a temporary sibling and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_plain(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """torch.load with weights_only=True, with a message that says what to do when it fails."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for non-plain data, RuntimeError for non-zip files
        raise ValueError(_why_not_loaded(path, e)) from e


def _why_not_loaded(path: Path, e: Exception) -> str:
    """One sentence on why torch.load refused `path`: not a torch file at all, a damaged (e.g.
    truncated) archive, or a pickle of objects beyond tensors and plain containers."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return f"{path} is empty (0 bytes): pass a .ckpt that train.py wrote"
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # neither torch's zip archive nor a pickle
        return (f"{path} is not a checkpoint: neither a torch archive nor a pickle ({path.stat().st_size:,} "
                f"bytes starting {head!r}); pass a .ckpt that train.py wrote")
    refusal = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\. |\n\n|$)", str(e), re.DOTALL)
    if head[:1] == b"\x80" or (refusal and zipfile.is_zipfile(path)):
        what = refusal.group(1).strip() if refusal else (str(e).strip().splitlines() or [type(e).__name__])[0]
        return (f"{path} does not load as plain data (torch.load(weights_only=True): {what[:160]}): it holds "
                "objects other than tensors and plain containers, which pianolm does not unpickle, or was not "
                "written by torch.save; pass a .ckpt that train.py wrote")
    first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0][:160]
    return (f"{path} is damaged or incomplete, e.g. cut short while copying ({first}); copy it again or use "
            "another checkpoint (train.py writes its own whole: a killed save leaves the previous one)")


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        save_atomic(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return load_plain(path, map_location=map_location or "cpu")
