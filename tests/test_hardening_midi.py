"""Hostile MIDI (issue 15): bounded time and memory when reading and encoding, and MidiReadError
as the one exception for a file that cannot be read.

The time guards are generous deadlines (the old quadratic code took 10x longer than each limit;
the figures themselves are `benchmarks/bench_hostile.py` rows)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import remi
from remi import MidiReadError, read_midi
from tests.hostile import alternating_meters, many_time_signatures, note_pairs, overlapping_notes

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
