"""Stand-in models shared by the training tests (imports torch; remi's tests never load this)."""
from __future__ import annotations

import os

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


class ZeroLogits(nn.Module):
    """The uniform model over V tokens: every logit 0, so the loss per token is ln V.

    Follows GPT.forward's contract: logits alone, or (logits, cross-entropy ignoring -1 targets).
    """

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.dummy = nn.Parameter(torch.zeros(()))  # so an optimizer has something to hold

    def forward(self, idx, targets=None, reduction="mean"):
        logits = torch.zeros(*idx.shape, self.vocab_size) + 0 * self.dummy
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.reshape(-1, self.vocab_size), targets.reshape(-1),
                                       ignore_index=-1, reduction=reduction)



class CrashAt(L.Callback):
    """Ends the process at once (`os._exit`, no clean-up, as a kill would) when training reaches
    `at_step`: before that step's checkpoint is written, since Lightning runs checkpoint callbacks
    last. Given to train.py as Hydra overrides:
    `+callbacks.crash._target_=tests.stubs.CrashAt +callbacks.crash.at_step=N`."""

    def __init__(self, at_step: int):
        self.at_step = int(at_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.at_step:
            os._exit(3)
