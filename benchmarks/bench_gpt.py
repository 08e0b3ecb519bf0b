"""Our GPT against Hugging Face's GPT2LMHeadModel, side by side in one process.

Measures, on the same config, device, dtype and torch threads:
  1. training tokens/s (forward, backward, AdamW step): ours vs GPT2LMHeadModel (sdpa attention);
     on a CPU in fp32 also ours with F.linear in place of oneDNN (model.linear), to show that gain;
  2. achieved training FLOP/s (model.flops.flops_per_token) vs plain matmuls' FLOP/s, square and
     of the MLP's shape, through torch's `@` and (fp32 on CPU) through oneDNN; the --dtype on
     GPU, where a known GPU also gets MFU against its data-sheet peak;
  3. greedy generation tokens/s with a KV cache: ours vs HF `generate`, batch 1 and 8, with
     identical weights (ours is `GPT.from_hf` of the HF model), and how often their tokens agree.

Timings alternate between the peers round by round and report medians, so a load spike on a
shared machine hits both sides alike; the ratios are the figures to quote. Each ratio also
prints its range over the rounds (ours and the peer timed back to back), to show the noise.

    python benchmarks/bench_gpt.py --threads 1              # CPU, fp32: 4 layers x 256 wide, 256 context
    python benchmarks/bench_gpt.py --threads 2 --scale small --batch 2 --vocab 256   # a project scale's shape
    python benchmarks/bench_gpt.py --device cuda --dtype bf16 --n-layer 12 --n-embd 768 --n-head 12 \
        --block-size 1024 --batch 16 --vocab 8192
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch

from model import GPT, GPTConfig, configure_optimizer, flops_per_token, peak_flops
from model.linear import linear, onednn, uses_onednn


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def interleaved(fns: dict, rounds: int, device: torch.device) -> dict:
    """Seconds per call of each fn, one per round, calling them in turn each round."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return times


def medians(times: dict) -> dict:
    return {name: statistics.median(ts) for name, ts in times.items()}


def spread(slow: list, fast: list) -> str:
    """The range of the per-round ratios slow/fast (each round timed both back to back)."""
    r = sorted(s / f for s, f in zip(slow, fast))
    return f"rounds {r[0]:.2f}-{r[-1]:.2f}x"


def hf_model(config: GPTConfig, device: torch.device):
    import transformers

    hf_config = transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=None, pad_token_id=0, attn_implementation="sdpa",
    )
    model = transformers.GPT2LMHeadModel(hf_config).to(device)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per measurement (median)")
    ap.add_argument("--steps", type=int, default=1, help="training steps per round")
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--gen-batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--scale", default=None,
                    help="take model.n_layer, n_head, n_embd and block_size from the scale preset "
                         "conf/scale/NAME.yaml (tiny, cpu, small, full)")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models for training")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-generate", action="store_true")
    args = ap.parse_args(argv)
    if args.scale:
        from pathlib import Path

        from hydra import compose, initialize_config_dir

        import pianolm.config  # noqa: F401  registers the mul_int resolver the presets use

        conf = Path(__file__).resolve().parents[1] / "conf"
        if not (conf / "scale" / f"{args.scale}.yaml").is_file():
            raise SystemExit(f"--scale {args.scale}: no conf/scale/{args.scale}.yaml; choose one of conf/scale/*.yaml")
        with initialize_config_dir(str(conf), version_base="1.3"):
            m = compose("train", overrides=[f"scale={args.scale}"]).model  # the preset, as train.py composes it
        args.n_layer, args.n_head, args.n_embd, args.block_size = m.n_layer, m.n_head, m.n_embd, m.block_size

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = GPTConfig(vocab_size=args.vocab, block_size=args.block_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd, dropout=0.0, bias=True)
    torch.manual_seed(0)
    hf = hf_model(config, device)
    ours = GPT.from_hf(hf).to(device)  # identical weights, so generation can be compared token for token
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {device}"
          f" ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), dtype {args.dtype},"
          f" threads {torch.get_num_threads()}")
    print(f"config: {config}; non-embedding params {ours.num_params() / 1e6:.2f}M,"
          f" all {ours.num_params(False) / 1e6:.2f}M")
    ratios = {}

    if not args.skip_train:
        B, T = args.batch, config.block_size
        g = torch.Generator().manual_seed(1)
        x = torch.randint(0, config.vocab_size, (B, T), generator=g).to(device)
        y = torch.randint(0, config.vocab_size, (B, T), generator=g).to(device)
        opt_ours = configure_optimizer(ours, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), device_type=device.type)
        # the peer gets the same (fused) AdamW and hyper-parameters, decaying everything
        opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95),
                                   fused=opt_ours.defaults["fused"])
        ours.train(), hf.train()
        f_ours = torch.compile(ours) if args.compile else ours
        f_hf = torch.compile(hf) if args.compile else hf

        def step_ours():
            for _ in range(args.steps):
                with autocast(device, args.dtype):
                    _, loss = f_ours(x, y)
                loss.backward()
                opt_ours.step()
                opt_ours.zero_grad(set_to_none=True)

        def step_hf():
            for _ in range(args.steps):
                with autocast(device, args.dtype):
                    loss = f_hf(input_ids=x, labels=y).loss
                loss.backward()
                opt_hf.step()
                opt_hf.zero_grad(set_to_none=True)

        def step_ours_plain():  # ours with F.linear everywhere (on CPU: the MKL sgemm HF uses)
            with onednn(False):
                step_ours()

        # References: a plain square matmul (what the cores can do at best), and one with the
        # model's own dominant shape, the MLP's (B*T, C) @ (C, 4C) (what they do on these sizes);
        # each through torch's `@` and, for fp32 on CPU, through oneDNN (model.linear's kernel).
        mm_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        n = 4096 if device.type == "cuda" else 2048
        C = config.n_embd
        mm_reps = 20 if device.type == "cuda" else 2
        shapes = {"square": ("square", (n, n, n)), "mlp": ("the MLP's shape", (B * T, C, 4 * C))}  # rows, inner, cols
        kernels = {"torch_mm": ("torch @", lambda a, w: a @ w.t())}
        probe = torch.empty(2, 2, device=device, dtype=mm_dtype)
        if uses_onednn(probe, probe):
            kernels["onednn"] = ("oneDNN", lambda a, w: linear(a, w))
        mats = {s: (torch.randn(m, k, device=device, dtype=mm_dtype), torch.randn(cols, k, device=device, dtype=mm_dtype))
                for s, (_, (m, k, cols)) in shapes.items()}

        def matmul(kernel, shape):
            def run():
                for _ in range(mm_reps):
                    kernel(*mats[shape])
            return run

        fns = {"ours": step_ours, "hf": step_hf}
        if "onednn" in kernels and not args.compile:
            fns["ours_plain"] = step_ours_plain
        refs = {f"flops_vs_{k}_{s}": (k, s) for k in kernels for s in shapes}  # the summary's keys
        fns |= {key: matmul(kernels[k][1], s) for key, (k, s) in refs.items()}
        interleaved(fns, 1, device)  # warm-up
        raw = interleaved(fns, args.rounds, device)
        t = medians(raw)
        tokens = args.steps * B * T
        tps_ours, tps_hf = tokens / t["ours"], tokens / t["hf"]
        achieved = tps_ours * flops_per_token(config)
        ratios["train"] = tps_ours / tps_hf
        print(f"\ntraining, batch {B} x {T} tokens, {args.steps} steps x {args.rounds} rounds (median):")
        print(f"  ours {tps_ours:10.0f} tok/s   HF GPT2LMHeadModel(sdpa) {tps_hf:10.0f} tok/s"
              f"   ratio ours/HF = {ratios['train']:.2f}x"
              f" ({spread(raw['hf'], raw['ours'])})")
        if "ours_plain" in t:
            ratios["train_without_onednn"] = t["hf"] / t["ours_plain"]
            print(f"  ours with F.linear instead of oneDNN {tokens / t['ours_plain']:10.0f} tok/s"
                  f"   ratio to HF = {ratios['train_without_onednn']:.2f}x ({spread(raw['hf'], raw['ours_plain'])})")
        print(f"  ours achieved {achieved / 1e9:8.1f} GFLOP/s ({flops_per_token(config) / 1e6:.1f} MFLOP/token)")
        for key, (k, s) in refs.items():
            label, (m, inner, cols) = shapes[s]
            rate = mm_reps * 2 * m * inner * cols / t[key]
            ratios[key] = achieved / rate
            print(f"  plain {args.dtype} matmul {m}x{inner}x{cols} ({label}) via {kernels[k][0]}: {rate / 1e9:8.1f} GFLOP/s;"
                  f" ours/it = {ratios[key]:.0%}")
        peak = peak_flops(device)
        if peak is not None and args.dtype == "bf16":
            ratios["mfu"] = achieved / peak
            print(f"  MFU vs {peak / 1e12:.0f} TFLOP/s bf16 peak: {ratios['mfu']:.1%}")
        del opt_ours, opt_hf

    if not args.skip_generate:
        ours = GPT.from_hf(hf).to(device).eval()  # training moved both; make the weights identical again
        hf.eval()
        print(f"\ngreedy generation, prompt {args.prompt}, {args.new_tokens} new tokens, KV cache on both:")
        for gb in args.gen_batches:
            prompt = torch.randint(0, config.vocab_size, (gb, args.prompt),
                                   generator=torch.Generator().manual_seed(gb)).to(device)
            outs = {}

            def gen_ours():
                with autocast(device, args.dtype):
                    outs["ours"] = ours.generate(prompt, args.new_tokens, temperature=0.0)

            def gen_hf():
                with torch.no_grad(), autocast(device, args.dtype):
                    outs["hf"] = hf.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                             do_sample=False, use_cache=True)

            interleaved({"ours": gen_ours, "hf": gen_hf}, 1, device)  # warm-up
            raw = interleaved({"ours": gen_ours, "hf": gen_hf}, args.rounds, device)
            t = medians(raw)
            assert outs["ours"].shape == outs["hf"].shape, (outs["ours"].shape, outs["hf"].shape)
            agree = (outs["ours"][:, args.prompt:] == outs["hf"][:, args.prompt:]).float().mean().item()
            new = gb * args.new_tokens
            ratios[f"gen_b{gb}"] = t["hf"] / t["ours"]
            print(f"  batch {gb}: ours {new / t['ours']:9.1f} tok/s   HF generate {new / t['hf']:9.1f} tok/s"
                  f"   ratio ours/HF = {ratios[f'gen_b{gb}']:.2f}x"
                  f" ({spread(raw['hf'], raw['ours'])}; tokens equal to HF's: {agree:.0%})")

    print("\nsummary: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
