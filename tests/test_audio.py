"""remi.audio: FluidSynth discovery, WAV rendering (real FluidSynth where installed), tail trimming."""
from __future__ import annotations

import wave

import mido
import numpy as np
import pytest

from remi.audio import INSTALL_HINT, Renderer, find_renderer, read_wav, render_wav, trim_trailing_silence

RENDERER = find_renderer()
needs_fluidsynth = pytest.mark.skipif(RENDERER is None, reason=INSTALL_HINT)


def write_scale(path, n_notes=8, tempo_bpm=120.0, tpb=480):
    """A one-track MIDI file: an ascending scale of quarter notes, each held for a beat."""
    mf = mido.MidiFile(ticks_per_beat=tpb)
    track = mido.MidiTrack()
    mf.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo_bpm), time=0))
    for i in range(n_notes):
        track.append(mido.Message("note_on", note=60 + i, velocity=90, time=0))
        track.append(mido.Message("note_off", note=60 + i, velocity=0, time=tpb))
    mf.save(path)
    return mido.MidiFile(path).length


def test_missing_pieces_give_none_and_a_hint(tmp_path):
    assert find_renderer(executable="no-such-synth-pianolm") is None
    assert find_renderer(soundfont=str(tmp_path / "absent.sf2")) is None
    assert "apt-get install fluidsynth fluid-soundfont-gm" in INSTALL_HINT
    assert "\n" not in INSTALL_HINT


def test_soundfont_env_var_wins(tmp_path, monkeypatch):
    from remi.audio import find_soundfont

    sf2 = tmp_path / "mine.sf2"
    sf2.write_bytes(b"RIFF")
    monkeypatch.setenv("PIANOLM_SOUNDFONT", str(sf2))
    assert find_soundfont(candidates=()) == str(sf2)
    monkeypatch.setenv("PIANOLM_SOUNDFONT", str(tmp_path / "gone.sf2"))
    assert find_soundfont(candidates=()) is None


def test_trim_trailing_silence_cuts_only_the_quiet_tail(tmp_path):
    rate = 8000
    t = np.arange(rate) / rate  # 1 s of tone, then 2 s of near-silence
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    audio = np.concatenate([tone, np.full(2 * rate, 3, dtype=np.int16)])
    path = tmp_path / "x.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(audio.tobytes())
    seconds = trim_trailing_silence(path, keep_s=0.1)
    trimmed, r = read_wav(path)
    assert r == rate
    assert seconds == pytest.approx(len(trimmed) / rate)
    assert 1.0 <= seconds <= 1.11
    np.testing.assert_array_equal(trimmed[: rate, 0], tone)  # the music itself is untouched


@needs_fluidsynth
def test_render_wav_is_audible_and_as_long_as_the_midi(tmp_path):
    midi_seconds = write_scale(tmp_path / "scale.mid", n_notes=8, tempo_bpm=100.0)
    wav = render_wav(tmp_path / "scale.mid", tmp_path / "out" / "scale.wav", RENDERER)
    audio, rate = read_wav(wav)
    assert rate == 44100 and audio.shape[1] == 2
    assert abs(len(audio) / rate - midi_seconds) < 1.0, (len(audio) / rate, midi_seconds)
    # Non-silent throughout the music: every half second of it carries real signal.
    peaks = [np.abs(audio[int(s * rate): int((s + 0.5) * rate)]).max() for s in np.arange(0, midi_seconds - 0.5, 0.5)]
    assert min(peaks) > 300, peaks


@needs_fluidsynth
def test_render_wav_keeps_a_soft_ending_when_told_the_length(tmp_path):
    """A long, very soft last note decays below the silence threshold well before the MIDI ends;
    given the music's length, the WAV still spans it (plus a short release)."""
    mf = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mf.tracks.append(track)
    track.append(mido.Message("note_on", note=60, velocity=100, time=0))
    track.append(mido.Message("note_off", note=60, velocity=0, time=480))
    track.append(mido.Message("note_on", note=40, velocity=5, time=0))
    track.append(mido.Message("note_off", note=40, velocity=0, time=480 * 16))  # 8 s at 120 bpm
    mf.save(tmp_path / "soft.mid")
    seconds = mido.MidiFile(tmp_path / "soft.mid").length
    audio, rate = read_wav(render_wav(tmp_path / "soft.mid", tmp_path / "soft.wav", RENDERER,
                                      seconds=seconds, tail_s=0.5))
    assert len(audio) / rate == pytest.approx(seconds + 0.5, abs=0.01)


def test_cut_wav_cuts_to_the_given_length(tmp_path):
    from remi.audio import cut_wav

    path = tmp_path / "y.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(1000)
        w.writeframes(np.arange(2 * 3000, dtype=np.int16).tobytes())
    assert cut_wav(path, 1.25) == 1.25
    audio, _ = read_wav(path)
    assert audio.shape == (1250, 2) and audio[-1].tolist() == [2498, 2499]
    assert cut_wav(path, 10.0) == 1.25  # never lengthens


@needs_fluidsynth
def test_render_wav_names_the_file_it_could_not_render(tmp_path):
    bad = tmp_path / "not_midi.mid"
    bad.write_text("this is not MIDI")
    with pytest.raises(RuntimeError, match="not_midi.mid"):
        render_wav(bad, tmp_path / "bad.wav", RENDERER)


def test_render_wav_with_a_missing_executable_raises(tmp_path):
    write_scale(tmp_path / "s.mid", n_notes=2)
    with pytest.raises(OSError):
        render_wav(tmp_path / "s.mid", tmp_path / "s.wav", Renderer("/nonexistent/fluidsynth", "x.sf2"))
