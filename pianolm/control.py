"""Fixed tempo, meter and key for a piece generated from scratch.

The tokenizer has Tempo and TimeSig tokens, so tempo and meter are fixed exactly:
- a forced start: after BOS the piece opens with the tokens the encoder writes at a piece start,
  `Bar TimeSig_<meter> Position_0 Tempo_<bin>` (only `Bar TimeSig_<meter>` when just the meter is
  fixed). It is forced through the step mask (every other id is masked while it is written), so
  the model still runs over these tokens as if it had drawn them, and with BPE a merged id is
  allowed when its expansion agrees with what is left to force;
- a ban: no other TimeSig and no other Tempo may appear later (ids whose expansion holds one are
  masked), so the decoded piece has exactly that meter and tempo throughout.
The tempo goes to the tokenizer's nearest bin by the encoder's own rule (closest in microseconds
per quarter, ties to the higher bin); outside `tempo_range` it is an error.

A key is a *soft constraint*: a negative logit bias of `key_penalty` on every Pitch outside the
key's scale (per such pitch in a merged id). The major scale; for minor, the natural minor plus its
raised 7th (the leading tone of harmonic minor). The model may still play chromatic notes, only
less often; the returned piece carries the key as a MIDI key signature (what was asked, not a
measurement). A tokenizer with key tokens (`tokenizer.key_tokens`) is also told the key: every
other Key token is banned, and a prompt's Key tokens are set to it (`Control.tell`); with
`key_penalty=0` that is the only control, and the notes are the model's own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

import remi
from remi.keys import PITCH_NAMES, Key, find_key, parse_key_name
from remi.vocab import KEY, PITCH, POSITION, TEMPO, TIMESIG, closest_index

from .errors import InputError

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10, 11)  # natural minor + the raised 7th
KEY_PENALTY = 3.0  # logits subtracted per out-of-key pitch (a factor e^3 ~ 20 less likely)
_MODES = {"major": False, "maj": False, "": False, "minor": True, "min": True, "m": True}


def parse_key(key: str | Key) -> Key:
    """'D minor', 'd min', 'Dm', 'F# major', 'Bb', 'Ebm' -> remi.keys.Key (InputError otherwise)."""
    if isinstance(key, Key):
        return key
    hint = "e.g. 'D minor', 'F# major', 'Bbm' or 'C'"
    if not isinstance(key, str) or not key.strip():
        raise InputError(f"key={key!r}: expected a key name, {hint}")
    text = key.strip()
    tonic, _, mode = text.partition(" ")
    if not mode and len(tonic) > 1 and tonic.lower().endswith("m") and tonic.lower() not in ("m",):
        tonic, mode = tonic[:-1], "m"
    mode = mode.strip().lower()
    if mode not in _MODES or not tonic or tonic[0].upper() not in "CDEFGAB" or any(c not in "#b" for c in tonic[1:]):
        raise InputError(f"key={key!r}: not a key name; use a tonic C..B with # or b and major/minor, {hint}")
    return parse_key_name(tonic[0].upper() + tonic[1:] + ("m" if _MODES[mode] else ""))


def scale_pitch_classes(key: Key) -> set[int]:
    return {(key.tonic + i) % 12 for i in (MINOR_SCALE if key.minor else MAJOR_SCALE)}


def key_signature_name(key: Key) -> str:
    """The key as MIDI/mido spells a key signature: 'D', 'F#m', 'Bb'."""
    return PITCH_NAMES[key.tonic] + ("m" if key.minor else "")


def parse_meter(meter, tok: remi.Tokenizer) -> tuple[int, int]:
    """'3/4' or (3, 4) -> (3, 4), one of the tokenizer's TimeSig tokens (InputError otherwise)."""
    have = [f"{n}/{d}" for n, d in tok.vocab.time_signatures]
    if not tok.config.use_time_signatures:
        raise InputError(f"meter={meter!r}: this model's tokenizer has no TimeSig tokens (use_time_signatures "
                         "is off), so its meter cannot be fixed; leave meter=None")
    try:
        if isinstance(meter, str):
            num, den = (int(x) for x in meter.strip().split("/"))
        else:
            num, den = (int(x) for x in meter)
    except (TypeError, ValueError):
        raise InputError(f"meter={meter!r}: expected 'N/D' such as '3/4', one of {have}") from None
    if (num, den) not in tok.vocab.time_signatures:
        raise InputError(f"meter={meter!r}: the tokenizer has no TimeSig_{num}/{den}; choose one of {have}")
    return num, den


def tempo_bin(tempo, tok: remi.Tokenizer) -> int:
    """The index of the tokenizer's tempo bin nearest `tempo` (bpm), by the encoder's rule."""
    if not tok.config.use_tempos:
        raise InputError(f"tempo={tempo!r}: this model's tokenizer has no Tempo tokens (use_tempos is off), "
                         "so its tempo cannot be fixed; leave tempo=None")
    lo, hi = tok.config.tempo_range
    if isinstance(tempo, bool) or not isinstance(tempo, (int, float)) or not lo <= tempo <= hi:
        raise InputError(f"tempo={tempo!r}: must be a number of beats per minute within the tokenizer's "
                         f"tempo range {lo:g}..{hi:g}")
    v = tok.vocab
    return int(v.tempo_mspq_order[closest_index(v.tempo_mspq_sorted, np.array([round(60_000_000 / tempo)]))[0]])


@dataclass
class Control:
    """What `fixed(...)` builds: the forced start (a set of allowed base ids per base position
    after BOS), the ids banned later, the key's logit bias, and what the piece will carry."""

    start: list[frozenset[int]]
    banned: np.ndarray  # (V,) bool over the model's ids (merged included)
    bias: np.ndarray | None  # (V,) float, or None without a key
    tempo_bpm: float | None = None
    meter: tuple[int, int] | None = None
    key: Key | None = None

    def allowed(self, tok: remi.Tokenizer, prompt_len: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """`(ids (B, T), mask (B, V)) -> mask`: the forced start, then the ban, on top of `mask`
        (`pianolm.generate.sample_ids`'s `allowed` hook)."""
        expansions = [tuple(tok.bpe.expand(i)) if tok.bpe is not None else (i,) for i in range(tok.vocab_size)]
        lengths = np.array([len(e) for e in expansions])
        ok = torch.from_numpy(~self.banned)
        start, cache = self.start, {}

        def forcing(done: int) -> torch.Tensor:  # (V,) ids that agree with the start from base position `done`
            if done not in cache:
                rest = start[done:]
                cache[done] = torch.tensor([all(b in rest[j] for j, b in enumerate(e[: len(rest)])) for e in expansions])
            return cache[done]

        def allowed(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            mask = mask & ok.to(mask.device)
            new = ids.shape[1] - prompt_len
            if new >= len(start):  # every id is at least one base token: the start is written
                return mask
            rows = ids[:, prompt_len:].cpu().numpy()
            for b, row in enumerate(rows):
                done = int(lengths[row].sum())
                if done < len(start):
                    force = forcing(done).to(mask.device) & ok.to(mask.device)
                    both = mask[b] & force
                    mask[b] = both if both.any() else force
            return mask

        return allowed

    def tell(self, tok: remi.Tokenizer, prompt_ids: Sequence[int]) -> list[int]:
        """The prompt as the model reads it: with key tokens and a fixed key, its Key tokens name
        that key (unchanged otherwise)."""
        return tok.set_key(prompt_ids, self.key) if self.key is not None else list(prompt_ids)

    def bias_tensor(self) -> torch.Tensor | None:
        return None if self.bias is None else torch.from_numpy(self.bias.astype(np.float32))


def fixed(tok: remi.Tokenizer, tempo: float | None = None, meter=None, key: str | Key | None = None,
          key_penalty: float = KEY_PENALTY) -> Control | None:
    """The `Control` for a fixed tempo (bpm), meter ('3/4') and/or key ('D minor'); None when all are None."""
    if tempo is None and meter is None and key is None:
        return None
    v = tok.vocab
    base_v = len(v)
    banned_base = np.zeros(base_v, dtype=bool)
    start: list[frozenset[int]] = []
    tempo_bpm, sig, k = None, None, None
    if meter is not None or tempo is not None:
        start.append(frozenset({tok.bar_id}))
        if meter is not None:
            sig = parse_meter(meter, tok)
            sig_id = v.timesig_id(*sig)
            banned_base[v.types == TIMESIG] = True
            banned_base[sig_id] = False
            start.append(frozenset({sig_id}))
        elif tok.config.use_time_signatures:
            start.append(frozenset(np.flatnonzero(v.types == TIMESIG).tolist()))
    if tempo is not None:
        index = tempo_bin(tempo, tok)
        tempo_id = v.first[TEMPO] + index
        tempo_bpm = float(v.tempos[index])
        banned_base[v.types == TEMPO] = True
        banned_base[tempo_id] = False
        start += [frozenset({v.first[POSITION]}), frozenset({tempo_id})]
    bias_base = None
    if key is not None:
        k = parse_key(key)
        if isinstance(key_penalty, bool) or not isinstance(key_penalty, (int, float)) or not 0 <= key_penalty < 1e4:
            raise InputError(f"key_penalty={key_penalty!r}: must be a number >= 0 (logits per out-of-key pitch)")
        in_key = scale_pitch_classes(k)
        lo = tok.config.pitch_range[0]
        bias_base = np.zeros(base_v)
        pitches = np.flatnonzero(v.types == PITCH)
        outside = [i for i in pitches if (lo + int(v.values[i])) % 12 not in in_key]
        bias_base[outside] = -float(key_penalty)
        if tok.config.key_tokens:
            banned_base[v.types == KEY] = True
            banned_base[tok.key_id(k)] = False
    if tok.bpe is None:
        banned, bias = banned_base, bias_base
    else:
        expansions = [tok.bpe.expand(i) for i in range(tok.vocab_size)]
        banned = np.array([any(banned_base[b] for b in e) for e in expansions])
        bias = None if bias_base is None else np.array([sum(bias_base[b] for b in e) for e in expansions])
    return Control(start=start, banned=banned, bias=bias, tempo_bpm=tempo_bpm, meter=sig, key=k)


def prompt_key(tok: remi.Tokenizer, prompt_ids: Sequence[int]) -> Key | None:
    """The prompt's own key, as the Krumhansl-Schmuckler finder measures it (None: no notes)."""
    return find_key(tok.decode_score(list(prompt_ids)))


def carried(score: remi.Score, control: Control | None) -> remi.Score:
    """The score with the fixed key written as its key signature (tempo and meter are in its tokens)."""
    if control is None or control.key is None:
        return score
    score.key_signatures = [remi.KeySignature(0, key_signature_name(control.key))]
    return score


def key_share(scores: Sequence[remi.Score], key: str | Key) -> float:
    """The share of `scores` whose Krumhansl-Schmuckler key has `key`'s signature (relative keys
    agree): how often generated pieces measure in the key asked for."""
    from remi.keys import find_key, key_agrees

    k = parse_key(key)
    found = [find_key(s) for s in scores]
    return sum(f is not None and key_agrees(f, k) for f in found) / max(1, len(found))
