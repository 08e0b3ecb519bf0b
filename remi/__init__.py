"""REMI tokenization of piano MIDI: MIDI <-> Score <-> token ids. Never imports torch."""
from . import midi_io  # noqa: F401  (installs Score.to_midifile's writer)
from .config import TokenizerConfig
from .midi_read import MidiReadError, read_midi
from .score import KeySignature, Score, Tempo, TimeSignature
from .tokenizer import Tokenizer

__all__ = [
    "Score", "Tempo", "TimeSignature", "KeySignature",
    "Tokenizer", "TokenizerConfig", "MidiReadError", "read_midi",
]
