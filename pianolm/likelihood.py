"""Bits per note of whole pieces: the measure validation reports, for any MIDI a user has.

Each piece is BOS + its tokens + EOS, cut into consecutive windows of the model's context that
never cross a piece boundary (`model.data.ValWindows`, the validation set's windows), so every
token after BOS is predicted exactly once. The summed negative log-likelihood in bits over the
pieces' notes (Pitch tokens) is what `train.py` logs as `val/bits_per_note` over the same windows;
`experiments/evaluate.py` and `pianolm.api.PianoLM.bits_per_note` both call this module.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import remi
from model.data import ValWindows
from model.gpt import GPT

MIDI_SUFFIXES = (".mid", ".midi")


def read_pieces(tok: remi.Tokenizer, files: Sequence[Path]) -> tuple[list[tuple[Path, list[int]]], list[str]]:
    """(path, ids with BOS/EOS) of each readable file with at least one note; problems as text."""
    pieces, skipped = [], []
    for f in files:
        try:
            ids = tok.encode(f)
        except remi.MidiReadError as e:
            skipped.append(str(e))
            continue
        if tok.count_notes(ids) == 0:
            skipped.append(f"{f}: no notes in the tokenizer's pitch range")
            continue
        pieces.append((f, ids))
    return pieces, skipped


def midi_files(folder: str | Path) -> list[Path]:
    """.mid/.midi files under `folder`, at any depth, sorted by relative path."""
    folder = Path(folder)
    return sorted((p for p in folder.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file()),
                  key=lambda p: p.relative_to(folder).as_posix())


@torch.no_grad()
def nll_bits_per_piece(gpt: GPT, sequences: Sequence[Sequence[int]], batch_size: int = 16) -> np.ndarray:
    """Summed NLL in bits of every token after the first, per sequence (float64, one per
    sequence), each sequence cut into consecutive windows of the model's context
    (`model.data.ValWindows`, as validation)."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    tokens = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ds = ValWindows(tokens, offsets, gpt.config.block_size)
    device = next(gpt.parameters()).device
    out = np.zeros(len(sequences), dtype=np.float64)
    was_training = gpt.training
    gpt.eval()
    try:
        for lo in range(0, len(ds), batch_size):
            hi = min(len(ds), lo + batch_size)
            rows = [ds[i] for i in range(lo, hi)]
            x = torch.stack([r[0] for r in rows]).to(device)
            y = torch.stack([r[1] for r in rows]).to(device)
            _, nll = gpt(x, y, reduction="none")  # (B, T) nats (or flat B*T), 0 where the target is -1
            np.add.at(out, ds.rows[lo:hi, 0], nll.double().reshape(len(rows), -1).sum(dim=1).cpu().numpy())
    finally:
        gpt.train(was_training)
    return out / math.log(2)


def summed_nll_bits(gpt: GPT, sequences: Sequence[Sequence[int]], batch_size: int = 16) -> float:
    """Summed NLL in bits of every token after the first of each sequence (`nll_bits_per_piece`)."""
    return float(nll_bits_per_piece(gpt, sequences, batch_size).sum())


def bits_per_note(gpt: GPT, tok: remi.Tokenizer, sequences: Sequence[Sequence[int]]) -> float:
    """Summed bits of `sequences` (BOS ... EOS each) over their notes."""
    notes = sum(tok.count_notes(s) for s in sequences)
    if notes == 0:
        raise ValueError("bits_per_note: the pieces hold no notes")
    return summed_nll_bits(gpt, sequences) / notes
