"""Training callbacks that know token ids and tensors, never MIDI.

- `NaNGuard` stops the run at the first non-finite training loss, before any checkpoint of that
  step is written (Lightning runs checkpoint callbacks last), so `last.ckpt` stays the last good one.
- `LastCheckpoint` is Lightning's ModelCheckpoint that also writes `last.ckpt` when training
  ends between two periodic saves, so a finished run's last.ckpt is its final state.
- `Throughput` logs tokens/s and, where the accelerator's peak is known, model FLOPs utilisation.
- `ProgressLog` prints one plain line every N steps (step / max, loss, tokens/s, time left) when
  standard output is not a terminal, where Lightning's progress bar writes nothing readable.
- `SampleCallback` generates a few pieces every N steps (and at the end) and hands the ids to a
  `render(samples, out_dir) -> dict` callable supplied by the caller (train.py, which knows MIDI);
  whatever files it reports are logged to wandb as media, its scalars to every logger.
"""
from __future__ import annotations

import importlib.util
import math
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger

from model.flops import flops_per_token, peak_flops
from model.generate import Sampler, cut_at_eos, generate

Render = Callable[[list[list[int]], Path], dict]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def _loss_of(outputs: Any) -> torch.Tensor | None:
    if isinstance(outputs, dict):
        outputs = outputs.get("loss")
    return outputs if isinstance(outputs, torch.Tensor) else None


class NaNGuard(L.Callback):
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = _loss_of(outputs)
        if loss is None or bool(torch.isfinite(loss.detach()).all()):
            return
        ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
        raise NonFiniteLossError(
            f"training loss became {float(loss)} at step {trainer.global_step} (batch {batch_idx}); "
            f"the run is stopped. Last good checkpoint: {ckpt}. Try a lower optim.lr, a longer "
            f"optim.warmup_steps, or bf16 instead of fp16 precision.")


class LastCheckpoint(ModelCheckpoint):
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)


class WallClock(L.Callback):
    """A run's wall time across resumes: every checkpoint records `wall_time_s`, the seconds before
    this process (`before`, read from the checkpoint it resumed from) plus this process's since
    `start`. A run killed and resumed so reports the time of the steps that count (the steps redone
    after the kill are not in it); None for `before` marks a resume from a checkpoint that did not
    record it, and then no checkpoint of the run records one either."""

    def __init__(self, before: float | None = 0.0, start: float | None = None):
        self.before = before
        self.start = time.time() if start is None else float(start)

    def process_seconds(self) -> float:
        return time.time() - self.start

    def seconds(self) -> float | None:
        """The run's wall time so far, or None where a resumed-from checkpoint did not record it."""
        return None if self.before is None else float(self.before) + self.process_seconds()

    @classmethod
    def resuming(cls, resume: dict | None, start: float) -> "WallClock":
        """The clock of a run: from 0, or from the seconds the resumed-from checkpoint recorded."""
        before = 0.0 if resume is None else resume.get("wall_time_s")
        return cls(before=None if before is None else float(before), start=start)

    def figures(self, resumed_from_step: int | None) -> dict[str, Any]:
        """metrics.json's wall time: `wall_time_s` the run's across resumes where known (else this
        process's), `process_wall_time_s`, `resumed_from_step` (null: a fresh run) and
        `wall_time_covers_run` (false: resumed from a checkpoint that did not record its time)."""
        process = self.process_seconds()
        total = None if self.before is None else self.before + process
        return {"wall_time_s": round(process if total is None else total, 2), "process_wall_time_s": round(process, 2),
                "resumed_from_step": resumed_from_step, "wall_time_covers_run": total is not None}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["wall_time_s"] = self.seconds()


class Throughput(L.Callback):
    """tokens/s over the last `log_every` steps, all ranks together; MFU when the peak is known."""

    def __init__(self, log_every: int = 10):
        self.log_every = max(1, int(log_every))
        self._t0: float | None = None
        self._tokens = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        self._tokens += batch[0].numel() * trainer.world_size
        if self._t0 is None:            # the first batch includes start-up: start timing after it
            self._t0, self._tokens = now, 0
            return
        if trainer.global_step % self.log_every or now <= self._t0:
            return
        tps = self._tokens / (now - self._t0)
        metrics = {"perf/tokens_per_s": tps}
        gpt = getattr(pl_module, "gpt", None)
        peak = peak_flops(pl_module.device)
        if gpt is not None and peak:
            metrics["perf/mfu"] = tps * flops_per_token(gpt.config) / (peak * trainer.world_size)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
        self._t0, self._tokens = now, 0


def clock(seconds: float) -> str:
    """12s, 4m05s, 1h02m: a duration as a person reads it."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class RecentSpan:
    """How far counters moved over about the last `window_s` seconds: points (time, values...)
    are added as work goes on, and the oldest kept is the newest one at least `window_s` old (the
    first, until there is one), so a pause or a busy spell leaves the estimate once it lies that
    far behind, where an average since the start carries it to the end."""

    def __init__(self, window_s: float = 600.0):
        self.window_s = float(window_s)
        self.points: deque[tuple[float, tuple[float, ...]]] = deque()

    def add(self, t: float, *values: float) -> None:
        self.points.append((t, values))
        while len(self.points) > 2 and t - self.points[1][0] >= self.window_s:
            self.points.popleft()

    def span(self) -> tuple[float, tuple[float, ...]]:
        """(seconds, each value's increase) from the oldest point kept to the newest."""
        (t0, v0), (t1, v1) = self.points[0], self.points[-1]
        return t1 - t0, tuple(b - a for a, b in zip(v0, v1))


class ProgressLog(L.Callback):
    """`[train] step 250/2500  loss 3.214  12,104 tokens/s  left 25m10s` every `every` steps.

    Printed by rank 0 when standard output is not a terminal (`make train-real > log`, a job
    scheduler, experiments/ablate.py, which reads these lines), or always with `always=True`.
    Tokens/s and time left are measured over this process's steps of about the last `window_s`
    seconds (`RecentSpan`), so a resumed run's estimate does not count the steps it did not run,
    and a pause (a stopped process, a busy machine) leaves it ten minutes later.
    """

    def __init__(self, every: int = 25, always: bool = False, stream: Any = None, window_s: float = 600.0):
        self.every, self.always, self.stream = max(1, int(every)), bool(always), stream
        self._recent = RecentSpan(window_s)   # (time, global step, tokens) from after the first step
        self._tokens = 0
        self._printed = -1               # with gradient accumulation a step ends several batches

    def _out(self) -> Any:
        import sys

        return self.stream if self.stream is not None else sys.stdout

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        out = self._out()
        if not self.always and getattr(out, "isatty", lambda: False)():
            return
        now, step = time.perf_counter(), trainer.global_step
        if not self._recent.points:      # the first step includes start-up: measure after it
            self._recent.add(now, step, 0)
            return
        self._tokens += batch[0].numel() * trainer.world_size
        if (step % self.every and step != trainer.max_steps) or step == self._printed:
            return
        self._printed = step
        self._recent.add(now, step, self._tokens)
        elapsed, (done, tokens) = self._recent.span()
        line = f"[train] step {step}/{trainer.max_steps}"
        loss = _loss_of(outputs)
        if loss is not None:
            line += f"  loss {float(loss.detach()):.4f}"
        if done > 0 and elapsed > 0:
            line += f"  {tokens / elapsed:,.0f} tokens/s"
            if trainer.max_steps and trainer.max_steps > 0:
                line += f"  left {clock((trainer.max_steps - step) * elapsed / done)}"
        print(line, file=out, flush=True)


class SampleCallback(L.Callback):
    """Every `every_n_steps` steps and at the end of training, rank 0 samples `n_samples` pieces.

    Generation starts from `bos_id`, stops at `eos_id` or after `max_new_tokens`; past the
    context it moves the window on by `stride` tokens as `GPT.generate` does (None: its default),
    so a long sample costs what it costs in sample.py. `render` gets
    the id lists (BOS included) and `out_dir/step_XXXXXX`, and returns a dict that may hold
    lists of paths under "midi", "images", "audio" and float scalars (e.g. "grammar_error_rate").
    """

    def __init__(self, every_n_steps: int, n_samples: int = 2, max_new_tokens: int = 256,
                 temperature: float = 1.0, top_k: int | None = None, out_dir: str | Path = "samples",
                 render: Render | None = None, bos_id: int = 0, eos_id: int | None = None,
                 seed: int = 0, stride: int | None = None):
        self.every_n_steps, self.n_samples = int(every_n_steps), int(n_samples)
        self.max_new_tokens, self.temperature, self.top_k = int(max_new_tokens), temperature, top_k
        self.out_dir, self.render = Path(out_dir), render
        self.bos_id, self.eos_id, self.seed, self.stride = bos_id, eos_id, seed, stride
        self.last_step = -1
        self.results: list[dict] = []       # what render returned, per sampling (rank 0)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step % self.every_n_steps == 0 and step != self.last_step:
            self.sample(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self.last_step:
            self.sample(trainer, pl_module)

    @torch.no_grad()
    def generate(self, gpt: torch.nn.Module, device: torch.device, step: int) -> list[list[int]]:
        g = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + step)
        idx = torch.full((self.n_samples, 1), self.bos_id, dtype=torch.long, device=device)
        out = generate(gpt, idx, self.max_new_tokens, Sampler(self.temperature, self.top_k),
                       eos_id=self.eos_id, generator=g, stride=self.stride)
        return cut_at_eos(out.tolist(), 1, self.eos_id)   # without the EOS padding of rows that finished early

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = self.last_step = trainer.global_step
        if not trainer.is_global_zero or self.n_samples <= 0:
            return
        samples = self.generate(pl_module.gpt, pl_module.device, step)
        result: dict[str, Any] = {"step": step, "ids": samples}
        if self.render is not None:
            result.update(self.render(samples, self.out_dir / f"step_{step:06d}"))
        self.results.append(result)
        scalars = {f"samples/{k}": float(v) for k, v in result.items()
                   if isinstance(v, (int, float)) and k != "step" and math.isfinite(float(v))}
        scalars["samples/tokens_mean"] = sum(map(len, samples)) / len(samples)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
            if isinstance(logger, WandbLogger):
                self._log_media(logger, result, step)

    def _log_media(self, logger: WandbLogger, result: dict, step: int) -> None:
        import wandb

        run = logger.experiment
        media: dict[str, Any] = {}
        if result.get("images"):
            media["samples/pianoroll"] = [wandb.Image(str(p), caption=Path(p).stem) for p in result["images"]]
        files = list(result.get("midi", []))  # MIDI has no wandb media type: keep the files with the run
        if result.get("audio"):
            if importlib.util.find_spec("soundfile") is not None:   # wandb.Audio reads WAVs with it
                media["samples/audio"] = [wandb.Audio(str(p), caption=Path(p).stem) for p in result["audio"]]
            else:
                files += result["audio"]
        if media:
            run.log(media, step=step)
        for p in files:
            run.save(str(p), base_path=str(self.out_dir.parent), policy="now")
