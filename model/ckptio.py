"""Checkpoint files that are never half-written, and that load without arbitrary pickle.

`AtomicCheckpointIO` writes to a temporary file in the same folder, fsyncs it and renames it
over the target (`os.replace` is atomic on POSIX and Windows), so a kill during a save leaves
the previous `last.ckpt` intact. It loads with `torch.load(weights_only=True)`: a checkpoint
that needs arbitrary pickle (anything but tensors and plain containers) is refused, the same
rule `sample.py` applies to a downloaded checkpoint.
"""
from __future__ import annotations

import os
import tempfile
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
        raise ValueError(f"{path} is not a plain-data checkpoint (torch.load(weights_only=True) "
                         f"refused it: {e})") from e


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        save_atomic(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return load_plain(path, map_location=map_location or "cpu")
