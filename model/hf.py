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
from torch import Tensor

from model.gpt import GPT, GPTConfig

# Hugging Face GPT-2 keeps these as Conv1D (in, out) matrices; nn.Linear stores (out, in).
HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
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


def config_from_hf(c: Mapping[str, Any], tied: bool = True, source: str = "GPT.from_hf") -> GPTConfig:
    """Our `GPTConfig` for a GPT-2 config dict (`GPT2Config.to_dict()` or a `config.json`).

    Refuses, naming every reason, what `model.gpt.GPT` cannot compute; missing keys take
    `GPT2Config`'s defaults. A `"pianolm"` entry (written by `export_hf`) restores the settings
    GPT-2 has no key for, after checking it agrees with the GPT-2 keys.
    """
    get = lambda key, default: c.get(key, default) if c.get(key) is not None else default  # noqa: E731
    problems = []
    if get("model_type", "gpt2") != "gpt2":
        problems.append(f"model_type={c['model_type']!r} (only gpt2)")
    act = get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        problems.append(f"activation_function={act!r} (only GPT-2's tanh GELU)")
    n_embd = int(get("n_embd", 768))
    if c.get("n_inner") is not None and c["n_inner"] != 4 * n_embd:
        problems.append(f"n_inner={c['n_inner']} (only 4 * n_embd)")
    if abs(float(get("layer_norm_epsilon", 1e-5)) - 1e-5) > 1e-12:
        problems.append(f"layer_norm_epsilon={c['layer_norm_epsilon']} (only 1e-5)")
    if not get("scale_attn_weights", True) or get("scale_attn_by_inverse_layer_idx", False):
        problems.append("attention scaling other than 1/sqrt(head size)")
    if get("add_cross_attention", False):
        problems.append("cross-attention")
    if not tied or not get("tie_word_embeddings", True):
        problems.append("lm_head not tied to wte")
    if problems:
        raise ValueError(f"{source} cannot represent this GPT-2 model: " + "; ".join(problems))
    dropout = float(max(get("resid_pdrop", 0.1), get("embd_pdrop", 0.1), get("attn_pdrop", 0.1)))
    config = GPTConfig(vocab_size=int(get("vocab_size", 50257)), block_size=int(get("n_positions", 1024)),
                       n_layer=int(get("n_layer", 12)), n_head=int(get("n_head", 12)), n_embd=n_embd,
                       dropout=dropout, bias=True)
    ours = (c.get("pianolm") or {}).get("gpt_config")
    if ours is None:
        return config
    try:
        saved = GPTConfig.from_dict(ours)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: the 'pianolm.gpt_config' entry is not a GPTConfig: {e}") from e
    shape = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
    clash = [f"{k}: {getattr(saved, k)} vs {getattr(config, k)}" for k in shape if getattr(saved, k) != getattr(config, k)]
    if clash:
        raise ValueError(f"{source}: 'pianolm.gpt_config' disagrees with the GPT-2 keys ({'; '.join(clash)}); "
                         "the file was edited by hand: fix one of them")
    return saved


# ------------------------------------------------------------------------ weights

def hf_state_dict(gpt: GPT) -> dict[str, Tensor]:
    """Our weights under Hugging Face GPT-2's layout: Conv1D weights transposed, wte cut to
    `vocab_size` rows, no separate lm_head (tied), zero biases where we have none."""
    cfg = gpt.config
    own = gpt.state_dict()
    out: dict[str, Tensor] = {}
    for key, t in own.items():
        if key == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        if key == "transformer.wte.weight":
            t = t[: cfg.vocab_size]
        elif key.endswith(HF_TRANSPOSED):
            t = t.t()
        out[key] = t.detach().cpu().contiguous().clone()
    if not cfg.bias:
        C = cfg.n_embd
        zeros = lambda n: torch.zeros(n, dtype=out["transformer.wte.weight"].dtype)  # noqa: E731
        out["transformer.ln_f.bias"] = zeros(C)
        for i in range(cfg.n_layer):
            p = f"transformer.h.{i}."
            for name, n in (("ln_1.bias", C), ("ln_2.bias", C), ("attn.c_attn.bias", 3 * C),
                            ("attn.c_proj.bias", C), ("mlp.c_fc.bias", 4 * C), ("mlp.c_proj.bias", C)):
                out[p + name] = zeros(n)
    return out


def load_hf_weights(gpt: GPT, sd: Mapping[str, Tensor], source: str = "GPT.from_hf") -> GPT:
    """Copy a Hugging Face GPT-2 state dict into `gpt`, in place (the inverse of `hf_state_dict`).

    `wte` may have `vocab_size` rows (an export) or the padded count; padding rows left out are
    zeroed. Biases we do not have must be zero in `sd`. Shapes are checked key by key.
    """
    own = gpt.state_dict()
    V = gpt.config.vocab_size
    with torch.no_grad():
        for key, dst in own.items():
            if key == "lm_head.weight":
                continue  # tied: filled through transformer.wte.weight
            if key not in sd:
                raise ValueError(f"{source}: the Hugging Face weights lack {key!r}")
            src = sd[key].t() if key.endswith(HF_TRANSPOSED) else sd[key]
            if key == "transformer.wte.weight" and src.shape[0] == V and dst.shape[0] > V:
                dst[V:].zero_()
                dst = dst[:V]
            if src.shape != dst.shape:
                raise ValueError(f"{source}: {key} has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
            dst.copy_(src)
        if not gpt.config.bias:
            extra = [k for k in sd if k.endswith(".bias") and k not in own and torch.count_nonzero(sd[k])]
            if extra:
                raise ValueError(f"{source}: the model has no biases (bias=False) but {extra[:3]} are not zero")
    return gpt


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
