"""The tokenizer's one configuration object, mirrored key for key by `conf/tokenizer/*.yaml`.

Everything the vocabulary, the grammar and the quantization grid depend on lives here; nothing is
derived from data. Derived values (duration bins, tempo bins, positions per bar...) are computed
once in `remi.vocab.Vocab`, never here, so this module imports nothing heavy.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

SUSTAIN_PEDAL_MODES = ("extend", "ignore")
LEADING_SILENCE_MODES = ("keep", "trim")
DEFAULT_MAX_NOTES = 2_000_000


def _default_beat_res() -> dict[str, int]:
    return {"0_4": 8, "4_12": 4}


def _default_time_signature_range() -> dict[int, list[int]]:
    # MidiTok 3.x's default: denominator -> allowed numerators (order kept: it fixes vocab order).
    return {8: [3, 12, 6], 4: [5, 6, 3, 2, 1, 4]}


@dataclass(frozen=True)
class TokenizerConfig:
    """REMI tokenizer settings. Frozen: a tokenizer's identity (its hash) is this object + BPE.

    pitch_range: lowest and highest MIDI pitch kept, inclusive (notes outside are dropped).
    beat_res: MidiTok-style `{"lo_hi": positions_per_beat}`: duration bins, in beats, of
        `1/res` beat steps over [lo, hi) beats, plus one bin of exactly `hi` beats for the
        largest range. The largest `res` is also the Position grid (positions per beat).
    num_velocities: velocity bins, `linspace(0, 127, n + 1)[1:]` truncated to ints (MidiTok's).
    use_tempos / num_tempos / tempo_range / log_tempos: Tempo tokens and their bins (bpm).
    use_time_signatures / time_signature_range: TimeSig tokens, `{denominator: [numerators]}`;
        time signatures outside the range are dropped (the bar grid follows the others).
    sustain_pedal: "extend" (a note released while CC64 is down sounds until the pedal lifts or
        its pitch is struck again)
        or "ignore".
    leading_silence: "keep", or "trim": more than one empty bar before the first note is cut
        to exactly one empty bar (whole bars are removed, so positions in the bar are kept).
    max_empty_bars: at most this many consecutive empty bars inside a piece; longer gaps lose
        their extra bars. Bounds the token stream of pathological files (a 2^28-tick pause).
    special_tokens: names of the special tokens, emitted as `NAME_None`, ids 0.. in this order;
        must contain PAD, BOS, EOS and MASK.
    bpe_vocab_size: 0 = no BPE; > 0 = train BPE to this size before preparing shards.
    key_tokens: False, or True: after every bar's TimeSig (after its Bar without time signatures)
        a `Key_*` token names the piece's key (one of 24, Krumhansl-Schmuckler over the quantized
        notes, weighted by duration), the same in every bar, so any training window states it and
        a continuation is told its prompt's key rather than left to infer it. Derived from the
        notes like the rest of the stream (decoding ignores it; `encode(decode(ids)) == ids`
        holds). A prompt cut from a piece is re-keyed to its own notes (`Tokenizer.set_key`).
    infill_tokens: False, or True: three tokens after every other id (`Infill_Start`,
        `Infill_Middle`, `Infill_End`) that lay out a fill-in-the-middle example (`model.data.Infill`).
        They never appear in an encoded piece, so the ids of every piece are those without them;
        training turns them on with `data.infill_share > 0`. Left out of `to_dict` when false,
        so the hash is unchanged.
    max_notes: the most notes (as read from the file, before the pitch range) one piece may have;
        a piece over it is a `MidiReadError` naming the file, its count and this key, raised right
        after reading, before the encoder builds its arrays (~250 bytes a note at their peak), so
        one hostile file cannot take a worker's memory. The default, 2·10^6, is 80x the largest
        real piece we have (25,076 notes) and a quarter of what a 2 GiB process can encode
        (docs/reliability.md). Left out of `to_dict` at its default, so the hash is unchanged.
    """

    pitch_range: tuple[int, int] = (21, 108)
    beat_res: dict[str, int] = field(default_factory=_default_beat_res)
    num_velocities: int = 32
    use_tempos: bool = True
    num_tempos: int = 32
    tempo_range: tuple[float, float] = (40.0, 250.0)
    log_tempos: bool = False
    use_time_signatures: bool = True
    time_signature_range: dict[int, list[int]] = field(default_factory=_default_time_signature_range)
    sustain_pedal: str = "ignore"
    leading_silence: str = "keep"
    max_empty_bars: int = 16
    special_tokens: tuple[str, ...] = ("PAD", "BOS", "EOS", "MASK")
    bpe_vocab_size: int = 0
    key_tokens: bool = False
    max_notes: int = DEFAULT_MAX_NOTES
    infill_tokens: bool = False

    def __post_init__(self) -> None:
        # Normalise containers (yaml lists, JSON string keys) so equal configs compare and hash equal.
        set_ = object.__setattr__
        set_(self, "pitch_range", tuple(int(p) for p in self.pitch_range))
        set_(self, "tempo_range", tuple(float(t) for t in self.tempo_range))
        set_(self, "beat_res", {str(k): int(v) for k, v in dict(self.beat_res).items()})
        set_(
            self,
            "time_signature_range",
            {int(d): [int(n) for n in ns] for d, ns in dict(self.time_signature_range).items()},
        )
        set_(self, "special_tokens", tuple(str(s) for s in self.special_tokens))
        self._validate()

    def _validate(self) -> None:
        lo, hi = self.pitch_range if len(self.pitch_range) == 2 else (-1, -1)
        if not 0 <= lo <= hi <= 127:
            raise ValueError(f"TokenizerConfig.pitch_range must be (lo, hi) with 0 <= lo <= hi <= 127, got {self.pitch_range}")
        if not self.beat_res:
            raise ValueError("TokenizerConfig.beat_res must not be empty, e.g. {'0_4': 8, '4_12': 4}")
        ranges = self.beat_ranges()
        prev_hi = 0
        for a, b, res in ranges:
            if a != prev_hi or b <= a or res < 1:
                raise ValueError(
                    f"TokenizerConfig.beat_res {self.beat_res}: ranges must be contiguous 'lo_hi' keys from 0 "
                    "with lo < hi and a positive resolution"
                )
            prev_hi = b
        max_res = max(r for _, _, r in ranges)
        for _, _, res in ranges:
            if max_res % res:
                raise ValueError(f"TokenizerConfig.beat_res {self.beat_res}: every resolution must divide the largest ({max_res})")
        if self.num_velocities < 1 or self.num_velocities > 127:
            raise ValueError(f"TokenizerConfig.num_velocities must be in 1..127, got {self.num_velocities}")
        if self.use_tempos and (self.num_tempos < 1 or not 0 < self.tempo_range[0] <= self.tempo_range[1]):
            raise ValueError(f"TokenizerConfig tempo bins invalid: num_tempos={self.num_tempos}, tempo_range={self.tempo_range}")
        for den, nums in self.time_signature_range.items():
            if den < 1 or den & (den - 1) or not nums or min(nums) < 1:
                raise ValueError(
                    f"TokenizerConfig.time_signature_range {self.time_signature_range}: denominators must be "
                    "powers of two with non-empty lists of positive numerators"
                )
            if (max_res * den) % 4:
                raise ValueError(
                    f"TokenizerConfig: positions per beat ({max_res}) x denominator {den} must be a multiple of 4 "
                    "so the grid has whole ticks"
                )
        if self.sustain_pedal not in SUSTAIN_PEDAL_MODES:
            raise ValueError(f"TokenizerConfig.sustain_pedal must be one of {SUSTAIN_PEDAL_MODES}, got {self.sustain_pedal!r}")
        if self.leading_silence not in LEADING_SILENCE_MODES:
            raise ValueError(f"TokenizerConfig.leading_silence must be one of {LEADING_SILENCE_MODES}, got {self.leading_silence!r}")
        if self.max_empty_bars < 0:
            raise ValueError(f"TokenizerConfig.max_empty_bars must be >= 0, got {self.max_empty_bars}")
        missing = {"PAD", "BOS", "EOS", "MASK"} - set(self.special_tokens)
        if missing or len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError(f"TokenizerConfig.special_tokens must list PAD, BOS, EOS, MASK once each, got {self.special_tokens}")
        if not isinstance(self.key_tokens, bool):
            raise ValueError(f"TokenizerConfig.key_tokens must be true or false, got {self.key_tokens!r}")
        if not isinstance(self.infill_tokens, bool):
            raise ValueError(f"TokenizerConfig.infill_tokens must be true or false, got {self.infill_tokens!r}")
        if isinstance(self.max_notes, bool) or not isinstance(self.max_notes, int) or self.max_notes < 1:
            raise ValueError(f"TokenizerConfig.max_notes must be an integer >= 1 (the most notes one piece may "
                             f"have), got {self.max_notes!r}")
        if self.bpe_vocab_size < 0:
            raise ValueError(f"TokenizerConfig.bpe_vocab_size must be >= 0 (0 = no BPE), got {self.bpe_vocab_size}")

    def beat_ranges(self) -> list[tuple[int, int, int]]:
        """beat_res as sorted (lo_beat, hi_beat, positions_per_beat) triples."""
        out = []
        for key, res in self.beat_res.items():
            try:
                a, b = (int(x) for x in str(key).split("_"))
            except ValueError:
                raise ValueError(f"TokenizerConfig.beat_res key {key!r} must look like 'lo_hi', e.g. '0_4'") from None
            out.append((a, b, int(res)))
        return sorted(out)

    # ---- plain-data round trip -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["pitch_range"] = list(self.pitch_range)
        d["tempo_range"] = list(self.tempo_range)
        d["special_tokens"] = list(self.special_tokens)
        # JSON object keys are strings; from_dict turns them back into ints.
        d["time_signature_range"] = {str(k): list(v) for k, v in self.time_signature_range.items()}
        if not self.key_tokens:
            # Added after shards and checkpoints were written: left out at its default so a config
            # without key tokens keeps the hash (and the shard folders) it always had.
            del d["key_tokens"]
        if self.max_notes == DEFAULT_MAX_NOTES:
            del d["max_notes"]  # the same reason: added later, left out at its default
        if not self.infill_tokens:
            del d["infill_tokens"]  # the same reason
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> "TokenizerConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{source}: unknown tokenizer config keys {unknown}; valid keys are {sorted(names)}")
        return cls(**dict(d))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TokenizerConfig":
        import yaml  # PyYAML ships with hydra/omegaconf

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise ValueError(f"cannot read tokenizer config {path}: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a tokenizer config must be a mapping of TokenizerConfig fields")
        data.pop("_target_", None)
        return cls.from_dict(data, source=str(path))

    def canonical_json(self) -> bytes:
        """The bytes every hash of this config is taken over (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True).encode()

    def hash(self) -> str:
        """sha256 hex of the canonical JSON of this config."""
        return hashlib.sha256(self.canonical_json()).hexdigest()
