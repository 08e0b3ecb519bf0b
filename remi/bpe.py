"""Byte-pair encoding over REMI token ids: learn merges, encode base ids to merged ids, decode back.

A merged token is a run of base tokens that occurs often inside one bar. The heavy lifting is done
by Hugging Face `tokenizers` (Rust): each base id becomes one unicode character and a sequence is
cut into words (a word starts at every Bar token; every special token is a word of its own) by an
HF pre-tokenizer. For training, HF's BPE trainer cuts and counts the words of the streamed
sequences; for encoding, the same pre-tokenizer makes the same cuts and HF's BPE model applies the
merges. Around it this module keeps the
id bookkeeping exact: base ids keep their values, merged ids follow them in merge order
(`base_vocab_size .. vocab_size - 1`), and every merged id expands to a fixed tuple of base ids,
so `decode(encode(x)) == x` for any sequence of in-vocabulary base ids, seen in training or not.

Never imports torch or mido.
"""
from __future__ import annotations

import hashlib
import json
import resource
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Regex
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import models as _hf_models
from tokenizers import pre_tokenizers as _hf_pre
from tokenizers import trainers as _hf_trainers

from . import shards

__all__ = ["BPEModel", "shard_songs", "train_bpe"]

# Base id i is the character chr(_CHAR_OFFSET + i), skipping the UTF-16 surrogate block, which a
# Rust string cannot hold. The offset keeps clear of ASCII and Latin-1 so no character is ever
# whitespace or a regex metacharacter.
_CHAR_OFFSET = 0x100
_SURROGATE_START, _SURROGATE_SIZE = 0xD800, 0x800
_MAX_BASE_VOCAB = 0x10FFFF - _CHAR_OFFSET - _SURROGATE_SIZE


def _id_codes(ids: np.ndarray) -> np.ndarray:
    """Base ids (n,) -> unicode code points (n,) uint32."""
    codes = ids.astype(np.uint32) + _CHAR_OFFSET
    codes[codes >= _SURROGATE_START] += _SURROGATE_SIZE
    return codes


def _ids_to_str(ids: np.ndarray) -> str:
    return _id_codes(ids).astype("<u4").tobytes().decode("utf-32-le")


def _str_to_ids(text: str) -> list[int]:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)
    codes[codes >= _SURROGATE_START + _SURROGATE_SIZE] -= _SURROGATE_SIZE
    return (codes - _CHAR_OFFSET).tolist()


def _as_base_array(ids: Sequence[int] | np.ndarray, base_vocab_size: int) -> np.ndarray:
    """Validated int64 copy of one base-id sequence; an out-of-range id is a ValueError naming it."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"expected a flat sequence of token ids, got an array of shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    bad = (arr < 0) | (arr >= base_vocab_size)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"id {int(arr[i])} at position {i} is not a base token id "
            f"(base vocabulary is 0..{base_vocab_size - 1}); BPE encodes base ids only"
        )
    return arr


def _char_class(ids: Iterable[int]) -> str:
    return "[" + _ids_to_str(np.array(sorted(ids), dtype=np.int64)) + "]"


def _pre_tokenizer(word_start_ids: frozenset[int], never_merge_ids: frozenset[int]) -> Any:
    """Specials stand alone (so nothing merges with them); a word-start id begins a new word."""
    steps = []
    if never_merge_ids:
        steps.append(_hf_pre.Split(Regex(_char_class(never_merge_ids)), behavior="isolated"))
    if word_start_ids:
        steps.append(_hf_pre.Split(Regex(_char_class(word_start_ids)), behavior="merged_with_next"))
    return _hf_pre.Sequence(steps) if steps else None


class BPEModel:
    """Learned merges over base ids. Build with `train_bpe` or `BPEModel.from_dict`.

    `merges[k] = (left, right)` (ids in this model's space) in rank order; a merge whose
    concatenation is new gets the next merged id, so `vocab_size = base_vocab_size + #new tokens`.
    """

    def __init__(
        self,
        base_vocab_size: int,
        merges: Sequence[tuple[int, int]],
        word_start_ids: Iterable[int],
        never_merge_ids: Iterable[int],
        stats: dict[str, Any] | None = None,
    ) -> None:
        if not 0 < base_vocab_size <= _MAX_BASE_VOCAB:
            raise ValueError(f"base_vocab_size must be in 1..{_MAX_BASE_VOCAB}, got {base_vocab_size}")
        self.base_vocab_size = int(base_vocab_size)
        self.word_start_ids = frozenset(int(i) for i in word_start_ids)
        self.never_merge_ids = frozenset(int(i) for i in never_merge_ids)
        for name, ids in (("word_start_ids", self.word_start_ids), ("never_merge_ids", self.never_merge_ids)):
            if any(not 0 <= i < base_vocab_size for i in ids):
                raise ValueError(f"{name} {sorted(ids)} must be base ids in 0..{base_vocab_size - 1}")
        self.merges: tuple[tuple[int, int], ...] = tuple((int(a), int(b)) for a, b in merges)
        self.stats: dict[str, Any] = dict(stats or {})

        # Expansions of every id (base ids expand to themselves), derived once from the merges.
        expansions: list[tuple[int, ...]] = [(i,) for i in range(self.base_vocab_size)]
        index = {e: i for i, e in enumerate(expansions)}
        for k, (a, b) in enumerate(self.merges):
            if not (0 <= a < len(expansions) and 0 <= b < len(expansions)):
                raise ValueError(f"merge {k} ({a}, {b}) uses an id not defined before it")
            joined = expansions[a] + expansions[b]
            if set(joined) & self.never_merge_ids:
                raise ValueError(f"merge {k} ({a}, {b}) contains a never-merge id")
            if set(joined[1:]) & self.word_start_ids:
                raise ValueError(f"merge {k} ({a}, {b}) would cross a word start (Bar)")
            if joined not in index:
                index[joined] = len(expansions)
                expansions.append(joined)
        self._expansions = expansions
        self.vocab_size = len(expansions)

        # Flat lookup tables for vectorised decode: id -> (start, length) into _flat.
        lengths = np.array([len(e) for e in expansions], dtype=np.int64)
        self._len = lengths
        self._start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self._flat = np.fromiter((i for e in expansions for i in e), dtype=np.int64, count=int(lengths.sum()))

        strings = list(_ids_to_str(np.arange(self.base_vocab_size)))
        strings += ["".join(strings[i] for i in e) for e in expansions[self.base_vocab_size :]]
        vocab = {s: i for i, s in enumerate(strings)}
        hf_merges = [(strings[a], strings[b]) for a, b in self.merges]
        hf = _HFTokenizer(_hf_models.BPE(vocab=vocab, merges=hf_merges, dropout=None, fuse_unk=False))
        pre = _pre_tokenizer(self.word_start_ids, self.never_merge_ids)
        if pre is not None:
            hf.pre_tokenizer = pre
        self._hf = hf
        self.hash = hashlib.sha256(json.dumps(self._identity(), sort_keys=True).encode()).hexdigest()

    def _identity(self) -> dict[str, Any]:
        """Everything that changes what encode returns (the hash covers exactly this)."""
        return {
            "base_vocab_size": self.base_vocab_size,
            "merges": [list(m) for m in self.merges],
            "word_start_ids": sorted(self.word_start_ids),
            "never_merge_ids": sorted(self.never_merge_ids),
        }

    # ---- encode / decode -------------------------------------------------------------------

    def encode(self, ids: Sequence[int] | np.ndarray) -> list[int]:
        """Base ids -> merged ids. Deterministic; ValueError on an id outside the base vocabulary."""
        arr = _as_base_array(ids, self.base_vocab_size)
        if arr.size == 0:
            return []
        return self._hf.encode(_ids_to_str(arr), add_special_tokens=False).ids

    def encode_batch(self, sequences: Iterable[Sequence[int] | np.ndarray]) -> list[list[int]]:
        """encode() of many sequences at once (the Rust side runs them in parallel)."""
        texts = [_ids_to_str(_as_base_array(s, self.base_vocab_size)) for s in sequences]
        return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> list[int]:
        """Merged ids -> base ids, the exact inverse of encode. Base ids pass through unchanged."""
        return self.decode_array(ids).tolist()

    def decode_array(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """decode() as an int64 array (no Python list in between)."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        bad = (arr < 0) | (arr >= self.vocab_size)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"id {int(arr[i])} at position {i} is outside the BPE vocabulary 0..{self.vocab_size - 1}")
        lengths = self._len[arr]
        # Output position j copies _flat[start[token(j)] + offset of j inside its token].
        ends = np.cumsum(lengths)
        shift = np.repeat(self._start[arr] - (ends - lengths), lengths)
        return self._flat[np.arange(int(ends[-1]), dtype=np.int64) + shift]

    def expand(self, token_id: int) -> tuple[int, ...]:
        """The base ids one (base or merged) id stands for."""
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"id {token_id} is outside the BPE vocabulary 0..{self.vocab_size - 1}")
        return self._expansions[token_id]

    # ---- serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; `stats` (how training went) is informative and not hashed."""
        return {**self._identity(), "vocab_size": self.vocab_size, "hash": self.hash, "stats": dict(self.stats)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BPEModel:
        model = cls(
            base_vocab_size=d["base_vocab_size"],
            merges=[tuple(m) for m in d["merges"]],
            word_start_ids=d.get("word_start_ids", ()),
            never_merge_ids=d.get("never_merge_ids", ()),
            stats=d.get("stats"),
        )
        for key in ("vocab_size", "hash"):
            if key in d and d[key] != getattr(model, key):
                raise ValueError(
                    f"BPE data is inconsistent: stored {key} {d[key]!r} but the merges give "
                    f"{getattr(model, key)!r}; the file was edited or written by another version"
                )
        return model

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPEModel) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self.hash)

    def __repr__(self) -> str:
        return f"BPEModel(base_vocab_size={self.base_vocab_size}, vocab_size={self.vocab_size}, hash={self.hash[:12]})"


# ---- training ------------------------------------------------------------------------------


def _rss_mb() -> float:
    """Current resident set size of this process, MiB (Linux /proc; 0.0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return 0.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _batches(sequences: Iterable[Sequence[int] | np.ndarray], base_vocab_size: int, stats: dict[str, int],
             size: int = 64) -> Iterator[list[str]]:
    """The corpus as batches of `size` strings, one per sequence (validated, counted into `stats`)."""
    batch: list[str] = []
    for seq in sequences:
        arr = _as_base_array(seq, base_vocab_size)
        stats["n_sequences"] += 1
        stats["n_base_tokens"] += int(arr.size)
        batch.append(_ids_to_str(arr))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def train_bpe(
    sequences: Iterable[Sequence[int] | np.ndarray],
    base_vocab_size: int,
    vocab_size: int,
    word_start_ids: set[int],
    never_merge_ids: set[int],
) -> BPEModel:
    """Learn merges until the vocabulary has `vocab_size` ids (fewer if the data runs out of pairs).

    `sequences` is consumed once, streaming: only the distinct words (bars) and their counts are
    held, so memory is bounded by the corpus's variety, not its length. A word starts at every id
    in `word_start_ids` (the Bar token), so no merged token spans a bar line; ids in
    `never_merge_ids` (PAD/BOS/EOS/MASK) are words of their own and never merged.

    Greedy BPE as HF's trainer does it: the most frequent pair first, ties to the smallest ids.
    Each sequence goes to HF as one string; HF's trainer cuts it into words with the same
    pre-tokenizer that encoding uses, and counts them, in Rust. (Counting the words here first
    and handing HF each distinct word cost ~0.3 s of Python per 2.5 M tokens, for the same merges:
    HF counts its input again whatever it is given.)
    """
    if vocab_size <= base_vocab_size:
        raise ValueError(f"vocab_size ({vocab_size}) must exceed base_vocab_size ({base_vocab_size}) to learn any merge")
    word_starts, never = frozenset(word_start_ids), frozenset(never_merge_ids)
    rss_before, t0 = _rss_mb(), time.perf_counter()
    stats = {"n_sequences": 0, "n_base_tokens": 0}

    alphabet = [chr(c) for c in _id_codes(np.arange(base_vocab_size)).tolist()]
    trainer = _hf_trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=0,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=alphabet,  # every base id is a symbol, seen in the data or not
        limit_alphabet=base_vocab_size,
    )
    hf = _HFTokenizer(_hf_models.BPE())
    pre = _pre_tokenizer(word_starts, never)
    if pre is not None:
        hf.pre_tokenizer = pre
    hf.train_from_iterator(_batches(sequences, base_vocab_size, stats), trainer=trainer)

    # Re-number the trained merges in our id space: base ids fixed, new strings in merge order
    # (a string made twice, "ab"+"c" and "a"+"bc", is one token, as in HF's own vocabulary).
    string_ids = {ch: i for i, ch in enumerate(alphabet)}
    merges: list[tuple[int, int]] = []
    for m in json.loads(hf.to_str())["model"]["merges"]:
        left, right = m.split(" ") if isinstance(m, str) else m
        merges.append((string_ids[left], string_ids[right]))
        string_ids.setdefault(left + right, len(string_ids))
    t_end = time.perf_counter()

    stats.update(
        {
            "train_seconds": round(t_end - t0, 3),
            "rss_before_mb": round(rss_before, 1),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "target_vocab_size": int(vocab_size),
        }
    )
    return BPEModel(base_vocab_size, merges, word_starts, never, stats=stats)


# ---- base-token shards --------------------------------------------------------------------


def shard_songs(shard_dir: Path, split: str, accept_hashes: set[str]) -> Iterator[np.ndarray]:
    """Stream one split's songs from a shard folder (memmap slices: nothing is read twice).

    The folder must hold ids of one of `accept_hashes` (the base tokenizer's hashes): merges are
    never learned on another tokenizer's ids."""
    found = shards.read_manifest(shard_dir).get("tokenizer_hash")
    if found not in accept_hashes:
        raise ValueError(
            f"{shard_dir} holds ids of tokenizer {str(found)[:12]}, not of this base tokenizer "
            f"({', '.join(sorted(h[:12] for h in accept_hashes))}): BPE must learn from base-token shards "
            "written with the same config (prepare them with bpe_vocab_size: 0)"
        )
    shard = shards.load_split(shard_dir, split, expect_hash=found)
    offsets = np.asarray(shard.offsets)
    for i in range(len(offsets) - 1):
        yield np.asarray(shard.tokens[offsets[i] : offsets[i + 1]])
