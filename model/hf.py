"""Hugging Face GPT-2 folders, both ways: `export_hf(gpt, out_dir)` and `load_hf(out_dir)`.

A folder holds `config.json` (a `GPT2Config`), `model.safetensors` and `generation_config.json`,
so `transformers.GPT2LMHeadModel.from_pretrained(out_dir)` gives our logits, and the Hub shows it
as a GPT-2. Neither direction imports `transformers`: the files are plain JSON and safetensors.
`GPT.from_hf` (an in-memory `GPT2LMHeadModel`) and `load_hf` (a folder) share one mapping
(`config_from_hf`, `load_hf_weights`); `hf_state_dict` is its inverse.

The mapping: parameter names are the same on both sides (ours are GPT-2's); the four Conv1D
weights of each block are stored transposed by Hugging Face; its `lm_head` is tied to `wte`.
Vocabulary: the exported `vocab_size` is `GPTConfig.vocab_size`, i.e. the tokenizer's
`vocab_size` (BPE included), not the padded row count: the rows added by `pad_vocab_multiple` are
never an input id and never a logit we return, so they are dropped from `wte` on export and the
Hugging Face logits have exactly our shape. Our own settings that GPT-2's config cannot say
(`pad_vocab_multiple`, `bias=False`) ride along under the `"pianolm"` key of `config.json`,
which `transformers` keeps as an unused attribute; a model without biases exports zero biases.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from model.gpt import GPT, HF_TRANSPOSED, GPTConfig, config_from_hf, hf_state_dict, load_hf_weights  # noqa: F401

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
GENERATION_NAME = "generation_config.json"
RESERVED = (CONFIG_NAME, WEIGHTS_NAME, GENERATION_NAME)
# `GenerationConfig` keys `export_hf` accepts; a typo would otherwise be kept and silently ignored.
GENERATION_KEYS = frozenset({
    "bos_token_id", "eos_token_id", "pad_token_id", "do_sample", "temperature", "top_k", "top_p",
    "min_p", "repetition_penalty", "max_new_tokens", "max_length", "num_return_sequences",
})


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read it ({e}); is this a folder written by export_hf?") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


# ------------------------------------------------------------------------- config

def hf_config(config: GPTConfig, bos_token_id: int | None = None, eos_token_id: int | None = None,
              pad_token_id: int | None = None) -> dict[str, Any]:
    """The `config.json` of a `GPT2LMHeadModel` with our network's shape."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,  # 4 * n_embd
        "activation_function": "gelu_new",  # GPT-2's tanh GELU, as in model.gpt.MLP
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "pianolm": {"gpt_config": config.to_dict()},
    }


# ---------------------------------------------------------------------- folders

def export_hf(gpt: GPT, out_dir: str | Path, generation: Mapping[str, Any] | None = None,
              extra_files: Mapping[str, str | bytes | Path] | None = None) -> Path:
    """Write `gpt` as a Hugging Face GPT-2 folder; returns `out_dir`.

    `generation`: `generation_config.json` entries (keys of `GENERATION_KEYS`, e.g. the
    tokenizer's `bos_token_id`/`eos_token_id` and sampler defaults). Sampling is on and top-k
    off unless set (Hugging Face's own default is top_k=50, ours is none). Note that
    `transformers` applies `repetition_penalty` to the whole sequence; ours looks at a window.
    `extra_files`: name -> text, bytes or a file to copy (the tokenizer JSON, README.md...).

    Example (a tiny untrained model):
        >>> import tempfile
        >>> gpt = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8))
        >>> out = export_hf(gpt, tempfile.mkdtemp(), generation={"bos_token_id": 1, "eos_token_id": 2})
        >>> sorted(p.name for p in out.iterdir())
        ['config.json', 'generation_config.json', 'model.safetensors']
        >>> torch.equal(load_hf(out)(torch.tensor([[1, 5]])), gpt.eval()(torch.tensor([[1, 5]])))
        True
    """
    from safetensors.torch import save_file

    gen = dict(generation or {})
    unknown = sorted(set(gen) - GENERATION_KEYS)
    if unknown:
        raise ValueError(f"export_hf: unknown generation key(s) {unknown}; expected some of {sorted(GENERATION_KEYS)}")
    for name in extra_files or {}:
        if name in RESERVED or Path(name).name != name or name.startswith("."):
            raise ValueError(f"export_hf: extra file name {name!r} must be a plain file name other than {RESERVED}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = {k: gen.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    cfg = hf_config(gpt.config, **ids)
    dtype = next(gpt.parameters()).dtype
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(hf_state_dict(gpt), str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    gen_cfg = {"do_sample": True, "top_k": 0, **{k: v for k, v in gen.items() if v is not None}}
    (out / GENERATION_NAME).write_text(json.dumps(gen_cfg, indent=2, sort_keys=True) + "\n")
    for name, content in (extra_files or {}).items():
        if isinstance(content, Path):
            content = content.read_bytes()
        (out / name).write_bytes(content if isinstance(content, bytes) else str(content).encode())
    return out


def load_hf(folder: str | Path, map_location: str | torch.device = "cpu") -> GPT:
    """The GPT in a Hugging Face GPT-2 folder (ours from `export_hf`, or any tied GPT-2), in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; expected one with {CONFIG_NAME} and {WEIGHTS_NAME}")
    config = config_from_hf(_read_json(folder / CONFIG_NAME), source=str(folder / CONFIG_NAME))
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist (pytorch_model.bin is not read: convert it to safetensors)")
    try:
        sd = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights} is not a readable safetensors file: {e}") from e
    if "transformer.wte.weight" not in sd and "wte.weight" in sd:  # saved from a bare GPT2Model
        sd = {f"transformer.{k}": v for k, v in sd.items()}
    gpt = GPT(config)
    load_hf_weights(gpt, sd, source=str(weights))
    dtype = sd["transformer.wte.weight"].dtype
    return gpt.to(device=map_location, dtype=dtype).eval()


def read_generation_config(folder: str | Path) -> dict[str, Any]:
    """The folder's `generation_config.json` as a dict ({} where there is none)."""
    path = Path(folder) / GENERATION_NAME
    return _read_json(path) if path.is_file() else {}


# --------------------------------------------------------------------- model card

def model_card(info: Mapping[str, Any]) -> str:
    """README.md text for an exported folder from plain data.

    `info` keys (all optional but `name`): `name`, `description`, `license`, `data` (what it was
    trained on: a string or a list), `config` (dict: model/tokenizer/training settings),
    `metrics` (dict name -> number), `usage` (a code snippet). Values are shown as given.
    """
    if not info.get("name"):
        raise ValueError("model_card: info needs a 'name'")
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             "tags: [gpt2, music, midi, piano, remi, pianolm]"]
    if info.get("license"):
        lines.append(f"license: {info['license']}")
    lines += ["---", "", f"# {info['name']}", ""]
    if info.get("description"):
        lines += [str(info["description"]).strip(), ""]
    data = info.get("data")
    if data:
        lines += ["## Training data", ""]
        lines += [f"- {d}" for d in ([data] if isinstance(data, str) else data)] + [""]
    for title, key in (("Configuration", "config"), ("Metrics", "metrics")):
        table = info.get(key)
        if table:
            lines += [f"## {title}", "", "| key | value |", "| --- | --- |"]
            lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in _flatten(table)] + [""]
    if info.get("usage"):
        lines += ["## Usage", "", "```python", str(info["usage"]).strip(), "```", ""]
    return "\n".join(lines)


def _flatten(d: Mapping[str, Any], prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, Mapping):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _cell(v: Any) -> str:
    if isinstance(v, float):
        v = f"{v:.6g}"
    return str(v).replace("|", "\\|").replace("\n", " ")
