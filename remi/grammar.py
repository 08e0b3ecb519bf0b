"""The REMI grammar as data: which token type may follow which, plus the cheap value rules.

`FOLLOWS[type]` lists the types allowed next. On top of the type table, `GrammarState` enforces
what decoding needs to reproduce a sequence exactly: Positions strictly increase inside a bar and
stay inside the bar's meter, and Pitches do not decrease at one position (the encoder's order).
`token_errors` is the fraction of non-special tokens breaking these rules; `allowed_next` is the
mask a sampler uses so every generated sequence decodes with no skipped tokens.
"""
from __future__ import annotations

import numpy as np

from .vocab import BAR, DURATION, KEY, PITCH, POSITION, SPECIAL, TEMPO, TIMESIG, VELOCITY, Vocab

START = -1   # nothing yet
AFTER_BOS = -3  # only BOS so far: like START, but a second BOS is an error
END = -2     # after EOS: only PAD may follow


def follows_table(vocab: Vocab) -> dict[int, tuple[int, ...]]:
    """Type transition table for this vocabulary. `SPECIAL` in a row means EOS may come next."""
    cfg = vocab.config
    # With key tokens a Key may close a bar's header (a piece without notes has none).
    key = (KEY,) if cfg.key_tokens else ()
    after_ts = key + (POSITION, BAR, SPECIAL)
    after_bar = (TIMESIG,) if cfg.use_time_signatures else key + (POSITION, BAR)
    after_pos = (TEMPO, PITCH) if cfg.use_tempos else (PITCH,)
    table = {
        START: (BAR, SPECIAL),
        AFTER_BOS: (BAR, SPECIAL),
        BAR: after_bar,
        TIMESIG: after_ts,
        POSITION: after_pos,
        TEMPO: (PITCH, POSITION, BAR, SPECIAL),
        PITCH: (VELOCITY,),
        VELOCITY: (DURATION,),
        DURATION: (PITCH, POSITION, BAR, SPECIAL),
        END: (),
    }
    if cfg.key_tokens:
        table[KEY] = (POSITION, BAR, SPECIAL)
    return table


class GrammarState:
    """Incremental grammar automaton over base ids; `step` returns False on a rule break
    (the offending token is then ignored, as the decoder skips it)."""

    __slots__ = ("vocab", "table", "last", "pos", "bar_positions", "pitch", "eos", "bos", "pad", "why", "type_masks")

    def __init__(self, vocab: Vocab, table: dict[int, tuple[int, ...]] | None = None):
        self.vocab = vocab
        self.table = table or follows_table(vocab)
        self.last = START
        self.pos = -1
        self.bar_positions = vocab.res * 4
        self.pitch = -1
        self.eos = vocab.special_id("EOS")
        self.bos = vocab.special_id("BOS")
        self.pad = vocab.special_id("PAD")
        self.why = ""  # after a False from `step`: which rule broke (see ERROR_KINDS)
        self.type_masks: dict[int, np.ndarray] = {}  # last type -> `mask` before the value rules; shared by copies

    def copy(self) -> "GrammarState":
        s = GrammarState.__new__(GrammarState)
        for k in self.__slots__:
            setattr(s, k, getattr(self, k))
        return s

    def key(self) -> tuple:
        return (self.last, self.pos, self.bar_positions, self.pitch)

    def step(self, token: int) -> bool:
        v = self.vocab
        t = int(v.types[token])
        if t == SPECIAL:
            if token == self.eos:
                ok = SPECIAL in self.table[self.last]
                self.last, self.why = END, "" if ok else "type"
                return ok
            if token == self.bos:
                if self.last != START:
                    self.why = "special"
                    return False
                self.last = AFTER_BOS
                return True
            ok = token == self.pad or self.last != END  # MASK/PAD: neutral
            self.why = "" if ok else "special"
            return ok
        if t not in self.table[self.last]:
            self.why = "no bar yet" if self.last in (START, AFTER_BOS) else "after end" if self.last == END else "type"
            return False
        val = int(v.values[token])
        if t == POSITION:
            if val <= self.pos or val >= self.bar_positions:
                self.why = "position"
                return False
            self.pos, self.pitch = val, -1
        elif t == PITCH:
            if val < self.pitch:
                self.why = "pitch order"
                return False
            self.pitch = val
        elif t == BAR:
            self.pos, self.pitch = -1, -1
        elif t == TIMESIG:
            n, _ = v.time_signatures[val]
            self.bar_positions = v.res * n
        self.last = t
        return True

    def mask(self) -> np.ndarray:
        """(V,) bool: base ids allowed next."""
        v = self.vocab
        allowed = self.table[self.last]
        base = self.type_masks.get(self.last)
        if base is None:  # once per type: the type rule and the specials (a sampler asks every step)
            base = np.isin(v.types, [a for a in allowed if a != SPECIAL])
            if SPECIAL in allowed:
                base[self.eos] = True
            if self.last == START:
                base[self.bos] = True
            if self.last == END:
                base[self.pad] = True
            self.type_masks[self.last] = base
        m = base.copy()
        if POSITION in allowed:  # the value rules touch only the Position and Pitch blocks
            lo = v.first[POSITION]
            m[lo:lo + self.pos + 1] = False
            m[lo + self.bar_positions:lo + v.num_positions] = False
        if PITCH in allowed and self.pitch > 0:
            lo = v.first[PITCH]
            m[lo:lo + self.pitch] = False
        return m


def token_errors(ids: np.ndarray, vocab: Vocab) -> float:
    """Fraction of non-special tokens that break the grammar (0.0 for an empty sequence)."""
    state = GrammarState(vocab)
    errors = total = 0
    types = vocab.types
    for tok in np.asarray(ids, dtype=np.int64).tolist():
        if types[tok] == SPECIAL:
            state.step(tok)
            continue
        total += 1
        if not state.step(tok):
            errors += 1
    return errors / total if total else 0.0


# The rules a token can break, as `GrammarState.why` names them.
ERROR_KINDS = (
    "no bar yet",   # a musical token before the first Bar (the state waits for one)
    "type",         # a token type that may not follow the previous one (e.g. Velocity after Velocity)
    "position",     # a Position not after the previous one in its bar, or beyond the bar's meter
    "pitch order",  # a Pitch below the previous Pitch at the same position
    "special",      # a second BOS, or anything but PAD after EOS
    "after end",    # a musical token after EOS
)


def error_kinds(ids, vocab: Vocab) -> dict[str, int]:
    """How many non-special tokens break each rule (keys: ERROR_KINDS), counted as `token_errors`
    counts them (a broken token is skipped and the state goes on from the one before it)."""
    state = GrammarState(vocab)
    counts = dict.fromkeys(ERROR_KINDS, 0)
    types = vocab.types
    for tok in np.asarray(ids, dtype=np.int64).tolist():
        ok = state.step(tok)
        if types[tok] != SPECIAL and not ok:
            counts[state.why] += 1
    return counts


# Token syntax errors as MidiTok counts them (`MusicTokenizer.tokens_errors`, the "TSE" of
# Fradet et al.): one error per token, never a cascade, and only what changes the music.
SYNTAX_KINDS = (
    "type",       # a token type that may not follow the previous token's type
    "time",       # a Position not after the previous Position of its bar (time stands or goes back)
    "duplicate",  # a Pitch already played at the current position
)


def syntax_errors(ids, vocab: Vocab) -> dict[str, int]:
    """Token syntax errors of `ids` by kind (keys: SYNTAX_KINDS), by MidiTok's rules: the type
    check compares each token with the token just before it (not with the last valid one, so an
    out-of-place Velocity costs one error, not three), Positions must move forward inside a bar,
    and a Pitch may sound once per position. Pitch order inside a position is not an error here:
    the decoder turns every Pitch Velocity Duration group into a note whatever its order. Special
    tokens are skipped. `GrammarState` (what the constrained sampler enforces, the encoder's
    canonical order) is stricter; `error_kinds` counts against it."""
    table = follows_table(vocab)
    counts = dict.fromkeys(SYNTAX_KINDS, 0)
    types, values = vocab.types, vocab.values
    prev, pos, pitches = None, -1, set()
    for tok in np.asarray(ids, dtype=np.int64).tolist():
        t = int(types[tok])
        if t == SPECIAL:
            continue
        val = int(values[tok])
        if t not in table:  # an Infill marker inside a piece: an error, and the next token is judged against the one before
            counts["type"] += 1
            continue
        if prev is not None and t not in table[prev]:
            counts["type"] += 1
        elif t == BAR:
            pos, pitches = -1, set()
        elif t == POSITION:
            if prev is not None and val <= pos:
                counts["time"] += 1
            pos, pitches = val, set()
        elif t == PITCH:
            if val in pitches:
                counts["duplicate"] += 1
            else:
                pitches.add(val)
        prev = t
    return counts


def syntax_error_rate(ids, vocab: Vocab) -> float:
    """Share of non-special tokens with a syntax error (`syntax_errors`); 0.0 for no tokens."""
    n = int(np.count_nonzero(vocab.types[np.asarray(ids, dtype=np.int64)] != SPECIAL)) if len(ids) else 0
    return sum(syntax_errors(ids, vocab).values()) / n if n else 0.0


def state_after(ids, vocab: Vocab) -> GrammarState:
    state = GrammarState(vocab)
    for tok in np.asarray(ids, dtype=np.int64).tolist():
        state.step(tok)
    return state
