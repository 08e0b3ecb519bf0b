"""sample.py end to end, from a checkpoint that train.py writes in this test session (scale=tiny).

The model is barely trained (two steps), which is what these tests want: its raw output breaks
the REMI grammar often, so the grammar constraint, the prompt bookkeeping and the length limits
are all exercised on real, imperfect generations.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import mido
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

import pianolm.checkpoint as ckpt_mod
import pianolm.generate as gen
import remi
import remi.bars
import sample as sample_mod
from pianolm.errors import InputError
from remi.media.audio import INSTALL_HINT, find_renderer, read_wav
from tests.conftest import ROOT, shared_midi_files

PY = sys.executable
# One torch thread: step-by-step decoding of a tiny model is many times faster so on 2 busy cores.
ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """checkpoints/last.ckpt of a real `train.py scale=tiny` run (2 steps) on a folder of 24
    small MIDI files written here (a folder is a valid data source; no download, no conversion)."""
    return _train_tiny(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def bpe_ckpt(tmp_path_factory) -> Path:
    """The same run with BPE on (rounds 1-2), so sampling meets merged ids."""
    return _train_tiny(tmp_path_factory.mktemp("tiny_bpe_run"), "tokenizer.bpe_vocab_size=260")


def _train_tiny(run: Path, *extra: str) -> Path:
    corpus = run / "corpus"
    corpus.mkdir()
    for i in range(24):
        write_prompt(corpus / f"piece_{i:02d}.mid", n_bars=6 + i % 3, notes_per_beat=1 + i % 2, seed=100 + i)
    cmd = [PY, "train.py", "scale=tiny", f"data.sources=[{corpus}]", "data.name=sample_test",
           "data.val_fraction=0.2", "data.test_fraction=0.1", "trainer.max_steps=2",
           "callbacks.checkpoint.every_n_train_steps=2", "trainer.val_check_interval=1000", "logger=csv",
           "callbacks.samples=null", "trainer.enable_progress_bar=false",
           "trainer.enable_model_summary=false", f"hydra.run.dir={run}", f"paths.cache_dir={run / 'cache'}",
           f"paths.data_dir={run / 'data'}", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    path = run / "checkpoints" / "last.ckpt"
    assert proc.returncode == 0 and path.is_file(), proc.stderr[-3000:]
    return path


@pytest.fixture(scope="session")
def tok(ckpt) -> remi.Tokenizer:
    return remi.Tokenizer.from_dict(torch.load(ckpt, weights_only=True)["tokenizer"])


def config(**overrides):
    """conf/sample.yaml composed with `key=value` overrides, as the CLI would build it."""
    def value(v):
        if v is None:
            return "null"
        if isinstance(v, list):
            return json.dumps(v)
        text = str(v)
        if any(c in text for c in " #,=[]{}()'\"\\"):  # Hydra needs these quoted
            return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return text

    args = [f"{k}={value(v)}" for k, v in {"cpu_threads": 1, **overrides}.items()]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("sample", overrides=args)


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "sample.py", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)


def write_prompt(path: Path, n_bars: int = 6, tpb: int = 480, notes_per_beat: int = 1, seed: int = 0) -> Path:
    """A 4/4 piano MIDI file of `n_bars` bars, with off-grid onsets (so quantization matters),
    chords and notes held across bar lines."""
    rng = np.random.default_rng(seed)
    events = []
    for beat in range(4 * n_bars):
        for k in range(notes_per_beat):
            start = beat * tpb + k * tpb // notes_per_beat + int(rng.integers(0, 25))
            length = int(rng.choice([tpb // 2, tpb, 3 * tpb // 2, 2 * tpb]))
            for pitch in {int(rng.integers(48, 84)), int(rng.integers(48, 84))}:
                events += [(start, 1, "note_on", pitch, int(rng.integers(40, 110))),
                           (start + length, 0, "note_off", pitch, 0)]
    mf = mido.MidiFile(ticks_per_beat=tpb)
    track = mido.MidiTrack()
    mf.tracks.append(track)
    track.append(mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0))
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(100), time=0))
    now = 0
    for tick, _, kind, pitch, vel in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(mido.Message(kind, note=pitch, velocity=vel, time=tick - now))
        now = tick
    mf.save(path)
    return path


def notes_before(score: remi.Score, tick: int) -> np.ndarray:
    return score.notes[score.notes[:, 0] < tick]


def midi_note_ons(path: Path) -> int:
    return sum(1 for m in mido.MidiFile(path) if m.type == "note_on" and m.velocity > 0)


# ----------------------------------------------------------------- what the issue asks for


def test_cli_writes_midi_png_json_for_each_sample(ckpt, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(f"ckpt={ckpt}", "n_samples=4", f"out_dir={out}", "max_new_tokens=200", "batch_size=3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    mids, pngs = sorted(out.glob("*.mid")), sorted(out.glob("*.png"))
    jsons = sorted(p for p in out.glob("sample_*.json"))
    assert len(mids) == len(pngs) == len(jsons) == 4
    for mid, js in zip(mids, jsons):
        record = json.loads(js.read_text())
        assert midi_note_ons(mid) == record["n_notes"]  # mido reads back what was generated
        assert record["midi"] == mid.name and record["seed"] == 0 and record["temperature"] == 1.0
        assert record["ids"][0] == remi.Tokenizer.from_dict(
            torch.load(ckpt, weights_only=True)["tokenizer"]).bos_id
        assert record["n_tokens"] == len(record["ids"]) <= 1 + 200
    for png in pngs:
        assert mpimg.imread(png).shape[0] >= 200
    summary = json.loads((out / "samples.json").read_text())
    assert len(summary["pieces"]) == 4 and summary["config"]["n_samples"] == 4
    # Audio: rendered where FluidSynth is installed, one install hint where it is not.
    if find_renderer() is not None:
        assert len(list(out.glob("*.wav"))) == 4
    else:
        assert proc.stderr.count(INSTALL_HINT) == 1 and not list(out.glob("*.wav"))


def test_same_seed_same_midi_other_seed_other_midi(ckpt, tmp_path):
    common = dict(ckpt=ckpt, n_samples=2, max_new_tokens=120, audio=False, progress=False, grammar=False)
    a = sample_mod.sample(config(out_dir=tmp_path / "a", seed=7, batch_size=2, **common))
    b = sample_mod.sample(config(out_dir=tmp_path / "b", seed=7, batch_size=2, **common))
    c = sample_mod.sample(config(out_dir=tmp_path / "c", seed=8, batch_size=2, **common))
    for name in ("sample_000.mid", "sample_001.mid"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert [r["ids"] for r in a] == [r["ids"] for r in b]
    assert [r["ids"] for r in a] != [r["ids"] for r in c]


def test_continuation_keeps_the_prompt_bars_exactly(ckpt, tok, tmp_path):
    folder = tmp_path / "prompts"
    folder.mkdir()
    write_prompt(folder / "first song #1.mid", seed=1)
    write_prompt(folder / "second.mid", seed=2)
    records = sample_mod.sample(config(ckpt=ckpt, out_dir=tmp_path / "out", prompt=folder, prompt_bars=4,
                                       n_samples=2, max_bars=2, max_new_tokens=150, audio=False,
                                       progress=False))
    assert len(records) == 4  # 2 prompts x 2 samples
    assert sorted(p.name for p in (tmp_path / "out").glob("*.mid")) == [
        "first_song_1_000.mid", "first_song_1_001.mid", "second_000.mid", "second_001.mid"]
    four_bars = 4 * 4 * tok.ticks_per_beat  # the prompts are in 4/4
    for r in records:
        prompt = folder / ("second.mid" if r["prompt_name"] == "second" else "first song #1.mid")
        expected = notes_before(tok.quantize(prompt), four_bars)
        got = notes_before(remi.read_midi(tmp_path / "out" / r["midi"]), four_bars)
        assert len(expected) > 20
        np.testing.assert_array_equal(notes_before(tok.decode_score(r["ids"]), four_bars), expected)
        np.testing.assert_array_equal(got[:, :3], expected[:, :3])  # and so does the .mid: start, end, pitch
        assert r["prompt"]["bars"] == 4 and r["prompt"]["end_tick"] == four_bars
        assert r["n_bars"] <= 4 + 2  # max_bars=2 generated bars at most
        assert r["token_errors"] == 0.0


@pytest.mark.shared_midi
def test_continuation_of_real_midi(ckpt, tok, tmp_path):
    files = shared_midi_files("tegridy-piano")
    if not files:
        pytest.skip("../shared/midi/tegridy-piano is absent")
    prompt = files[0]
    records = sample_mod.sample(config(ckpt=ckpt, out_dir=tmp_path, prompt=prompt, prompt_bars=1, n_samples=2,
                                       max_new_tokens=60, audio=False, progress=False))
    end = records[0]["prompt"]["end_tick"]
    expected = notes_before(tok.quantize(prompt), end)
    assert len(expected) > 0
    for r in records:
        np.testing.assert_array_equal(notes_before(tok.decode_score(r["ids"]), end), expected)


def test_temperature_sweep_writes_sets_and_a_labelled_figure(ckpt, tmp_path):
    temps = [0.6, 1.0, 1.5]
    records = sample_mod.sample(config(ckpt=ckpt, out_dir=tmp_path, temperatures=temps, n_samples=2,
                                       max_new_tokens=80, audio=False, progress=False))
    assert sorted({r["temperature"] for r in records}) == temps
    for t in temps:
        folder = tmp_path / f"temperature_{t:g}"
        assert len(list(folder.glob("*.mid"))) == 2 and len(list(folder.glob("*.png"))) == 2
    img = mpimg.imread(tmp_path / "temperature_sweep.png")
    assert img.ndim == 3 and 300 <= img.shape[0] <= 1000 and img.shape[1] >= 2 * img.shape[0]


def test_grammar_constraint_gives_zero_errors(ckpt, tok, tmp_path):
    common = dict(ckpt=ckpt, n_samples=4, max_new_tokens=150, audio=False, progress=False, seed=3)
    on = sample_mod.sample(config(out_dir=tmp_path / "on", grammar=True, **common))
    off = sample_mod.sample(config(out_dir=tmp_path / "off", grammar=False, **common))
    for r in on:
        assert r["token_errors"] == 0.0 == tok.token_errors(r["ids"])
        assert r["ids"][-1] == tok.eos_id or r["stopped_by"] == "max_new_tokens"
    # The barely trained model breaks the grammar by itself: the constraint is doing the work.
    assert max(tok.token_errors(r["ids"]) for r in off) > 0.0


def test_max_bars_stops_after_that_many_bars(ckpt, tok, tmp_path):
    prompt = write_prompt(tmp_path / "p.mid", n_bars=3)
    records = sample_mod.sample(config(ckpt=ckpt, out_dir=tmp_path / "o", prompt=prompt, prompt_bars=2,
                                       max_bars=1, n_samples=3, max_new_tokens=300, audio=False,
                                       progress=False, temperature=0.8))
    for r in records:
        new = r["ids"][r["prompt"]["tokens"]:]
        assert new.count(tok.bar_id) <= 1 and new[-1] == tok.eos_id
        assert r["stopped_by"] in ("eos", "max_bars")


@pytest.mark.skipif(find_renderer() is None, reason=INSTALL_HINT)
def test_wav_is_audible_and_as_long_as_the_midi(ckpt, tmp_path):
    prompt = write_prompt(tmp_path / "p.mid", n_bars=4)
    records = sample_mod.sample(config(ckpt=ckpt, out_dir=tmp_path / "o", prompt=prompt, prompt_bars=3,
                                       max_bars=1, n_samples=1, max_new_tokens=100, progress=False))
    wav = tmp_path / "o" / records[0]["wav"]
    audio, rate = read_wav(wav)
    midi_seconds = mido.MidiFile(tmp_path / "o" / records[0]["midi"]).length
    assert midi_seconds > 5.0  # three bars at 100 bpm, at least
    assert abs(len(audio) / rate - midi_seconds) < 1.0
    assert np.abs(audio).max() > 1000 and np.sqrt(np.mean(audio.astype(float) ** 2)) > 50


def test_missing_soundfont_prints_one_hint_and_carries_on(ckpt, tmp_path, capsys):
    sample_mod.sample(config(ckpt=ckpt, out_dir=tmp_path, n_samples=2, max_new_tokens=30,
                             soundfont=tmp_path / "none.sf2", progress=False))
    assert capsys.readouterr().err.count(INSTALL_HINT) == 1
    assert len(list(tmp_path.glob("*.mid"))) == 2 and not list(tmp_path.glob("*.wav"))


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", ["missing", "not_a_checkpoint", "bad_prompt"])
def test_bad_input_is_one_clear_line(case, ckpt, tmp_path):
    args = {"missing": [f"ckpt={tmp_path / 'gone.ckpt'}"],
            "not_a_checkpoint": [f"ckpt={write_prompt(tmp_path / 'x.mid', n_bars=1)}"],
            "bad_prompt": [f"ckpt={ckpt}", f"prompt={tmp_path / 'broken.mid'}"]}[case]
    (tmp_path / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    proc = run_cli(*args, f"out_dir={tmp_path / 'out'}")
    named = {"missing": "gone.ckpt", "not_a_checkpoint": "x.mid", "bad_prompt": "broken.mid"}[case]
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("sample.py: error:") and named in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_prompt_folder_skips_its_unusable_files_and_lists_them(ckpt, tmp_path, capsys):
    folder = tmp_path / "prompts"
    folder.mkdir()
    write_prompt(folder / "a.mid", n_bars=2, seed=1)
    (folder / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    mf = mido.MidiFile(ticks_per_beat=480)
    mf.tracks.append(mido.MidiTrack([mido.MetaMessage("end_of_track", time=1920)]))
    mf.save(folder / "silent.mid")
    write_prompt(folder / "z.mid", n_bars=2, seed=2)
    records = sample_mod.sample(config(ckpt=ckpt, out_dir=tmp_path / "out", prompt=folder, prompt_bars=2,
                                       n_samples=1, max_new_tokens=20, audio=False, progress=False))
    assert sorted(r["prompt_name"] for r in records) == ["a", "z"]
    skipped = json.loads((tmp_path / "out" / "samples.json").read_text())["skipped_prompts"]
    assert [s["file"] for s in skipped] == ["broken.mid", "silent.mid"]
    assert "does not parse as MIDI" in skipped[0]["reason"] and "no notes" in skipped[1]["reason"]
    err = capsys.readouterr().err
    assert "skipped broken.mid" in err and "skipped silent.mid" in err
    (folder / "a.mid").unlink()
    (folder / "z.mid").unlink()
    with pytest.raises(InputError, match=r"none of the 2 files in prompt folder .*prompts can be a prompt: .*broken.mid"):
        sample_mod.sample(config(ckpt=ckpt, out_dir=tmp_path / "o2", prompt=folder, audio=False, progress=False))


def test_prompt_longer_than_context_is_refused(ckpt, tmp_path):
    block = torch.load(ckpt, weights_only=True)["model_config"]["block_size"]
    prompt = write_prompt(tmp_path / "dense.mid", n_bars=6, notes_per_beat=4)
    with pytest.raises(InputError, match=rf"dense.mid.*longer than the model's context of {block}"):
        sample_mod.sample(config(ckpt=ckpt, out_dir=tmp_path / "o", prompt=prompt, prompt_bars=4, audio=False))


def test_checkpoint_without_model_keys_is_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(InputError, match="other.ckpt is not a pianolm checkpoint.*'tokenizer'"):
        ckpt_mod.load_checkpoint(tmp_path / "other.ckpt")


# ----------------------------------------------------------------- pieces


def test_state_dict_prefix_is_found_not_assumed():
    expected = ["transformer.wte.weight", "lm_head.weight"]
    for prefix in ("", "gpt.", "model._orig_mod."):
        state = {prefix + k: i for i, k in enumerate(expected)} | {"other.thing": 9}
        assert ckpt_mod.match_state_dict(state, expected, "x") == {k: i for i, k in enumerate(expected)}
    with pytest.raises(InputError, match="lack 1 of the model's tensors"):
        ckpt_mod.match_state_dict({"gpt.transformer.wte.weight": 0}, expected, "x")


def test_cut_bars_stops_before_the_next_bar(tok, tmp_path):
    ids = tok.encode(write_prompt(tmp_path / "p.mid", n_bars=5))
    cut, n = remi.bars.cut_bars(tok, ids, 3)
    assert n == 3 and cut.count(tok.bar_id) == 3 and ids[len(cut)] == tok.bar_id
    assert cut == ids[: len(cut)] and tok.eos_id not in cut
    whole, n_all = remi.bars.cut_bars(tok, ids, 50)  # fewer bars than asked: all of them
    assert whole == ids[:-1] and n_all == ids.count(tok.bar_id)


def test_bpe_checkpoint_samples_follow_the_grammar_and_keep_the_prompt(bpe_ckpt, tmp_path):
    tok = remi.Tokenizer.from_dict(torch.load(bpe_ckpt, weights_only=True)["tokenizer"])
    assert tok.bpe is not None and tok.vocab_size > tok.base_vocab_size
    prompt = write_prompt(tmp_path / "p.mid", seed=5)
    records = sample_mod.sample(config(ckpt=bpe_ckpt, out_dir=tmp_path / "out", prompt=prompt, prompt_bars=2,
                                       n_samples=3, max_bars=2, max_new_tokens=120, audio=False,
                                       progress=False))
    two_bars = 2 * 4 * tok.ticks_per_beat
    expected = notes_before(tok.quantize(prompt), two_bars)
    assert len(expected) > 5
    for r in records:
        assert r["token_errors"] == 0.0 == tok.token_errors(r["ids"])
        assert any(i >= tok.base_vocab_size for i in r["ids"])  # merged ids really occur
        np.testing.assert_array_equal(notes_before(tok.decode_score(r["ids"]), two_bars), expected)
        assert len(mido.MidiFile(tmp_path / "out" / r["midi"]).tracks) > 0


# ----------------------------------------------------------------- past the context window


def long_pieces(ckpt, prompt_file, stride: int, max_bars: int | None = None) -> tuple[list, int, int]:
    """Three pieces of 600 new tokens (as `finish` returns them) that continue 2 bars of
    `prompt_file`, with sample.py's mask, except that EOS is only allowed where nothing else is
    (the barely trained model would otherwise stop early); the prompt's length; block_size."""
    tok, gpt, _ = ckpt_mod.load_checkpoint(ckpt)
    prompt, = gen.load_prompts(tok, prompt_file, 2, gpt.config.block_size)
    allowed = gen.make_allowed(tok, len(prompt.ids), True, max_bars, continue_bars=True)

    def no_early_eos(ids):
        mask = allowed(ids)
        others = mask.clone()
        others[:, tok.eos_id] = False
        return torch.where(others.any(dim=1, keepdim=True), others, mask)

    idx = torch.tensor([prompt.ids] * 3)
    out = gpt.generate(idx, 600, eos_id=tok.eos_id, allowed=no_early_eos, stride=stride,
                       generator=torch.Generator().manual_seed(4))
    return [gen.finish(tok, row, len(prompt.ids), max_bars) for row in out.tolist()], len(prompt.ids), \
        gpt.config.block_size


def test_grammar_prompt_and_max_bars_stay_exact_across_window_shifts(ckpt, tok, tmp_path):
    prompt_file = write_prompt(tmp_path / "p.mid", n_bars=3)
    stride = 16  # the window moves on every 16 tokens once the first 256 are written
    free, prompt_len, block = long_pieces(ckpt, prompt_file, stride)
    starts = remi.bars.bar_ids(tok)
    row = free[0][0]
    assert len(row) > block + 8 * stride  # eight shifts or more
    new_bars = [i for i in range(prompt_len, len(row)) if row[i] in starts]
    # a cut well past several shifts: the last new bar that starts after three of them (and not
    # among the first three bars), whatever the barely trained model's bars look like
    late = [j for j, i in enumerate(new_bars) if j >= 3 and i > block + 3 * stride]
    assert late, f"no new bar after {block + 3 * stride} tokens: {new_bars}"
    k = late[-1]
    limited, _, _ = long_pieces(ckpt, prompt_file, stride, max_bars=k)
    two_bars = 2 * 4 * tok.ticks_per_beat
    expected = notes_before(tok.quantize(prompt_file), two_bars)
    for (full, _), (cut, stop) in zip(free, limited):
        assert tok.token_errors(full) == 0.0 == tok.token_errors(cut)  # the grammar held throughout
        np.testing.assert_array_equal(notes_before(tok.decode_score(cut), two_bars), expected)
        bars = [i for i in range(prompt_len, len(full)) if full[i] in starts]
        if len(bars) > k:  # the same piece up to its (k+1)-th bar, then EOS: max_bars counted exactly
            assert (cut, stop) == (full[: bars[k]] + [tok.eos_id], "max_bars")
        else:
            assert cut == full


def test_incremental_grammar_mask_equals_reading_the_whole_prefix(tok, tmp_path):
    ids = tok.encode(write_prompt(tmp_path / "p.mid", n_bars=4, notes_per_beat=2))[:-1]  # EOS dropped
    allowed = gen.make_allowed(tok, 5, grammar=True, max_bars=None, continue_bars=False)
    not_special = np.ones(tok.vocab_size, dtype=bool)
    not_special[[tok.bos_id, tok.pad_id, tok.mask_id]] = False
    rows = torch.tensor([ids, ids[::-1]])  # a real piece, and one that breaks the grammar everywhere
    for n in range(6, len(ids) + 1, 3):  # generate hands in growing prefixes, here several ids at a time
        masks = allowed(rows[:, :n]).numpy()
        for b in range(2):
            expected = tok.allowed_next(rows[b, :n].tolist()) & not_special
            np.testing.assert_array_equal(masks[b], expected if expected.any() else np.eye(tok.vocab_size,
                                          dtype=bool)[tok.eos_id])


@pytest.fixture(scope="module")
def tempo_tok() -> tuple[remi.Tokenizer, float, float]:
    """The default tokenizer (it has Tempo and TimeSig tokens), and its tempos nearest 60 and 120 bpm."""
    tok = remi.Tokenizer()
    bpms = [float(t.split("_")[1]) for t in tok.vocab.tokens if t.startswith("Tempo_")]
    return tok, min(bpms, key=lambda b: abs(b - 60)), min(bpms, key=lambda b: abs(b - 120))


def bars_of(tok, specs: list[tuple[str, float]]) -> list[int]:
    """BOS + one bar per (time signature, tempo), each with one note on its first beat."""
    vel = next(t for t in tok.vocab.tokens if t.startswith("Velocity_"))
    dur = next(t for t in tok.vocab.tokens if t.startswith("Duration_"))
    tokens = ["BOS_None"]
    for sig, bpm in specs:
        tokens += ["Bar_None", f"TimeSig_{sig}", "Position_0", f"Tempo_{bpm:g}", "Pitch_60", vel, dur]
    return tok.ids_from_tokens(tokens)


def test_seconds_between_bars_follows_meter_and_tempo(tempo_tok):
    tok, slow, fast = tempo_tok
    ids = bars_of(tok, [("4/4", slow), ("3/4", fast), ("4/4", fast)])
    assert gen.seconds_between_bars(tok, ids, 0, 1) == pytest.approx(4 * 60 / slow, rel=1e-3)
    assert gen.seconds_between_bars(tok, ids, 0, 2) == pytest.approx(4 * 60 / slow + 3 * 60 / fast,
                                                                            rel=1e-3)
    assert gen.seconds_between_bars(tok, ids, 1, 3) == pytest.approx(7 * 60 / fast, rel=1e-3)


def test_max_seconds_stops_at_the_first_bar_line_past_it(tempo_tok):
    tok, slow, _ = tempo_tok
    ids = bars_of(tok, [("4/4", slow)] * 6) + [tok.eos_id]
    bar = 4 * 60 / slow  # about 4 s: bars start at 0, 1 bar, 2 bars, ...
    for seconds, kept in ((1.99 * bar, 2), (2.01 * bar, 3), (3 * bar, 3), (3.01 * bar, 4), (30 * bar, 6)):
        cut, stop = gen.finish(tok, ids, 1, None, max_seconds=seconds)
        assert cut.count(tok.bar_id) == kept and cut[-1] == tok.eos_id
        assert stop == ("max_seconds" if kept < 6 else "eos")
    assert gen.finish(tok, ids, 1, 2, max_seconds=3.01 * bar)[1] == "max_bars"  # the first limit wins
    # after a prompt of two bars, seconds count from the prompt's end
    assert gen.finish(tok, ids, 15, None, max_seconds=1.99 * bar)[0].count(tok.bar_id) == 2 + 2


def test_max_seconds_from_the_command_line(ckpt, tok, tmp_path):
    prompt = write_prompt(tmp_path / "p.mid", n_bars=3)
    records = sample_mod.sample(config(ckpt=ckpt, out_dir=tmp_path / "o", prompt=prompt, prompt_bars=2,
                                       max_seconds=6, n_samples=3, max_new_tokens=500, stride=64,
                                       audio=False, progress=False))
    assert {r["stopped_by"] for r in records} <= {"eos", "max_seconds"} and records[0]["max_seconds"] == 6
    for r in records:
        assert r["token_errors"] == 0.0
        if r["stopped_by"] == "max_seconds":
            ids, g = r["ids"][:-1], r["n_bars"] - 2  # generated bars kept; the next one started past 6 s
            assert gen.seconds_between_bars(tok, ids, 2, 2 + g) >= 6
            assert gen.seconds_between_bars(tok, ids, 2, 2 + g - 1) < 6


def test_bad_stride_or_max_seconds_is_one_clear_error(ckpt, tmp_path):
    with pytest.raises(InputError, match="stride must be an integer from 1.*block_size 256"):
        sample_mod.sample(config(ckpt=ckpt, out_dir=tmp_path, stride=1000, audio=False))
    with pytest.raises(InputError, match="max_seconds must be > 0"):
        sample_mod.sample(config(ckpt=ckpt, out_dir=tmp_path, max_seconds=0, audio=False))


def test_a_fixed_key_is_written_as_the_midis_key_signature(ckpt, tmp_path):
    common = dict(ckpt=ckpt, n_samples=2, max_new_tokens=60, audio=False, progress=False, batch_size=2, seed=3)
    sample_mod.sample(config(out_dir=tmp_path / "dm", key="Dm", **common))
    sample_mod.sample(config(out_dir=tmp_path / "free", **common))
    for name in ("sample_000.mid", "sample_001.mid"):
        keys = [m.key for t in mido.MidiFile(tmp_path / "dm" / name).tracks for m in t if m.type == "key_signature"]
        assert keys == ["Dm"]
        free = [m for t in mido.MidiFile(tmp_path / "free" / name).tracks for m in t if m.type == "key_signature"]
        assert free == []
