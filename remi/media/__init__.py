"""Media: token ids and Scores made into what people look at and hear.

`pianoroll` (piano-roll figures, matplotlib), `audio` (WAV/FLAC/OGG through FluidSynth or
midirenderer) and `render` (ids -> .mid + .png with their measurements). Built on the tokenizer
core; the core never imports this package, nor does `remi.corpus`. Imports nothing itself, so
matplotlib loads only where a figure is drawn.
"""
