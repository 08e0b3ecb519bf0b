"""Bad token ids and bad files for the decoder and `python -m remi decode` (issue 15)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import remi
from remi.midi_io import midifile_to_bytes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    return remi.Tokenizer.from_yaml(ROOT / "conf" / "tokenizer" / "coarse.yaml")


@pytest.fixture(scope="module")
def bpe_tok(tok):
    from remi.bpe import BPEModel

    pitch, vel = tok.ids_from_tokens(["Pitch_60", "Velocity_63"])
    return tok.with_bpe(BPEModel(base_vocab_size=tok.vocab_size, merges=[(pitch, vel)], word_start_ids=(), never_merge_ids=()))


@pytest.mark.parametrize("bad, shown", [
    (2**64, "18446744073709551616"), (float("inf"), "inf"), (5.7, "5.7"), (5.0, "5.0"), ("5", "'5'"),
    (None, "None"), (-1, "-1"),
])
def test_decode_names_every_id_that_is_not_an_in_vocabulary_integer(tok, bpe_tok, bad, shown):
    for t in (tok, bpe_tok):
        good = t.encode_score(remi.Score.from_notes([(0, 8, 60, 64)], ticks_per_beat=t.ticks_per_beat))
        ids = [*good[:2], bad, *good[2:]]
        with pytest.raises(ValueError, match=rf"token id {__import__('re').escape(shown)} at index 2 "):
            t.decode(ids)


@pytest.mark.parametrize("bad", [None, 5, 5.0, np.int64(5)], ids=["None", "int", "float", "numpy-int"])
def test_ids_that_are_not_a_sequence_are_a_value_error_with_a_sentence(tok, bpe_tok, bad):
    # decode(None) and decode(5) raised TypeError ('NoneType' object is not iterable)
    for t in (tok, bpe_tok):
        for call in (t.decode, t.decode_score, t.tokens, t.count_notes, t.token_errors):
            with pytest.raises(ValueError, match=rf"token ids must be a flat sequence of ints .*, got {type(bad).__name__} "):
                call(bad)


def test_unsigned_ids_beyond_int64_are_not_wrapped(tok):
    with pytest.raises(ValueError, match="token id 9223372036854775808 at index 0 is out of the vocabulary"):
        tok.decode(np.array([2**63], dtype=np.uint64))


def test_integer_ids_of_any_numpy_type_still_decode(tok):
    ids = tok.encode_score(remi.Score.from_notes([(0, 8, 60, 64)], ticks_per_beat=tok.ticks_per_beat))
    for arr in (ids, tuple(ids), np.array(ids, dtype=np.uint16), np.array(ids, dtype=np.int32), iter(ids)):
        assert len(tok.decode_score(arr)) == 1


@pytest.mark.slow  # ten million bars through the decoder, the writer and the reader
@pytest.mark.timeout(120)
def test_ten_million_bars_write_a_file_our_reader_reads(tok):
    # One delta time of 3.2e8 ticks: over the 4-byte limit of a Standard MIDI File.
    note = tok.encode_score(remi.Score.from_notes([(0, 8, 60, 64)], ticks_per_beat=tok.ticks_per_beat), add_special=False)
    ids = np.concatenate([[tok.bos_id], np.full(10_000_000, tok.bar_id), note[1:], [tok.eos_id]])
    score = tok.decode_score(ids)
    assert score.notes[0, 0] > 0x0FFFFFFF  # the longest delta time a MIDI file can hold
    back = remi.read_midi(midifile_to_bytes(tok.decode(ids)))
    np.testing.assert_array_equal(back.notes, score.notes)
    assert [t.tick for t in back.time_signatures] == [t.tick for t in score.time_signatures]


def _decode_cli(tokens: Path, out: Path):
    return subprocess.run([sys.executable, "-m", "remi", "decode", str(tokens), str(out)],
                          capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("case", ["binary", "missing", "folder", "no-output-folder", "unknown-token"])
def test_cli_decode_bad_files_print_one_line_and_exit_2(tmp_path, case):
    tokens, out = tmp_path / "t.txt", tmp_path / "o.mid"
    tokens.write_text("Bar_None Position_0 Pitch_60 Velocity_63 Duration_1.0.4")
    if case == "binary":
        tokens.write_bytes(b"\x00\xff\xfe\x89PNG\x80\x81")
    elif case == "missing":
        tokens = tmp_path / "absent.txt"
    elif case == "folder":
        tokens = tmp_path
    elif case == "no-output-folder":
        out = tmp_path / "absent" / "o.mid"
    else:
        tokens.write_text("Bar_None Pitch_999")
    r = _decode_cli(tokens, out)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert str(out if case == "no-output-folder" else tokens) in lines[0]
    assert not out.exists()


def test_cli_decode_good_file_still_writes(tmp_path):
    tokens, out = tmp_path / "t.txt", tmp_path / "o.mid"
    tokens.write_text("Bar_None Position_0 Pitch_60 Velocity_63 Duration_1.0.4")
    r = _decode_cli(tokens, out)
    assert r.returncode == 0, r.stderr
    assert len(remi.read_midi(out)) == 1
