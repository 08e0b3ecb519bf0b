"""Model FLOPs per token and known accelerator peaks, for model FLOPs utilisation (MFU)."""
from __future__ import annotations

import torch

from model.gpt import GPTConfig


def flops_per_token(config: GPTConfig, seq_len: int | None = None) -> float:
    """Training FLOPs (forward + backward) per token at context `seq_len` (default block_size).

    6 * N for the matmul weights (2 forward, 4 backward per multiply-add) plus 12 * L * T * C for
    the attention scores and weighted sum. N = 12 C^2 per layer (c_attn 3C^2, c_proj C^2, c_fc 4C^2,
    mlp.c_proj 4C^2) plus the V x C head; biases, norms and embedding lookups are not matmuls.
    The attention term counts the full T x T square (the PaLM convention), as MFU figures do.
    """
    T = config.block_size if seq_len is None else seq_len
    L, C = config.n_layer, config.n_embd
    n_matmul = L * 12 * C * C + config.padded_vocab_size * C
    return 6.0 * n_matmul + 12.0 * L * T * C


# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, FLOP/s.
# Order matters: the first name found in the device name wins.
_BF16_PEAKS = (
    ("H100 PCIe", 756e12),
    ("H100", 989.4e12),
    ("GH200", 989.4e12),
    ("H200", 989.4e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362.05e12),
    ("L4", 121e12),
    ("A10", 125e12),
)


def peak_flops(device: torch.device | str) -> float | None:
    """Data-sheet bf16 peak FLOP/s of a CUDA device we know, else None (CPU, unknown GPUs)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in _BF16_PEAKS:
        if key in name:
            return peak
    return None
