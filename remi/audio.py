"""Moved to `remi.media.audio` (MIDI -> WAV/FLAC/OGG); this name stays for `from remi.audio import ...`.
The project imports the new home."""
from .media.audio import (
    FALLBACK_ENGINE,
    FALLBACK_PEAK,
    FALLBACK_RATE,
    FLUIDSYNTH_ENGINE,
    FLUIDSYNTH_RATE,
    INSTALL_HINT,
    RENDERER_ENV,
    SOUNDFONT_ENV,
    SOUNDFONT_PATHS,
    WRITE_BLOCK,
    Renderer,
    bundled_soundfont,
    cut_wav,
    find_renderer,
    find_soundfont,
    read_wav,
    render_audio,
    render_wav,
    trim_trailing_silence,
    write_compressed,
)

__all__ = [
    "INSTALL_HINT", "SOUNDFONT_PATHS", "SOUNDFONT_ENV", "RENDERER_ENV", "FLUIDSYNTH_ENGINE", "FLUIDSYNTH_RATE",
    "FALLBACK_ENGINE", "FALLBACK_RATE", "FALLBACK_PEAK", "Renderer", "find_soundfont", "bundled_soundfont",
    "find_renderer", "render_wav", "render_audio", "WRITE_BLOCK", "write_compressed", "read_wav",
    "cut_wav", "trim_trailing_silence",
]
