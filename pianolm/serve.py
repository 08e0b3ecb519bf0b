"""`python -m pianolm serve CKPT`: a local web page to generate piano pieces and listen to them.

One model, loaded once. Generation runs on one worker thread (requests queue behind each other),
so the server keeps answering while a piece is made; the page (`pianolm/web/`) polls its job,
shows the piece (its piano roll, drawn from roll.json, and the MIDI link) as soon as it is
decoded, and attaches the audio when the worker has rendered it after publishing the piece.
starlette and uvicorn (the `serve` extra) are imported only when the app is built, so
`import pianolm` works without them.

The HTTP interface, JSON except the page and the media:

    GET  /                          the page
    GET  /api/info                  checkpoint, limits, slider defaults, whether audio renders
    POST /api/generate?temperature=1&top_p=0.95&bars=8[&seed=3][&prompt_bars=4&name=song.mid]
         body: a prompt MIDI file, or nothing      -> 202 {"job": id}
         bad parameters or a bad upload            -> 400 {"error": "..."}
         a body slower than Limits.body_timeout    -> 408 {"error": "..."}
         the queue already holds max_waiting jobs  -> 429 {"error": "..."}
    GET  /api/jobs/{id}             {"state": "queued"|"running"|"done"|"error", "tokens", ...}
                                    done: "result" with "midi", "roll", and "audio" and "png" (null
                                    while "pending" names them: they are made after the piece is out)
    GET  /api/jobs/{id}/{file}      piece.mid, roll.json, piece.flac (or .wav) and piece.png
    anything else                               -> 404 (405) {"error": "..."}

Every refusal the app makes is a 4xx whose JSON names what was wrong; the event loop only parses,
queues and answers: reading a prompt file, queueing (which deletes old jobs' folders) and generating
all run in threads, so GET /api/info answers while pieces are made (tests/test_serve_load.py).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
import unicodedata
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import remi
from remi.bars import bar_span_ticks, count_bars
from remi.media.audio import INSTALL_HINT, Renderer, find_renderer, render_audio
from remi.media.pianoroll import save_pianoroll
from remi.score import END, PITCH, START, VELOCITY, bar_starts

from .errors import InputError, PromptError
from .generate import encode_source, prompt_from, safe_name
from .infill import check_infill_model, plan

EXTRA_HINT = "the web page needs the `serve` extra: pip install 'pianolm[serve]' (starlette and uvicorn)"
MEDIA_TYPES = {".mid": "audio/midi", ".json": "application/json", ".png": "image/png", ".flac": "audio/flac",
               ".wav": "audio/wav"}
INLINE = (".json", ".png")  # shown by the browser; the rest are downloads named pianolm-<job>


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; the page's sliders use the same bounds (GET /api/info)."""

    max_upload_bytes: int = 2_000_000  # a piano MIDI file is rarely above 200 kB
    max_bars: int = 64
    max_prompt_bars: int = 16
    max_temperature: float = 2.0
    max_new_tokens: int | None = None  # None: the model's own default for the bars asked for
    jobs_kept: int = 16  # finished jobs whose files stay on disk (oldest dropped first)
    max_waiting: int = 8  # queued jobs beyond the running one; more are refused (HTTP 429)
    body_timeout: float = 30.0  # seconds a request body may take to arrive in full (HTTP 408 after)

    def __post_init__(self):
        if not (isinstance(self.max_waiting, int) and self.max_waiting >= 1):  # 0 would refuse every job
            raise InputError(f"max_waiting={self.max_waiting!r}: it must be an integer >= 1 (--max-waiting)")
        if not (math.isfinite(self.body_timeout) and self.body_timeout > 0):
            raise InputError(f"body_timeout={self.body_timeout!r}: it must be a number of seconds > 0 (--body-timeout)")
        if self.max_upload_bytes < 1:
            raise InputError(f"max_upload_bytes={self.max_upload_bytes!r}: it must be >= 1 (--max-upload-mb)")


class Busy(InputError):
    """The queue is full: the page says so and the user tries again (HTTP 429)."""


class BodyRefused(PromptError):
    """A request body refused before it was read to its end (too large, cut off): the answer
    closes the connection, so the rest of the body is never read (HTTP 400)."""


class SlowBody(BodyRefused):
    """A request body that did not arrive within `Limits.body_timeout` seconds (HTTP 408)."""


def http_status(e: InputError) -> int:
    """The status code of a refusal."""
    return 429 if isinstance(e, Busy) else 408 if isinstance(e, SlowBody) else 400


JOB_ID = re.compile(r"[0-9a-f]{12}")  # uuid4().hex[:12], as Studio.submit makes them
MAX_NAME_CHARS = 255  # the longest file name common file systems allow
DEFAULTS = {"temperature": 1.0, "top_p": 0.95, "bars": 8, "prompt_bars": 4}


def shown(text: str, most: int = 40) -> str:
    """A client's text as an error message quotes it: repr (control characters escaped), cut short."""
    return repr(text if len(text) <= most else text[:most] + "...")


def _number(query: Mapping[str, str], key: str, kind: type, lo: float, hi: float, default: Any) -> Any:
    text = query.get(key, "")
    if text in ("", "null", "none"):
        return default
    try:
        value = kind(text)
    except ValueError:  # int() also refuses digit strings past 4,300 characters with a ValueError
        raise InputError(f"{key}={shown(text)} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise InputError(f"{key}={shown(text)} is not a finite number: it must lie in [{lo:g}, {hi:g}]")
    if not (lo <= value <= hi):
        raise InputError(f"{key}={shown(text)} is out of range: it must lie in [{lo:g}, {hi:g}]")
    return value


def _prompt_name(text: str) -> str:
    """The upload's file name, for messages only: never a path (a browser sends the bare name).
    Path separators, control characters and overlong names are refused."""
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise InputError(f"name={shown(text)} holds a control character: send the prompt file's own name")
    if "/" in text or "\\" in text:
        raise InputError(f"name={shown(text)} holds a path separator: send the prompt file's own name, "
                         "without folders")
    if len(text) > MAX_NAME_CHARS:
        raise InputError(f"name is {len(text):,} characters long, more than the {MAX_NAME_CHARS} a file name "
                         "may have: send the prompt file's own name")
    return safe_name(text)


def parse_params(query: Mapping[str, str], limits: Limits = Limits()) -> dict:
    """The query string of POST /api/generate as checked settings; InputError names the bad key."""
    unknown = sorted(set(query) - {"temperature", "top_p", "bars", "seed", "prompt_bars", "name", "infill"})
    if unknown:
        raise InputError(f"unknown parameter {unknown[0]!r}: use temperature, top_p, bars, seed, prompt_bars, name, "
                         "infill")
    top_p = _number(query, "top_p", float, 0.0, 1.0, DEFAULTS["top_p"])
    if top_p == 0:
        raise InputError("top_p=0 keeps no token: it must lie in (0, 1] (1 turns nucleus sampling off)")
    return {"temperature": _number(query, "temperature", float, 0.0, limits.max_temperature, DEFAULTS["temperature"]),
            "top_p": None if top_p >= 1 else top_p,
            "bars": _number(query, "bars", int, 1, limits.max_bars, DEFAULTS["bars"]),
            "seed": _number(query, "seed", int, 0, 2**63 - 1, None),
            "prompt_bars": _number(query, "prompt_bars", int, 1, limits.max_prompt_bars, DEFAULTS["prompt_bars"]),
            "name": _prompt_name(query.get("name") or "prompt.mid"),
            "infill": _bar_range(query.get("infill", ""))}


def _bar_range(text: str) -> tuple[int, int] | None:
    """`infill=9-12`: the bars of the uploaded piece to regenerate (from 1, both included), or None."""
    if text in ("", "null", "none"):
        return None
    if len(text) > 24 or not re.fullmatch(r"\d+-\d+", text):
        raise InputError(f"infill={shown(text)}: give the first and last bar to regenerate as FIRST-LAST, e.g. 9-12")
    a, b = (int(x) for x in text.split("-"))
    if a > b:
        raise InputError(f"infill={shown(text)} is empty: the first bar comes after the last; e.g. {b}-{a}")
    return a, b


# ---------------------------------------------------------------- the model, through the Python API


def load_model(path: str | Path, threads: int | None = None):
    """The checkpoint through the Python API: a `pianolm.PianoLM` (.tokenizer, .model, .block_size,
    .generate(...) and .continue_midi(...), each returning a list of `remi.Score`); `threads`: CPU
    threads while generating (None: `model.threads`' rule)."""
    from .api import load

    return load(path, threads=threads)


def generate_one(m, params: dict, prompt: bytes | None, max_new_tokens: int | None) -> remi.Score:
    """One piece with the page's settings: from scratch, or continuing the prompt file."""
    if params.get("infill") is not None:
        return m.infill(prompt, bars=params["infill"], temperature=params["temperature"], top_p=params["top_p"],
                        seed=params["seed"])
    kwargs = dict(n=1, bars=params["bars"], temperature=params["temperature"], top_p=params["top_p"],
                  seed=params["seed"], max_new_tokens=max_new_tokens)
    if prompt is None:
        return m.generate(**kwargs)[0]
    return m.continue_midi(prompt, prompt_bars=params["prompt_bars"], **kwargs)[0]


class TokenCounter:
    """Counts the tokens a generation has produced so far, for the page's progress line: the
    decoding loop tells `PianoLM.on_token` after every step (whichever engine decodes)."""

    def __init__(self, lm):
        self.count, self._lm = 0, lm
        lm.on_token = self._heard

    def _heard(self, new_tokens: int) -> None:
        self.count = new_tokens

    def reset(self) -> None:
        self.count = 0

    def close(self) -> None:
        self._lm.on_token = None


# ---------------------------------------------------------------- jobs


@dataclass
class Job:
    id: str
    params: dict
    folder: Path
    prompt: bytes | None = None  # the uploaded MIDI file
    prompt_end_tick: int | None = None
    span: tuple[int, int] | None = None  # the ticks of the bars regenerated inside the prompt (infill)
    state: str = "queued"  # queued -> running -> done | error
    error: str | None = None
    started: float | None = None
    finished: float | None = None  # when the piece was published (done) or the job failed
    result: dict = field(default_factory=dict)  # replaced whole under Studio._lock, never changed in place

    @property
    def pending(self) -> bool:
        """Done, and its audio or PNG still being made: its folder must stay."""
        return bool(self.result.get("pending"))

    def to_dict(self, tokens: int | None) -> dict:
        now = time.monotonic()
        d = {"job": self.id, "state": self.state, "error": self.error, "bars": self.params["bars"],
             "infill": list(self.params["infill"]) if self.params.get("infill") else None,
             "seconds": round(((self.finished or now) - self.started), 1) if self.started else 0.0}
        if self.state == "running":
            d["tokens"] = tokens or 0
        if self.state == "done":
            d["result"] = self.result
        return d


class Studio:
    """The loaded model, the audio renderer, the worker thread and the jobs: everything the
    routes use, and nothing about HTTP (the tests drive it directly too)."""

    def __init__(self, model, renderer: Renderer | None, limits: Limits = Limits(),
                 audio_format: str = ".flac", workdir: Path | None = None, checkpoint: str = ""):
        self.model, self.renderer, self.limits = model, renderer, limits
        self.audio_format, self.checkpoint = audio_format, checkpoint
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="pianolm-serve-")
        self.workdir = Path(workdir or self._tmp.name)
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._running: Job | None = None
        self._counter = TokenCounter(model)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pianolm-generate")

    def _run_config(self) -> dict:
        """The training run's config, as the loaded model knows it ({} when it does not)."""
        return (getattr(self.model, "config", None) or {}).get("run") or {}

    def can_infill(self) -> bool:
        """Whether the model was trained to regenerate bars inside a piece."""
        try:
            check_infill_model(self.model.tokenizer, self._run_config())
        except InputError:
            return False
        return True

    def info(self) -> dict:
        return {"checkpoint": self.checkpoint, "block_size": int(self.model.block_size), "infill": self.can_infill(),
                "vocab_size": int(self.model.tokenizer.vocab_size),
                "audio": self.renderer is not None, "audio_engine": self.renderer.engine if self.renderer else None,
                "audio_note": None if self.renderer else INSTALL_HINT,
                "defaults": DEFAULTS, "limits": {"max_upload_bytes": self.limits.max_upload_bytes,
                                                 "max_bars": self.limits.max_bars,
                                                 "max_prompt_bars": self.limits.max_prompt_bars,
                                                 "max_temperature": self.limits.max_temperature,
                                                 "max_waiting": self.limits.max_waiting,
                                                 "body_timeout": self.limits.body_timeout},
                "queue": self.queue()}

    def queue(self) -> dict:
        """How many jobs wait, and whether the worker is busy: generating, or making the media of
        the piece it has just published (the load test reads it through /api/info)."""
        with self._lock:
            return {"waiting": self._waiting(), "running": self._running is not None}

    def _waiting(self) -> int:  # under self._lock
        return sum(j.state == "queued" for j in self.jobs.values())

    def _check_room(self) -> None:  # under self._lock
        waiting = self._waiting()
        if waiting >= self.limits.max_waiting:
            raise Busy(f"{waiting} pieces are already waiting to be generated; try again when one is done")

    def check_prompt(self, data: bytes, name: str, prompt_bars: int) -> int | None:
        """Check an uploaded prompt as the API checks prompts (parses as MIDI, has notes, its bars
        fit the context), before anything is queued; returns the tick where its bars end.
        PromptError names the upload."""
        what = f"the uploaded prompt {name}"
        if not data:
            raise PromptError(f"{what} is empty (0 bytes); choose a .mid file")
        if len(data) > self.limits.max_upload_bytes:
            raise PromptError(f"{what} is {len(data):,} bytes, more than the {self.limits.max_upload_bytes:,} "
                              "this server accepts")
        if data[:4] != b"MThd":
            raise PromptError(f"{what} is not a MIDI file (it does not start with 'MThd'); choose a .mid file")
        declared, held = _track_counts(data)
        if held < declared:
            raise PromptError(f"{what} is damaged: its header declares {declared:,} tracks but it holds {held:,}; "
                              "re-save it from a MIDI editor")
        return prompt_from(self.model.tokenizer, data, prompt_bars, int(self.model.block_size), what=what).end_tick

    def check_infill(self, data: bytes, name: str, bars: tuple[int, int]) -> tuple[int, int]:
        """Check an infilling request before it is queued (the model can infill, the bars lie in
        the uploaded piece and fit the context, as `pianolm.infill.plan` decides); returns the
        ticks of the bars regenerated."""
        tok = self.model.tokenizer
        check_infill_model(tok, self._run_config())
        if not data:
            raise PromptError(f"regenerating bars {bars[0]}-{bars[1]} needs a piece: upload a .mid file")
        ids = encode_source(tok, data, f"the uploaded piece {name}")
        if tok.count_notes(ids) == 0:
            raise PromptError(f"the uploaded piece {name} has no notes to keep around new bars")
        plan(tok, ids, bars, int(self.model.block_size))
        return bar_span_ticks(tok, ids, *bars)

    def submit(self, params: dict, prompt: bytes | None = None) -> Job:
        """Queue one generation; a full queue raises Busy, a bad prompt PromptError, before
        anything is queued. Reads the prompt and deletes old jobs' folders: call it from a thread,
        never from the event loop."""
        with self._lock:
            self._check_room()  # before reading the prompt: a full queue costs no parsing
        end_tick = span = None
        if params.get("infill") is not None:
            span = self.check_infill(prompt or b"", params["name"], params["infill"])
        elif prompt is not None:
            end_tick = self.check_prompt(prompt, params["name"], params["prompt_bars"])
        job_id = uuid.uuid4().hex[:12]
        folder = self.workdir / job_id
        job = Job(job_id, params, folder, prompt=prompt, prompt_end_tick=end_tick, span=span)
        with self._lock:
            self._check_room()  # again: other requests may have filled the queue meanwhile
            folder.mkdir(parents=True)
            self.jobs[job_id] = job
            old = self._forget_old()
        self._pool.submit(self._run, job)
        for path in old:  # outside the lock, which the status route waits for
            shutil.rmtree(path, ignore_errors=True)
        return job

    def status(self, job_id: str) -> dict | None:
        with self._lock:
            job = self.jobs.get(job_id)
            return None if job is None else job.to_dict(self._counter.count if job is self._running else None)

    def file(self, job_id: str, name: str) -> Path | None:
        """A finished job's media file, or None (unknown job, unknown or missing file)."""
        with self._lock:
            job = self.jobs.get(job_id)
        if job is None or job.state != "done" or name not in job.result.get("files", ()):
            return None
        path = job.folder / name
        return path if path.is_file() else None

    def _forget_old(self) -> list[Path]:
        """Drop the oldest finished jobs beyond `jobs_kept` (under self._lock); returns their folders.
        A job whose media are still being made is not finished: its folder is being written."""
        done = [j for j in self.jobs.values() if j.state == "error" or (j.state == "done" and not j.pending)]
        dropped = done[: max(0, len(done) - self.limits.jobs_kept)]
        for job in dropped:
            del self.jobs[job.id]
        return [job.folder for job in dropped]

    def _run(self, job: Job) -> None:
        """One job on the worker: generate, publish the piece (done), then render its audio and
        PNG, still on this worker, so the next piece waits for them as it always has."""
        with self._lock:
            self._running, job.state, job.started = job, "running", time.monotonic()
            self._counter.reset()
        try:
            score = generate_one(self.model, job.params, job.prompt, self.limits.max_new_tokens)
            self._publish(job, score)
        except InputError as e:
            self._fail(job, str(e))
        except Exception as e:  # the page shows one line; the server's console keeps the trace
            traceback.print_exc()
            self._fail(job, f"generation failed: {type(e).__name__}: {e}")
        else:
            self._render_media(job, score)
        finally:
            with self._lock:
                self._running = None
                job.prompt = None  # up to max_upload_bytes a job: kept jobs need not hold it

    def _fail(self, job: Job, error: str) -> None:
        with self._lock:
            job.error, job.state, job.finished = error, "error", time.monotonic()

    def _publish(self, job: Job, score: remi.Score) -> None:
        """piece.mid and roll.json written, the job done: the page draws the piece now. The audio
        and the PNG are null, named in `pending`, until `_render_media` has written them."""
        score.to_midi(job.folder / "piece.mid")
        (job.folder / "roll.json").write_text(json.dumps(roll_data(score, job.prompt_end_tick, job.span),
                                                         separators=(",", ":")))
        url = f"/api/jobs/{job.id}/"
        ids = self.model.tokenizer.encode_score(score)
        result = {"files": ["piece.mid", "roll.json"], "midi": url + "piece.mid", "roll": url + "roll.json",
                  "audio": None, "audio_note": None if self.renderer else INSTALL_HINT, "png": None, "png_note": None,
                  "pending": (["audio"] if self.renderer else []) + ["png"],
                  "notes": len(score), "bars": count_bars(self.model.tokenizer, ids),
                  "seconds": round(score.seconds(), 2), "tokens": self._counter.count,
                  "seed": _seed_used(self.model)}
        with self._lock:
            job.result, job.state, job.finished = result, "done", time.monotonic()

    def _render_media(self, job: Job, score: remi.Score) -> None:
        """The audio (what the listener waits for), then the PNG (a download: the page draws its own
        roll), each put on the job as soon as its file is written; a failure is the job's
        audio_note or png_note, and the piece stays done."""
        if self.renderer is not None:
            self._attach(job, "audio", "audio could not be rendered", lambda: render_audio(
                job.folder / "piece.mid", job.folder / f"piece{self.audio_format}", self.renderer,
                seconds=score.seconds()))
        p = job.params
        title = (f"T={p['temperature']:g}" + (f", top-p={p['top_p']:g}" if p["top_p"] else "")
                 + (f", continuing {p['prompt_bars']} bars of {p['name']}" if job.prompt_end_tick is not None else "")
                 + (f", bars {p['infill'][0]}-{p['infill'][1]} of {p['name']} anew" if job.span else ""))
        self._attach(job, "png", "the piano roll could not be drawn", lambda: save_pianoroll(
            score, job.folder / "piece.png", title=title, prompt_end_tick=job.prompt_end_tick, span=job.span))

    def _attach(self, job: Job, key: str, failed: str, make) -> None:
        """Run `make` (it writes one file and returns its path); the job's `key` becomes the file's
        URL, or `{key}_note` says why there is none; either way `key` leaves `pending`."""
        try:
            name = Path(make()).name
            change = {key: f"/api/jobs/{job.id}/{name}", "files": job.result["files"] + [name]}
        except (RuntimeError, OSError, ValueError) as e:
            change = {f"{key}_note": f"{failed}: {e}"}
        except Exception as e:  # the piece is out already: report it on the job, keep the trace
            traceback.print_exc()
            change = {f"{key}_note": f"{failed}: {type(e).__name__}: {e}"}
        with self._lock:
            pending = [k for k in job.result["pending"] if k != key]
            job.result = {**job.result, **change, "pending": pending}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._counter.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def roll_data(score: remi.Score, prompt_end_tick: int | None, span: tuple[int, int] | None = None) -> dict:
    """What the page draws its piano roll from (roll.json), in ticks: the notes as [start, end,
    pitch, velocity], the bar lines, where the prompt ends, the bars regenerated inside the piece
    (`span`, [start, end] or null) and where the roll ends."""
    end_tick = max(score.end_tick, prompt_end_tick or 0, score.ticks_per_beat)
    return {"ticks_per_beat": int(score.ticks_per_beat), "end_tick": int(end_tick),
            "bars": bar_starts(score, end_tick)[:-1].tolist(),  # the last start lies past end_tick
            "prompt_end_tick": prompt_end_tick, "span": None if span is None else [int(span[0]), int(span[1])],
            "notes": score.notes[:, [START, END, PITCH, VELOCITY]].tolist()}


def _track_counts(data: bytes) -> tuple[int, int]:
    """(tracks the header declares, MTrk chunks the file holds), walking the chunk lengths only.
    A well-formed header is assumed; the reader reports any other damage."""
    declared = int.from_bytes(data[10:12], "big")
    pos, held = 8 + int.from_bytes(data[4:8], "big"), 0
    while pos + 8 <= len(data) and held < declared:
        size = int.from_bytes(data[pos + 4:pos + 8], "big")
        held += data[pos:pos + 4] == b"MTrk" and pos + 8 + size <= len(data)
        pos += 8 + size
    return declared, held


def _seed_used(m) -> str | None:
    """The seed the API drew (or was given) for the last piece, as text: seeds reach 2**63,
    past the integers a JavaScript number holds exactly."""
    seed = (getattr(m, "last", None) or [{}])[0].get("seed")
    return None if seed is None else str(seed)


# ---------------------------------------------------------------- HTTP


async def read_body(request, name: str, limits: Limits) -> bytes:
    """The request body, refused from its declared length when that is over the limit, as soon
    as it passes the limit otherwise (never read whole), and when it takes longer than
    `body_timeout` seconds to arrive."""
    import anyio
    from starlette.requests import ClientDisconnect

    what, limit = f"the uploaded prompt {name}", limits.max_upload_bytes
    too_big = (f"more than {limit:,} bytes, the most this server accepts "
               "(start it with a larger --max-upload-mb)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:  # uvicorn has refused non-numeric lengths
        raise BodyRefused(f"{what} is {int(declared):,} bytes, {too_big}")
    chunks, size = [], 0
    try:
        with anyio.fail_after(limits.body_timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyRefused(f"{what} is {too_big}")
                chunks.append(chunk)
    except TimeoutError:
        raise SlowBody(f"{what} did not arrive within {limits.body_timeout:g} s ({size:,} bytes came); "
                       "send it at once, or start the server with a larger --body-timeout") from None
    except ClientDisconnect:
        raise BodyRefused(f"{what} was cut off: the connection closed after {size:,} bytes") from None
    return b"".join(chunks)


async def http_error(request, exc):
    """Unknown paths (404) and methods (405) answer in JSON like the routes' own refusals."""
    from starlette.responses import JSONResponse

    what = f"{request.method} {shown(request.url.path, 80)}"
    error = (f"{what} is not allowed here: POST /api/generate, GET the rest" if exc.status_code == 405 else
             f"nothing at {what}: the page is GET /; the API is GET /api/info, POST /api/generate, "
             "GET /api/jobs/{job} and GET /api/jobs/{job}/{file}" if exc.status_code == 404 else str(exc.detail))
    return JSONResponse({"error": error}, status_code=exc.status_code, headers=exc.headers)


def refuse(e: InputError):
    """The JSON refusal of a request; a body refused before its end also closes the connection,
    so the rest is never read."""
    from starlette.responses import JSONResponse

    headers = {"connection": "close"} if isinstance(e, BodyRefused) else None
    return JSONResponse({"error": str(e)}, status_code=http_status(e), headers=headers)


def no_job(job: str, limits: Limits):
    from starlette.responses import JSONResponse

    why = ("a job id is the 12 hex digits POST /api/generate answered" if not JOB_ID.fullmatch(job)
           else f"finished jobs are kept {limits.jobs_kept} at a time")
    return JSONResponse({"error": f"no job {shown(job)} ({why})"}, status_code=404)


def build_app(studio: Studio):
    """The starlette app over a `Studio`: the page, its static files and the JSON routes."""
    try:
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException
        from starlette.responses import FileResponse, JSONResponse, Response
        from starlette.routing import Mount, Route
        from starlette.staticfiles import StaticFiles
    except ImportError:
        raise InputError(EXTRA_HINT) from None

    web = resources.files("pianolm") / "web"
    limits = studio.limits

    async def page(request):
        return Response((web / "index.html").read_bytes(), media_type="text/html; charset=utf-8")

    async def info(request):
        return JSONResponse(studio.info())

    async def generate(request):
        try:
            params = parse_params(request.query_params, limits)
            body = await read_body(request, params["name"], limits)
            has_prompt = "name" in request.query_params or bool(body)
            # Reading the prompt file and deleting old jobs' folders would stall the event loop.
            job = await run_in_threadpool(studio.submit, params, body if has_prompt else None)
        except InputError as e:
            return refuse(e)
        return JSONResponse({"job": job.id}, status_code=202)

    async def job_status(request):
        job = request.path_params["job"]
        status = studio.status(job) if JOB_ID.fullmatch(job) else None
        return no_job(job, limits) if status is None else JSONResponse(status)

    async def job_file(request):
        job, name = request.path_params["job"], request.path_params["name"]
        if not JOB_ID.fullmatch(job) or studio.status(job) is None:
            return no_job(job, limits)
        path = studio.file(job, name)
        if path is None:
            return JSONResponse({"error": f"no file {shown(name)} for job {job}"}, status_code=404)
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
                            filename=None if path.suffix in INLINE else f"pianolm-{job}{path.suffix}")

    routes = [Route("/", page), Route("/api/info", info), Route("/api/generate", generate, methods=["POST"]),
              Route("/api/jobs/{job}", job_status), Route("/api/jobs/{job}/{name}", job_file),
              Mount("/static", StaticFiles(directory=str(web)), name="static")]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        studio.close()

    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})


def main(argv: Sequence[str]) -> int:
    """A local web page to generate pieces and listen to them (needs the `serve` extra)."""
    p = argparse.ArgumentParser(prog="python -m pianolm serve", description=main.__doc__)
    p.add_argument("ckpt", help="a .ckpt file or a run folder holding checkpoints/last.ckpt")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-audio", action="store_true", help="do not render audio")
    p.add_argument("--soundfont", default=None, help="a General MIDI .sf2 (default: FluidSynth's or the bundled one)")
    p.add_argument("--audio-format", choices=["flac", "wav"], default="flac")
    p.add_argument("--max-upload-mb", type=float, default=Limits.max_upload_bytes / 1e6)
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap on tokens per piece (default: the API's)")
    p.add_argument("--max-waiting", type=int, default=Limits.max_waiting,
                   help="pieces that may wait behind the running one; more requests get HTTP 429")
    p.add_argument("--body-timeout", type=float, default=Limits.body_timeout,
                   help="seconds a request body (the prompt file) may take to arrive; a slower one gets HTTP 408")
    p.add_argument("--workdir", type=Path, default=None,
                   help="folder for the jobs' files, kept at exit (default: a temporary folder, removed at exit)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads while generating (default: one for a piece, model/threads.py's rule)")
    args = p.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        raise InputError(EXTRA_HINT) from None
    renderer = None if args.no_audio else find_renderer(args.soundfont)
    if renderer is None and not args.no_audio:
        print(f"[serve] {INSTALL_HINT}", file=sys.stderr)
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1e6), max_new_tokens=args.max_new_tokens,
                    max_waiting=args.max_waiting, body_timeout=args.body_timeout)
    studio = Studio(load_model(args.ckpt, args.threads), renderer, limits, audio_format="." + args.audio_format,
                    workdir=args.workdir, checkpoint=str(args.ckpt))
    app = build_app(studio)
    print(f"[serve] {args.ckpt} loaded; open http://{args.host}:{args.port}/ (Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
