"""A checkpoint -> a folder others can use: `python -m pianolm export CKPT OUT_DIR`.

The folder holds
- `config.json`, `model.safetensors`, `generation_config.json`: a Hugging Face GPT-2
  (`model.hf.export_hf`), so `transformers.GPT2LMHeadModel.from_pretrained(OUT_DIR)` gives our logits;
- `tokenizer.json`: our tokenizer (`remi.Tokenizer.load`), which turns MIDI into those ids;
- `miditok.json`: the same vocabulary for MidiTok (`miditok.REMI(params=...)`, ids equal to ours;
  `remi.miditok_export`), written whenever the tokenizer has no BPE (MidiTok cannot load our BPE);
- `training_config.json`: the run's resolved config, training step and tokenizer hash;
- `README.md`: a model card (training data, configuration, metrics from the run folder's
  metrics.json and eval/evaluation.json when present, usage).
`pianolm.load(OUT_DIR)` loads it back: same tokenizer (hash), same logits.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from model.hf import export_hf, model_card
from remi.miditok_export import miditok_params

from .api import RUN_CONFIG_NAME, TOKENIZER_NAME
from .checkpoint import load_checkpoint, resolve_checkpoint
from .errors import InputError

MIDITOK_NAME = "miditok.json"
# Numbers of the run's metrics.json worth a row in the model card.
CARD_METRICS = ("val_loss", "val_bits_per_note", "steps", "params", "non_embedding_params", "train_songs",
                "train_tokens", "train_notes", "val_songs", "tokens_per_step", "wall_time_s")
EVAL_METRICS = ("bits_per_note", "grammar_error_rate", "empty_pieces")


def run_folder(ckpt: Path) -> Path:
    """The run folder of a checkpoint: the parent of checkpoints/, else the checkpoint's folder."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def run_metrics(run: Path) -> dict[str, float]:
    """Numbers from `run`/metrics.json (train.py) and `run`/eval/evaluation.json (evaluate.py --out)."""
    out: dict[str, float] = {}
    for path, keys, prefix in ((run / "metrics.json", CARD_METRICS, ""),
                               (run / "eval" / "evaluation.json", EVAL_METRICS, "eval/")):
        data = _read_json(path)
        for k in keys:
            v = data.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[prefix + k] = v
    return out


def _data_lines(cfg: dict, metrics: dict) -> list[str]:
    data = cfg.get("data") or {}
    lines = []
    if data.get("name") or data.get("sources"):
        sources = data.get("sources")
        lines.append(f"data set `{data.get('name', '?')}` from sources: "
                     + (", ".join(map(str, sources)) if isinstance(sources, list) else str(sources)))
    counts = [f"{metrics[k]:,} {k.split('_')[1]}" for k in ("train_songs", "train_tokens", "train_notes") if k in metrics]
    if counts:
        lines.append("training split: " + ", ".join(counts))
    return lines or ["not recorded in the checkpoint"]


def export_folder(ckpt: str | Path, out_dir: str | Path, miditok: bool = True) -> Path:
    """Write the folder described in the module docstring; returns `out_dir`."""
    path = resolve_checkpoint(ckpt)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"export: OUT_DIR {out} is a file; give a folder (it is created if missing)")
    tok, gpt, extras = load_checkpoint(path)
    cfg = extras.get("cfg") or {}
    run = run_folder(path)
    metrics = run_metrics(run)
    step = extras.get("global_step")
    tokenizer_json = json.dumps(tok.to_dict(), indent=1)
    run_json = json.dumps({"cfg": cfg, "train_step": step, "tokenizer_hash": tok.hash,
                           "checkpoint": str(path)}, indent=1, default=str)
    extra: dict[str, Any] = {TOKENIZER_NAME: tokenizer_json, RUN_CONFIG_NAME: run_json}
    notes = []
    if miditok and tok.bpe is None and not tok.config.key_tokens:
        extra[MIDITOK_NAME] = json.dumps(miditok_params(tok), indent=1) + "\n"
    elif miditok:
        why = (f"uses BPE ({tok.vocab_size} ids)" if tok.bpe is not None else
               "has Key tokens (`key_tokens`), which MidiTok's REMI has no setting for")
        notes.append(f"No `{MIDITOK_NAME}`: this tokenizer {why}, so MidiTok cannot load it; "
                     "`tokenizer.json` is the tokenizer.")
    tc = tok.config
    card = {
        "name": f"pianolm {run.name or path.stem}",
        "description": (f"A GPT-2 ({gpt.config.n_layer} layers, {gpt.config.n_embd} channels, context "
                        f"{gpt.config.block_size} tokens) trained on REMI tokens of solo piano MIDI with "
                        f"pianolm, step {step}. The ids are those of `tokenizer.json` (vocabulary "
                        f"{tok.vocab_size}, hash `{tok.hash[:16]}`); " + " ".join(notes)).strip(),
        "data": _data_lines(cfg, metrics),
        "config": {"model": gpt.config.to_dict(),
                   "tokenizer": {"beat_res": tc.beat_res, "num_velocities": tc.num_velocities,
                                 "num_tempos": tc.num_tempos if tc.use_tempos else 0,
                                 "time_signatures": tc.use_time_signatures, "bpe_vocab_size": tc.bpe_vocab_size},
                   "training": {k: v for k, v in {"round": cfg.get("round"), "seed": cfg.get("seed"),
                                                 "optim": cfg.get("optim"), "steps": step}.items() if v is not None}},
        "metrics": metrics,
        "usage": ("import pianolm\n"
                  "m = pianolm.load(\"THIS_FOLDER\")\n"
                  "m.generate(n=1, bars=16, seed=0)[0].to_midi(\"piece.mid\")\n\n"
                  "# the network alone, through transformers (ids from tokenizer.json):\n"
                  "from transformers import GPT2LMHeadModel\n"
                  "gpt2 = GPT2LMHeadModel.from_pretrained(\"THIS_FOLDER\")"),
    }
    extra["README.md"] = model_card(card)
    generation = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    return export_hf(gpt, out, generation=generation, extra_files=extra)

