"""GPT-2 language model over token ids. Never imports MIDI code."""
