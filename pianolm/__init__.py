"""pianolm: where the REMI tokenizer (`remi`, MIDI and tokens) meets the GPT (`model`, tensors).

    from pianolm import load_checkpoint
    tok, gpt, extras = load_checkpoint("outputs/dev/<run>/checkpoints/last.ckpt")

Modules: `checkpoint` (the one checkpoint reader), `generate` (prompts, the grammar-constrained
mask, stopping), `media` (ids -> .mid/.png/.wav), `runinfo` (code fingerprint, digests),
`config` (the run config's checks) and `training` (what train.py assembles). The command line is
`python -m pianolm` (see `pianolm.__main__`); train.py and sample.py call into this package, and
nothing here imports them.
"""
from .checkpoint import load_checkpoint, read_header
from .errors import CheckpointError, ConfigError, InputError, PromptError
from .runinfo import code_fingerprint

__all__ = ["CheckpointError", "ConfigError", "InputError", "PromptError", "code_fingerprint",
           "load_checkpoint", "read_header"]
