"""The Python API: `pianolm.load(path)` -> a `PianoLM` that owns tokenizer, model and device.

    import pianolm
    m = pianolm.load("outputs/dev/<run>")                 # a .ckpt, a run folder or an exported folder
    pieces = m.generate(n=2, bars=8, temperature=0.9, seed=0, tempo=100, meter="3/4", key="D minor")
    pieces[0].to_midi("piece.mid")                        # each piece is a remi.Score
    more = m.continue_midi("song.mid", prompt_bars=4, bars=12, seed=1)
    varied = m.infill("song.mid", bars=(9, 12), seed=0)  # bars 9-12 anew (a model trained to infill)
    m.bits_per_note("held_out_midi/")                     # whole pieces, windowed as validation is

Everything runs through the code sample.py runs (`pianolm.generate.sample_ids`: the grammar mask,
bar and length limits, `finish`), so the same seed and settings give the same ids either way;
sample.py itself is a thin command line over this class. Bad input raises
`pianolm.errors.InputError` (`PromptError` for prompts, `CheckpointError` for checkpoints), each
message naming the argument and what to do.

A runnable example (a tiny untrained model, so the music is random):

    >>> import torch, remi
    >>> from model import GPT, GPTConfig
    >>> tok = remi.Tokenizer.from_yaml("conf/tokenizer/coarse.yaml")
    >>> m = PianoLM(tok, GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)))
    >>> a, b = m.generate(n=2, bars=2, seed=0, tempo=90, meter="3/4", max_new_tokens=60)
    >>> [(t.numerator, t.denominator) for t in a.time_signatures], sorted({t.bpm for t in a.tempos})
    ([(3, 4)], [92.3])
    >>> m.ids(a) == m.ids(m.generate(n=2, bars=2, seed=0, tempo=90, meter="3/4", max_new_tokens=60)[0])
    True
    >>> m.generate(meter="5/8")
    Traceback (most recent call last):
    ...
    pianolm.errors.InputError: meter='5/8': the tokenizer has no TimeSig_5/8; choose one of ['3/8', '6/8', '12/8', '2/4', '3/4', '4/4', '5/4', '6/4']
"""
from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

import remi
from model import GPT
from model import threads as model_threads

from . import control as ctl
from . import infill
from .checkpoint import load_checkpoint
from .errors import CheckpointError, InputError, PromptError
from .generate import Sampling, encode_source, prompt_from, sample_ids
from .likelihood import bits_per_note as _bits_per_note
from .likelihood import midi_files

TOKENIZER_NAME = "tokenizer.json"        # our tokenizer JSON in an exported folder
RUN_CONFIG_NAME = "training_config.json"  # the run's config and step, in an exported folder


def pick_device(name: str | torch.device | None) -> str:
    """"auto" (or None): cuda when present, else cpu; anything else as given."""
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(name)


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file()


class PianoLM:
    """A trained model with its tokenizer, ready to generate, continue and score MIDI.

    Attributes: `tokenizer` (remi.Tokenizer), `model` (model.GPT, eval mode), `config` (dict:
    `format` "checkpoint" or "huggingface", `source`, `model` (GPTConfig as a dict),
    `tokenizer_hash`, `train_step` and `run`, the training run's resolved config when known),
    `device`, `block_size` (the context in tokens).
    Settings a caller may change: `batch_size` (rows generated at once, as sample.py's; the same
    seed and batch size give the same pieces), `key_penalty` (logits per out-of-key pitch, see
    `pianolm.control`). After each call `last` holds, per piece, its raw ids, why it stopped and
    the seed used (handy when seed=None).
    """

    batch_size: int = 8
    key_penalty: float = ctl.KEY_PENALTY

    def __init__(self, tokenizer: remi.Tokenizer, model: GPT, config: dict | None = None, device: str | None = None,
                 threads: int | None = None):
        if model.config.vocab_size != tokenizer.vocab_size:
            raise CheckpointError(f"model vocab_size {model.config.vocab_size} != tokenizer vocab_size "
                                  f"{tokenizer.vocab_size}: they do not belong together")
        self.tokenizer = tokenizer
        self.device = str(device or next(model.parameters()).device)
        self.model = model.to(self.device).eval()
        self.config: dict[str, Any] = {"format": "memory", "source": None, "model": model.config.to_dict(),
                                       "tokenizer_hash": tokenizer.hash, "train_step": None, "run": {},
                                       **(config or {})}
        self.last: list[dict] = []
        # CPU threads while decoding; None: model.threads' rule (one thread on the CPU decoder)
        self.threads = None if threads is None else check_threads(threads)
        self.on_token: Callable[[int], None] | None = None  # hears each step: new ids per row so far

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path, device: str | None = "cpu", threads: int | None = None) -> "PianoLM":
        """A `.ckpt` written by train.py, a run folder (its checkpoints/last.ckpt), or a folder
        written by `python -m pianolm export` (Hugging Face GPT-2 + tokenizer.json). `threads`:
        CPU threads while generating (None: `model.threads`' rule, one thread on the CPU)."""
        path = Path(path)
        device = pick_device(device)
        if threads is not None:
            check_threads(threads)
        if _is_hf_folder(path):
            lm = cls._load_exported(path, device)
        else:
            tok, gpt, extras = load_checkpoint(path, device)
            lm = cls(tok, gpt, {"format": "checkpoint", "source": str(path), "train_step": extras.get("global_step"),
                                "run": extras.get("cfg") or {}}, device)
        lm.threads = threads
        return lm

    @classmethod
    def _load_exported(cls, folder: Path, device: str) -> "PianoLM":
        from model.hf import load_hf

        tok_path = folder / TOKENIZER_NAME
        if not tok_path.is_file():
            raise CheckpointError(f"{folder} holds a Hugging Face model but no {TOKENIZER_NAME}; a folder written "
                                  "by `python -m pianolm export CKPT OUT_DIR` has one")
        try:
            tok = remi.Tokenizer.load(tok_path)
            gpt = load_hf(folder, map_location=device)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder}: {e}") from None
        run = {}
        if (folder / RUN_CONFIG_NAME).is_file():
            try:
                run = json.loads((folder / RUN_CONFIG_NAME).read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{folder / RUN_CONFIG_NAME} does not read as JSON ({e})") from None
        return cls(tok, gpt, {"format": "huggingface", "source": str(folder), "train_step": run.get("train_step"),
                              "run": run.get("cfg") or {}}, device)

    @property
    def block_size(self) -> int:
        return int(self.model.config.block_size)

    # --------------------------------------------------------------- generation

    def generate(self, n: int = 4, bars: int | None = 16, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None, repetition_penalty: float | None = None,
                 seed: int | None = None, grammar: bool = True, tempo: float | None = None, meter=None,
                 key: str | None = None, max_new_tokens: int | None = None) -> list[remi.Score]:
        """`n` pieces from scratch, each `bars` bars long (None: until EOS or `max_new_tokens`).

        temperature (0: greedy), top_k, top_p, min_p, repetition_penalty: `model.sampling`'s.
        grammar: mask what the REMI grammar forbids (every piece decodes with no skipped token).
        tempo (bpm, to the nearest tempo bin of the tokenizer), meter ("3/4"): fixed exactly, by a
        forced start and a ban on other Tempo/TimeSig tokens; key ("D minor", "F#", "Bbm"): a soft
        penalty on out-of-key pitches (with key tokens, every other `Key_*` token is masked too); see `pianolm.control`.
        max_new_tokens: the token budget (None: 128 per bar asked for, at least 256; 1024 without bars).
        seed: the same seed and settings give the same pieces (None: a fresh random seed, kept in `last`).
        """
        s = self._sampling(bars, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, grammar)
        control = ctl.fixed(self.tokenizer, tempo, meter, key, self.key_penalty)
        rows = self.sample_ids([self.tokenizer.bos_id], self._count(n), s, seed=seed, control=control)
        return [ctl.carried(self.score(ids), control) for ids, _ in rows]

    def continue_midi(self, prompt, prompt_bars: int | None = 4, bars: int | None = 12, temperature: float = 1.0,
                      top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                      repetition_penalty: float | None = None, seed: int | None = None, grammar: bool = True,
                      n: int = 1, keep_prompt: bool = False, max_new_tokens: int | None = None,
                      key: str | None = None) -> list[remi.Score]:
        """`n` continuations of the first `prompt_bars` bars (None: all) of `prompt` by `bars` bars.

        prompt: a MIDI file path, its bytes, a `mido.MidiFile` or a `remi.Score`. Each returned
        score holds the prompt's bars (as the tokenizer quantizes them) followed by the new ones;
        the continuation starts on a new bar. keep_prompt: past the context, keep the prompt's
        start (up to half the context) in every window. key: a key name as in `generate` (a soft
        penalty of `key_penalty` logits on out-of-key pitches), or "prompt" for the prompt's own
        key as Krumhansl-Schmuckler measures it (`pianolm.control.prompt_key`; no penalty when the prompt
        has no notes). Other arguments as in `generate`.
        """
        s = self._sampling(bars, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, grammar,
                           keep_prompt=bool(keep_prompt))
        p = prompt_from(self.tokenizer, prompt, prompt_bars, self.block_size)
        if isinstance(key, str) and key.strip().lower() == "prompt":
            key = ctl.prompt_key(self.tokenizer, p.ids)
        control = ctl.fixed(self.tokenizer, key=key, key_penalty=self.key_penalty)
        ids = p.ids if control is None else control.tell(self.tokenizer, p.ids)
        rows = self.sample_ids(ids, self._count(n), s, seed=seed, continue_bars=True, control=control)
        return [ctl.carried(self.score(ids), control) for ids, _ in rows]

    def infill(self, piece, bars, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               min_p: float | None = None, repetition_penalty: float | None = None,
               seed: int | None = None) -> remi.Score:
        """`piece` with bars `bars` = (first, last) regenerated between the bars around them.

        piece: a MIDI file path, its bytes, a `mido.MidiFile` or a `remi.Score`. Bars count from 1
        and both ends are included, as musicians number them (`(9, 12)` or `"9-12"`). Outside
        them every note is the input's as the tokenizer quantizes it (same onsets, pitches,
        durations, velocities); inside, the notes are new and the number of bars, their meters and
        (with key tokens) the key are kept; the new bars always follow the REMI grammar (a token
        out of place could put a note among the bars around them). The same seed gives the same piece. Needs a model
        trained with `data.infill_share > 0`; bars and context that cannot be done raise
        InputError saying why (`pianolm.infill`). Other arguments as in `generate`.
        """
        rows = self.infill_ids(piece, bars, 1, self._sampling(None, None, temperature, top_k, top_p, min_p,
                                                             repetition_penalty, True), seed=seed)
        return self.score(rows[0][0])

    def infill_ids(self, piece, bars, n: int, sampling: Sampling, seed: int | None = None,
                   generator: torch.Generator | None = None) -> list[tuple[list[int], str]]:
        """The raw layer under `infill` (and sample.py's `infill=`): `n` infilled versions of
        `piece` as (ids, why the middle stopped), drawn from one generator (`generator`, or one
        seeded with `seed`); `last` also holds each one's bars, as under `sample_ids`."""
        sampling.check()
        infill.check_infill_model(self.tokenizer, self.config.get("run"))
        what = f"infill piece {piece}" if isinstance(piece, (str, Path)) else "infill piece"
        ids = encode_source(self.tokenizer, piece, what)
        p = infill.plan(self.tokenizer, ids, bars, self.block_size)
        generator, seed = self._generator(generator, seed)
        rows: list[tuple[list[int], str]] = []
        bs = int(self.batch_size)
        for start in range(0, self._count(n), bs):
            rows += infill.infill_rows(self.model, self.tokenizer, p, min(bs, n - start), sampling.sampler(), generator,
                                       threads=self.threads, on_token=self.on_token)
        self.last = [{"ids": ids, "stopped_by": stop, "seed": seed, "bars": p.bars} for ids, stop in rows]
        return rows

    def _generator(self, generator: torch.Generator | None, seed: int | None) -> tuple[torch.Generator, int | None]:
        """`generator`, or a new one seeded with `seed` (None: a fresh random seed); and the seed."""
        if generator is not None:
            return generator, seed
        seed = random.SystemRandom().randrange(2**63) if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"seed={seed!r}: must be an integer (or None for a random one)")
        return torch.Generator(device=self.device).manual_seed(seed), seed

    def sample_ids(self, prompt_ids: Sequence[int], n: int, sampling: Sampling, seed: int | None = None,
                   generator: torch.Generator | None = None, continue_bars: bool = False,
                   control: ctl.Control | None = None, batch_size: int | None = None) -> list[tuple[list[int], str]]:
        """The raw layer under `generate`/`continue_midi` (and sample.py): `n` rows of ids
        continuing `prompt_ids`, each with why it stopped, in batches of `batch_size` drawn from one
        generator (`generator`, or one seeded with `seed`)."""
        sampling.check()
        generator, seed = self._generator(generator, seed)
        bs = int(batch_size or self.batch_size)
        allowed = None if control is None else control.allowed(self.tokenizer, len(prompt_ids))
        bias = None if control is None else control.bias_tensor()
        rows: list[tuple[list[int], str]] = []
        for start in range(0, n, bs):
            rows += sample_ids(self.model, self.tokenizer, prompt_ids, min(bs, n - start), sampling, generator,
                               continue_bars=continue_bars, allowed=allowed, logit_bias=bias, threads=self.threads,
                               on_token=self.on_token)
        self.last = [{"ids": ids, "stopped_by": stop, "seed": seed} for ids, stop in rows]
        return rows

    # --------------------------------------------------------------- likelihood

    def bits_per_note(self, midi_or_folder) -> float:
        """Bits per note of whole pieces: a MIDI path, a folder of them (searched at any depth),
        a MIDI file's bytes, a `mido.MidiFile` or a `remi.Score`, or a list of these. Each piece is
        cut into consecutive windows of the context, as validation is (`pianolm.likelihood`);
        files that do not read as MIDI are skipped with a warning (all unreadable: InputError)."""
        sources = list(midi_or_folder) if isinstance(midi_or_folder, (list, tuple)) else [midi_or_folder]
        seqs, skipped = [], []
        for src in sources:
            if isinstance(src, (str, Path)):
                path = Path(src)
                if path.is_dir():
                    files = midi_files(path)
                    if not files:
                        raise InputError(f"bits_per_note: folder {path} holds no .mid/.midi files")
                elif path.is_file():
                    files = [path]
                else:
                    raise InputError(f"bits_per_note: {path} does not exist; pass a MIDI file or a folder of them")
            else:
                files = [src]
            for f in files:
                what = str(f) if isinstance(f, Path) else type(f).__name__
                try:
                    ids = self.tokenizer.encode(f)
                except TypeError:
                    raise InputError(f"bits_per_note: {what} is not a MIDI path, bytes, mido.MidiFile or "
                                     "remi.Score") from None
                except Exception as e:  # remi.MidiReadError and whatever a broken file provokes
                    skipped.append(f"{what}: {(str(e).strip().splitlines() or [type(e).__name__])[0][:160]}")
                    continue
                if self.tokenizer.count_notes(ids) == 0:
                    skipped.append(f"{what}: no notes in the tokenizer's pitch range")
                    continue
                seqs.append(ids)
        if not seqs:
            raise InputError("bits_per_note: no piece with notes to measure; " + "; ".join(skipped[:3]))
        if skipped:
            warnings.warn(f"bits_per_note skipped {len(skipped)} file(s): " + "; ".join(skipped[:3]), stacklevel=2)
        return _bits_per_note(self.model, self.tokenizer, seqs)

    # ------------------------------------------------------------------ helpers

    def ids(self, score) -> list[int]:
        """A remi.Score (or a MIDI path, bytes, mido.MidiFile) -> ids: BOS, tokens, EOS."""
        try:
            return self.tokenizer.encode(score)
        except TypeError:
            raise InputError(f"ids: expected a remi.Score, a MIDI path, bytes or a mido.MidiFile, "
                             f"got {type(score).__name__}") from None
        except remi.MidiReadError as e:
            raise PromptError(f"ids: {e}") from None

    def score(self, ids: Sequence[int]) -> remi.Score:
        """Ids -> remi.Score (the decoder skips what the grammar forbids; specials are ignored)."""
        try:
            return self.tokenizer.decode_score([int(i) for i in ids])
        except ValueError as e:
            raise InputError(f"score: {e}") from None

    def __repr__(self) -> str:
        c = self.model.config
        return (f"PianoLM({self.config.get('source')!r}, {c.n_layer} layers x {c.n_embd}, context {c.block_size}, "
                f"vocab {c.vocab_size}, device {self.device!r})")

    # ----------------------------------------------------------------- internal

    @staticmethod
    def _count(n) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"n={n!r}: must be an integer >= 1 (pieces to generate)")
        return n

    @staticmethod
    def _sampling(bars, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, grammar,
                  keep_prompt: bool = False) -> Sampling:
        if max_new_tokens is None:
            max_new_tokens = 1024 if bars is None else max(256, 128 * int(bars)) if isinstance(bars, int) else 1024
        return Sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                        repetition_penalty=repetition_penalty, grammar=bool(grammar), max_new_tokens=max_new_tokens,
                        max_bars=bars, keep_prompt=keep_prompt).check()


def load(path: str | Path, device: str | None = "cpu", threads: int | None = None) -> PianoLM:
    """`PianoLM.load`: a .ckpt, a run folder (checkpoints/last.ckpt) or an exported folder."""
    return PianoLM.load(path, device, threads)


def check_threads(threads) -> int:
    """`threads` as given, or `model.threads.check_threads`' error as an InputError."""
    try:
        return model_threads.check_threads(threads)
    except ValueError as e:
        raise InputError(str(e)) from None
