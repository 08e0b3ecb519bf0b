"""Corpus work: getting MIDI files and turning corpora into token shards.

`datasets` (the source registry, `DataConfig` = conf/data/*.yaml, downloads), `bundled` (the
music21 corpus converted to MIDI), `prepare` (MIDI folders -> shards, cached per file) and `pool`
(their worker processes). Built on the tokenizer core (`remi.tokenizer`, `remi.shards`); the core
never imports this package. Imports nothing itself: `import remi.corpus.prepare` loads what it uses.
"""
