"""Where one CPU training step and one batch-8 generation of our GPT spend their time.

    .venv/bin/python benchmarks/profile_gpt.py [--threads 2] [--no-onednn]

Same config as bench_gpt.py's default (4 layers x 256, context 256, vocab 2048, batch 4):
prints torch.profiler's table of operators by self CPU time, for 5 training steps (forward,
backward, fused AdamW) and for greedy generation of 64 tokens at batch 8.

Then the floor of a training step: the same step's linear layers (every block's four and the
head, forward and backward through the model's own kernel, oneDNN or F.linear as model.linear
picks) and its attention (forward + backward), each timed alone on tensors of the step's shapes,
against the whole step. Were every other op free, a step could take no less than that sum.

Last, batch-1 decoding's one-row products at the default and `small` shapes through MKL and
oneDNN, which is what `model.linear.min_rows_for` decides between.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from model import GPT, GPTConfig, configure_optimizer
from model.linear import onednn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--no-onednn", action="store_true", help="F.linear (MKL) instead of model.linear's oneDNN path")
    args = ap.parse_args()
    with onednn(not args.no_onednn):
        run(args)


def run(args) -> None:
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
    floor(gpt, step, x.shape)
    one_row()


def median_ms(fn, n: int = 15) -> float:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def floor(gpt: GPT, step, shape: tuple[int, int]) -> None:
    import torch.nn.functional as F

    B, T = shape
    c = gpt.config
    rows = B * T
    linears = [m for m in gpt.modules() if isinstance(m, torch.nn.Linear)]  # every block's four + the head

    def matmuls() -> None:
        # each linear layer alone, forward and backward, through the model's own kernel (model.linear)
        for m in linears:
            out_f, in_f = m.weight.shape
            m(mm_inputs[in_f]).backward(grads[out_f])
            m.weight.grad = mm_inputs[in_f].grad = None
            if m.bias is not None:
                m.bias.grad = None

    mm_inputs = {n: torch.randn(rows, n, requires_grad=True) for n in {m.weight.shape[1] for m in linears}}
    grads = {n: torch.randn(rows, n) for n in {m.weight.shape[0] for m in linears}}
    q, k, v = (torch.randn(B, c.n_head, T, c.head_size, requires_grad=True) for _ in range(3))
    dy = torch.randn(B, c.n_head, T, c.head_size)

    def attention() -> None:
        for _ in range(c.n_layer):
            F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(dy)

    t_mm, t_att, t_step = median_ms(matmuls), median_ms(attention), median_ms(step)
    print("\n== floor of one training step (median of 15)")
    print(f"matmuls {t_mm:.1f} ms + attention {t_att:.1f} ms = {t_mm + t_att:.1f} ms; whole step {t_step:.1f} ms "
          f"({(t_mm + t_att) / t_step:.0%} of it)")


def one_row() -> None:
    """Batch-1 decoding's products (one row x every weight of a model in turn), MKL vs oneDNN."""
    from model.linear import MIN_ROWS, Linear, cache_bytes, linear

    print("\n== one-row products through every weight of a model in turn (median of 15)")
    for name, cfg in (("default 4 x 256, vocab 2048", GPTConfig(vocab_size=2048, block_size=256, n_layer=4,
                                                                 n_head=4, n_embd=256)),
                      ("small 6 x 512, vocab 256", GPTConfig(vocab_size=256, block_size=1024, n_layer=6,
                                                              n_head=8, n_embd=512))):
        linears = [m for m in GPT(cfg).modules() if isinstance(m, Linear)]
        rows = {m.weight.shape[1]: torch.randn(1, m.weight.shape[1]) for m in linears}
        mb = 4 * sum(m.weight.numel() for m in linears) / 1e6

        def products(min_rows: int) -> None:
            with torch.no_grad():
                for m in linears:
                    linear(rows[m.weight.shape[1]], m.weight, m.bias, min_rows)

        mkl, dnn = median_ms(lambda: products(MIN_ROWS)), median_ms(lambda: products(1))
        print(f"{name}: {mb:.0f} MB of weights (last-level cache {cache_bytes() >> 20} MiB): per product "
              f"MKL {1e3 * mkl / len(linears):.1f} us, oneDNN {1e3 * dnn / len(linears):.1f} us; "
              f"the model uses {'oneDNN' if linears[0].min_rows == 1 else 'MKL'}")


if __name__ == "__main__":
    main()
