"""Generate piano pieces, or continue prompts, from a checkpoint: MIDI + piano roll + JSON (+ WAV).

    python sample.py ckpt=runs/x/checkpoints/last.ckpt n_samples=4 out_dir=samples
    python sample.py ckpt=... temperatures=[0.6,0.8,1.0,1.2,1.5]      # sweep + comparison figure
    python sample.py ckpt=... prompt=song.mid prompt_bars=4 max_bars=8 # continue the first 4 bars

This is the one place where `remi` (MIDI, tokens) meets `model` (tensors). The checkpoint alone
rebuilds both: the tokenizer from its JSON, the GPT from its config and weights. Knobs live in
conf/sample.yaml; docs/sampling.md explains them.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import remi
from model import GPT, GPTConfig
from model.ckptio import load_plain
from model.window import check_stride
from remi.audio import INSTALL_HINT, find_renderer, render_wav
from remi.pianoroll import save_comparison
from remi.render import bar_ids, count_bars, cut_bars, prompt_end_tick, render
from remi.score import bar_starts, ticks_to_seconds

REQUIRED_KEYS = ("state_dict", "tokenizer", "model_config")
MIDI_SUFFIXES = (".mid", ".midi")


class SampleError(Exception):
    """Bad input from the user (missing file, bad checkpoint, bad prompt): one line, exit 2."""


# ---------------------------------------------------------------- checkpoint -> tokenizer + GPT


def resolve_checkpoint(path: str | Path) -> Path:
    """A .ckpt file, or a run folder holding checkpoints/last.ckpt (or last.ckpt)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise SampleError(f"checkpoint folder {path} holds no checkpoints/last.ckpt; pass the .ckpt file")
    if not path.is_file():
        raise SampleError(f"checkpoint {path} does not exist")
    return path


def match_state_dict(state: dict, expected: Sequence[str], where: str) -> dict:
    """The model's own keys out of a (Lightning) state dict whose keys carry a prefix ("gpt.").

    The prefix is found, not assumed: it is whatever precedes the model's first key in the
    checkpoint (so "gpt.", "model.", "gpt._orig_mod." or none all work).
    """
    probe = expected[0]
    for key in state:
        if key == probe or key.endswith("." + probe):
            prefix = key[: len(key) - len(probe)]
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            missing = [k for k in expected if k not in sub]
            if not missing:
                return {k: sub[k] for k in expected}
            raise SampleError(f"{where}: the weights lack {len(missing)} of the model's tensors, "
                              f"e.g. {missing[0]!r}; was it written by another model version?")
    raise SampleError(f"{where}: no GPT weights in its state_dict (looked for a key ending in {probe!r})")


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[remi.Tokenizer, GPT, dict]:
    """(tokenizer, GPT in eval mode on `device`, the checkpoint's plain-data extras)."""
    path = resolve_checkpoint(path)
    try:
        ckpt = load_plain(path)
    except ValueError as e:  # a pickle error, a zip error, a text file: all mean "not a checkpoint"
        raise SampleError((str(e).strip().splitlines() or [""])[0][:300]) from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise SampleError(f"{path} is not a pianolm checkpoint: it lacks {', '.join(map(repr, missing))} "
                          "(checkpoints written by train.py carry them)")
    try:
        tok = remi.Tokenizer.from_dict(ckpt["tokenizer"])
    except Exception as e:
        raise SampleError(f"{path}: its tokenizer does not load ({e})") from None
    if ckpt.get("tokenizer_hash") and ckpt["tokenizer_hash"] != tok.hash:
        raise SampleError(f"{path}: tokenizer hash {ckpt['tokenizer_hash'][:12]}… does not match its "
                          f"tokenizer JSON ({tok.hash[:12]}…); the checkpoint is inconsistent")
    try:
        config = GPTConfig.from_dict(dict(ckpt["model_config"]))
    except (TypeError, ValueError) as e:
        raise SampleError(f"{path}: its model_config does not load ({e})") from None
    if config.vocab_size != tok.vocab_size:
        raise SampleError(f"{path}: model vocab_size {config.vocab_size} != tokenizer vocab_size "
                          f"{tok.vocab_size}")
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SampleError(f"{path}: its state_dict is not a mapping of tensors")
    # Before allocating anything: the config must describe the weights the file holds. A rough
    # count first (a damaged config can ask for tens of GB, or for a million layers), then every
    # tensor's shape against a model built on the meta device (shapes only, no memory).
    held = sum(v.numel() for v in state.values())
    described = 12 * config.n_layer * config.n_embd**2 + (config.padded_vocab_size + config.block_size) * config.n_embd
    if described > 1.5 * held + 1_000_000:
        raise SampleError(f"{path}: model_config {config.to_dict()} describes ~{described:,} parameters "
                          f"({described * 4 / 1e9:.1f} GB) but the checkpoint holds {held:,} weights; "
                          "the checkpoint is damaged or its model_config was edited")
    with torch.device("meta"):
        expected = GPT(config).state_dict()
    weights = match_state_dict(state, list(expected), str(path))
    for key, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise SampleError(f"{path}: tensor {key!r} has shape {tuple(tensor.shape)} but model_config "
                              f"{config.to_dict()} needs {tuple(expected[key].shape)}; the checkpoint is damaged "
                              "or its model_config was edited")
        if not torch.isfinite(tensor).all():
            raise SampleError(f"{path}: tensor {key!r} holds NaN or infinite values; use an earlier checkpoint")
    gpt = GPT(config)
    gpt.load_state_dict(weights)
    extras = {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer_states")}
    return tok, gpt.to(device).eval(), extras


# ---------------------------------------------------------------- prompts


@dataclass
class Prompt:
    """What generation starts from: BOS alone, or BOS + the first bars of a MIDI file."""

    name: str  # used in output file names
    ids: list[int]
    path: Path | None = None
    n_bars: int = 0
    end_tick: int | None = None  # where the prompt's bars end (marked on the piano roll)

    def info(self) -> dict | None:
        if self.path is None:
            return None
        return {"file": str(self.path), "bars": self.n_bars, "tokens": len(self.ids),
                "end_tick": self.end_tick}


def safe_name(text: str) -> str:
    """A file-name-safe version of a prompt's stem (prompt names carry spaces, '#', accents)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "prompt"


def prompt_files(prompt: str | Path) -> list[Path]:
    path = Path(prompt)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())
        if not files:
            raise SampleError(f"prompt folder {path} holds no .mid/.midi files")
        return files
    if not path.is_file():
        raise SampleError(f"prompt {path} does not exist")
    return [path]


def load_prompts(tok, prompt: str | Path | None, prompt_bars: int | None, block_size: int) -> list[Prompt]:
    if prompt is None:
        return [Prompt(name="sample", ids=[tok.bos_id])]
    if prompt_bars is not None and prompt_bars < 1:
        raise SampleError(f"prompt_bars must be >= 1 (or null for the whole file), got {prompt_bars}")
    prompts, used = [], set()
    for path in prompt_files(prompt):
        try:
            ids = tok.encode(path)
        except Exception as e:  # remi.MidiReadError and whatever a broken file provokes
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise SampleError(f"prompt {path} does not parse as MIDI ({reason})") from None
        ids, n_bars = cut_bars(tok, ids, prompt_bars)
        if n_bars == 0 or tok.count_notes(ids) == 0:
            raise SampleError(f"prompt {path} has no notes to continue")
        if len(ids) >= block_size:
            raise SampleError(f"prompt {path}: its first {n_bars} bars are {len(ids)} tokens, longer than "
                              f"the model's context of {block_size}; use fewer prompt_bars")
        name = safe_name(path.stem)
        while name in used:
            name += "_"
        used.add(name)
        prompts.append(Prompt(name=name, ids=ids, path=path, n_bars=n_bars,
                              end_tick=prompt_end_tick(tok, ids)))
    return prompts


# ---------------------------------------------------------------- generation


def seconds_between_bars(tok, ids: Sequence[int], first: int, last: int) -> float:
    """Seconds of music from the start of bar `first` to the start of bar `last` (0-based) of the
    piece `ids` begins, on the bar grid and tempo map the tokenizer decodes from them."""
    score = tok.decode_score(ids)
    starts = bar_starts(score, 0, min_count=last + 1)
    tpb = score.ticks_per_beat
    return (ticks_to_seconds(int(starts[last]), tpb, score.tempos)
            - ticks_to_seconds(int(starts[first]), tpb, score.tempos))


class Piece:
    """One row's bookkeeping while it is generated: the grammar automaton, the bars generated,
    and where (if anywhere) the piece has reached EOS or the length asked for.

    `advance(row)` reads only the ids it has not seen, so a step costs the same at token 5,000 as
    at token 5: nothing here depends on the model's context window, which `GPT.generate` slides
    underneath. A Bar that would open a bar past the length asked for (`max_bars` generated bars,
    or a bar starting `max_seconds` or more of generated music after the prompt) stops the piece
    there: `finish` cuts it off and ends the piece with EOS.
    """

    def __init__(self, tok, prompt: Sequence[int], max_bars: int | None = None,
                 max_seconds: float | None = None, grammar: bool = True):
        self.tok, self.max_bars, self.max_seconds = tok, max_bars, max_seconds
        self.prompt_len = len(prompt)
        self.prompt_bars = count_bars(tok, prompt)
        self.starts = bar_ids(tok)
        self.state = tok.grammar_state(list(prompt)) if grammar else None
        self.n = self.prompt_len  # ids read so far
        self.bars = 0  # bars generated (Bar ids after the prompt, the stopping one excluded)
        self.stop: str | None = None  # "eos", "max_bars" or "max_seconds"
        self.end: int | None = None  # index of the EOS or of the Bar that stopped it

    def advance(self, row: Sequence[int]) -> None:
        for i in range(self.n, len(row)):
            t = int(row[i])
            if self.stop is None:
                if t == self.tok.eos_id:
                    self.stop, self.end = "eos", i
                elif t in self.starts:
                    reason = self.over_length(row[:i])
                    if reason:
                        self.stop, self.end = reason, i
                    else:
                        self.bars += 1
            if self.state is not None and self.stop is None:
                for base in (self.tok.bpe.expand(t) if self.tok.bpe is not None else (t,)):
                    self.state.step(base)
        self.n = max(self.n, len(row))

    def over_length(self, before: Sequence[int]) -> str | None:
        """Why a Bar after `before` (the next generated bar) would be one too many, if it would."""
        if self.max_bars is not None and self.bars >= self.max_bars:
            return "max_bars"
        if self.max_seconds is not None and seconds_between_bars(
                self.tok, before, self.prompt_bars, self.prompt_bars + self.bars) >= self.max_seconds:
            return "max_seconds"
        return None


def make_allowed(tok, prompt_len: int, grammar: bool, max_bars: int | None, continue_bars: bool,
                 max_seconds: float | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-step mask for one `GPT.generate` call.

    grammar: only ids the REMI grammar allows next (the tokenizer's grammar automaton, advanced
        one id at a time).
    max_bars / max_seconds: a row whose latest Bar opens a bar past the length asked for may only
        say EOS (`finish` then cuts that Bar off); see `Piece`.
    continue_bars: the first new id must open a bar, so the continuation never adds notes to
        the prompt's last bar and the prompt's bars stay exactly as given.
    Always: the first new id is not EOS (no empty pieces).
    Every row's state is read from the whole sequence `generate` hands in, never from the model's
    window, so it stays exact however often the window shifts.
    """
    only_eos = np.zeros(tok.vocab_size, dtype=bool)
    only_eos[tok.eos_id] = True
    anything = np.ones(tok.vocab_size, dtype=bool)
    starts = np.array(sorted(bar_ids(tok)))
    opens_bar = np.zeros(tok.vocab_size, dtype=bool)
    opens_bar[starts] = True
    # Specials other than EOS never belong inside a piece, whatever the grammar table permits.
    not_special = anything.copy()
    not_special[[tok.bos_id, tok.pad_id, tok.mask_id]] = False
    pieces: list[Piece] = []

    def allowed(ids: torch.Tensor) -> torch.Tensor:  # ids (B, T) -> bool (B, V)
        rows = ids.cpu().numpy()
        if len(pieces) != len(rows) or pieces[0].n > rows.shape[1]:  # a new generation: start over
            pieces[:] = [Piece(tok, row[:prompt_len].tolist(), max_bars, max_seconds, grammar) for row in rows]
        masks = np.empty((len(rows), tok.vocab_size), dtype=bool)
        for b, (piece, row) in enumerate(zip(pieces, rows)):
            piece.advance(row)
            if piece.stop is not None:
                masks[b] = only_eos
                continue
            mask = tok.allowed_after_state(piece.state) & not_special if grammar else anything
            if not mask.any():
                mask = only_eos
            if len(row) == prompt_len:  # never an empty piece: the first new id is not EOS
                mask = mask & ~only_eos if (mask & ~only_eos).any() else mask
                if continue_bars:
                    mask = mask & opens_bar if (mask & opens_bar).any() else opens_bar
            masks[b] = mask
        return torch.from_numpy(masks).to(ids.device)

    return allowed


def finish(tok, row: Sequence[int], prompt_len: int, max_bars: int | None,
           max_seconds: float | None = None) -> tuple[list[int], str]:
    """One generated row -> the raw ids to keep, and why generation stopped.

    Cuts after the first EOS, or before the Bar that opens a bar past `max_bars` generated bars
    or past `max_seconds` of generated music (then ends with EOS): the same `Piece` rule that
    `make_allowed` applied while generating.
    """
    row = [int(i) for i in row]
    piece = Piece(tok, row[:prompt_len], max_bars, max_seconds, grammar=False)
    piece.advance(row)
    if piece.stop is None:
        return row, "max_new_tokens"
    if piece.stop == "eos":
        return row[: piece.end + 1], "eos"
    return row[: piece.end] + [tok.eos_id], piece.stop


def generate_batch(gpt: GPT, tok, prompt: Prompt, n: int, cfg, temperature: float,
                   generator: torch.Generator, device: str) -> list[tuple[list[int], str]]:
    """`n` continuations of one prompt, as (raw ids, stop reason)."""
    idx = torch.tensor([prompt.ids] * n, dtype=torch.long, device=device)
    allowed = make_allowed(tok, len(prompt.ids), bool(cfg.grammar), cfg.max_bars,
                           continue_bars=prompt.path is not None, max_seconds=cfg.max_seconds)
    with torch.no_grad():
        out = gpt.generate(idx, int(cfg.max_new_tokens), temperature=float(temperature),
                           top_k=cfg.top_k, top_p=cfg.top_p, eos_id=tok.eos_id,
                           allowed=allowed, generator=generator, stride=cfg.stride)
    return [finish(tok, row, len(prompt.ids), cfg.max_bars, cfg.max_seconds) for row in out.tolist()]


# ---------------------------------------------------------------- the run


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def check_config(cfg) -> None:
    if cfg.ckpt is None:
        raise SampleError("no checkpoint given: run `python sample.py ckpt=PATH/TO/last.ckpt`")
    if int(cfg.n_samples) < 1 or int(cfg.batch_size) < 1:
        raise SampleError(f"n_samples and batch_size must be >= 1, got {cfg.n_samples} and {cfg.batch_size}")
    if cfg.max_bars is not None and int(cfg.max_bars) < 1:
        raise SampleError(f"max_bars must be >= 1 or null, got {cfg.max_bars}")
    if int(cfg.max_new_tokens) < 1:
        raise SampleError(f"max_new_tokens must be >= 1, got {cfg.max_new_tokens}")
    for t in list(cfg.temperatures or []) + [cfg.temperature]:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < float("inf"):
            raise SampleError(f"temperature={t!r}: must be a finite number >= 0 (0 is greedy)")
    top_k, top_p = cfg.get("top_k"), cfg.get("top_p")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise SampleError(f"top_k={top_k!r}: must be an integer >= 1 (the k most likely tokens are kept), or null for all")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise SampleError(f"top_p={top_p!r}: must be a number in (0, 1] (the nucleus' probability mass), or null for all")


def check_length(cfg, block_size: int) -> None:
    """The keys of how long a piece runs past the context (stride needs the model's block_size)."""
    if cfg.max_seconds is not None and not float(cfg.max_seconds) > 0:
        raise SampleError(f"max_seconds must be > 0 or null, got {cfg.max_seconds}")
    try:
        check_stride(cfg.stride, block_size)
    except ValueError as e:
        raise SampleError(f"{e} (the checkpoint's context)") from None


def sample(cfg: DictConfig) -> list[dict]:
    """Run sampling as configured; returns one settings/measurements dict per written piece.

    A plain function (the Hydra wrapper is `main`), so tests and scripts can call it directly.
    """
    check_config(cfg)
    device = pick_device(cfg.device)
    if cfg.cpu_threads:
        # Token-by-token decoding of a small model is latency-bound: on a busy or small CPU, extra
        # intra-op threads mostly wait on each other (15x slower at 2 threads on a loaded 2-core box).
        torch.set_num_threads(int(cfg.cpu_threads))
    tok, gpt, extras = load_checkpoint(cfg.ckpt, device)
    check_length(cfg, gpt.config.block_size)
    train_step = extras.get("global_step")  # Lightning's own key: which point of training this is
    prompts = load_prompts(tok, cfg.prompt, cfg.prompt_bars, gpt.config.block_size)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    renderer = find_renderer(cfg.soundfont) if cfg.audio else None
    if cfg.audio and renderer is None:
        print(INSTALL_HINT, file=sys.stderr)

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
            for start in range(0, n, bs):
                batch = generate_batch(gpt, tok, prompt, min(bs, n - start), cfg, temperature,
                                       generator, device)
                for j, (ids, stop) in enumerate(batch):
                    records.append(write_piece(tok, ids, stop, folder / f"{prompt.name}_{start + j:03d}",
                                               prompt, cfg, temperature, start + j, renderer, train_step))
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
    summary = {"checkpoint": str(cfg.ckpt), "train_step": train_step, "tokenizer_hash": tok.hash,
               "device": device,
               "config": OmegaConf.to_container(cfg, resolve=True),
               "mean_token_errors": float(np.mean([r["token_errors"] for r in records])),
               "pieces": [{k: v for k, v in r.items() if k != "ids"} for r in records]}
    (out_dir / "samples.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {len(records)} piece{'' if len(records) == 1 else 's'} to {out_dir}"
          + (f" (audio with {Path(renderer.soundfont).name})" if renderer else ""), file=sys.stderr)
    return records


def write_piece(tok, ids: list[int], stop: str, stem: Path, prompt: Prompt, cfg, temperature: float,
                index: int, renderer, train_step: int | None = None) -> dict:
    """MIDI + PNG (+ WAV) + the JSON of settings and measurements for one piece."""
    title = f"{stem.name}  (T={temperature:g}" + (f", prompt: {prompt.n_bars} bars)" if prompt.path else ")")
    media = render(tok, ids, stem, title=title, prompt_end=prompt.end_tick)
    record = {
        "midi": media.midi.name, "png": media.png.name, "wav": None,
        "seed": int(cfg.seed), "index": index, "batch_size": int(cfg.batch_size),
        "temperature": temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
        "grammar": bool(cfg.grammar), "max_new_tokens": int(cfg.max_new_tokens), "max_bars": cfg.max_bars,
        "max_seconds": cfg.max_seconds, "stride": cfg.stride,
        "n_tokens": media.n_tokens, "n_new_tokens": media.n_tokens - len(prompt.ids),
        "n_notes": media.n_notes, "n_bars": count_bars(tok, ids),
        "seconds": media.seconds, "token_errors": media.token_errors, "stopped_by": stop,
        "prompt_name": prompt.name, "prompt": prompt.info(), "checkpoint": str(cfg.ckpt),
        "train_step": train_step, "ids": ids,
    }
    if renderer is not None:
        try:
            record["wav"] = render_wav(media.midi, stem.with_suffix(".wav"), renderer,
                                       seconds=media.seconds).name
        except (RuntimeError, OSError) as e:
            tqdm.write(f"warning: {e}", file=sys.stderr)
    # Readable settings, one per line; the ids on one line at the end.
    text = json.dumps({**record, "ids": None}, indent=1)
    stem.with_suffix(".json").write_text(text.replace('"ids": null', '"ids": ' + json.dumps(ids)))
    return record


@hydra.main(config_path="conf", config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        sample(cfg)
    except SampleError as e:
        print(f"sample.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
