"""remi.Tokenizer API: configs, vocabulary, persistence, ids, BPE hooks, CLI."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import mido
import numpy as np
import pytest
import yaml

import remi
from remi import Tokenizer, TokenizerConfig
from tests.midi_bytes import midi_file, note_events, tempo, time_sig, track

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "conf" / "tokenizer").glob("*.yaml"))


def small_midi() -> bytes:
    notes = [(0, 240, 60, 100), (0, 480, 64, 90), (480, 960, 67, 70), (1920 + 120, 2400, 72, 50)]
    return midi_file([track([tempo(0, 96), time_sig(0, 4, 4)] + note_events(notes))], tpq=480)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_yaml_is_a_config_whose_keys_are_fields(path):
    data = yaml.safe_load(path.read_text())
    fields = {f.name for f in dataclasses.fields(TokenizerConfig)}
    assert set(data) <= fields
    tok = Tokenizer.from_yaml(path)
    assert tok.config == TokenizerConfig(**data)


def test_named_configs_differ_as_documented():
    fine = Tokenizer.from_yaml(ROOT / "conf/tokenizer/fine.yaml")
    coarse = Tokenizer.from_yaml(ROOT / "conf/tokenizer/coarse.yaml")
    assert (fine.config.leading_silence, coarse.config.leading_silence) == ("keep", "trim")
    assert fine.config.bpe_vocab_size > fine.base_vocab_size and coarse.config.bpe_vocab_size == 0
    n = lambda tok, t: sum(s.startswith(t + "_") for s in tok.vocab.tokens)
    for t in ("Duration", "Velocity", "Tempo"):
        assert n(coarse, t) < n(fine, t)
    assert fine.base_vocab_size == 326 and coarse.base_vocab_size == 201  # as docs/tokenizer.md states


def test_coarse_reads_a_one_four_meter_as_four_four():
    """POP909 writes its 4/4 songs in 1/4: the coarse vocabulary has no 1/4, so such a piece gets
    4-beat bars (a 1/4 bar per beat would make "16 bars" mean 16 beats)."""
    coarse = Tokenizer.from_yaml(ROOT / "conf/tokenizer/coarse.yaml")
    fine = Tokenizer.from_yaml(ROOT / "conf/tokenizer/fine.yaml")
    notes = [(480 * b, 480 * b + 400, 60 + b % 12, 80) for b in range(16)]   # one note a beat, 16 beats
    data = midi_file([track([tempo(0, 100), time_sig(0, 1, 4)] + note_events(notes))], tpq=480)
    tokens = coarse.tokens(coarse.encode(data))
    assert "TimeSig_1/4" not in coarse.vocab.tokens and "TimeSig_1/4" in fine.vocab.tokens
    assert tokens.count("Bar_None") == 4 and set(t for t in tokens if t.startswith("TimeSig")) == {"TimeSig_4/4"}
    assert fine.tokens(fine.base_ids(fine.encode(data))).count("Bar_None") == 16  # fine keeps the meter
    assert len(coarse.decode_score(coarse.encode(data)).notes) == 16


def test_vocabulary_follows_config_only_and_types_are_in_remi_order():
    tok = Tokenizer(TokenizerConfig(pitch_range=(60, 71), num_velocities=4, use_tempos=False,
                                    use_time_signatures=False))
    toks = tok.vocab.tokens
    assert toks[:5] == ("PAD_None", "BOS_None", "EOS_None", "MASK_None", "Bar_None")
    assert [t for t in toks if t.startswith("Pitch_")] == [f"Pitch_{p}" for p in range(60, 72)]
    assert [t for t in toks if t.startswith("Velocity_")] == ["Velocity_31", "Velocity_63", "Velocity_95", "Velocity_127"]
    assert sum(t.startswith("Position_") for t in toks) == 32  # 8 per beat x 4 beats
    assert not any(t.startswith(("Tempo_", "TimeSig_")) for t in toks)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.bar_id) == (0, 1, 2, 3, 4)


def test_encode_accepts_path_bytes_midifile_and_score(tmp_path):
    tok = Tokenizer()
    data = small_midi()
    p = tmp_path / "a b#é.mid"
    p.write_bytes(data)
    ids = tok.encode(data)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.encode(p) == ids
    assert tok.encode(mido.MidiFile(str(p))) == ids
    assert tok.encode(remi.read_midi(data)) == ids
    assert tok.encode(data, add_special=False) == ids[1:-1]
    assert tok.tokens(ids)[:6] == ["BOS_None", "Bar_None", "TimeSig_4/4", "Position_0", "Tempo_94.19", "Pitch_60"]
    assert tok.count_notes(ids) == 4


def test_decode_returns_midifile_equal_to_quantize():
    tok = Tokenizer()
    ids = tok.encode(small_midi())
    mid = tok.decode(ids)
    assert isinstance(mid, mido.MidiFile) and mid.ticks_per_beat == tok.ticks_per_beat
    back = remi.read_midi(remi.midi_io.midifile_to_bytes(mid))
    np.testing.assert_array_equal(back.notes, tok.quantize(remi.read_midi(small_midi())).notes)
    assert tok.encode(mid) == ids


def test_out_of_vocabulary_ids_raise_value_error_naming_the_id():
    tok = Tokenizer()
    for bad in ([tok.vocab_size], [-1], [5, 10_000]):
        with pytest.raises(ValueError, match=str(bad[-1])):
            tok.decode_score(bad)
        with pytest.raises(ValueError):
            tok.tokens(bad)


def test_save_load_round_trip_and_hash(tmp_path):
    tok = Tokenizer.from_yaml(ROOT / "conf/tokenizer/coarse.yaml")
    tok.save(tmp_path / "t.json")
    d = json.loads((tmp_path / "t.json").read_text())
    assert {"config", "vocabulary", "format_version", "hash"} <= set(d)
    back = Tokenizer.load(tmp_path / "t.json")
    assert back.config == tok.config and back.hash == tok.hash and back.vocab.tokens == tok.vocab.tokens
    assert Tokenizer.from_yaml(ROOT / "conf/tokenizer/fine.yaml").hash != tok.hash
    d["config"]["num_velocities"] = 8
    with pytest.raises(ValueError, match="differs|hash"):
        Tokenizer.from_dict(d)


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="sustain_pedal"):
        TokenizerConfig(sustain_pedal="hold")
    with pytest.raises(ValueError, match="beat_res"):
        TokenizerConfig(beat_res={"0_4": 8, "5_12": 4})
    with pytest.raises(ValueError, match="unknown tokenizer config keys"):
        TokenizerConfig.from_dict({"num_velocity": 3})


class PairBPE:
    """A minimal stand-in for remi.bpe.BPEModel: one merge per new id, greedy left to right."""

    def __init__(self, base: int, merges: list[tuple[int, int]]):
        self.base, self.merges = base, merges
        self.vocab_size = base + len(merges)
        self.hash = "pair-" + "-".join(f"{a}.{b}" for a, b in merges)

    def expand(self, i):
        if i < self.base:
            return (i,)
        a, b = self.merges[i - self.base]
        return self.expand(a) + self.expand(b)

    def encode(self, ids):
        for k, (a, b) in enumerate(self.merges):
            out, j = [], 0
            while j < len(ids):
                if j + 1 < len(ids) and (ids[j], ids[j + 1]) == (a, b):
                    out.append(self.base + k)
                    j += 2
                else:
                    out.append(ids[j])
                    j += 1
            ids = out
        return ids

    def decode(self, ids):
        return [b for i in ids for b in self.expand(i)]

    def to_dict(self):
        return {"merges": self.merges}


def test_bpe_hooks_apply_everywhere():
    tok = Tokenizer()
    base_ids = tok.encode(small_midi())
    v = tok.vocab
    vel_dur = (v.tokens.index("Velocity_99"), v.tokens.index("Duration_0.4.8"))
    bpe = PairBPE(tok.base_vocab_size, [vel_dur])
    btok = tok.with_bpe(bpe)
    ids = btok.encode(small_midi())
    assert btok.vocab_size == tok.base_vocab_size + 1 and btok.base_vocab_size == tok.base_vocab_size
    assert tok.base_vocab_size in ids and len(ids) == len(base_ids) - 1
    assert "Velocity_99+Duration_0.4.8" in btok.tokens(ids)
    assert btok.count_notes(ids) == 4 and btok.token_errors(ids) == 0.0
    np.testing.assert_array_equal(btok.decode_score(ids).notes, tok.decode_score(base_ids).notes)
    assert btok.hash != tok.hash and btok.to_dict()["bpe"] == {"merges": [vel_dur]}
    # After a Pitch, the merged Velocity+Duration id is allowed, like a plain Velocity.
    m = btok.allowed_next(ids[:6])
    assert m.shape == (btok.vocab_size,) and m[tok.base_vocab_size] and not m[tok.bar_id]


def test_cli_encode_decode_info(tmp_path):
    src = tmp_path / "in.mid"
    src.write_bytes(small_midi())
    run = lambda *a: subprocess.run([sys.executable, "-m", "remi", *a], capture_output=True, text=True, cwd=ROOT)
    out = run("encode", str(src), "--config", "conf/tokenizer/fine.yaml")
    assert out.returncode == 0 and out.stdout.count("\n") == 1
    words = out.stdout.split()
    tok = Tokenizer.from_yaml(ROOT / "conf/tokenizer/fine.yaml")
    assert words == tok.tokens(tok.encode(src))
    (tmp_path / "t.txt").write_text(out.stdout)
    dec = run("decode", str(tmp_path / "t.txt"), str(tmp_path / "o.mid"), "--config", "conf/tokenizer/fine.yaml")
    assert dec.returncode == 0, dec.stderr
    assert tok.encode(tmp_path / "o.mid") == tok.encode(src)
    info = run("info")
    assert "vocab_size 201" in info.stdout and "Position" in info.stdout  # default: coarse
    bad = run("encode", str(tmp_path / "t.txt"))
    assert bad.returncode == 2 and "t.txt" in bad.stderr
