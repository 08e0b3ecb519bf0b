"""What pianolm raises for bad input: each message names the file or key and what to do."""
from __future__ import annotations


class InputError(Exception):
    """Bad input from the user (a missing file, a damaged checkpoint, a bad prompt or option).
    The command lines print it as one line and exit with status 2."""


class CheckpointError(InputError):
    """A checkpoint that cannot be used: absent, not pianolm's, inconsistent or damaged."""


class PromptError(InputError):
    """A prompt that cannot be continued: absent, not MIDI, without notes or too long."""


class ConfigError(ValueError):
    """A composed config value that cannot work: the message names the key, its value and what
    is allowed. Raised by `pianolm.config.check_config` before any data is prepared or model built."""
