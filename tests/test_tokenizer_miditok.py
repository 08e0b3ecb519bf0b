"""Agreement with MidiTok 3.x REMI (the oracle) using conf/tokenizer/miditok.yaml.

Tracks are merged into one (drums dropped, notes sorted by start, pitch, end, velocity) before
MidiTok sees them. One difference is kept on purpose and named here and in docs/tokenizer.md:
NOTE_ORDER — at one Position we list notes by (pitch, duration, velocity); MidiTok keeps their
order before quantization, so notes that were a few ticks apart can come out of pitch order. Ours
is canonical, which is what makes encode(decode(ids)) == ids hold. The comparison therefore sorts
the (Pitch, Velocity, Duration) groups inside each Position of MidiTok's output the same way.
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
        canon = canonical_note_order(ref, vels, durs)
        assert mine == canon, f"{path.name}: first difference at {next((i for i, (a, b) in enumerate(zip(mine, canon)) if a != b), None)}"
        reordered += canon != ref
    # The named difference is real (it occurs) but only reorders notes inside a position.
    assert reordered > 0
