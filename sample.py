"""Generate piano pieces, or continue prompts, from a checkpoint: MIDI + piano roll + JSON (+ WAV).

    python sample.py ckpt=runs/x/checkpoints/last.ckpt n_samples=4 out_dir=samples
    python sample.py ckpt=... temperatures=[0.6,0.8,1.0,1.2,1.5]      # sweep + comparison figure
    python sample.py ckpt=... prompt=song.mid prompt_bars=4 max_bars=8 # continue the first 4 bars
    python sample.py ckpt=... tempo=100 meter=3/4 key=Dm max_bars=16    # fixed tempo, meter and key
    python sample.py ckpt=... infill=song.mid infill_bars=[9,12]        # bars 9-12 anew, the rest kept

A thin command line over the Python API (`pianolm.api.PianoLM`, docs/api.md): the checkpoint
alone rebuilds tokenizer and GPT, `PianoLM.sample_ids` generates (the grammar-constrained path of
`pianolm.generate`, with `pianolm.control` for a fixed tempo/meter/key), `pianolm.media` writes
the files. Knobs live in conf/sample.yaml; docs/sampling.md explains them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import remi
from model.window import check_stride
from pianolm import control as ctl
from pianolm.api import PianoLM, pick_device
from pianolm.errors import InputError
from pianolm.generate import Prompt, Sampling, load_prompts, safe_name
from pianolm.media import MediaWriter
from remi.bars import bar_span_ticks, count_bars
from remi.media.pianoroll import save_comparison

# ---------------------------------------------------------------- the run


def check_config(cfg) -> None:
    if cfg.ckpt is None:
        raise InputError("no checkpoint given: run `python sample.py ckpt=PATH/TO/last.ckpt`")
    if int(cfg.n_samples) < 1 or int(cfg.batch_size) < 1:
        raise InputError(f"n_samples and batch_size must be >= 1, got {cfg.n_samples} and {cfg.batch_size}")
    if cfg.max_bars is not None and int(cfg.max_bars) < 1:
        raise InputError(f"max_bars must be >= 1 or null, got {cfg.max_bars}")
    if int(cfg.max_new_tokens) < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {cfg.max_new_tokens}")
    for t in list(cfg.temperatures or []) + [cfg.temperature]:
        Sampling.from_cfg(cfg, t).check()  # every sampling knob, by the API's rules (model.generate.Sampler)
    fixed = [k for k in ("tempo", "meter", "key") if cfg.get(k) is not None]
    if fixed and cfg.prompt is not None:
        raise InputError(f"{', '.join(fixed)} fix a piece generated from scratch; a continuation keeps its "
                         "prompt's: drop prompt= or " + "/".join(f"{k}=" for k in fixed))
    if (cfg.get("infill") is None) != (cfg.get("infill_bars") is None):
        raise InputError("infill= and infill_bars= go together: e.g. infill=song.mid infill_bars=[9,12]")
    if cfg.get("infill") is not None:
        others = [k for k in ("prompt", "tempo", "meter", "key", "temperatures") if cfg.get(k) is not None]
        if others:
            raise InputError(f"infill= regenerates bars inside a piece and keeps its tempo, meter and key; "
                             f"drop {'/'.join(k + '=' for k in others)}")


def check_length(cfg, block_size: int) -> None:
    """The keys of how long a piece runs past the context (stride needs the model's block_size)."""
    if cfg.max_seconds is not None and not float(cfg.max_seconds) > 0:
        raise InputError(f"max_seconds must be > 0 or null, got {cfg.max_seconds}")
    try:
        check_stride(cfg.stride, block_size)
    except ValueError as e:
        raise InputError(f"{e} (the checkpoint's context)") from None


def sample(cfg: DictConfig) -> list[dict]:
    """Run sampling as configured; returns one settings/measurements dict per written piece.

    A plain function (the Hydra wrapper is `main`), so tests and scripts can call it directly.
    """
    check_config(cfg)
    device = pick_device(cfg.device)
    # Decoding threads: cpu_threads if set, else model.threads' rule (one thread for a few rows: on a
    # busy or small CPU extra threads mostly wait on each other).
    lm = PianoLM.load(cfg.ckpt, device, threads=int(cfg.cpu_threads) if cfg.cpu_threads else None)
    tok = lm.tokenizer
    check_length(cfg, lm.block_size)
    train_step = lm.config["train_step"]  # Lightning's global_step: which point of training this is
    if cfg.get("infill") is not None:
        return sample_infill(cfg, lm, device)
    skipped: list[tuple[str, str]] = []
    prompts = load_prompts(tok, cfg.prompt, cfg.prompt_bars, lm.block_size, skipped=skipped)
    for name, reason in skipped:
        print(f"sample: skipped {name}: {reason}", file=sys.stderr)
    control = ctl.fixed(tok, cfg.get("tempo"), cfg.get("meter"), cfg.get("key"), lm.key_penalty)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    media = MediaWriter.find(tok, audio=bool(cfg.audio), soundfont=cfg.soundfont, who="sample")

    sweep = cfg.temperatures is not None
    temperatures = [float(t) for t in cfg.temperatures] if sweep else [float(cfg.temperature)]
    n, bs = int(cfg.n_samples), int(cfg.batch_size)
    records: list[dict] = []
    progress = tqdm(total=len(temperatures) * len(prompts) * n, unit="piece", desc="sampling",
                    disable=not cfg.progress)
    for temperature in temperatures:
        # Each temperature restarts from the same seed, so a sweep compares like with like.
        torch.manual_seed(int(cfg.seed))
        generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
        folder = out_dir / f"temperature_{temperature:g}" if sweep else out_dir
        for prompt in prompts:
            told = prompt.ids if control is None else control.tell(tok, prompt.ids)
            rows = lm.sample_ids(told, n, Sampling.from_cfg(cfg, temperature), generator=generator,
                                 continue_bars=prompt.path is not None, control=control, batch_size=bs)
            for j, (ids, stop) in enumerate(rows):
                records.append(write_piece(tok, ids, stop, folder / f"{prompt.name}_{j:03d}",
                                           prompt, cfg, temperature, j, media, train_step, control))
                progress.update(1)
    progress.close()

    if sweep:
        for prompt in prompts:
            firsts = [r for r in records if r["prompt_name"] == prompt.name and r["index"] == 0]
            name = "temperature_sweep.png" if len(prompts) == 1 else f"temperature_sweep_{prompt.name}.png"
            save_comparison([tok.decode_score(r["ids"]) for r in firsts],
                            [f"temperature {r['temperature']:g}" for r in firsts], out_dir / name,
                            title=f"{prompt.name}: first sample at each temperature (seed {cfg.seed})",
                            prompt_end_ticks=[prompt.end_tick] * len(firsts))
    write_summary(out_dir, cfg, tok, device, train_step, records, skipped)
    print(f"wrote {len(records)} piece{'' if len(records) == 1 else 's'} to {out_dir}"
          + (f" (audio with {Path(media.synth.soundfont).name})" if media.synth else ""), file=sys.stderr)
    return records


def write_summary(out_dir: Path, cfg, tok: remi.Tokenizer, device: str, train_step: int | None,
                  records: list[dict], skipped: Sequence[tuple[str, str]] = ()) -> None:
    """samples.json: the checkpoint, the config, the mean grammar error rate, every piece's
    record (without its ids) and the prompt files left out, with why."""
    summary = {"checkpoint": str(cfg.ckpt), "train_step": train_step, "tokenizer_hash": tok.hash,
               "device": device, "config": OmegaConf.to_container(cfg, resolve=True),
               "mean_token_errors": float(np.mean([r["token_errors"] for r in records])),
               "pieces": [{k: v for k, v in r.items() if k != "ids"} for r in records],
               "skipped_prompts": [{"file": name, "reason": reason} for name, reason in skipped]}
    (out_dir / "samples.json").write_text(json.dumps(summary, indent=2))


def sample_infill(cfg: DictConfig, lm: PianoLM, device: str) -> list[dict]:
    """sample.py's `infill=`: n_samples versions of the piece with bars `infill_bars` anew."""
    tok, src = lm.tokenizer, Path(cfg.infill)
    bars = list(cfg.infill_bars) if not isinstance(cfg.infill_bars, str) else cfg.infill_bars
    torch.manual_seed(int(cfg.seed))
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    lm.batch_size = int(cfg.batch_size)
    rows = lm.infill_ids(src, bars, int(cfg.n_samples), Sampling.from_cfg(cfg), generator=generator)
    first, last = lm.last[0]["bars"]
    span = bar_span_ticks(tok, rows[0][0], first, last)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    media = MediaWriter.find(tok, audio=bool(cfg.audio), soundfont=cfg.soundfont, who="sample")
    name = safe_name(src.stem)
    records = []
    for j, (ids, stop) in enumerate(rows):
        stem = out_dir / f"{name}_infill_{j:03d}"
        out = media.piece(ids, stem, title=f"{stem.name}  (bars {first}-{last} anew, T={float(cfg.temperature):g})",
                          span=span)
        r = out.rendered
        record = {"midi": r.midi.name, "png": r.png.name, "wav": out.wav.name if out.wav else None,
                  "seed": int(cfg.seed), "index": j, "batch_size": int(cfg.batch_size),
                  "temperature": float(cfg.temperature), "top_k": cfg.top_k, "top_p": cfg.top_p,
                  "min_p": cfg.get("min_p"), "repetition_penalty": cfg.get("repetition_penalty"),
                  "grammar": bool(cfg.grammar), "infill": str(src), "infill_bars": [first, last],
                  "infill_ticks": list(span), "n_tokens": r.n_tokens, "n_notes": r.n_notes,
                  "n_bars": count_bars(tok, ids), "seconds": r.seconds, "token_errors": r.token_errors,
                  "stopped_by": stop, "checkpoint": str(cfg.ckpt), "train_step": lm.config["train_step"], "ids": ids}
        stem.with_suffix(".json").write_text(readable_json(record, one_line=("ids",)))
        records.append(record)
    write_summary(out_dir, cfg, tok, device, lm.config["train_step"], records)
    print(f"wrote {len(records)} infilled version{'' if len(records) == 1 else 's'} of {src} (bars {first}-{last}) "
          f"to {out_dir}", file=sys.stderr)
    return records


def write_piece(tok: remi.Tokenizer, ids: list[int], stop: str, stem: Path, prompt: Prompt, cfg,
                temperature: float, index: int, media: MediaWriter, train_step: int | None = None,
                control: ctl.Control | None = None) -> dict:
    """MIDI + PNG (+ WAV) + the JSON of settings and measurements for one piece (a fixed key
    of `control` written as the MIDI's key signature)."""
    title = f"{stem.name}  (T={temperature:g}" + (f", prompt: {prompt.n_bars} bars)" if prompt.path else ")")
    key = ctl.key_signature_name(control.key) if control is not None and control.key is not None else None
    out = media.piece(ids, stem, title=title, prompt_end=prompt.end_tick, key_signature=key)
    r = out.rendered
    if out.warning:
        tqdm.write(f"warning: {out.warning}", file=sys.stderr)
    record = {
        "midi": r.midi.name, "png": r.png.name, "wav": out.wav.name if out.wav else None,
        "seed": int(cfg.seed), "index": index, "batch_size": int(cfg.batch_size),
        "temperature": temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
        "min_p": cfg.get("min_p"), "repetition_penalty": cfg.get("repetition_penalty"),
        "tempo": cfg.get("tempo"), "meter": cfg.get("meter"), "key": cfg.get("key"),
        "grammar": bool(cfg.grammar), "max_new_tokens": int(cfg.max_new_tokens), "max_bars": cfg.max_bars,
        "max_seconds": cfg.max_seconds, "stride": cfg.stride,
        "n_tokens": r.n_tokens, "n_new_tokens": r.n_tokens - len(prompt.ids),
        "n_notes": r.n_notes, "n_bars": count_bars(tok, ids),
        "seconds": r.seconds, "token_errors": r.token_errors, "stopped_by": stop,
        "prompt_name": prompt.name, "prompt": prompt.info(), "checkpoint": str(cfg.ckpt),
        "train_step": train_step, "ids": ids,
    }
    stem.with_suffix(".json").write_text(readable_json(record, one_line=("ids",)))
    return record


def readable_json(record: dict, one_line: tuple[str, ...] = ()) -> str:
    """JSON with one key per line, the keys in `one_line` (long id lists) on a single line."""
    items = [f" {json.dumps(k)}: {json.dumps(v) if k in one_line else json.dumps(v, indent=1)}"
             for k, v in record.items()]
    return "{\n" + ",\n".join(items) + "\n}"


@hydra.main(config_path="conf", config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        sample(cfg)
    except InputError as e:
        print(f"sample.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
