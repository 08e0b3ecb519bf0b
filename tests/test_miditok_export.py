"""remi.miditok_export: a tokenizer file MidiTok loads with our ids, checked through MidiTok itself."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import mido
import numpy as np
import pytest

from remi import Tokenizer
from remi.miditok_export import id_map, miditok_params, save_miditok
from tests.conftest import shared_midi_files
from tests.test_tokenizer_miditok import canonical_note_order, merged_score, one_voice_per_pitch

miditok = pytest.importorskip("miditok")
symusic = pytest.importorskip("symusic")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "conf/tokenizer").glob("*.yaml"))
FILES = (shared_midi_files("miditok-tests/one-track") + shared_midi_files("tegridy-piano"))[:6]


def load(tok: Tokenizer, tmp_path: Path, name: str = "tok.json"):
    return miditok.REMI(params=save_miditok(tok, tmp_path / name))


def written_piece(path: Path) -> Path:
    """A piece the test writes itself: chords and a melody in 3/4 at 90 bpm, then 4/4 at 132."""
    mf = mido.MidiFile(ticks_per_beat=480)
    tr = mido.MidiTrack()
    mf.tracks.append(tr)
    events = [(0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(90))),
              (0, mido.MetaMessage("time_signature", numerator=3, denominator=4)),
              (1440 * 2, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(132))),
              (1440 * 2, mido.MetaMessage("time_signature", numerator=4, denominator=4))]
    rng = np.random.default_rng(0)
    t = 0
    while t < 1440 * 2 + 1920 * 2:
        for p in {int(x) for x in rng.integers(36, 90, size=int(rng.integers(1, 4)))}:
            length = int(rng.choice([120, 240, 480, 720]))
            events.append((t, mido.Message("note_on", note=p, velocity=int(rng.integers(30, 120)))))
            events.append((t + length - 1, mido.Message("note_off", note=p, velocity=0)))
        t += int(rng.choice([120, 240, 480]))
    last = 0
    for tick, msg in sorted(events, key=lambda e: (e[0], e[1].type == "note_on")):
        tr.append(msg.copy(time=tick - last))
        last = tick
    mf.save(path)
    return path


@pytest.mark.parametrize("conf", CONFIGS, ids=lambda p: p.stem)
def test_miditok_loads_our_vocabulary_in_our_order_for_every_config(tmp_path, conf):
    ours = Tokenizer.from_yaml(conf)
    if ours.config.bpe_vocab_size:
        ours = Tokenizer(ours.config)  # the base vocabulary (BPE is refused, see below)
    theirs = load(ours, tmp_path)
    assert theirs.vocab == {t: i for i, t in enumerate(ours.vocab.tokens)}
    # The translated config alone (MidiTok building its own order) gives the same token set,
    # so MidiTok's internal tables (durations, positions, tempos) agree with the tokens.
    params = miditok_params(ours)
    del params["_vocab_base"]
    (tmp_path / "own.json").write_text(json.dumps(params))
    rebuilt = miditok.REMI(params=tmp_path / "own.json")
    assert set(rebuilt.vocab) == set(ours.vocab.tokens), conf.stem
    # and the documented id table maps each of our ids to the same token in MidiTok's own order
    table = id_map(ours, rebuilt.vocab)
    inverse = {i: t for t, i in rebuilt.vocab.items()}
    assert [inverse[int(j)] for j in table] == list(ours.vocab.tokens)
    assert sorted(table.tolist()) == list(range(len(ours.vocab)))


def test_the_miditok_config_orders_differ_as_the_issue_says(tmp_path):
    ours = Tokenizer.from_yaml(ROOT / "conf/tokenizer/miditok.yaml")
    stock = miditok.REMI(miditok.TokenizerConfig(use_tempos=True, use_time_signatures=True))
    assert stock.vocab["Pitch_21"] == 5 and ours.vocab.tokens.index("Pitch_21") == 142
    assert load(ours, tmp_path).vocab["Pitch_21"] == 142


def piece_ids_agree(ours: Tokenizer, theirs, path: Path):
    """MidiTok's encoding of the piece uses our ids for its tokens, and equals our encoding once
    the named differences (NOTE_ORDER, ONE_VOICE) are applied to MidiTok's tokens."""
    seq = theirs.encode(merged_score(path))
    seq = seq[0] if isinstance(seq, list) else seq
    assert seq.ids == ours.ids_from_tokens(seq.tokens)
    vels = [t for t in ours.vocab.tokens if t.startswith("Velocity_")]
    durs = [t for t in ours.vocab.tokens if t.startswith("Duration_")]
    canon = one_voice_per_pitch(canonical_note_order(seq.tokens, vels, durs), durs)
    mine = ours.encode(path, add_special=False)
    assert [theirs.vocab[t] for t in canon] == mine, path.name
    return mine


def notes_in_beats(starts, ends, pitches, velocities, tpq):
    return sorted((Fraction(int(s), tpq), Fraction(int(e) - int(s), tpq), int(p), int(v))
                  for s, e, p, v in zip(starts, ends, pitches, velocities))


def test_our_ids_encode_and_decode_through_miditok(tmp_path):
    ours = Tokenizer.from_yaml(ROOT / "conf/tokenizer/miditok.yaml")
    theirs = load(ours, tmp_path)
    for path in [written_piece(tmp_path / "written.mid"), *FILES]:
        mine = piece_ids_agree(ours, theirs, path)
        # decoding our ids with MidiTok gives the notes our decoder gives
        sc = theirs.decode([mine])
        got = [n for t in sc.tracks for n in t.notes]
        ref = ours.decode_score(mine)
        assert len(got) == len(ref.notes) > 10, path.name
        assert notes_in_beats([n.start for n in got], [n.end for n in got], [n.pitch for n in got],
                              [n.velocity for n in got], sc.ticks_per_quarter) == notes_in_beats(
            *ref.notes.T, ref.ticks_per_beat), path.name


def test_bad_input_is_refused_with_a_reason(tmp_path):
    ours = Tokenizer.from_yaml(ROOT / "conf/tokenizer/miditok.yaml")
    with pytest.raises(ValueError, match=r"must be a \.json file"):
        save_miditok(ours, tmp_path / "tok.yaml")
    with pytest.raises(ValueError, match=r"id_map: 2 of our tokens are not in the MidiTok vocabulary.*Bar_None"):
        id_map(ours, {t: i for i, t in enumerate(ours.vocab.tokens) if t not in ("Bar_None", "Pitch_60")})

    class WithBpe(Tokenizer):
        pass

    bpe = WithBpe(ours.config)
    bpe.bpe = object()
    with pytest.raises(ValueError, match="has BPE"):
        miditok_params(bpe)
