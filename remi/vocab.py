"""The vocabulary, derived from a `TokenizerConfig` alone: token strings, ids, and value tables.

Id layout (contiguous blocks, in REMI reading order after the special tokens):
    specials (PAD, BOS, EOS, MASK) | Bar | TimeSig* | Position* | Tempo* | Pitch* | Velocity* | Duration* | Key* | Infill*
(Key tokens only with `key_tokens`, the three Infill tokens only with `infill_tokens`: last, so
turning them on moves no other id.)
Every block's first id and its values are stored here once; encode/decode/grammar use these.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import TokenizerConfig
from .keys import PITCH_NAMES

# Token type codes, in the order their blocks appear in the vocabulary.
SPECIAL, BAR, TIMESIG, POSITION, TEMPO, PITCH, VELOCITY, DURATION, KEY, INFILL = range(10)
TYPE_NAMES = ("Special", "Bar", "TimeSig", "Position", "Tempo", "Pitch", "Velocity", "Duration", "Key", "Infill")
# The fill-in-the-middle layout's markers (`pianolm.infill`, `model.data.Infill`), in id order.
INFILL_NAMES = ("Infill_Start", "Infill_Middle", "Infill_End")
# Key token values: tonic pitch class for major keys (0..11), 12 + tonic for minor keys, the index
# order of `remi.keys.key_correlations`.
DEFAULT_TEMPO_BPM = 120.0
DEFAULT_TIME_SIGNATURE = (4, 4)


def closest_index(bins: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the closest value in ascending `bins` for each value; a tie goes to the higher bin
    (MidiTok's `np_get_closest` rule, kept so our quantization equals MidiTok's)."""
    values = np.asarray(values)
    idx = np.searchsorted(bins, values, side="left")
    lower = np.maximum(idx - 1, 0)
    upper = np.minimum(idx, len(bins) - 1)
    prev_closer = (idx == len(bins)) | (np.abs(values - bins[lower]) < np.abs(values - bins[upper]))
    return np.where(prev_closer, lower, upper)


def _durations(config: TokenizerConfig) -> list[tuple[int, int, int]]:
    """(beat, pos, res) of each Duration token: 1/res-beat steps over each beat range, plus one
    of exactly the largest range's end; no zero duration."""
    durations = []
    ranges = config.beat_ranges()
    for a, b, r in ranges:
        durations += [(beat, pos, r) for beat in range(a, b) for pos in range(r)]
    durations.append((ranges[-1][1], 0, ranges[-1][2]))
    return durations[1:]


@dataclass(frozen=True)
class Vocab:
    config: TokenizerConfig
    tokens: tuple[str, ...]
    types: np.ndarray          # (V,) int8 type code per id
    values: np.ndarray         # (V,) int64 index of the id inside its block (0 for Bar/specials)
    first: dict[int, int]      # type code -> first id of its block
    res: int                   # positions per beat (largest beat_res resolution)
    time_signatures: tuple[tuple[int, int], ...]
    max_denominator: int       # largest TimeSig denominator in the vocabulary (4 if none)
    num_positions: int
    tempos: np.ndarray         # (T,) bpm bin values, ascending
    tempo_mspq_sorted: np.ndarray  # microseconds/quarter of the bins, ascending
    tempo_mspq_order: np.ndarray   # index into `tempos` for each sorted mspq
    velocities: np.ndarray     # (num_velocities,) ascending bin values
    durations: tuple[tuple[int, int, int], ...]  # (beat, pos, res) per Duration token

    @classmethod
    def build(cls, config: TokenizerConfig) -> "Vocab":
        res = max(r for _, _, r in config.beat_ranges())
        if config.use_time_signatures:
            time_sigs = tuple((n, d) for d, ns in config.time_signature_range.items() for n in ns)
        else:
            time_sigs = ()
        max_den = max([d for _, d in time_sigs] + [4])
        max_num = max([n for n, _ in time_sigs]) if time_sigs else 4
        num_positions = res * max_num

        if config.use_tempos:
            fn = np.geomspace if config.log_tempos else np.linspace
            tempos = fn(config.tempo_range[0], config.tempo_range[1], config.num_tempos).round(2)
        else:
            tempos = np.zeros(0)
        mspq = 60_000_000.0 / tempos if len(tempos) else np.zeros(0)
        order = np.argsort(mspq, kind="stable")
        velocities = np.linspace(0, 127, config.num_velocities + 1, dtype=np.intc)[1:].astype(np.int64)

        durations = _durations(config)
        blocks: list[tuple[int, list[str]]] = [
            (SPECIAL, [f"{s}_None" for s in config.special_tokens]),
            (BAR, ["Bar_None"]),
            (TIMESIG, [f"TimeSig_{n}/{d}" for n, d in time_sigs]),
            (POSITION, [f"Position_{i}" for i in range(num_positions)]),
            (TEMPO, [f"Tempo_{t}" for t in tempos]),
            (PITCH, [f"Pitch_{p}" for p in range(config.pitch_range[0], config.pitch_range[1] + 1)]),
            (VELOCITY, [f"Velocity_{v}" for v in velocities]),
            (DURATION, [f"Duration_{b}.{p}.{r}" for b, p, r in durations]),
        ]
        if config.key_tokens:
            blocks.append((KEY, [f"Key_{k}" for k in PITCH_NAMES] + [f"Key_{k}m" for k in PITCH_NAMES]))
        if config.infill_tokens:
            blocks.append((INFILL, list(INFILL_NAMES)))
        tokens, types, values, first = [], [], [], {}
        for code, names in blocks:
            first[code] = len(tokens)
            tokens += names
            types += [code] * len(names)
            values += range(len(names))
        return cls(
            config=config,
            tokens=tuple(tokens),
            types=np.array(types, dtype=np.int8),
            values=np.array(values, dtype=np.int64),
            first=first,
            res=res,
            time_signatures=time_sigs,
            max_denominator=max_den,
            num_positions=num_positions,
            tempos=tempos,
            tempo_mspq_sorted=mspq[order],
            tempo_mspq_order=order,
            velocities=velocities,
            durations=tuple(durations),
        )

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def ticks_per_beat(self) -> int:
        """Ticks per quarter note of decoded scores: one tick per position at the finest denominator."""
        return self.res * self.max_denominator // 4

    def duration_ticks(self, ticks_per_beat: int) -> np.ndarray:
        """(D,) length in ticks of each Duration token when one beat is `ticks_per_beat` ticks."""
        return np.array([(b * r + p) * ticks_per_beat // r for b, p, r in self.durations], dtype=np.int64)

    def special_id(self, name: str) -> int:
        return self.config.special_tokens.index(name)

    def timesig_id(self, num: int, den: int) -> int | None:
        try:
            return self.first[TIMESIG] + self.time_signatures.index((num, den))
        except ValueError:
            return None

    @property
    def default_tempo_index(self) -> int:
        """The tempo bin closest to 120 bpm (what a piece without a tempo map gets)."""
        return int(np.argmin(np.abs(self.tempos - DEFAULT_TEMPO_BPM)))

    def type_names(self) -> list[str]:
        return [TYPE_NAMES[c] for c in range(len(TYPE_NAMES)) if np.any(self.types == c)]
