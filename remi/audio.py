"""MIDI -> WAV with the FluidSynth command-line synthesizer and a General MIDI SoundFont.

Nothing here is required: `find_renderer()` returns None where FluidSynth or a SoundFont is
missing, and callers print `INSTALL_HINT` once and carry on without audio.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

INSTALL_HINT = ("no audio: FluidSynth or a General MIDI SoundFont is missing; "
                "install them with `apt-get install fluidsynth fluid-soundfont-gm`")

# Where Debian/Ubuntu, Fedora, Arch and Homebrew put a GM SoundFont, best first.
SOUNDFONT_PATHS: tuple[str, ...] = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM2-2.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",
    "/usr/local/share/soundfonts/default.sf2",
)
SOUNDFONT_ENV = "PIANOLM_SOUNDFONT"


@dataclass(frozen=True)
class Renderer:
    """A FluidSynth executable and the SoundFont it plays."""

    fluidsynth: str
    soundfont: str


def find_soundfont(candidates: Sequence[str] = SOUNDFONT_PATHS) -> str | None:
    """$PIANOLM_SOUNDFONT if set and present, else the first standard location that exists."""
    env = os.environ.get(SOUNDFONT_ENV)
    for path in ([env] if env else []) + list(candidates):
        if Path(path).is_file():
            return str(path)
    return None


def find_renderer(soundfont: str | None = None, executable: str = "fluidsynth") -> Renderer | None:
    """The renderer to use, or None (then print `INSTALL_HINT`) when either part is absent.

    `soundfont`: an explicit .sf2 path; None searches `$PIANOLM_SOUNDFONT` and `SOUNDFONT_PATHS`.
    """
    exe = shutil.which(executable)
    sf2 = soundfont if soundfont and Path(soundfont).is_file() else (
        None if soundfont else find_soundfont())
    if exe is None or sf2 is None:
        return None
    return Renderer(fluidsynth=exe, soundfont=sf2)


def render_wav(midi_path: str | Path, wav_path: str | Path, renderer: Renderer,
               seconds: float | None = None, tail_s: float = 0.5,
               sample_rate: int = 44100, gain: float = 0.6, timeout: float = 300.0) -> Path:
    """Render one MIDI file to a 16-bit WAV file; raises RuntimeError with FluidSynth's words.

    FluidSynth renders a couple of seconds past the end. `seconds` (the music's length, e.g.
    `Score.seconds()`) cuts the WAV to that plus `tail_s` of release; without it, the near-silent
    tail is trimmed instead (which also drops a soft ending that has decayed to nothing).
    """
    wav_path = Path(wav_path)
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    # -n: no MIDI input, -i: no shell, -q: quiet; options must precede the SoundFont and the file.
    cmd = [renderer.fluidsynth, "-n", "-i", "-q", "-r", str(sample_rate), "-g", str(gain),
           "-T", "wav", "-F", str(wav_path), renderer.soundfont, str(midi_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not wav_path.is_file() or wav_path.stat().st_size <= 44:
        detail = " ".join((proc.stderr + " " + proc.stdout).split())[:300]
        raise RuntimeError(f"fluidsynth could not render {midi_path} "
                           f"(exit code {proc.returncode}): {detail or 'no message'}")
    if seconds is not None:
        cut_wav(wav_path, seconds + tail_s)
    else:
        trim_trailing_silence(wav_path)
    return wav_path


def _load_wav(path: str | Path):
    """(int16 frames (frames, channels), sample rate, the file's wave parameters), one read."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return frames.reshape(-1, w.getnchannels()), w.getframerate(), w.getparams()


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV -> (int16 array (frames, channels), sample rate)."""
    audio, rate, _ = _load_wav(path)
    return audio, rate


def _keep_frames(path: str | Path, loaded, n_frames: int) -> float:
    """Keep the first `n_frames` frames of the loaded WAV file, in place; returns its length in seconds."""
    audio, rate, params = loaded
    if n_frames < len(audio):
        with wave.open(str(path), "wb") as w:
            w.setparams(params)
            w.writeframes(np.ascontiguousarray(audio[:n_frames]).tobytes())
    return min(n_frames, len(audio)) / rate


def cut_wav(path: str | Path, seconds: float) -> float:
    """Cut a WAV file to at most `seconds`, in place; returns its new length in seconds."""
    loaded = _load_wav(path)
    return _keep_frames(path, loaded, max(0, int(round(seconds * loaded[1]))))


def trim_trailing_silence(path: str | Path, threshold: float = 1e-3, keep_s: float = 0.1) -> float:
    """Cut the near-silent tail (below `threshold` of full scale) off a WAV file, in place.

    FluidSynth renders a couple of seconds past the last note-off; trimming them makes the WAV
    as long as the music (plus `keep_s` of release). Returns the new length in seconds.
    """
    loaded = audio, rate, _ = _load_wav(path)
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)).max(axis=1) > threshold * 32767)
    return _keep_frames(path, loaded, (int(loud[-1]) + 1 if len(loud) else 0) + int(keep_s * rate))
