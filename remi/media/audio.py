"""MIDI -> WAV (or FLAC/OGG) with FluidSynth where installed, else with pip-installed pieces.

Two engines, the first found wins; `$PIANOLM_RENDERER=fluidsynth` or `=midirenderer` (or
`find_renderer(engine=...)`) takes only that one, so both stay tested (.ci/run forces the second):
- FluidSynth: the command-line synthesizer and a General MIDI SoundFont from the system
  (`apt-get install fluidsynth fluid-soundfont-gm`); renders at `sample_rate` (44.1 kHz).
- In process, from the wheels of two pip packages (core dependencies, no system package and no
  download at run time): `midirenderer` (MIT; a Rust SoundFont synthesizer) plays the first
  SoundFont that exists of: the one asked for, $PIANOLM_SOUNDFONT, the system locations below,
  and `TimGM6mb.sf2` (Tim Brechbill's 6 MB General MIDI bank, GPL-2, shipped inside the
  `pretty_midi` wheel, which is MIT). It renders 16-bit stereo at 48 kHz and only reads .sf2.
  Its level is fixed by the SoundFont, so its output is peak-normalised to `FALLBACK_PEAK`.

`find_renderer()` returns None only where neither exists; callers print `INSTALL_HINT` once and
carry on without audio. `render_audio` writes FLAC or OGG through `soundfile` (a dependency).
"""
from __future__ import annotations

import importlib.util
import io
import math
import os
import shutil
import struct
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

INSTALL_HINT = ("no audio: FluidSynth or a General MIDI SoundFont is missing, and so is the pip fallback; "
                "install them with `apt-get install fluidsynth fluid-soundfont-gm` "
                "or `pip install midirenderer pretty_midi`")

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
RENDERER_ENV = "PIANOLM_RENDERER"  # fluidsynth | midirenderer | auto (or unset): which engine find_renderer takes
FLUIDSYNTH_ENGINE = "fluidsynth"
FLUIDSYNTH_RATE = 44100  # render_wav's default `sample_rate` for FluidSynth
FALLBACK_ENGINE = "midirenderer"
FALLBACK_RATE = 48000  # midirenderer's fixed output rate
FALLBACK_PEAK = 0.9  # fraction of full scale the in-process engine's output is normalised to


@dataclass(frozen=True)
class Renderer:
    """A FluidSynth executable, or None for the in-process engine, and the SoundFont it plays."""

    fluidsynth: str | None
    soundfont: str

    @property
    def engine(self) -> str:
        return FLUIDSYNTH_ENGINE if self.fluidsynth else FALLBACK_ENGINE

    @property
    def sample_rate(self) -> int:
        """The rate `render_wav` writes by default: 44.1 kHz from FluidSynth, 48 kHz (fixed) in process."""
        return FLUIDSYNTH_RATE if self.fluidsynth else FALLBACK_RATE


def find_soundfont(candidates: Sequence[str] = SOUNDFONT_PATHS) -> str | None:
    """$PIANOLM_SOUNDFONT if set and present, else the first standard location that exists."""
    env = os.environ.get(SOUNDFONT_ENV)
    for path in ([env] if env else []) + list(candidates):
        if Path(path).is_file():
            return str(path)
    return None


def bundled_soundfont() -> str | None:
    """The General MIDI SoundFont inside the installed `pretty_midi` wheel (TimGM6mb.sf2, GPL-2),
    found without importing pretty_midi; None where it is not installed."""
    spec = importlib.util.find_spec("pretty_midi")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "TimGM6mb.sf2"
        if path.is_file():
            return str(path)
    return None


def _renderer_choice(engine: str | None = None) -> str:
    """`engine`, else `$PIANOLM_RENDERER`, checked: "fluidsynth", "midirenderer" or "auto"."""
    from_env = engine is None
    choice = (os.environ.get(RENDERER_ENV, "") if from_env else engine).strip().lower() or "auto"
    if choice not in ("auto", FLUIDSYNTH_ENGINE, FALLBACK_ENGINE):
        where = f"${RENDERER_ENV}={os.environ.get(RENDERER_ENV)!r}" if from_env else f"find_renderer(engine={engine!r})"
        raise ValueError(f"{where}: must be {FLUIDSYNTH_ENGINE}, {FALLBACK_ENGINE} or auto "
                         f"(auto, or unset: FluidSynth where installed, else {FALLBACK_ENGINE})")
    return choice


def find_renderer(soundfont: str | None = None, executable: str = "fluidsynth",
                  fallback: bool = True, engine: str | None = None) -> Renderer | None:
    """The renderer to use, or None (then print `INSTALL_HINT`) when nothing can render.

    `soundfont`: an explicit .sf2 path; None searches `$PIANOLM_SOUNDFONT` and `SOUNDFONT_PATHS`.
    FluidSynth first; without it (or without a SoundFont for it) and with `fallback`, the
    in-process engine, which also takes `bundled_soundfont()`. An explicit `soundfont` that does
    not exist gives None: asked-for sound is never silently replaced.
    `engine` ("fluidsynth", "midirenderer" or "auto"; None reads `$PIANOLM_RENDERER`, unset =
    auto) takes only that engine, None where it is missing; a value outside these is a ValueError.
    """
    choice = _renderer_choice(engine)
    if soundfont and not Path(soundfont).is_file():
        return None
    sf2 = soundfont or find_soundfont()
    exe = shutil.which(executable) if choice != FALLBACK_ENGINE else None
    if exe is not None and sf2 is not None:
        return Renderer(fluidsynth=exe, soundfont=sf2)
    if choice == FLUIDSYNTH_ENGINE or not fallback or importlib.util.find_spec(FALLBACK_ENGINE) is None:
        return None
    if sf2 is None or Path(sf2).suffix.lower() != ".sf2":  # the engine reads SoundFont 2 only
        if soundfont:
            return None
        sf2 = bundled_soundfont()
    return Renderer(fluidsynth=None, soundfont=sf2) if sf2 else None


def render_wav(midi_path: str | Path, wav_path: str | Path, renderer: Renderer,
               seconds: float | None = None, tail_s: float = 0.5,
               sample_rate: int = FLUIDSYNTH_RATE, gain: float = 0.6, timeout: float = 300.0) -> Path:
    """Render one MIDI file to a 16-bit WAV file; raises RuntimeError with the engine's words.

    FluidSynth renders a couple of seconds past the end. `seconds` (the music's length, e.g.
    `Score.seconds()`) cuts the WAV to that plus `tail_s` of release; without it, the near-silent
    tail is trimmed instead (which also drops a soft ending that has decayed to nothing).
    The in-process engine (`renderer.fluidsynth` None) renders at 48 kHz (`renderer.sample_rate`)
    whatever `sample_rate` says, peak-normalised (`gain` is FluidSynth's); `timeout` is FluidSynth's too.
    """
    wav_path = Path(wav_path)
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    if renderer.fluidsynth is None:
        _render_in_process(Path(midi_path), wav_path, renderer.soundfont, tail_s + 0.5)
        if seconds is not None:
            cut_wav(wav_path, seconds + tail_s)
        else:
            trim_trailing_silence(wav_path)
        return wav_path
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


def render_audio(midi_path: str | Path, out_path: str | Path, renderer: Renderer, **kwargs) -> Path:
    """`render_wav`, then, for an `out_path` ending in .flac or .ogg, encoded by `soundfile`."""
    out_path = Path(out_path)
    fmt = {".wav": None, ".flac": "FLAC", ".ogg": "OGG"}.get(out_path.suffix.lower(), "?")
    if fmt == "?":
        raise ValueError(f"render_audio: {out_path} must end in .wav, .flac or .ogg")
    if fmt is None:
        return render_wav(midi_path, out_path, renderer, **kwargs)

    with tempfile.TemporaryDirectory() as tmp:
        wav = render_wav(midi_path, Path(tmp) / "x.wav", renderer, **kwargs)
        audio, rate = read_wav(wav)
    return write_compressed(out_path, audio, rate, fmt)


# Frames per write call: libvorbis allocates a whole write on the stack (`_preextrapolate_helper`),
# so one call with minutes of audio overflows it and kills the process with a segfault (libsndfile
# issue #1095, python-soundfile #396 and #426: ~96 s at 44.1 kHz). Blocks of one second never do.
WRITE_BLOCK = 48000


def write_compressed(out_path: str | Path, audio: np.ndarray, rate: int, fmt: str,
                     quality: float | None = None) -> Path:
    """Write `audio` ((frames,) or (frames, channels)) as FLAC or OGG Vorbis through `soundfile`,
    in blocks of WRITE_BLOCK frames. `quality` (OGG only, 0..1, higher = larger file) maps to
    libsndfile's compression level."""
    import soundfile

    if fmt not in ("FLAC", "OGG"):
        raise ValueError(f"write_compressed: format must be FLAC or OGG, got {fmt!r}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    audio = np.asarray(audio)
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    extra = {"compression_level": 1.0 - quality} if quality is not None and fmt == "OGG" else {}
    with soundfile.SoundFile(str(out_path), "w", samplerate=rate, channels=channels, format=fmt,
                             subtype="VORBIS" if fmt == "OGG" else "PCM_16", **extra) as f:
        for i in range(0, len(audio), WRITE_BLOCK):
            f.write(audio[i:i + WRITE_BLOCK])
    return out_path


def _with_silent_tail(data: bytes, tail_s: float, source: str) -> bytes:
    """The MIDI file plus one track holding only a marker `tail_s` seconds after its last note,
    so an engine that stops at the last event still renders the notes' release."""
    from ..midi_read import MidiReadError, read_midi

    try:
        score = read_midi(data, name=source)
    except MidiReadError as e:
        raise RuntimeError(f"{FALLBACK_ENGINE} could not render {source}: {e}") from None
    bpm = score.tempos[-1].bpm if score.tempos else 120.0
    tick = score.end_tick + math.ceil(tail_s * bpm / 60.0 * score.ticks_per_beat)
    delta = [tick & 0x7F]  # a MIDI variable-length number: 7 bits a byte, high bit = more follow
    tick >>= 7
    while tick:
        delta.append(0x80 | (tick & 0x7F))
        tick >>= 7
    body = bytes(reversed(delta)) + b"\xff\x06\x04tail" + b"\x00\xff\x2f\x00"  # marker, end of track
    (header_len,) = struct.unpack(">I", data[4:8])
    _, n_tracks, division = struct.unpack(">HHH", data[8:14])
    header = b"MThd" + struct.pack(">IHHH", 6, 1, n_tracks + 1, division)  # format 0 -> 1: two tracks now
    return header + data[8 + header_len:] + b"MTrk" + struct.pack(">I", len(body)) + body


def _render_in_process(midi_path: Path, wav_path: Path, soundfont: str, tail_s: float) -> None:
    import midirenderer

    try:
        data = midi_path.read_bytes()
        sf2 = Path(soundfont).read_bytes()
    except OSError as e:
        raise RuntimeError(f"{FALLBACK_ENGINE} could not render {midi_path}: {e}") from None
    if data[:4] != b"MThd":
        raise RuntimeError(f"{FALLBACK_ENGINE} could not render {midi_path}: not a MIDI file (no MThd header)")
    try:
        wav = midirenderer.render_wave_from(sf2, _with_silent_tail(data, tail_s, str(midi_path)))
    except (ValueError, RuntimeError) as e:
        raise RuntimeError(f"{FALLBACK_ENGINE} could not render {midi_path} with {soundfont}: {e}") from None
    with wave.open(io.BytesIO(wav), "rb") as w:
        if w.getsampwidth() != 2:
            raise RuntimeError(f"{FALLBACK_ENGINE} returned {8 * w.getsampwidth()}-bit audio for {midi_path}")
        channels, rate = w.getnchannels(), w.getframerate()
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, channels)
    peak = int(np.abs(audio.astype(np.int32)).max()) if audio.size else 0
    if peak:
        audio = np.clip(np.round(audio * (FALLBACK_PEAK * 32767 / peak)), -32768, 32767).astype(np.int16)
    with wave.open(str(wav_path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(audio).tobytes())


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
