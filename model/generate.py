"""Generation: the one decoding loop over a GPT, its knobs in one checked dataclass, and the small
set of stopping rules every caller shares.

    out = generate(gpt, idx, max_new_tokens, Sampler(temperature=0.9, top_p=0.95), eos_id=EOS,
                   allowed=only_eos_after(bar_ids, 17, EOS, V), generator=g)
    rows = cut_at_eos(out.tolist(), prompt_len, EOS)

`GPT.generate`, `pianolm` (the API, sample.py, the page), experiments/evaluate.py and the
training callback all come here. Token ids and tensors only: what a "bar" is, is the caller's
(it hands in the ids that open one).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from model.cpu_decode import ENGINES, CpuDecoder, usable
from model.sampling import (
    check_logit_bias,
    check_mask_shape,
    check_some_allowed,
    check_temperature,
    is_number,
    min_p_filter,
    next_token,
    top_k_filter,
    top_p_filter,
)
from model.threads import decode_threads, threads_for
from model.window import check_stride, window_start

Allowed = Callable[[Tensor], Tensor]  # ids so far (B, n) -> bool (B, V): the ids permitted next


@dataclass(frozen=True)
class Sampler:
    """How each next token is drawn (`model.sampling.next_token`'s knobs); checks itself.

    temperature: 0 is greedy; top_k / top_p / min_p: None keeps every token; repetition_penalty:
    CTRL's, over the last `repetition_window` ids (None: the whole sequence, as transformers).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    repetition_window: int | None = 64

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        k, p, m, r = self.top_k, self.top_p, self.min_p, self.repetition_penalty
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"top_k={k!r}: must be an integer >= 1 (the k most likely tokens are kept), or None for all")
        if p is not None and (not is_number(p) or not 0 < p <= 1):
            raise ValueError(f"top_p={p!r}: must be a number in (0, 1] (the nucleus' probability mass), or None for all")
        if m is not None and (not is_number(m) or not 0 <= m <= 1):
            raise ValueError(f"min_p={m!r}: must be a number in [0, 1] (a share of the top token's probability), or None")
        if r is not None and (not is_number(r) or r <= 0):
            raise ValueError(f"repetition_penalty={r!r}: must be a number > 0 (1 = off, > 1 fewer repeats), or None")
        w = self.repetition_window
        if r is not None and w is not None and int(w) < 1:
            raise ValueError(f"repetition_window must be a positive number of tokens or None, got {w}")

    def recent(self, out: Tensor, n: int) -> Tensor | None:
        """The ids the repetition penalty looks at, out of the first `n` of `out` (None: no penalty)."""
        if self.repetition_penalty is None:
            return None
        return out[:, 0 if self.repetition_window is None else max(0, n - int(self.repetition_window)):n]


# ----------------------------------------------------------------------------- stopping rules


def only_eos_after(ids: Sequence[int], count: int, eos_id: int, vocab_size: int) -> Allowed:
    """A mask that permits everything until a row holds more than `count` of `ids` (prompt
    included), then only EOS: for example "stop once N bars are complete", with `ids` the ids
    that open a bar and `count` = N."""
    marks, eos = torch.tensor(sorted(ids), dtype=torch.long), int(eos_id)

    def allowed(rows: Tensor) -> Tensor:  # (B, n) -> (B, V) bool
        done = torch.isin(rows, marks.to(rows.device)).sum(dim=1) > count
        mask = torch.ones(rows.shape[0], vocab_size, dtype=torch.bool, device=rows.device)
        mask[done] = False
        mask[done, eos] = True
        return mask

    return allowed


def cut_at_eos(rows: Sequence[Sequence[int]], prompt_len: int, eos_id: int | None,
               keep_eos: bool = True) -> list[list[int]]:
    """Each row up to its first EOS after the prompt (kept or dropped): what finished rows were
    padded with is cut off."""
    out = []
    for row in rows:
        row = [int(i) for i in row]
        if eos_id is not None and eos_id in row[prompt_len:]:
            end = prompt_len + row[prompt_len:].index(eos_id)
            row = row[: end + 1 if keep_eos else end]
        out.append(row)
    return out


# ----------------------------------------------------------------------------- the loop


class _TorchSteps:
    """`GPT.decode_step` over caches of its own: the path for GPUs, bf16 and autocast."""

    def __init__(self, gpt):
        self.gpt, self.caches = gpt, gpt.new_caches()

    def step(self, ids: Tensor, start: int) -> Tensor:
        return self.gpt.decode_step(ids, self.caches, start)


def _steps(gpt, idx: Tensor, engine: str):
    """The decoding steps `engine` names. "auto", where `cpu_decode.usable` holds: the fused decoder
    up to `FUSED_MAX_ROWS` rows, the NumPy decoder beyond (BLAS is faster there); elsewhere torch."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: must be one of {', '.join(ENGINES)}")
    if engine in ("fused", "numpy") and not usable(gpt, idx):
        raise ValueError(f"engine={engine!r} needs a CPU model in float32 or float64, without autocast or gradients")
    if engine == "torch" or (engine == "auto" and not usable(gpt, idx)):
        return _TorchSteps(gpt)
    if engine == "numpy":
        return CpuDecoder(gpt, idx.shape[0])
    from model.fused_decode import FUSED_MAX_ROWS, FusedDecoder  # numba: imported where it is used (~0.5 s)

    if engine == "auto" and idx.shape[0] > FUSED_MAX_ROWS:
        return CpuDecoder(gpt, idx.shape[0])
    return FusedDecoder(gpt, idx.shape[0])


class _Window:
    """The ids the model sees while decoding; `steps` holds their key-value cache.

    GPT-2's positions are absolute, so a full cache cannot roll by one token. When a new token
    would overflow the window `out[:, lo:n]` (after the `keep` pinned ids), its start moves
    `stride` tokens on (`window_start`) and the cache is rebuilt once for the tokens it keeps.
    """

    def __init__(self, gpt, out: Tensor, keep: int, stride: int, steps):
        self.out, self.keep, self.steps = out, keep, steps
        self.tail = gpt.config.block_size - keep  # the sliding part of the window
        self.stride = min(stride, self.tail)
        self.lo = -1

    def _ids(self, n: int) -> Tensor:
        part = self.out[:, self.lo:n]
        return part if self.keep == 0 else torch.cat([self.out[:, :self.keep], part], dim=1)

    def logits(self, n: int) -> Tensor:
        """Last-position logits (B, V) over the first `n` ids: one cached step when the newest id
        fits in the window, else the window moves and the cache is rebuilt."""
        lo = self.keep + window_start(max(self.lo, self.keep) - self.keep, n - self.keep, self.tail, self.stride)
        if lo == self.lo:
            return self.steps.step(self.out[:, n - 1:n], self.keep + n - 1 - lo)
        self.lo = lo
        return self.steps.step(self._ids(n), 0)


def _check(gpt, idx: Tensor, keep: int, stride: int | None) -> int:
    if idx.dim() != 2:
        raise ValueError(f"generate expects ids of shape (B, T), got {tuple(idx.shape)}")
    if idx.shape[1] == 0:
        raise ValueError("generate needs a prompt of at least one token (e.g. BOS)")
    block = gpt.config.block_size
    if isinstance(keep, bool) or int(keep) != keep or not 0 <= keep <= min(idx.shape[1], block // 2):
        raise ValueError(f"keep must be an integer from 0 to min(prompt length {idx.shape[1]}, block_size // 2 = "
                         f"{block // 2}), got {keep!r}")
    return check_stride(stride, block)


def _penalized(ids, vocab_size: int, device) -> Tensor | None:
    """The bool (V,) mask of `repetition_ids` (None: the penalty touches every id)."""
    if ids is None:
        return None
    ids = torch.as_tensor(ids, dtype=torch.long, device=device).flatten()
    if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < vocab_size):
        raise ValueError(f"repetition_ids must lie in [0, {vocab_size}), got {int(ids.min())}..{int(ids.max())}")
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[ids] = True
    return mask


@torch.no_grad()
def generate(gpt, idx: Tensor, max_new_tokens: int, sampler: Sampler = Sampler(), eos_id: int | None = None,
             allowed: Allowed | None = None, generator: torch.Generator | None = None, stride: int | None = None,
             keep: int = 0, repetition_ids=None, logit_bias: Tensor | None = None, engine: str = "auto",
             threads: int | None = None, on_token: Callable[[int], None] | None = None) -> Tensor:
    """Prompt ids (B, T) followed by up to `max_new_tokens` new ids: (B, T + n).

    Stops early once every row has produced `eos_id`; finished rows are padded with it.
    `allowed(ids (B, n)) -> bool (B, V)` restricts each step (always handed the whole sequence so
    far, never just the window); `keep` (at most half the context) pins the first `keep` ids at
    the front of every window; `stride` (None: half the context) is how far the window moves past
    the context (`_Window`); `logit_bias` (V,) is added to every step's logits after the mask;
    `repetition_ids` limits the sampler's repetition penalty to those ids. `engine`: "auto" (where
    `cpu_decode.usable` holds, the compiled decoder of `model.fused_decode` for small batches and
    the NumPy decoder of `model.cpu_decode` for large ones; else torch), "fused", "numpy" or
    "torch" (`GPT.decode_step`); `threads`: CPU threads while decoding (None: `decode_threads`' rule);
    `on_token(k)` is called after each step with the k new ids per row so far (a progress line).
    """
    stride = _check(gpt, idx, keep, stride)
    penalized = _penalized(repetition_ids, gpt.config.vocab_size, idx.device)
    was_training = gpt.training
    gpt.eval()
    try:
        steps = _steps(gpt, idx, engine)
        rule = decode_threads(idx.shape[0], numpy=isinstance(steps, CpuDecoder))
        with threads_for(rule if threads is None else threads, idx.device):
            return _loop(gpt, idx, max_new_tokens, sampler, eos_id, allowed, generator, int(keep), stride, steps,
                         penalized, logit_bias, on_token)
    finally:
        gpt.train(was_training)


def _loop(gpt, idx, max_new_tokens, sampler, eos_id, allowed, generator, keep, stride, steps, penalized, logit_bias,
          on_token):
    if isinstance(steps, CpuDecoder) and sampler.repetition_penalty is None:
        return _numpy_loop(gpt, idx, max_new_tokens, sampler, eos_id, allowed, generator, keep, stride, steps,
                           logit_bias, on_token)
    return _torch_loop(gpt, idx, max_new_tokens, sampler, eos_id, allowed, generator, keep, stride, steps, penalized,
                       logit_bias, on_token)


def _torch_loop(gpt, idx, max_new_tokens, sampler, eos_id, allowed, generator, keep, stride, steps, penalized,
                logit_bias, on_token):
    """The general loop: any sampler, any engine, any device; `next_token` a step."""
    B, n = idx.shape
    n0 = n
    out = torch.empty(B, n + max_new_tokens, dtype=torch.long, device=idx.device)
    out[:, :n] = idx
    finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
    window = _Window(gpt, out, keep, stride, steps)
    for _ in range(max_new_tokens):
        logits = window.logits(n)
        mask = None
        if allowed is not None:
            mask = torch.as_tensor(allowed(out[:, :n]), dtype=torch.bool, device=logits.device)
            if eos_id is not None:
                mask = mask | finished[:, None]  # finished rows are overwritten with EOS below
        tok = next_token(logits.float(), sampler.temperature, sampler.top_k, sampler.top_p, mask, generator,
                         min_p=sampler.min_p, recent=sampler.recent(out, n), penalty=sampler.repetition_penalty,
                         penalized=penalized, bias=logit_bias)  # (B,)
        if eos_id is not None:
            tok = torch.where(finished, torch.full_like(tok, eos_id), tok)
            finished |= tok == eos_id
        out[:, n] = tok
        n += 1
        if on_token is not None:
            on_token(n - n0)
        if eos_id is not None and bool(finished.all()):
            break
    return out[:, :n]


# ----------------------------------------------------------------------------- the NumPy loop


class _Races:
    """The exponential races `model.sampling.sample` draws a step, drawn `block` steps at a time.

    Torch's CPU generator draws an exponential tensor number after number, so (steps, B, V) drawn
    at once holds exactly the (B, V) draws of each step in turn (a draw of a (B, V) costs ~4-6 µs
    however small). `close()` leaves the generator where the per-step draws would have: a block
    used in part is drawn again from its starting state, only the part used.
    """

    def __init__(self, generator: torch.Generator | None, rows: int, vocab: int, steps: int, block: int = 64):
        self.gen = torch.default_generator if generator is None else generator
        self.shape, self.left, self.block = (rows, vocab), steps, block
        self.draws, self.used, self.state = None, 0, None

    def next(self):
        """The (B, V) float32 race of the next step, as a NumPy array."""
        if self.draws is None or self.used == len(self.draws):
            n = min(self.block, self.left)
            self.state = self.gen.get_state()
            self.draws = torch.empty(n, *self.shape).exponential_(generator=self.gen).numpy()
            self.used, self.left = 0, self.left - n
        self.used += 1
        return self.draws[self.used - 1]

    def close(self) -> None:
        if self.draws is not None and self.used < len(self.draws):
            self.gen.set_state(self.state)
            torch.empty(self.used, *self.shape).exponential_(generator=self.gen)


class _Pick:
    """`model.sampling.next_token` over NumPy logits for a sampler without a repetition penalty,
    with the same arithmetic in the same order, so the same ids: the mask as -inf, the bias added
    in float32 and the division by the temperature in float32 (what torch's `logits / t`
    computes) in NumPy; top-k, top-p and min-p by `model.sampling`'s own functions, the softmax by
    torch; then argmax(p / race) (an IEEE division and the first maximum, as torch's). A plain
    sampler calls torch once a step: after the step has streamed 12.6 MB of weights through the
    caches, each call costs ~3x what it costs warm."""

    def __init__(self, rows: int, vocab: int, sampler: Sampler, bias: Tensor | None, races: _Races | None):
        self.x, self.q = np.empty((rows, vocab), np.float32), np.empty((rows, vocab), np.float32)
        self.x_t = torch.from_numpy(self.x)
        self.s, self.t32, self.races = sampler, np.float32(sampler.temperature), races
        self.bias = None if bias is None else bias.detach().to(device="cpu", dtype=torch.float32).numpy()

    def __call__(self, logits: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        x, s = self.x, self.s
        np.copyto(x, logits, casting="same_kind")  # float64 logits rounded as Tensor.float() rounds them
        if mask is not None:
            np.copyto(x, -np.inf, where=~mask)
        if self.bias is not None:
            x += self.bias
        if s.temperature == 0.0:
            return x.argmax(axis=-1)
        if s.temperature != 1.0:
            np.divide(x, self.t32, out=x)
        scaled = self.x_t
        if s.top_k is not None:
            scaled = top_k_filter(scaled, s.top_k)
        if s.top_p is not None:
            scaled = top_p_filter(scaled, s.top_p)
        if s.min_p is not None:
            scaled = min_p_filter(scaled, s.min_p)
        probs = torch.softmax(scaled, dim=-1).numpy()
        np.divide(probs, self.races.next(), out=self.q)
        return self.q.argmax(axis=-1)


def _numpy_loop(gpt, idx, max_new_tokens, sampler, eos_id, allowed, generator, keep, stride, steps, logit_bias,
                on_token):
    """`_loop` over the CPU decoders for a sampler without a repetition penalty: the same ids and
    generator state, with the step's bookkeeping in NumPy (a torch call costs microseconds, and at
    batch 1 a step is ~300 µs)."""
    B, n = idx.shape
    n0, V = n, gpt.config.vocab_size
    out = torch.empty(B, n + max_new_tokens, dtype=torch.long)
    out[:, :n] = idx
    ids = out.numpy()
    if logit_bias is not None:  # the checks add_logit_bias makes, once
        check_logit_bias(logit_bias, (B, V))
    races = None if sampler.temperature == 0.0 else _Races(generator, B, V, max_new_tokens)
    pick = _Pick(B, V, sampler, logit_bias, races)
    finished = np.zeros(B, dtype=bool)
    window = _Window(gpt, out, keep, stride, steps)
    try:
        for _ in range(max_new_tokens):
            logits = window.logits(n).numpy()
            mask = None
            if allowed is not None:
                mask = np.asarray(torch.as_tensor(allowed(out[:, :n]), dtype=torch.bool).cpu())
                check_mask_shape(mask.shape, logits.shape)
                if eos_id is not None:
                    mask = mask | finished[:, None]
                check_some_allowed(mask.any(axis=-1))
            tok = pick(logits, mask)
            if eos_id is not None:
                tok[finished] = eos_id
                finished |= tok == eos_id
            ids[:, n] = tok
            n += 1
            if on_token is not None:
                on_token(n - n0)
            if eos_id is not None and finished.all():
                break
    finally:
        if races is not None:
            races.close()
    return out[:, :n]
