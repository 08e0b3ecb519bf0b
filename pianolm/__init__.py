"""pianolm: where the REMI tokenizer (`remi`, MIDI and tokens) meets the GPT (`model`, tensors).

    import pianolm
    m = pianolm.load("outputs/dev/<run>")      # a .ckpt, a run folder or an exported folder
    pieces = m.generate(n=4, bars=16, seed=0)  # list[remi.Score]; pieces[0].to_midi("a.mid")

Modules: `api` (`load` -> `PianoLM`: generate, continue_midi, bits_per_note; docs/api.md),
`checkpoint` (the one checkpoint reader), `generate` (prompts, the grammar-constrained mask,
stopping), `control` (fixed tempo, meter and key), `likelihood` (bits per note of whole pieces),
`media` (ids -> .mid/.png/.wav), `runinfo` (code fingerprint, digests), `config` (the run config's
checks) and `training` (what train.py assembles). The command line is `python -m pianolm` (see
`pianolm.__main__`); train.py and sample.py call into this package, and nothing here imports them.
"""
from .api import PianoLM, load
from .checkpoint import load_checkpoint, read_header
from .errors import CheckpointError, ConfigError, InputError, PromptError
from .runinfo import code_fingerprint

__all__ = ["CheckpointError", "ConfigError", "InputError", "PianoLM", "PromptError", "code_fingerprint",
           "load", "load_checkpoint", "read_header"]
