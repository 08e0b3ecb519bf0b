"""remi.media.audio: FluidSynth discovery, WAV rendering (real FluidSynth where installed), the in-process
fallback from pip packages (always run where they are installed), FLAC/OGG, tail trimming.

The `needs_renderer` tests use whatever `find_renderer()` picks: FluidSynth where installed, else
the pip-only engine. `PIANOLM_RENDERER=midirenderer` forces the second (`.ci/run` runs this file
once that way too); where the forced engine is missing those tests skip, saying so."""
from __future__ import annotations

import os
import subprocess
import sys
import wave
from pathlib import Path

import mido
import numpy as np
import pytest

import remi.media.audio as audio_mod
from remi.media.audio import (
    FALLBACK_RATE,
    FLUIDSYNTH_RATE,
    INSTALL_HINT,
    RENDERER_ENV,
    Renderer,
    bundled_soundfont,
    find_renderer,
    read_wav,
    render_audio,
    render_wav,
    trim_trailing_silence,
)

RENDERER = find_renderer()  # honours $PIANOLM_RENDERER
FORCED = os.environ.get(RENDERER_ENV)
needs_renderer = pytest.mark.skipif(RENDERER is None, reason=INSTALL_HINT if not FORCED else (
    f"{RENDERER_ENV}={FORCED} forces an engine this machine lacks (fluidsynth: apt-get install fluidsynth "
    "fluid-soundfont-gm; midirenderer: pip install midirenderer pretty_midi)"))

ROOT = Path(__file__).resolve().parents[1]


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


FALLBACK = find_renderer(soundfont=bundled_soundfont(), engine="midirenderer")
needs_fallback = pytest.mark.skipif(FALLBACK is None, reason="pip packages midirenderer and pretty_midi not installed")


def test_missing_pieces_give_none_and_a_hint(tmp_path, monkeypatch):
    monkeypatch.delenv(RENDERER_ENV, raising=False)
    assert find_renderer(executable="no-such-synth-pianolm", fallback=False) is None
    assert find_renderer(soundfont=str(tmp_path / "absent.sf2")) is None  # asked-for sound is never replaced
    assert "apt-get install fluidsynth fluid-soundfont-gm" in INSTALL_HINT
    assert "pip install midirenderer pretty_midi" in INSTALL_HINT
    assert "\n" not in INSTALL_HINT


@needs_fallback
def test_without_fluidsynth_or_any_system_soundfont_pip_packages_alone_render(monkeypatch):
    monkeypatch.delenv(RENDERER_ENV, raising=False)
    monkeypatch.setattr(audio_mod.shutil, "which", lambda exe: None)
    monkeypatch.setattr(audio_mod, "find_soundfont", lambda: None)
    r = find_renderer()
    assert r == Renderer(fluidsynth=None, soundfont=bundled_soundfont()) and r.engine == "midirenderer"
    assert r.soundfont.endswith("pretty_midi/TimGM6mb.sf2")
    # a system SoundFont, where one exists, is preferred to the bundled one
    monkeypatch.setattr(audio_mod, "find_soundfont", lambda: "/some/where/FluidR3_GM.sf2")
    assert find_renderer().soundfont == "/some/where/FluidR3_GM.sf2"
    monkeypatch.setattr(audio_mod, "find_soundfont", lambda: "/some/where/MuseScore.sf3")  # engine reads sf2 only
    assert find_renderer().soundfont == bundled_soundfont()


@needs_fallback
@pytest.mark.parametrize("how", ["argument", "environment"])
def test_an_engine_can_be_forced_by_argument_or_environment(monkeypatch, how):
    """With FluidSynth and a system SoundFont present, `midirenderer` still takes the in-process
    engine (so CI tests it on a machine with FluidSynth), and `fluidsynth` never falls back."""
    monkeypatch.delenv(RENDERER_ENV, raising=False)
    monkeypatch.setattr(audio_mod.shutil, "which", lambda exe: "/usr/bin/" + exe)
    monkeypatch.setattr(audio_mod, "find_soundfont", lambda: bundled_soundfont())

    def find(engine):
        if how == "argument":
            return find_renderer(engine=engine)
        monkeypatch.setenv(RENDERER_ENV, engine)
        return find_renderer()

    assert find("auto").engine == "fluidsynth" and find("auto").sample_rate == FLUIDSYNTH_RATE == 44100
    forced = find("midirenderer")
    assert forced == Renderer(fluidsynth=None, soundfont=bundled_soundfont())
    assert forced.sample_rate == FALLBACK_RATE == 48000
    assert find("fluidsynth").fluidsynth == "/usr/bin/fluidsynth"
    monkeypatch.setattr(audio_mod.shutil, "which", lambda exe: None)
    assert find("fluidsynth") is None          # forced: no silent fallback to the other engine
    assert find("auto").engine == "midirenderer"


def test_an_unknown_engine_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(RENDERER_ENV, "timidity")
    with pytest.raises(ValueError, match=r"\$PIANOLM_RENDERER='timidity': must be fluidsynth, midirenderer or auto"):
        find_renderer()
    with pytest.raises(ValueError, match=r"find_renderer\(engine='sox'\): must be"):
        find_renderer(engine="sox")


def half_second_peaks(audio, rate, seconds):
    return [int(np.abs(audio[int(s * rate): int((s + 0.5) * rate)]).max()) for s in np.arange(0, seconds - 0.5, 0.5)]


@needs_fallback
def test_fallback_render_is_audible_and_as_long_as_the_midi(tmp_path):
    midi_seconds = write_scale(tmp_path / "scale.mid", n_notes=8, tempo_bpm=100.0)
    wav = render_wav(tmp_path / "scale.mid", tmp_path / "out" / "scale.wav", FALLBACK)
    audio, rate = read_wav(wav)
    assert rate == 48000 and audio.shape[1] == 2
    assert abs(len(audio) / rate - midi_seconds) < 1.0, (len(audio) / rate, midi_seconds)
    peaks = half_second_peaks(audio, rate, midi_seconds)
    assert min(peaks) > 300, peaks
    assert np.abs(audio.astype(np.int32)).max() == pytest.approx(0.9 * 32767, abs=2)  # peak-normalised
    # each note sounds its own pitch: the strongest frequency of the first note is near middle C
    first = audio[int(0.1 * rate): int(0.5 * rate), 0].astype(float)
    spectrum = np.abs(np.fft.rfft(first * np.hanning(len(first))))
    f0 = np.fft.rfftfreq(len(first), 1 / rate)[np.argmax(spectrum)]
    assert min(abs(f0 - 261.63 * k) for k in (1, 2, 3)) < 15, f0


@needs_fallback
def test_fallback_keeps_a_soft_ending_and_the_release_when_told_the_length(tmp_path):
    mf = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mf.tracks.append(track)
    track.append(mido.Message("note_on", note=60, velocity=100, time=0))
    track.append(mido.Message("note_off", note=60, velocity=0, time=480 * 4))  # 2 s at 120 bpm
    mf.save(tmp_path / "one.mid")
    seconds = mido.MidiFile(tmp_path / "one.mid").length
    audio, rate = read_wav(render_wav(tmp_path / "one.mid", tmp_path / "one.wav", FALLBACK, seconds=seconds, tail_s=0.5))
    assert len(audio) / rate == pytest.approx(seconds + 0.5, abs=0.01)
    # the release after the note-off is rendered, not cut: sound in the first 50 ms after the end
    after = audio[int(seconds * rate): int((seconds + 0.05) * rate)]
    assert np.abs(after).max() > 50


@needs_fallback
def test_fallback_reads_a_format_0_file(tmp_path):
    from tests.midi_bytes import midi_file, track

    events = [(0, b"\xff\x51\x03" + mido.bpm2tempo(60).to_bytes(3, "big"))]
    for i, p in enumerate((60, 64, 67)):
        events += [(i * 480, bytes([0x90, p, 80])), (i * 480 + 470, bytes([0x80, p, 0]))]
    (tmp_path / "f0.mid").write_bytes(midi_file([track(events)], tpq=480, fmt=0))
    audio, rate = read_wav(render_wav(tmp_path / "f0.mid", tmp_path / "f0.wav", FALLBACK, seconds=3.0))
    assert len(audio) / rate == pytest.approx(3.5, abs=0.01)
    assert min(half_second_peaks(audio, rate, 3.0)) > 300


@needs_fallback
def test_flac_and_ogg_are_written_through_soundfile(tmp_path):
    import soundfile

    write_scale(tmp_path / "s.mid", n_notes=3)
    wav, rate = read_wav(render_audio(tmp_path / "s.mid", tmp_path / "s.wav", FALLBACK, seconds=1.5))
    flac = render_audio(tmp_path / "s.mid", tmp_path / "s.flac", FALLBACK, seconds=1.5)
    data, flac_rate = soundfile.read(str(flac), dtype="int16")
    assert flac_rate == rate and np.array_equal(data, wav)  # lossless: the same samples
    ogg = render_audio(tmp_path / "s.mid", tmp_path / "s.ogg", FALLBACK, seconds=1.5)
    info = soundfile.info(str(ogg))
    assert info.format == "OGG" and info.duration == pytest.approx(2.0, abs=0.02)
    with pytest.raises(ValueError, match=r"s.mp3 must end in .wav, .flac or .ogg"):
        render_audio(tmp_path / "s.mid", tmp_path / "s.mp3", FALLBACK)


@needs_fallback
def test_fallback_names_the_file_it_could_not_render(tmp_path):
    bad = tmp_path / "not_midi.mid"
    bad.write_text("this is not MIDI")
    with pytest.raises(RuntimeError, match="midirenderer could not render .*not_midi.mid"):
        render_wav(bad, tmp_path / "bad.wav", FALLBACK)
    broken = tmp_path / "broken.mid"
    broken.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x05\x01\xe0MTrk\xff")
    with pytest.raises(RuntimeError, match="broken.mid"):
        render_wav(broken, tmp_path / "broken.wav", FALLBACK)


def test_soundfont_env_var_wins(tmp_path, monkeypatch):
    from remi.media.audio import find_soundfont

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


@needs_renderer
def test_render_wav_is_audible_and_as_long_as_the_midi(tmp_path):
    midi_seconds = write_scale(tmp_path / "scale.mid", n_notes=8, tempo_bpm=100.0)
    wav = render_wav(tmp_path / "scale.mid", tmp_path / "out" / "scale.wav", RENDERER)
    audio, rate = read_wav(wav)
    # FluidSynth: render_wav's default 44.1 kHz; the pip-only engine: its fixed 48 kHz
    assert rate == RENDERER.sample_rate and audio.shape[1] == 2
    assert abs(len(audio) / rate - midi_seconds) < 1.0, (len(audio) / rate, midi_seconds)
    # Non-silent throughout the music: every half second of it carries real signal.
    peaks = [np.abs(audio[int(s * rate): int((s + 0.5) * rate)]).max() for s in np.arange(0, midi_seconds - 0.5, 0.5)]
    assert min(peaks) > 300, peaks


@needs_renderer
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
    from remi.media.audio import cut_wav

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


@needs_renderer
def test_render_wav_names_the_file_it_could_not_render(tmp_path):
    bad = tmp_path / "not_midi.mid"
    bad.write_text("this is not MIDI")
    with pytest.raises(RuntimeError, match="not_midi.mid"):
        render_wav(bad, tmp_path / "bad.wav", RENDERER)


def test_render_wav_with_a_missing_executable_raises(tmp_path):
    write_scale(tmp_path / "s.mid", n_notes=2)
    with pytest.raises(OSError):
        render_wav(tmp_path / "s.mid", tmp_path / "s.wav", Renderer("/nonexistent/fluidsynth", "x.sf2"))


def test_long_ogg_is_written_whole_without_crashing_libvorbis(tmp_path):
    """Minutes of audio in one soundfile write overflow libvorbis's stack (a segfault that killed an
    evaluation here); write_compressed writes in blocks. Run in a child process so a regression
    shows as a failed test, not a dead test session."""
    soundfile = pytest.importorskip("soundfile")
    out = tmp_path / "long.ogg"
    code = ("import numpy as np; from remi.media.audio import write_compressed; "
            "t = np.arange(44100 * 150) / 44100; "
            f"write_compressed({str(out)!r}, (0.3 * np.sin(2 * np.pi * 440 * t)).astype('float32'), 44100, 'OGG')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = soundfile.info(str(out))
    assert info.format == "OGG" and abs(info.frames - 44100 * 150) < 44100 // 10
    with pytest.raises(ValueError, match="FLAC or OGG"):
        from remi.media.audio import write_compressed
        write_compressed(tmp_path / "x.mp3", np.zeros(10), 44100, "MP3")
