"""`remi.Tokenizer`: the public face of the package (see docs/ARCHITECTURE.md for the contract).

MIDI (path, bytes, mido.MidiFile) or Score -> ids -> Score / mido.MidiFile, plus the grammar
helpers, JSON persistence and the BPE hooks. The BPE engine lives in `remi.bpe`, which knows
ids only; training it for a tokenizer (which ids start words, which never merge) happens here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from . import decode as _decode
from . import encode as _encode
from . import grammar as _grammar
from .bpe import BPEModel, shard_songs, train_bpe
from .config import TokenizerConfig
from .keys import find_key
from .midi_read import MidiReadError, read_midi
from .score import Score
from .vocab import BAR, INFILL, KEY, PITCH, Vocab

FORMAT_VERSION = 1
T = TypeVar("T")


class Tokenizer:
    def __init__(self, config: TokenizerConfig | None = None, bpe=None):
        self.config = config or TokenizerConfig()
        self.vocab = Vocab.build(self.config)
        self.bpe = bpe

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "Tokenizer":
        return cls(TokenizerConfig.from_yaml(path))

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        """A conf/tokenizer yaml or a tokenizer JSON written by `save`."""
        path = Path(path)
        return cls.load(path) if path.suffix.lower() == ".json" else cls.from_yaml(path)

    def with_bpe(self, model: BPEModel) -> "Tokenizer":
        return Tokenizer(self.config, bpe=model)

    def train_bpe(self, data: Iterable[Sequence[int]] | str | Path, vocab_size: int) -> "Tokenizer":
        """This tokenizer with BPE learned on base-id sequences or a base-token shard folder.

        A shard folder streams its `train` split and must have been written with this (BPE-free)
        tokenizer: a hash mismatch is an error, so merges are never learned on the wrong ids.
        Words start at Bar; special tokens never merge.
        """
        if self.bpe is not None:
            raise ValueError("this tokenizer already has BPE; train on its base tokenizer (no bpe) instead")
        if isinstance(data, (str, Path)):
            shard_dir = Path(data)
            if not shard_dir.is_dir():
                raise FileNotFoundError(f"BPE training data {shard_dir} is not a shard folder")
            # no BPE yet; a config that asks for BPE has the base ids of bpe_vocab_size 0
            data = shard_songs(shard_dir, "train", {self.hash} | self.base_hashes())
        model = train_bpe(data, base_vocab_size=self.base_vocab_size, vocab_size=vocab_size,
                          word_start_ids={self.bar_id},
                          never_merge_ids={self.pad_id, self.bos_id, self.eos_id, self.mask_id})
        return self.with_bpe(model)

    def base_hashes(self) -> set[str]:
        """Hashes of the tokenizers whose ids are this one's base ids: its config as is, and with
        `bpe_vocab_size` 0 (the BPE-free tokenizer that writes base shards)."""
        return {Tokenizer(self.config).hash, Tokenizer(dataclasses.replace(self.config, bpe_vocab_size=0)).hash}

    # ---- sizes and ids ---------------------------------------------------------------------
    @property
    def base_vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return int(self.bpe.vocab_size) if self.bpe is not None else len(self.vocab)

    @property
    def ticks_per_beat(self) -> int:
        return self.vocab.ticks_per_beat

    @property
    def pad_id(self) -> int:
        return self.vocab.special_id("PAD")

    @property
    def bos_id(self) -> int:
        return self.vocab.special_id("BOS")

    @property
    def eos_id(self) -> int:
        return self.vocab.special_id("EOS")

    @property
    def mask_id(self) -> int:
        return self.vocab.special_id("MASK")

    @property
    def bar_id(self) -> int:
        return self.vocab.first[BAR]

    @property
    def infill_ids(self) -> tuple[int, int, int] | None:
        """(Infill_Start, Infill_Middle, Infill_End) ids, or None without `infill_tokens`."""
        if not self.config.infill_tokens:
            return None
        first = self.vocab.first[INFILL]
        return first, first + 1, first + 2

    @property
    def pitch_id_range(self) -> tuple[int, int]:
        """(first, last) id of the base vocabulary's Pitch tokens: contiguous, one id a semitone."""
        first = self.vocab.first[PITCH]
        return first, first + self.config.pitch_range[1] - self.config.pitch_range[0]

    @cached_property
    def hash(self) -> str:
        h = hashlib.sha256(self.config.canonical_json())  # without BPE: the config's own hash
        if self.bpe is not None:
            h.update(b"|bpe|" + str(self.bpe.hash).encode())
        return h.hexdigest()

    # ---- encode ----------------------------------------------------------------------------
    def to_score(self, src) -> Score:
        """Path / bytes / mido.MidiFile / Score -> Score (MidiReadError for unreadable MIDI)."""
        if isinstance(src, Score):
            return src
        if isinstance(src, (str, Path, bytes, bytearray, memoryview)):
            return read_midi(src)
        from . import midi_io

        if midi_io.is_midifile(src):
            return read_midi(midi_io.midifile_to_bytes(src), name=getattr(src, "filename", None) or "<mido.MidiFile>")
        raise TypeError(f"Tokenizer.encode takes a path, bytes, mido.MidiFile or remi.Score, got {type(src).__name__}")

    def encode(self, src, add_special: bool = True) -> list[int]:
        """MIDI or Score -> ids: BOS, REMI tokens, EOS (BPE-merged when the tokenizer has BPE)."""
        return self.encode_score(self.to_score(src), add_special=add_special, source=_source_of(src))

    def encode_score(self, score: Score, add_special: bool = True, source: str | None = None) -> list[int]:
        """Score -> ids as `encode`; `source` names the piece in a MidiReadError (see `_bounded`)."""
        return self._bounded(score, source, lambda s: self._ids(s, add_special, merge=True, as_list=True))

    def encode_ids(self, score: Score, source: str | None = None) -> np.ndarray:
        """`encode_score` (BOS and EOS included) as an int64 array, without the list round trip."""
        return self._bounded(score, source, lambda s: self._ids(s, True, merge=True, as_list=False))

    def encode_base(self, score: Score, source: str | None = None) -> np.ndarray:
        """Score -> base REMI ids (no BOS/EOS, no BPE), int64 array."""
        return self._bounded(score, source, lambda s: self._ids(s, False, merge=False, as_list=False))

    def quantize(self, score_or_midi) -> Score:
        """What decode(encode(x)) equals, note for note, at `ticks_per_beat`."""
        return self._bounded(self.to_score(score_or_midi), _source_of(score_or_midi),
                             lambda s: _encode.grid_to_score(_encode.quantize_grid(s, self.vocab), self.vocab))

    def _ids(self, score: Score, add_special: bool, merge: bool, as_list: bool) -> np.ndarray | list[int]:
        ids = _encode.grid_to_ids(_encode.quantize_grid(score, self.vocab), self.vocab)
        if add_special:
            ids = np.concatenate([[self.bos_id], ids, [self.eos_id]])
        if merge and self.bpe is not None:
            merged = self.bpe.encode(ids.tolist())
            return merged if as_list else np.asarray(merged, dtype=np.int64)
        return ids.tolist() if as_list else ids

    def check_notes(self, n: int, source: str | None = None) -> None:
        """MidiReadError when a piece of `n` notes is over `tokenizer.max_notes`."""
        if n > self.config.max_notes:
            raise MidiReadError(source or "<score>", f"{n} notes, over tokenizer.max_notes = "
                                f"{self.config.max_notes}; raise tokenizer.max_notes to encode it")

    def _bounded(self, score: Score, source: str | None, work: Callable[[Score], T]) -> T:
        """`work(score)` within two bounds on the encoder's arrays (~250 bytes a note at their
        peak besides the Score's 32; `benchmarks/bench_hostile.py`): a piece over
        `tokenizer.max_notes` is refused before any is built, and running out of memory inside
        (numpy's _ArrayMemoryError is a MemoryError) becomes a MidiReadError naming `source`
        (default "<score>"). Every encode goes through here: this is encode's one boundary for
        MemoryError (reading has its own, in `remi.read_midi`)."""
        self.check_notes(len(score), source)
        try:
            return work(score)
        except MemoryError:
            # Raised below, outside this handler: the traceback's frames hold the arrays that
            # filled the memory; leaving the handler frees them, so the error has room again.
            pass
        raise MidiReadError(source or "<score>", f"out of memory encoding {len(score)} notes (the encoder "
                            "needs ~250 bytes a note); give the process more memory or lower tokenizer.max_notes")

    # ---- decode ----------------------------------------------------------------------------
    def base_ids(self, ids) -> np.ndarray:
        """Merged ids -> base ids (identity without BPE); OOV ids raise ValueError."""
        if self.bpe is not None:
            ids = self.bpe.decode(_decode.check_ids(ids, self.vocab, size=self.vocab_size).tolist())
        return _decode.check_ids(ids, self.vocab)

    def decode_score(self, ids) -> Score:
        return _decode.ids_to_score(self.base_ids(ids), self.vocab)

    def decode(self, ids):
        """ids -> mido.MidiFile (type 1, ticks_per_beat = tok.ticks_per_beat)."""
        from .midi_io import gc_paused, score_to_midifile

        with gc_paused():
            return score_to_midifile(self.decode_score(ids))

    def tokens(self, ids) -> list[str]:
        toks = self.vocab.tokens
        if self.bpe is None:
            return [toks[i] for i in _decode.check_ids(ids, self.vocab).tolist()]
        out = []
        for i in _decode.check_ids(ids, self.vocab, size=self.vocab_size).tolist():
            out.append("+".join(toks[b] for b in self.bpe.expand(i)))
        return out

    def ids_from_tokens(self, tokens: list[str]) -> list[int]:
        """Base token strings -> base ids (KeyError names the unknown token)."""
        index = self._index
        try:
            return [index[t] for t in tokens]
        except KeyError as e:
            raise ValueError(f"unknown token {e.args[0]!r} for this tokenizer config") from None

    @cached_property
    def _index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.vocab.tokens)}

    def count_notes(self, ids) -> int:
        return _decode.count_notes(self.base_ids(ids), self.vocab)

    # ---- key tokens ------------------------------------------------------------------------
    def key_id(self, key) -> int:
        """The base id of the Key token of `key` (a `remi.keys.Key`, or its index 0..23: tonic,
        + 12 for minor). ValueError when this tokenizer has no key tokens."""
        if not self.config.key_tokens:
            raise ValueError("this tokenizer has no Key tokens (tokenizer.key_tokens is false)")
        value = int(key) if isinstance(key, (int, np.integer)) else key.index
        if not 0 <= value < 24:
            raise ValueError(f"a key index is 0..23 (tonic, + 12 for minor), got {value}")
        return self.vocab.first[KEY] + value

    def set_key(self, ids, key=None) -> list[int]:
        """`ids` with every Key token naming `key` (a `remi.keys.Key` or 0..23), or, by default,
        the key of the notes `ids` hold (`remi.keys.find_key`, the encoder's rule): what a prompt
        cut from a longer piece must say, since the encoder keyed it to the whole piece.
        Unchanged without key tokens or without notes."""
        if not self.config.key_tokens:
            return [int(i) for i in ids]
        base = self.base_ids(ids)
        if key is None:
            key = find_key(_decode.ids_to_score(base, self.vocab))
            if key is None:
                return [int(i) for i in ids]
        base = base.copy()
        base[self.vocab.types[base] == KEY] = self.key_id(key)
        out = base.tolist()
        return self.bpe.encode(out) if self.bpe is not None else out

    # ---- grammar ---------------------------------------------------------------------------
    def token_errors(self, ids) -> float:
        return _grammar.token_errors(self.base_ids(ids), self.vocab)

    def error_kinds(self, ids) -> dict[str, int]:
        """Grammar errors of `ids` by the rule they break (`remi.grammar.ERROR_KINDS`)."""
        return _grammar.error_kinds(self.base_ids(ids), self.vocab)

    def allowed_next(self, ids) -> np.ndarray:
        """(vocab_size,) bool mask of ids the grammar allows after `ids`."""
        return self.allowed_after_state(_grammar.state_after(self.base_ids(ids), self.vocab))

    def grammar_state(self, ids=()) -> _grammar.GrammarState:
        """The grammar automaton after `ids`, for incremental use by a sampler:
        `state.step(base_id)` for each base id of a sampled token, then
        `tok.allowed_after_state(state)` (O(1) per step instead of re-reading the prefix)."""
        return _grammar.state_after(self.base_ids(ids), self.vocab)

    def allowed_after_state(self, state: _grammar.GrammarState) -> np.ndarray:
        base_mask = state.mask()
        if self.bpe is None:
            return base_mask
        # A merged id is allowed when its whole expansion is; cached per automaton state.
        key = state.key()
        cached = self._bpe_mask_cache.get(key)
        if cached is None:
            cached = np.zeros(self.vocab_size, dtype=bool)
            cached[: len(base_mask)] = base_mask
            for i in range(len(base_mask), self.vocab_size):
                s = state.copy()
                cached[i] = all(s.step(b) for b in self.bpe.expand(i))
            if len(self._bpe_mask_cache) > 4096:
                self._bpe_mask_cache.clear()
            self._bpe_mask_cache[key] = cached
        return cached.copy()

    @cached_property
    def _bpe_mask_cache(self) -> dict:
        return {}

    # ---- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "pianolm-remi-tokenizer",
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "vocabulary": list(self.vocab.tokens),
            "hash": self.hash,
            "bpe": self.bpe.to_dict() if self.bpe is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "tokenizer dict") -> "Tokenizer":
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{source}: tokenizer format_version {d.get('format_version')!r} is not "
                             f"{FORMAT_VERSION}; re-save it with this version of remi")
        config = TokenizerConfig.from_dict(d["config"], source=source)
        bpe = None
        if d.get("bpe") is not None:
            bpe = BPEModel.from_dict(d["bpe"])
        tok = cls(config, bpe=bpe)
        if "vocabulary" in d and list(d["vocabulary"]) != list(tok.vocab.tokens):
            raise ValueError(f"{source}: stored vocabulary differs from the one derived from its config "
                             "(made by an incompatible version of remi)")
        if "hash" in d and d["hash"] != tok.hash:
            raise ValueError(f"{source}: stored hash {d['hash'][:12]}… does not match the config's {tok.hash[:12]}…")
        return tok

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read tokenizer JSON {path}: {e}") from e
        return cls.from_dict(d, source=str(path))

    def __repr__(self) -> str:
        bpe = f", bpe={self.vocab_size}" if self.bpe is not None else ""
        return f"Tokenizer(base_vocab_size={self.base_vocab_size}{bpe}, hash={self.hash[:12]})"


def _source_of(src) -> str | None:
    """How a MidiReadError names the input of `Tokenizer.encode` (None: a Score, "<score>")."""
    if isinstance(src, (str, Path)):
        return str(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return None if isinstance(src, Score) else getattr(src, "filename", None) or f"<{type(src).__name__}>"
