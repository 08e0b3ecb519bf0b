"""GPT-2 language model over token ids. Never imports MIDI code."""
from model.flops import flops_per_token, peak_flops
from model.gpt import GPT, GPTConfig
from model.optim import configure_optimizer, lr_at
from model.sampling import next_token

__all__ = ["GPT", "GPTConfig", "configure_optimizer", "flops_per_token", "lr_at", "next_token", "peak_flops"]
