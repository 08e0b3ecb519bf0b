"""Token windows for training, and a fixed validation set, over plain numpy token arrays.

Knows token ids only, never MIDI: `train.py` loads the shards (via `remi.shards`) and hands the
arrays in. Two datasets:

- `TrainWindows` — an endless stream of batches of random windows of `block_size + 1` tokens
  (inputs are the first `block_size`, targets the last `block_size`). Batch number `k` on rank `r`
  is drawn from a generator seeded with `(seed, r, k)`, so the stream is a pure function of its
  position: each DDP rank sees different windows, and resuming at step `s` continues exactly
  where a straight run would be, with no sampler state to save.
- `ValWindows` — every validation song in full, cut in order into windows of `block_size`
  predicted tokens that never cross a song boundary (the last window of a song is padded with
  target -1). Every token after a song's first (BOS) is predicted exactly once, so the summed
  negative log-likelihood is a fixed, comparable quantity: divided by the songs' note count it
  gives bits per note.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset


@dataclass(frozen=True)
class WindowConfig:
    block_size: int          # tokens the model sees per window
    batch_size: int          # windows per batch, per process
    seed: int = 1337
    val_batch_size: int | None = None  # default: batch_size
    # Share of training windows that begin at a song's first token (BOS) instead of anywhere.
    # Random crops almost never put BOS at position 0, so without these a model has not learned
    # how a piece begins from BOS alone, which is how generation from scratch starts.
    song_start_share: float = 0.0
    # Random transposition of each training window by up to this many semitones either way (0:
    # none), drawn so that every pitch stays in range. Needs `pitch_ids`: the first and last id
    # of the vocabulary's contiguous Pitch tokens (so a vocabulary without BPE: a merged token
    # holds a pitch that cannot be shifted alone). Every key then appears equally often, and the
    # key of a window can only be learned from what it plays, not from which keys are common.
    transpose: int = 0
    pitch_ids: tuple[int, int] | None = None
    # First id of the 24 Key tokens (major tonics 0..11, then minor), which a transposition
    # moves with the pitches; None when the vocabulary has none.
    key_first: int | None = None
    # Share of training windows rewritten as fill-in-the-middle examples (`Infill`); 0: none.
    infill_share: float = 0.0
    infill: "Infill | None" = None


def _as_int64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.int64))


@dataclass(frozen=True)
class Infill:
    """The ids a fill-in-the-middle example is laid out with, and the longest middle drawn.

    A window of the piece it starts in (up to its EOS) is cut at two bar boundaries into
    prefix | middle | suffix, the middle 1..`max_bars` whole bars (a Bar id opens each; the EOS
    also closes one, so the last bars of a piece can be the middle), and laid out as

        prefix  start  suffix  middle_mark  middle  end

    cut back to the window's length from the prefix's front, then the suffix's back. The model
    learns the middle given both sides, and `end` where it stops. Where `start` and `middle_mark`
    go is the data's choice, not something to predict: those two targets are ignored (-1), as is
    the padding after `end` when the piece ended inside the window.
    """

    start: int
    middle: int
    end: int
    bar: int
    eos: int
    pad: int
    max_bars: int = 4

    def __post_init__(self) -> None:
        if self.max_bars < 1:
            raise ValueError(f"Infill.max_bars must be >= 1, got {self.max_bars}")

    def rewrite(self, w: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
        """(row, ignored) for one window `w` (n,): the laid-out row (n,) and a bool (n - 1,) mask of
        targets to ignore; None when the window's piece holds no whole bar to take out."""
        n = len(w)
        eos = np.flatnonzero(w == self.eos)
        end = int(eos[0]) + 1 if len(eos) else n  # the piece this window starts in, EOS included
        bounds = np.flatnonzero(w[:end] == self.bar)
        if len(eos):
            bounds = np.append(bounds, end - 1)
        excess = end + 3 - n  # the three markers push this many tokens out of the window
        # (i, k): the middle is bars i .. i + k - 1 of the window; the rest must have room to give
        options = [(i, k) for k in range(1, min(self.max_bars, len(bounds) - 1) + 1)
                   for i in range(len(bounds) - k) if bounds[i] + end - bounds[i + k] > excess]
        if not options:
            return None
        ks = sorted({k for _, k in options})
        k = ks[int(rng.integers(0, len(ks)))]
        starts = [i for i, kk in options if kk == k]
        i = starts[int(rng.integers(0, len(starts)))]
        a, b = int(bounds[i]), int(bounds[i + k])
        prefix, middle, suffix = w[:a], w[a:b], w[b:end]
        if excess > 0:
            cut = min(excess, len(prefix))
            prefix, excess = prefix[cut:], excess - cut
            suffix = suffix[:len(suffix) - excess]  # at least one token stays (`options`)
        row = np.concatenate([prefix, [self.start], suffix, [self.middle], middle, [self.end]])
        out = np.full(n, self.pad, dtype=w.dtype)
        out[:len(row)] = row
        ignored = np.zeros(n - 1, dtype=bool)
        ignored[len(row) - 1:] = True  # padding
        if len(prefix):
            ignored[len(prefix) - 1] = True  # the target `start` (with no prefix it is no target)
        ignored[len(prefix) + len(suffix)] = True  # the target `middle_mark`
        return out, ignored


class TrainWindows(IterableDataset):
    """Endless batches (x, y), each (batch_size, block_size) int64, of random windows of `tokens`.

    `position()` is called when iteration starts and gives the number of batches this rank has
    already consumed (from the trainer's step counter), so a resumed run picks up mid-stream.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int,
                 rank: int = 0, position: Callable[[], int] = lambda: 0,
                 song_starts: np.ndarray | None = None, song_start_share: float = 0.0,
                 transpose: int = 0, pitch_ids: tuple[int, int] | None = None, key_first: int | None = None,
                 infill_share: float = 0.0, infill: Infill | None = None):
        if len(tokens) < block_size + 1:
            raise ValueError(f"the training split has {len(tokens)} tokens, fewer than one window of "
                             f"block_size + 1 = {block_size + 1}; use more data or a smaller model.block_size")
        if not 0.0 <= song_start_share <= 1.0:
            raise ValueError(f"datamodule.song_start_share must be in [0, 1], got {song_start_share}")
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.seed, self.rank, self.position = seed, rank, position
        self.song_start_share = song_start_share
        if transpose < 0:
            raise ValueError(f"augment.transpose must be >= 0 semitones, got {transpose}")
        if transpose and (pitch_ids is None or pitch_ids[0] > pitch_ids[1]):
            raise ValueError("augment.transpose > 0 needs the vocabulary's Pitch token ids (first, last)")
        self.transpose, self.pitch_ids, self.key_first = int(transpose), pitch_ids, key_first
        if not 0.0 <= infill_share <= 1.0:
            raise ValueError(f"data.infill_share must be in [0, 1], got {infill_share}")
        if infill_share > 0 and infill is None:
            raise ValueError("data.infill_share > 0 needs the Infill token ids (a vocabulary with infill_tokens)")
        self.infill_share, self.infill = float(infill_share), infill
        # song starts whose whole window fits (windows may run on into the next song, as any window)
        starts = np.asarray(song_starts if song_starts is not None else [], dtype=np.int64)
        self.song_starts = starts[starts <= len(tokens) - block_size - 1]
        if song_start_share > 0 and len(self.song_starts) == 0:
            raise ValueError("datamodule.song_start_share > 0 needs the training split's song starts; none was given "
                             "or none leaves room for a window")

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number k of this rank (a pure function of seed, rank and k)."""
        rng = np.random.default_rng((self.seed, self.rank, k))
        # any start whose window of block_size + 1 fits: the last token is a target too
        starts = rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        if self.song_start_share > 0:  # drawn only then, so a share of 0 keeps the old stream
            at_start = rng.random(self.batch_size) < self.song_start_share
            starts[at_start] = self.song_starts[rng.integers(0, len(self.song_starts), size=int(at_start.sum()))]
        idx = starts[:, None] + np.arange(self.block_size + 1)     # (B, T+1)
        w = self.tokens[idx].astype(np.int64)
        if self.transpose:  # drawn only then, so no transposition keeps the old stream
            w = transpose_windows(w, rng, self.transpose, *self.pitch_ids, key_first=self.key_first)
        if self.infill_share > 0:  # drawn only then, so a share of 0 keeps the old stream
            return self._infilled(w, rng)
        w = torch.from_numpy(w)
        return w[:, :-1], w[:, 1:]

    def _infilled(self, w: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) with a share of the rows laid out as infilling examples (`Infill`)."""
        y = w[:, 1:].copy()
        for r in np.flatnonzero(rng.random(len(w)) < self.infill_share):
            done = self.infill.rewrite(w[r], rng)
            if done is not None:
                w[r] = done[0]
                y[r] = np.where(done[1], -1, w[r, 1:])
        return torch.from_numpy(w[:, :-1]), torch.from_numpy(y)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        k = int(self.position())
        while True:
            yield self.batch(k)
            k += 1


def transpose_windows(w: np.ndarray, rng: np.random.Generator, semitones: int, first: int, last: int,
                      key_first: int | None = None) -> np.ndarray:
    """Each row of `w` (B, n) with its Pitch ids (`first`..`last`, one id a semitone) shifted by
    its own uniform draw from [-semitones, semitones], narrowed so that no pitch leaves the range;
    with `key_first` (the first of 24 Key ids: major tonics, then minor), the Key ids of a row
    name the key its shift leads to (same mode, tonic moved by the same interval)."""
    is_pitch = (w >= first) & (w <= last)
    lowest = np.where(is_pitch, w, last).min(axis=1)   # a row without pitches may shift by anything
    highest = np.where(is_pitch, w, first).max(axis=1)
    lo = np.maximum(-semitones, first - lowest)
    hi = np.minimum(semitones, last - highest)
    shift = rng.integers(lo, hi + 1)                   # (B,): lo <= 0 <= hi always
    out = w + is_pitch * shift[:, None]
    if key_first is not None:
        value = w - key_first
        is_key = (value >= 0) & (value < 24)
        moved = key_first + (value // 12) * 12 + (value % 12 + shift[:, None]) % 12
        out = np.where(is_key, moved, out)
    return out


def val_windows(offsets: np.ndarray, block_size: int) -> np.ndarray:
    """(n_windows, 3) int64 rows (song, first input position, n predicted) covering every song.

    A song of n tokens has n - 1 predicted tokens, cut into ceil((n - 1) / block_size) windows.
    Rows are in song order, then position order.
    """
    rows = []
    for s in range(len(offsets) - 1):
        n_pred = int(offsets[s + 1] - offsets[s]) - 1
        for c in range(0, n_pred, block_size):
            rows.append((s, int(offsets[s]) + c, min(block_size, n_pred - c)))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def spread_songs(n_songs: int, at_most: int | None) -> np.ndarray:
    """Indices of at most `at_most` songs spread evenly over `n_songs` (all when None): a fixed
    validation subset for short runs, the same for every run that asks for the same number."""
    if at_most is None or at_most >= n_songs:
        return np.arange(n_songs)
    if at_most < 1:
        raise ValueError(f"datamodule.val_songs must be >= 1 or null, got {at_most}")
    return np.unique(np.linspace(0, n_songs - 1, at_most).round().astype(np.int64))


def take_songs(tokens: np.ndarray, offsets: np.ndarray, songs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, offsets) of the chosen songs only, in their order."""
    if len(songs) == len(offsets) - 1:
        return tokens, offsets
    parts = [tokens[offsets[s]:offsets[s + 1]] for s in songs.tolist()]
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    return np.concatenate(parts), np.concatenate([[0], np.cumsum(lengths)])


class ValWindows(Dataset):
    """Windows `val_windows(...)[rank::world_size]`: (x, y), each (block_size,), y padded with -1."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, block_size: int,
                 rank: int = 0, world_size: int = 1):
        self.tokens, self.block_size = tokens, block_size
        self.rows = val_windows(offsets, block_size)[rank::world_size]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, start, n = (int(v) for v in self.rows[i])
        w = _as_int64(self.tokens[start:start + n + 1])
        x = torch.zeros(self.block_size, dtype=torch.int64)
        y = torch.full((self.block_size,), -1, dtype=torch.int64)
        x[:n], y[:n] = w[:-1], w[1:]
        return x, y


class WindowDataModule(L.LightningDataModule):
    """Training windows and the fixed validation set over token arrays (one per split).

    Rank and world size come from the trainer when the loaders are made; the training position
    is the trainer's step counter times gradient accumulation (batches consumed per rank).
    """

    def __init__(self, train_tokens: np.ndarray, val_tokens: np.ndarray, val_offsets: np.ndarray,
                 config: WindowConfig, train_offsets: np.ndarray | None = None):
        super().__init__()
        self.train_tokens, self.val_tokens, self.val_offsets = train_tokens, val_tokens, val_offsets
        self.train_offsets = train_offsets  # song boundaries of the training split (for song_start_share)
        self.config = config

    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def position(self) -> int:
        """Batches this rank has consumed so far (0 without a trainer)."""
        t = self.trainer
        return 0 if t is None else t.global_step * t.accumulate_grad_batches

    def train_dataloader(self) -> DataLoader:
        rank, _ = self._rank_world()
        ds = TrainWindows(self.train_tokens, self.config.block_size, self.config.batch_size,
                          self.config.seed, rank=rank, position=self.position,
                          song_starts=None if self.train_offsets is None else np.asarray(self.train_offsets)[:-1],
                          song_start_share=self.config.song_start_share,
                          transpose=self.config.transpose, pitch_ids=self.config.pitch_ids,
                          key_first=self.config.key_first, infill_share=self.config.infill_share,
                          infill=self.config.infill)
        return DataLoader(ds, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        ds = ValWindows(self.val_tokens, self.val_offsets, self.config.block_size, rank, world)
        return DataLoader(ds, batch_size=self.config.val_batch_size or self.config.batch_size,
                          shuffle=False, num_workers=0)

    def state_dict(self) -> dict:
        # Nothing is needed to resume (the stream is a function of the step); stored so a
        # checkpoint says where the data stream stood.
        return {"position": self.position(), "seed": self.config.seed}
