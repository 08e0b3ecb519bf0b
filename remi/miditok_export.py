"""MidiTok interoperability: a tokenizer file `miditok.REMI(params=PATH)` loads with our ids.

Our `TokenizerConfig` names the same things as MidiTok's REMI (`conf/tokenizer/miditok.yaml` is
MidiTok 3's default REMI with tempos and time signatures) and our token strings are MidiTok's,
but the id order differs: ours lists blocks in REMI reading order (specials, Bar, TimeSig,
Position, Tempo, Pitch, Velocity, Duration), MidiTok lists specials, Bar, Pitch, Velocity,
Duration, Position, Tempo, TimeSig (so its Pitch_21 is id 5, ours 142 with that config).

`miditok_params(tokenizer)` writes MidiTok's own tokenizer JSON (`MidiTokenizer.save` layout)
with its `config` translated from ours and its `_vocab_base` set to OUR token -> id table, which
MidiTok then uses instead of building its own order: ids from `REMI(params=...).encode(...)` are
ids of our model, and our ids decode through it. For a stock MidiTok tokenizer (its own order),
`id_map(tokenizer, miditok_vocab)` is the documented ours -> theirs id table.

What carries over: the vocabulary, always (every config; the tests rebuild MidiTok's vocabulary
from the translated config and compare). The token stream, as far as the two encoders agree: with
`sustain_pedal: ignore`, equal up to the kept differences named in tests/test_tokenizer_miditok.py
(note order inside a position, one voice per pitch, the empty-bar cap); MidiTok has no
`sustain_pedal: extend` (its pedal is a token, not a longer note), `leading_silence` or
`max_empty_bars`. BPE is not exported: MidiTok's BPE runs over its own byte alphabet, so a
tokenizer with BPE is refused (export its base, `Tokenizer(tok.config)`, and train MidiTok's).
This module imports neither MidiTok nor torch: the file is plain JSON.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .tokenizer import Tokenizer

# The MidiTok version whose REMI this layout was written against (the dev extra's miditok>=3.0.4).
MIDITOK_VERSION = "3.0.4"


def miditok_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """MidiTok's `TokenizerConfig.to_dict(serialize=True)` entries for our config (REMI, one
    stream, no programs, no drums); MidiTok's defaults fill every key not written here."""
    c = tokenizer.config
    return {
        "pitch_range": list(c.pitch_range),  # inclusive at both ends, on both sides
        "beat_res": dict(c.beat_res),
        "num_velocities": c.num_velocities,
        "special_tokens": [f"{s}_None" for s in c.special_tokens],
        "use_velocities": True,
        "use_chords": False,
        "use_rests": False,
        "use_tempos": c.use_tempos,
        "num_tempos": c.num_tempos,
        "tempo_range": list(c.tempo_range),
        "log_tempos": c.log_tempos,
        "use_time_signatures": c.use_time_signatures,
        "time_signature_range": {str(d): list(ns) for d, ns in c.time_signature_range.items()},
        "use_key_signatures": False,
        "use_sustain_pedals": False,
        "use_pitch_bends": False,
        "use_control_changes": False,
        "use_programs": False,
        "use_pitch_intervals": False,
        "use_pitchdrum_tokens": False,  # we drop the drum channel when reading
        "additional_params": {},
    }


def miditok_params(tokenizer: Tokenizer) -> dict[str, Any]:
    """The whole MidiTok tokenizer JSON: config, class name and our token -> id table."""
    if tokenizer.bpe is not None:
        raise ValueError(
            "miditok_params: this tokenizer has BPE, which MidiTok cannot load (its BPE works over its "
            "own byte alphabet); export the base vocabulary with Tokenizer(tokenizer.config) instead")
    if tokenizer.config.key_tokens:
        raise ValueError(
            "miditok_params: this tokenizer has Key tokens (tokenizer.key_tokens), which MidiTok's REMI has "
            "no setting for; export a tokenizer with key_tokens false")
    return {
        "config": miditok_config(tokenizer),
        "tokenization": "REMI",
        "miditok_version": MIDITOK_VERSION,
        "_vocab_base": {tok: i for i, tok in enumerate(tokenizer.vocab.tokens)},
        # MidiTok stores this attribute as given; it records which of our tokenizers this is.
        "pianolm_tokenizer": {"config": tokenizer.config.to_dict(), "hash": tokenizer.hash},
    }


def save_miditok(tokenizer: Tokenizer, path: str | Path) -> Path:
    """Write `miditok_params(tokenizer)` to `path` (a .json file); `miditok.REMI(params=path)` loads it."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise ValueError(f"save_miditok: {path} must be a .json file (MidiTok reads params from JSON)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(miditok_params(tokenizer), indent=1) + "\n")
    return path


def id_map(tokenizer: Tokenizer, miditok_vocab: Mapping[str, int]) -> np.ndarray:
    """(V,) int64: `out[our_id]` is the id of the same token in `miditok_vocab` (a MidiTok
    tokenizer's `.vocab`, token -> id, in any order). `np.argsort`-free inverse: build it with
    `inv = np.full(max(miditok_vocab.values()) + 1, -1); inv[out] = np.arange(len(out))`.
    Raises naming the tokens MidiTok lacks (a config it cannot express)."""
    missing = [t for t in tokenizer.vocab.tokens if t not in miditok_vocab]
    if missing:
        raise ValueError(f"id_map: {len(missing)} of our tokens are not in the MidiTok vocabulary, "
                         f"e.g. {missing[:5]}; was it built from miditok_config() of this tokenizer?")
    return np.array([miditok_vocab[t] for t in tokenizer.vocab.tokens], dtype=np.int64)
