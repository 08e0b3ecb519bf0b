"""Krumhansl–Schmuckler key finding on constructed pieces with known keys."""
from __future__ import annotations

import pytest

from remi.keys import (
    PROFILES,
    Key,
    find_key,
    key_agrees,
    key_correlations,
    key_signature_fifths,
    parse_key_name,
    pitch_class_profile,
    stated_key,
)
from remi.score import KeySignature, Score

TPB = 480
C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]
A_HARMONIC_MINOR = [57, 59, 60, 62, 64, 65, 68, 69]


def melody(pitches, beats_each=1.0, tonic_weight=0):
    """One note per beat; the first note also lasts `tonic_weight` extra beats (a held tonic)."""
    rows, t = [], 0
    for i, p in enumerate(pitches):
        dur = int(TPB * (beats_each + (tonic_weight if i == 0 else 0)))
        rows.append((t, t + dur, p, 80))
        t += dur
    return Score.from_notes(rows, ticks_per_beat=TPB)


def cadence(tonic: int, minor: bool) -> Score:
    """I (i) - IV (iv) - V - I (i) block chords in root position around middle C."""
    third = 3 if minor else 4
    chords = [
        [tonic, tonic + third, tonic + 7],
        [tonic + 5, tonic + 5 + (3 if minor else 4), tonic + 12],
        [tonic + 7, tonic + 11, tonic + 14],  # V is major in both modes (leading tone)
        [tonic, tonic + third, tonic + 7],
    ]
    rows = [(i * TPB * 2, (i + 1) * TPB * 2, 60 + p, 80) for i, ch in enumerate(chords) for p in ch]
    return Score.from_notes(rows, ticks_per_beat=TPB)


def test_c_major_scale_is_c_major():
    assert find_key(melody(C_MAJOR)) == Key(0, False)


@pytest.mark.parametrize("shift", range(12))
def test_transposed_scale_gives_transposed_key(shift):
    assert find_key(melody([p + shift for p in C_MAJOR])) == Key(shift, False)


@pytest.mark.parametrize("shift", [0, 2, 5, 7])
def test_harmonic_minor_scale_is_minor(shift):
    # The raised 7th separates A minor from C major; a held tonic settles the rest.
    score = melody([p + shift for p in A_HARMONIC_MINOR], tonic_weight=2)
    assert find_key(score) == Key((9 + shift) % 12, True)


@pytest.mark.parametrize("profiles", sorted(PROFILES))
@pytest.mark.parametrize("tonic", range(12))
@pytest.mark.parametrize("minor", [False, True])
def test_cadences_in_all_24_keys(tonic, minor, profiles):
    assert find_key(cadence(tonic, minor), profiles=profiles) == Key(tonic, minor)


def test_unknown_profiles_are_refused():
    with pytest.raises(ValueError, match="unknown key profiles 'nope'"):
        find_key(melody(C_MAJOR), profiles="nope")


def test_profile_weights_by_duration():
    score = Score.from_notes([(0, 100, 60, 80), (0, 300, 67, 80)], ticks_per_beat=TPB)
    prof = pitch_class_profile(score)
    assert prof[0] == 100 and prof[7] == 300 and prof.sum() == 400
    assert pitch_class_profile(score, "count")[[0, 7]].tolist() == [1, 1]


def test_empty_and_flat_profiles():
    assert find_key(Score.from_notes([], ticks_per_beat=TPB)) is None
    assert (key_correlations([1.0] * 12) == 0).all()


@pytest.mark.parametrize(
    "tonic,minor,fifths",
    [(0, False, 0), (7, False, 1), (5, False, -1), (9, True, 0), (4, True, 1), (2, True, -1),
     (10, False, -2), (11, False, 5), (6, False, 6), (3, True, 6)],  # Eb minor: 6 flats, folded to 6 sharps,
)
def test_key_signature_fifths(tonic, minor, fifths):
    assert key_signature_fifths(tonic, minor) == fifths


@pytest.mark.parametrize(
    "name,key",
    [("C", Key(0, False)), ("F#m", Key(6, True)), ("Bb", Key(10, False)), ("Ebm", Key(3, True)),
     ("Cb", Key(11, False)), ("G#", Key(8, False))],
)
def test_parse_key_name(name, key):
    assert parse_key_name(name) == key


def test_parse_key_name_rejects_junk():
    with pytest.raises(ValueError, match="not a key name"):
        parse_key_name("H")


def test_relative_keys_agree_and_others_do_not():
    assert key_agrees(Key(9, True), Key(0, False))  # A minor vs C major: no sharps or flats
    assert key_agrees(Key(6, False), Key(3, True))  # F# major vs Eb minor: 6 sharps = 6 flats
    assert not key_agrees(Key(7, False), Key(0, False))
    assert not key_agrees(Key(0, True), Key(0, False))  # parallel minor has 3 flats


def test_stated_key_reads_first_signature():
    score = Score.from_notes([(0, 10, 60, 80)], key_signatures=[KeySignature(0, "Dm"), KeySignature(99, "F")])
    assert stated_key(score) == Key(2, True)


# --- real scores: the bundled Bach chorales -------------------------------------------------------


@pytest.fixture(scope="module")
def bach_midi(tmp_path_factory):
    """The first 24 Bach pieces of the bundled corpus, converted by remi.corpus.bundled into a temp folder."""
    pytest.importorskip("music21")
    from remi.corpus.bundled import convert_job, jobs

    out = tmp_path_factory.mktemp("bundled")
    files = []
    for job in [j for j in jobs() if j.collection == "bach"][:24]:
        files += [out / rel for rel in convert_job(job, str(out))["written"]]
    if not files:
        pytest.skip("music21 converted no Bach piece")
    return files


def test_key_finding_agrees_with_bach_key_signatures(bach_midi):
    """Most chorales state their key signature in the MIDI, and key finding recovers it.

    The full figure (every bundled Bach piece) is `python -m remi key-accuracy`; these 24
    are a quick check that the reader, the signature parsing and the profiles fit together.
    """
    import remi
    from remi.metrics import key_accuracy

    scores = [(p.name, remi.read_midi(p)) for p in bach_midi]
    assert sum(stated_key(s) is not None for _, s in scores) >= 0.9 * len(scores)
    result = key_accuracy(scores)
    assert result["n"] >= 20
    assert result["accuracy"] >= 0.8, result["misses"]
    # Krumhansl-Kessler's own profiles do worse on chorales (they favour the dominant key).
    assert key_accuracy(scores, "krumhansl")["accuracy"] <= result["accuracy"]


def test_key_accuracy_cli(bach_midi, capsys):
    from remi.__main__ import key_accuracy_main as _main

    assert _main(["key-accuracy", str(bach_midi[0].parent), "--profiles", "all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == sorted(PROFILES)
    assert all("pieces (" in line for line in lines)
