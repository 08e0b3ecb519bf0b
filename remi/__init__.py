"""REMI tokenization of piano MIDI: MIDI <-> Score <-> token ids. Never imports torch."""
from .score import KeySignature, Score, Tempo, TimeSignature

__all__ = ["Score", "Tempo", "TimeSignature", "KeySignature"]
