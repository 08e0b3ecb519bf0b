"""Where one CPU training step and one batch-8 generation of our GPT spend their time.

    .venv/bin/python benchmarks/profile_gpt.py [--threads 2]

Same config as bench_gpt.py's default (4 layers x 256, context 256, vocab 2048, batch 4):
prints torch.profiler's table of operators by self CPU time, for 5 training steps (forward,
backward, fused AdamW) and for greedy generation of 64 tokens at batch 8.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import GPT, GPTConfig, configure_optimizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=12)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    gpt = GPT(GPTConfig(vocab_size=2048, block_size=256, n_layer=4, n_head=4, n_embd=256))
    opt = configure_optimizer(gpt, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")
    x, y = torch.randint(0, 2048, (4, 256)), torch.randint(0, 2048, (4, 256))

    def step() -> None:
        _, loss = gpt(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    prompt = torch.randint(0, 2048, (8, 16))
    for name, fn in (("training, 5 steps", lambda: [step() for _ in range(5)]),
                     ("greedy generation, batch 8, 64 new tokens", lambda: gpt.generate(prompt, 64, temperature=0.0))):
        fn()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        print(f"\n== {name}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
