"""GPT-2, written out: LayerNorm -> attention -> MLP -> Block -> GPTConfig -> GPT.

The module knows tensors and token ids, never MIDI. Parameter names are GPT-2's own
(`transformer.wte`, `transformer.h.N.attn.c_attn`, ..., `lm_head`), so a Hugging Face GPT-2
state dict maps onto ours key for key (their `Conv1D` weights are stored transposed).

Shapes: B batch, T time, C = n_embd, nh = n_head, hs = C // nh (head size), V vocabulary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from model.generate import Sampler
from model.generate import generate as decode
from model.linear import Linear, min_rows_for


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's own has no `bias=False` on older versions)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        # eps 1e-5 is GPT-2's layer_norm_epsilon
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class LayerCache:
    """Keys and values of one layer, preallocated to the context length on first write.

    The buffers are (B, nh, block_size, hs); `update` writes the new positions in place and
    returns views of everything cached so far, so a decoding step never reallocates.
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def update(self, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        B, nh, T, hs = k.shape
        if self.k is None:
            # allocated here rather than up front so the dtype follows autocast (bf16 under it)
            self.k = k.new_empty(B, nh, self.max_len, hs)
            self.v = v.new_empty(B, nh, self.max_len, hs)
        end = start + T
        if end > self.max_len:
            raise ValueError(f"cache holds {self.max_len} positions, asked to write up to {end}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, nh, end, hs)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.head_size = config.head_size
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, cache: LayerCache | None = None, start: int = 0) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(start, k, v)  # (B, nh, start + T, hs)
        dropout_p = self.dropout if self.training else 0.0
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif T == 1:
            # one new query may look at every cached position: no mask needed
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            # T new queries after `start` cached ones: query i sees keys 0 .. start + i
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        # GPT-2's GELU is the tanh approximation ("gelu_new" in Hugging Face)
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cache: LayerCache | None = None, start: int = 0) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache, start)
        return x + self.mlp(self.ln_2(x))


@dataclass
class GPTConfig:
    """Everything that fixes the network's shape; plain values only, so it round-trips as a dict.

    `pad_vocab_multiple` > 1 rounds the embedding/head rows up (e.g. to 64) for faster matmuls;
    the extra rows are never a target and `GPT.forward` returns logits over `vocab_size` only.
    """

    vocab_size: int = 512
    block_size: int = 1024
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 512
    dropout: float = 0.0
    bias: bool = True
    pad_vocab_multiple: int = 1
    # derived once in __post_init__, not constructor arguments
    head_size: int = field(init=False, repr=False)
    padded_vocab_size: int = field(init=False, repr=False)

    def __post_init__(self):
        """Each field checked once, here; a ValueError begins `field=value` (pianolm.config's
        check_config names the config key from it)."""
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "pad_vocab_multiple"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}: must be an integer >= 1")
        if self.n_embd % self.n_head:
            near = min((d for d in range(1, self.n_embd + 1) if self.n_embd % d == 0),
                       key=lambda d: (abs(d - self.n_head), d))
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: each head gets "
                             f"n_embd / n_head channels (e.g. n_head={near})")
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
            raise ValueError(f"dropout={d!r}: must be a number in [0, 1)")
        self.head_size = self.n_embd // self.n_head
        m = self.pad_vocab_multiple
        self.padded_vocab_size = (self.vocab_size + m - 1) // m * m

    def to_dict(self) -> dict:
        """The constructor arguments only (derived fields are recomputed on load)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        """Inverse of `to_dict`; tolerates derived keys (e.g. from `dataclasses.asdict`)."""
        names = {f.name for f in fields(cls) if f.init}
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown GPTConfig key(s) {sorted(unknown)}; expected a subset of {sorted(names)}")
        return cls(**{k: v for k, v in d.items() if k in names})


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity(),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied: one (V, C) matrix embeds and predicts
        linears = [m for m in self.modules() if isinstance(m, Linear)]
        min_rows = min_rows_for(4 * sum(m.weight.numel() for m in linears))  # fp32 bytes read per token
        for m in linears:
            m.min_rows = min_rows
        self.apply(self._init_weights)
        # GPT-2: each block adds two residual branches, so their output projections start smaller
        # to keep the residual stream's variance independent of depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; non-embedding leaves out wte (hence the tied head) and wpe."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    # ------------------------------------------------------------------ forward

    def _hidden(self, idx: Tensor, caches: list[LayerCache] | None = None, start: int = 0) -> Tensor:
        """Final-LayerNorm hidden states (B, T, C) for ids (B, T) at positions start .. start+T-1."""
        B, T = idx.shape
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} positions exceeds block_size {self.config.block_size}; crop the input"
            )
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if caches is None else caches[i], start)
        return self.transformer.ln_f(x)

    def _head(self, h: Tensor) -> Tensor:
        logits = self.lm_head(h)  # (B, T, padded V)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]
        return logits  # (B, T, V)

    def forward(self, idx: Tensor, targets: Tensor | None = None, reduction: str = "mean"):
        """Logits (B, T, V); with targets (B, T) also the cross-entropy, ignoring targets of -1.

        reduction="mean" gives the mean over counted tokens; "none" gives per-token losses (B, T),
        0 where the target is -1; "sum" their sum.
        """
        logits = self._head(self._hidden(idx))
        if targets is None:
            return logits
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1, reduction=reduction
        )
        if reduction == "none":
            loss = loss.view(targets.shape)
        return logits, loss

    # --------------------------------------------------------------- generation

    def new_caches(self) -> list[LayerCache]:
        """One empty key-value cache per layer, for `decode_step`."""
        return [LayerCache(self.config.block_size) for _ in range(self.config.n_layer)]

    def decode_step(self, idx: Tensor, caches: list[LayerCache], start: int) -> Tensor:
        """Last-position logits (B, V) of `idx` (B, t) placed at positions start .. start + t - 1,
        reading and extending `caches` (start 0 rebuilds them)."""
        return self._head(self._hidden(idx, caches, start)[:, -1:])[:, -1]

    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, eos_id: int | None = None,
                 allowed: Callable[[Tensor], Tensor] | None = None, generator: torch.Generator | None = None,
                 stride: int | None = None, keep: int = 0, min_p: float | None = None,
                 repetition_penalty: float | None = None, repetition_window: int | None = 64,
                 repetition_ids: Tensor | None = None, logit_bias: Tensor | None = None) -> Tensor:
        """Prompt ids (B, T) followed by up to `max_new_tokens` new ids: (B, T + n).

        `model.generate.generate` with the sampling knobs as a `model.generate.Sampler`; see there.
        """
        sampler = Sampler(temperature, top_k, top_p, min_p, repetition_penalty, repetition_window)
        return decode(self, idx, max_new_tokens, sampler, eos_id=eos_id, allowed=allowed, generator=generator,
                        stride=stride, keep=keep, repetition_ids=repetition_ids, logit_bias=logit_bias)

    # ------------------------------------------------------------- Hugging Face

    @classmethod
    def from_hf(cls, hf_model) -> GPT:
        """A GPT with the weights of a `transformers.GPT2LMHeadModel` (any size).

        The mapping is `model.hf`'s, shared with `model.hf.load_hf` (a saved folder) and
        inverted by `model.hf.export_hf`.
        """

        sd = hf_model.state_dict()
        tied = torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"])
        gpt = cls(config_from_hf(hf_model.config.to_dict(), tied=tied))
        load_hf_weights(gpt, sd)
        return gpt.to(device=next(hf_model.parameters()).device, dtype=next(hf_model.parameters()).dtype)


# ----------------------------------------------------------------- Hugging Face GPT-2 mapping
# The one mapping between our parameters and Hugging Face GPT-2's, used by `GPT.from_hf` and by
# model.hf (export to and loading from a saved folder). It lives here, beside the model, so that
# model.hf depends on model.gpt and never the other way round.

# Hugging Face GPT-2 keeps these as Conv1D (in, out) matrices; nn.Linear stores (out, in).
HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


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
