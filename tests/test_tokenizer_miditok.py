"""Agreement with MidiTok 3.x REMI (the oracle) using conf/tokenizer/miditok.yaml.

Tracks are merged into one (drums dropped, notes sorted by start, pitch, end, velocity) before
MidiTok sees them. One difference is kept on purpose and named here and in docs/tokenizer.md:
NOTE_ORDER — at one Position we list notes by (pitch, duration, velocity); MidiTok keeps their
order before quantization, so notes that were a few ticks apart can come out of pitch order. Ours
is canonical, which is what makes encode(decode(ids)) == ids hold. The comparison therefore sorts
the (Pitch, Velocity, Duration) groups inside each Position of MidiTok's output the same way.
ONE_VOICE: no two sounding notes of one pitch (remi.score.one_voice_per_pitch); MidiTok keeps them,
so the comparison applies the rule to MidiTok's tokens too. Over every real file of ../shared/midi
the tokens are then equal but for six, each explained by a named difference and checked below:
the empty-bar cap (three piano-midi.de files with a tempo change ~190 bars after the music) and
POSITION_REPEAT (three ASAP scores where MidiTok repeats a Position token). docs/tokenizer.md.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from remi import Tokenizer
from tests.conftest import shared_midi_files

miditok = pytest.importorskip("miditok")
symusic = pytest.importorskip("symusic")

ROOT = Path(__file__).resolve().parents[1]
FILES = shared_midi_files("miditok-tests/one-track") + shared_midi_files("tegridy-piano")


def merged_score(path: Path):
    sc = symusic.Score(str(path))
    out = symusic.Score(sc.ticks_per_quarter)
    out.tempos = sc.tempos
    out.time_signatures = sc.time_signatures
    rows = sorted((n.start, n.pitch, n.end, n.velocity) for t in sc.tracks if not t.is_drum for n in t.notes)
    track = symusic.Track(program=0)
    for s, p, e, v in rows:
        track.notes.append(symusic.Note(s, e - s, p, v))
    out.tracks.append(track)
    return out


def canonical_note_order(tokens: list[str], velocities: list[str], durations: list[str]) -> list[str]:
    """Sort (Pitch, Velocity, Duration) triples inside each run at one position (NOTE_ORDER)."""
    vel_rank = {t: i for i, t in enumerate(velocities)}
    dur_rank = {t: i for i, t in enumerate(durations)}
    out, run, i = [], [], 0

    def flush():
        run.sort(key=lambda g: (int(g[0][6:]), dur_rank[g[2]], vel_rank[g[1]]))
        out.extend(t for g in run for t in g)
        run.clear()

    while i < len(tokens):
        if tokens[i].startswith("Pitch_"):
            run.append(tuple(tokens[i:i + 3]))
            i += 3
        else:
            flush()
            out.append(tokens[i])
            i += 1
    flush()
    return out


def one_voice_per_pitch(tokens: list[str], durations: list[str]) -> list[str]:
    """MidiTok's tokens under our ONE_VOICE rule (remi.score.one_voice_per_pitch), applied to the
    canonically ordered tokens: at one Position, groups of one pitch become one (the longest
    Duration, the loudest Velocity); a note still sounding when its pitch starts again gets the
    longest Duration that ends by then. Times are kept as fractions of a whole note: a Position
    step and a Duration beat are in units of the current meter's denominator, as REMI defines them.
    """
    from fractions import Fraction

    def beats(dur: str) -> Fraction:  # Duration_b.p.r -> b + p/r beats
        b, p, r = (int(x) for x in dur.split("_")[1].split("."))
        return b + Fraction(p, r)

    dur_sorted = sorted(durations, key=beats)
    res = max(int(d.split(".")[-1]) for d in durations)
    num, den, bar_start, bar_len, now = 4, 4, Fraction(-1), Fraction(1), Fraction(0)
    groups: list[list] = []  # [token index of Pitch, pitch, onset, den, velocity, duration]
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t == "Bar_None":
            bar_start = Fraction(0) if bar_start < 0 else bar_start + bar_len
            now = bar_start
        elif t.startswith("TimeSig_"):
            num, den = (int(x) for x in t.split("_")[1].split("/"))
            bar_len = Fraction(num, den)
        elif t.startswith("Position_"):
            now = bar_start + Fraction(int(t.split("_")[1]), res * den)
        elif t.startswith("Pitch_"):
            groups.append([i, int(t.split("_")[1]), now, den, tokens[i + 1], tokens[i + 2]])
            i += 3
            continue
        i += 1
    drop: set[int] = set()
    vel = lambda v: int(v.split("_")[1])  # noqa: E731
    by_key: dict[tuple, list] = {}
    for g in groups:  # one onset, one pitch: merge into the first group
        k = (g[1], g[2])
        if k in by_key:
            f = by_key[k]
            f[4] = max(f[4], g[4], key=vel)
            f[5] = max(f[5], g[5], key=beats)
            drop.add(g[0])
        else:
            by_key[k] = g
    kept = sorted(by_key.values(), key=lambda g: (g[1], g[2]))
    for a, b in zip(kept, kept[1:]):
        if a[1] == b[1] and a[2] + beats(a[5]) / a[3] > b[2]:
            fit = [d for d in dur_sorted if a[2] + beats(d) / a[3] <= b[2]]
            if fit:
                a[5] = fit[-1]
            else:
                drop.add(a[0])
    out, i, starts = [], 0, {g[0]: g for g in kept}
    while i < len(tokens):
        if i in starts or i in drop:
            if i not in drop:
                g = starts[i]
                out += [tokens[i], g[4], g[5]]
            i += 3
        else:
            out.append(tokens[i])
            i += 1
    return out


@pytest.fixture(scope="module")
def pair():
    ours = Tokenizer.from_yaml(ROOT / "conf/tokenizer/miditok.yaml")
    theirs = miditok.REMI(miditok.TokenizerConfig(use_tempos=True, use_time_signatures=True))
    return ours, theirs


def test_vocabulary_equals_miditok_minus_drum_tokens(pair):
    ours, theirs = pair
    # Kept on purpose: no PitchDrum_* tokens (the drum channel is dropped when reading).
    assert set(theirs.vocab) - {t for t in theirs.vocab if t.startswith("PitchDrum_")} == set(ours.vocab.tokens)


@pytest.mark.skipif(not FILES, reason="../shared/midi/{miditok-tests/one-track,tegridy-piano} absent")
def test_tokens_equal_miditok_remi_on_piano_files(pair):
    ours, theirs = pair
    vels = [t for t in ours.vocab.tokens if t.startswith("Velocity_")]
    durs = [t for t in ours.vocab.tokens if t.startswith("Duration_")]
    reordered = 0
    for path in FILES:
        mine = ours.tokens(ours.encode(path, add_special=False))
        seq = theirs.encode(merged_score(path))
        ref = (seq[0] if isinstance(seq, list) else seq).tokens
        canon = one_voice_per_pitch(canonical_note_order(ref, vels, durs), durs)
        assert mine == canon, f"{path.name}: first difference at {next((i for i, (a, b) in enumerate(zip(mine, canon)) if a != b), None)}"
        reordered += canon != ref
    # The named difference is real (it occurs) but only reorders notes inside a position.
    assert reordered > 0


def collapse_repeated_positions(tokens: list[str]) -> list[str]:
    """MidiTok's stream with a Position token dropped where it repeats the position already in
    force in its bar (POSITION_REPEAT: two onsets inside one grid step)."""
    out, current = [], None
    for t in tokens:
        if t == "Bar_None":
            current = None
        elif t.startswith("Position_"):
            if t == current:
                continue
            current = t
        out.append(t)
    return out


NAMED = {  # real files where our tokens differ from MidiTok's, and the kept difference that explains it
    "piano-midi-de/mz_311_1.mid": "empty-bar cap", "piano-midi-de/mz_311_2.mid": "empty-bar cap",
    "piano-midi-de/mz_311_3.mid": "empty-bar cap",
    "asap-scores/Liszt_Transcendental_Etudes_5.mid": "position repeat",
    "asap-scores/Liszt_Transcendental_Etudes_9.mid": "position repeat",
    "asap-scores/Schumann_Kreisleriana_2.mid": "position repeat",
}


@pytest.mark.shared_midi
def test_named_differences_explain_the_real_files_that_differ(pair):
    import yaml

    from remi import TokenizerConfig
    from tests.conftest import SHARED_MIDI

    files = {rel: SHARED_MIDI / rel for rel in NAMED}
    if not all(p.is_file() for p in files.values()):
        pytest.skip(f"the real files {sorted(NAMED)} are not all under {SHARED_MIDI}")
    ours, theirs = pair
    uncapped = Tokenizer(TokenizerConfig(**{**yaml.safe_load((ROOT / "conf/tokenizer/miditok.yaml").read_text()),
                                            "max_empty_bars": 100_000}))
    vels = [t for t in ours.vocab.tokens if t.startswith("Velocity_")]
    durs = [t for t in ours.vocab.tokens if t.startswith("Duration_")]
    for rel, why in NAMED.items():
        seq = theirs.encode(merged_score(files[rel]))
        ref = (seq[0] if isinstance(seq, list) else seq).tokens
        canon = one_voice_per_pitch(canonical_note_order(ref, vels, durs), durs)
        mine = ours.tokens(ours.encode(files[rel], add_special=False))
        assert mine != canon, f"{rel} no longer differs: drop it from NAMED and the docs"
        if why == "empty-bar cap":
            assert uncapped.tokens(uncapped.encode(files[rel], add_special=False)) == canon, rel
        else:
            assert mine == one_voice_per_pitch(canonical_note_order(collapse_repeated_positions(ref), vels, durs), durs), rel
