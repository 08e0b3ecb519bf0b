"""Hostile MIDI (issue 15): bounded time and memory when reading and encoding, and MidiReadError
as the one exception for a file that cannot be read.

The time guards are generous deadlines (the old quadratic code took 10x longer than each limit;
the figures themselves are `benchmarks/bench_hostile.py` rows)."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import remi
from remi import MidiReadError, read_midi
from remi.config import DEFAULT_MAX_NOTES
from remi.corpus import prepare
from remi.corpus.datasets import DataConfig
from tests.hostile import alternating_meters, many_time_signatures, note_pairs, overlapping_notes
from tests.midi_bytes import midi_file, note_events, track

ROOT = Path(__file__).resolve().parents[1]
COARSE = ROOT / "conf" / "tokenizer" / "coarse.yaml"


@pytest.mark.timeout(120)
def test_two_million_overlapping_notes_of_one_pitch_read_in_linear_time():
    # The old reader closed notes with list.pop(0): 68 s for 10^6 notes, ~4 min for these.
    n = 2_000_000
    score = read_midi(overlapping_notes(n))
    assert len(score) == n
    # first in, first out: note i sounds from tick i to tick n + i
    np.testing.assert_array_equal(score.notes[:, 0], np.arange(n))
    np.testing.assert_array_equal(score.notes[:, 1], np.arange(n) + n)


@pytest.mark.timeout(120)
def test_two_million_time_signatures_are_preprocessed_in_linear_time():
    # The old preprocessing deleted inside a list: ~10 s at 4e5 signatures, minutes at 2e6. Most of
    # these fall inside a bar, are delayed to the next bar line and collide there.
    from remi.encode import _preprocess_time_signatures

    meters = [(4, 4), (3, 4), (6, 8), (2, 4), (5, 4)]
    ts = [[7 * i, *meters[i % 5]] for i in range(2_000_000)]
    out = _preprocess_time_signatures(ts, 8)
    assert out[0][0] == 0 and all(a[0] < b[0] and a[1:] != b[1:] for a, b in zip(out, out[1:]))


def test_many_time_signatures_encode_end_to_end():
    tok = remi.Tokenizer.from_file(COARSE)
    ids = tok.encode(read_midi(many_time_signatures(100_000)))
    assert tok.count_notes(ids) == 1


def test_time_signature_rules_unchanged_on_a_small_case():
    # 4/4 at 0, 3/4 inside bar 1 (delayed to its end, tick 4*tpq), 3/4 again (a repeat, dropped),
    # then 6/8 and 4/4 colliding on one bar line (the later wins).
    from remi.encode import _preprocess_time_signatures

    tpq = 4
    ts = [[0, 4, 4], [3, 3, 4], [20, 3, 4], [17, 6, 8], [18, 4, 4]]
    assert _preprocess_time_signatures(ts, tpq) == [[0, 4, 4], [16, 3, 4], [28, 4, 4]]


def _python_lines_in_remi(fn) -> int:
    """How many lines of remi's own Python code run during fn() (sys.settrace line events): a
    count of work that does not depend on the machine's speed or load."""
    remi_dir = str(ROOT / "remi")
    count = 0

    def local(frame, event, arg):
        nonlocal count
        count += event == "line"
        return local

    sys.settrace(lambda frame, event, arg: local if frame.f_code.co_filename.startswith(remi_dir) else None)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def test_a_meter_change_in_every_bar_costs_no_python_loop_per_meter():
    # A meter change in every bar, its denominator alternating 4 and 8, makes every bar its own
    # section for onset snapping and duration bins. Those steps used to loop over sections in
    # Python (closest_index, duration_ticks and an argmax over the remaining onsets, per section:
    # ~93 lines of remi code per meter, and quadratic): 4e4 such meters took 9-15 s. Now the
    # only per-meter Python is reading the Score's TimeSignature objects into an array (a
    # two-line comprehension). Counting lines, not seconds, keeps this exact on a busy machine.
    tok = remi.Tokenizer.from_file(COARSE)
    small, large = read_midi(alternating_meters(300)), read_midi(alternating_meters(3000))
    per_meter = (_python_lines_in_remi(lambda: tok.encode(large)) - _python_lines_in_remi(lambda: tok.encode(small))) / 2700
    assert per_meter <= 5, f"{per_meter:.1f} lines of remi Python per meter change: a per-meter loop is back"


def test_a_meter_change_in_every_bar_encodes_every_meter_and_note():
    n = 2000
    tok = remi.Tokenizer.from_file(COARSE)
    score = read_midi(alternating_meters(n))
    ids = tok.encode(score)
    assert tok.count_notes(ids) == n
    names = tok.tokens(ids)
    # every Bar is followed by the meter the file sets for it, in the file's order
    meters = [names[i + 1] for i, t in enumerate(names) if t == "Bar_None"]
    cycle = ["TimeSig_3/4", "TimeSig_6/8", "TimeSig_4/4", "TimeSig_3/8", "TimeSig_2/4", "TimeSig_12/8"]
    assert meters == [cycle[i % 6] for i in range(n)]
    back = tok.decode_score(ids)
    assert [(t.numerator, t.denominator) for t in back.time_signatures] == \
        [(t.numerator, t.denominator) for t in score.time_signatures]


_CAPPED = textwrap.dedent("""
    import os, resource, sys
    sys.path.insert(0, {root!r})
    from tests.hostile import note_pairs
    from remi import read_midi
    data = note_pairs({n})
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    cap = vm + ({extra_mb} << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        score = read_midi(data)
        print("ok", len(score))
    except BaseException as e:
        print(type(e).__name__)
""")


def _read_capped(n: int, extra_mb: int) -> str:
    """Read n note pairs in a child process whose address space may grow only `extra_mb` MB."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    code = _CAPPED.format(root=str(ROOT), n=n, extra_mb=extra_mb)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    return (out.stdout.strip().splitlines() or [out.stderr.strip()[-300:]])[-1]


def test_three_million_notes_fit_in_300_mb():
    # Notes held as Python tuples (~150 bytes each) ran out at this cap; 32 bytes a note now.
    assert _read_capped(3_000_000, 300) == "ok 3000000"


def test_out_of_memory_is_a_midi_read_error():
    # The old reader let MemoryError (numpy's _ArrayMemoryError among them) escape read_midi.
    assert _read_capped(3_000_000, 60) == "MidiReadError"


def test_oversized_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "big.mid"
    path.write_bytes(note_pairs(1000))
    monkeypatch.setattr(remi.midi_read, "MAX_FILE_BYTES", 100)
    with pytest.raises(MidiReadError, match="larger than 100 bytes"):
        read_midi(path)


# ---- issue 29: bounded memory through the whole encode ----------------------------------------


def _coarse(**changes) -> remi.Tokenizer:
    return remi.Tokenizer(dataclasses.replace(remi.TokenizerConfig.from_yaml(COARSE), **changes))


def test_max_notes_leaves_every_shipped_hash_unchanged_at_its_default():
    # Shard folders and checkpoints carry the hash: a key added later must not move it.
    for path in sorted((ROOT / "conf" / "tokenizer").glob("*.yaml")):
        cfg = remi.TokenizerConfig.from_yaml(path)
        assert cfg.max_notes == DEFAULT_MAX_NOTES and "max_notes" not in cfg.to_dict(), path.name
    # the default config's hash as it was before max_notes existed
    assert remi.TokenizerConfig().hash() == "2ca51c14f5ae684340079121dbd35c06fdec9bd128797c25e06479b798b47deb"
    other = _coarse(max_notes=1000)
    assert other.config.to_dict()["max_notes"] == 1000 and other.hash != _coarse().hash
    assert remi.Tokenizer.from_dict(other.to_dict()).config.max_notes == 1000  # saved and loaded with it


@pytest.mark.parametrize("bad", [0, -5, True, 2.5, "many"])
def test_max_notes_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="TokenizerConfig.max_notes must be an integer >= 1"):
        _coarse(max_notes=bad)


def test_a_piece_over_max_notes_is_refused_before_the_encoder_runs(tmp_path, monkeypatch):
    path = tmp_path / "many.mid"
    path.write_bytes(note_pairs(101))
    tok = _coarse(max_notes=100)

    def never(*args, **kwargs):
        raise AssertionError("the encoder ran on a piece over the limit")

    monkeypatch.setattr(remi.encode, "quantize_grid", never)
    for encode in (tok.encode, tok.quantize):
        with pytest.raises(MidiReadError, match=rf"{tmp_path}/many\.mid: 101 notes, over tokenizer\.max_notes = 100;"):
            encode(path)
    monkeypatch.undo()
    assert tok.count_notes(_coarse(max_notes=101).encode(path)) == 101  # at the limit: encoded


def test_out_of_memory_anywhere_in_encode_is_a_midi_read_error(monkeypatch):
    from remi.bpe import BPEModel

    score = read_midi(note_pairs(50))
    tok = _coarse()
    pitch, vel = tok.ids_from_tokens(["Pitch_60", "Velocity_63"])
    bpe = tok.with_bpe(BPEModel(base_vocab_size=tok.vocab_size, merges=[(pitch, vel)], word_start_ids=(),
                                never_merge_ids=()))

    def out_of_memory(*args, **kwargs):  # what numpy raises when an allocation fails
        raise np._core._exceptions._ArrayMemoryError((10**12,), np.dtype(np.int64))

    def refused(entry, source="<score>"):
        with pytest.raises(MidiReadError, match=f"{source}: out of memory encoding 50 notes") as err:
            entry()
        assert err.value.__context__ is None  # raised after the handler: the frames holding the arrays are freed

    for name in ("quantize_grid", "grid_to_ids"):  # the quantizer, then the id writer
        with monkeypatch.context() as m:
            m.setattr(remi.encode, name, out_of_memory)
            for t in (tok, bpe):
                for entry in (t.encode, t.encode_score, t.encode_ids, t.encode_base):
                    refused(lambda: entry(score))
            refused(lambda: tok.encode_score(score, source="piece.mid"), "piece.mid")
    with monkeypatch.context() as m:
        m.setattr(remi.encode, "grid_to_score", out_of_memory)
        refused(lambda: tok.quantize(score))
    with monkeypatch.context() as m:
        m.setattr(bpe.bpe, "encode", out_of_memory)  # the BPE merge, after the base ids
        refused(lambda: bpe.encode(score))
        refused(lambda: bpe.encode_ids(score))
    assert tok.encode(score) == _coarse().encode(score)  # nothing left behind


def test_prepare_skips_a_file_over_max_notes_and_keeps_the_others(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for k in range(3):
        notes = [(i * 240, i * 240 + 200, 48 + k + i, 80) for i in range(24)]
        (folder / f"small{k}.mid").write_bytes(midi_file([track(note_events(notes))]))
    (folder / "huge.mid").write_bytes(note_pairs(60))
    cfg = DataConfig(name="capped", sources=(str(folder),))
    r = prepare.prepare(cfg, _coarse(max_notes=50), cache_dir=tmp_path / "cache", workers=1, progress=False)
    (skip,) = r.manifest["skipped"]
    assert skip["file"] == "huge.mid"
    assert skip["reason"].startswith("unreadable MIDI:") and "60 notes, over tokenizer.max_notes = 50" in skip["reason"]
    assert sorted(f["file"] for f in r.manifest["files"]) == ["small0.mid", "small1.mid", "small2.mid"]
    assert r.manifest["total"]["notes"] == 3 * 24


_CAPPED_ENCODE = textwrap.dedent("""
    import resource, sys
    sys.path.insert(0, {root!r})
    resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
    import remi
    try:
        remi.Tokenizer.from_yaml({conf!r}).encode({path!r})
        print("encoded")
    except remi.MidiReadError as e:
        print("MidiReadError", e)
""")


@pytest.mark.slow  # ~30-60 s: reads 8e6 notes
@pytest.mark.timeout(300)
def test_eight_million_notes_under_a_2_gib_cap_end_in_midi_read_error(tmp_path):
    # It used to die inside the encoder with numpy's bare _ArrayMemoryError (exit 1).
    path = tmp_path / "eight_million.mid"
    path.write_bytes(note_pairs(8_000_000))
    code = _CAPPED_ENCODE.format(root=str(ROOT), cap=2 << 30, conf=str(COARSE), path=str(path))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=280)
    wall = time.monotonic() - t
    assert out.returncode == 0 and out.stdout.startswith(f"MidiReadError cannot read MIDI {path}:"), \
        (out.stdout + out.stderr)[-2000:]
    assert wall < 120, f"{wall:.0f} s"
