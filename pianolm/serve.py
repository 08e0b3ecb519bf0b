"""`python -m pianolm serve CKPT`: a local web page to generate piano pieces and listen to them.

One model, loaded once. Generation runs on one worker thread (requests queue behind each other),
so the server keeps answering while a piece is made; the page (`pianolm/web/`) polls its job
until the piano roll, the audio and the MIDI are ready. starlette and uvicorn (the `serve` extra)
are imported only when the app is built, so `import pianolm` works without them.

The HTTP interface, JSON except the page and the media:

    GET  /                          the page
    GET  /api/info                  checkpoint, limits, slider defaults, whether audio renders
    POST /api/generate?temperature=1&top_p=0.95&bars=8[&seed=3][&prompt_bars=4&name=song.mid]
         body: a prompt MIDI file, or nothing      -> 202 {"job": id}
         bad parameters or a bad upload            -> 400 {"error": "..."}
    GET  /api/jobs/{id}             {"state": "queued"|"running"|"done"|"error", "tokens", ...}
    GET  /api/jobs/{id}/{file}      piece.mid, piece.png and piece.flac (or .wav)
"""
from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import remi
from remi.audio import INSTALL_HINT, Renderer, find_renderer, render_audio
from remi.pianoroll import save_pianoroll
from remi.render import count_bars

from .errors import InputError, PromptError
from .generate import prompt_from, safe_name

EXTRA_HINT = "the web page needs the `serve` extra: pip install 'pianolm[serve]' (starlette and uvicorn)"
MEDIA_TYPES = {".mid": "audio/midi", ".png": "image/png", ".flac": "audio/flac", ".wav": "audio/wav"}


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


class Busy(InputError):
    """The queue is full: the page says so and the user tries again (HTTP 429)."""


DEFAULTS = {"temperature": 1.0, "top_p": 0.95, "bars": 8, "prompt_bars": 4}


def _number(query: Mapping[str, str], key: str, kind: type, lo: float, hi: float, default: Any) -> Any:
    text = query.get(key, "")
    if text in ("", "null", "none"):
        return default
    try:
        value = kind(text)
    except ValueError:
        raise InputError(f"{key}={text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not (lo <= value <= hi) or (kind is float and not math.isfinite(value)):
        raise InputError(f"{key}={text!r} is out of range: it must lie in [{lo:g}, {hi:g}]")
    return value


def parse_params(query: Mapping[str, str], limits: Limits = Limits()) -> dict:
    """The query string of POST /api/generate as checked settings; InputError names the bad key."""
    unknown = sorted(set(query) - {"temperature", "top_p", "bars", "seed", "prompt_bars", "name"})
    if unknown:
        raise InputError(f"unknown parameter {unknown[0]!r}: use temperature, top_p, bars, seed, prompt_bars, name")
    top_p = _number(query, "top_p", float, 0.0, 1.0, DEFAULTS["top_p"])
    if top_p == 0:
        raise InputError("top_p=0 keeps no token: it must lie in (0, 1] (1 turns nucleus sampling off)")
    return {"temperature": _number(query, "temperature", float, 0.0, limits.max_temperature, DEFAULTS["temperature"]),
            "top_p": None if top_p >= 1 else top_p,
            "bars": _number(query, "bars", int, 1, limits.max_bars, DEFAULTS["bars"]),
            "seed": _number(query, "seed", int, 0, 2**63 - 1, None),
            "prompt_bars": _number(query, "prompt_bars", int, 1, limits.max_prompt_bars, DEFAULTS["prompt_bars"]),
            "name": safe_name(Path(query.get("name") or "prompt.mid").name)}  # for messages only, never a path


# ---------------------------------------------------------------- the model, through the Python API


def load_model(path: str | Path):
    """The checkpoint through the Python API: a `pianolm.PianoLM` (.tokenizer, .model, .block_size,
    .generate(...) and .continue_midi(...), each returning a list of `remi.Score`)."""
    from .api import load

    return load(path)


def generate_one(m, params: dict, prompt: bytes | None, max_new_tokens: int | None) -> remi.Score:
    """One piece with the page's settings: from scratch, or continuing the prompt file."""
    kwargs = dict(n=1, bars=params["bars"], temperature=params["temperature"], top_p=params["top_p"],
                  seed=params["seed"], max_new_tokens=max_new_tokens)
    if prompt is None:
        return m.generate(**kwargs)[0]
    return m.continue_midi(prompt, prompt_bars=params["prompt_bars"], **kwargs)[0]


class TokenCounter:
    """Counts the tokens a generation has produced so far, for the page's progress line.

    `GPT.generate` computes logits through `lm_head` once per sampled token (once more to start),
    so a forward hook on it counts steps without any change to the model or the API.
    """

    def __init__(self, gpt):
        self.count = 0
        self._handle = gpt.lm_head.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.count += 1

    def reset(self) -> None:
        self.count = 0

    def close(self) -> None:
        self._handle.remove()


# ---------------------------------------------------------------- jobs


@dataclass
class Job:
    id: str
    params: dict
    folder: Path
    prompt: bytes | None = None  # the uploaded MIDI file
    prompt_end_tick: int | None = None
    state: str = "queued"  # queued -> running -> done | error
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    result: dict = field(default_factory=dict)

    def to_dict(self, tokens: int | None) -> dict:
        now = time.monotonic()
        d = {"job": self.id, "state": self.state, "error": self.error, "bars": self.params["bars"],
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
        self._counter = TokenCounter(model.model)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pianolm-generate")

    def info(self) -> dict:
        return {"checkpoint": self.checkpoint, "block_size": int(self.model.block_size),
                "vocab_size": int(self.model.tokenizer.vocab_size),
                "audio": self.renderer is not None, "audio_engine": self.renderer.engine if self.renderer else None,
                "audio_note": None if self.renderer else INSTALL_HINT,
                "defaults": DEFAULTS, "limits": {"max_upload_bytes": self.limits.max_upload_bytes,
                                                 "max_bars": self.limits.max_bars,
                                                 "max_prompt_bars": self.limits.max_prompt_bars,
                                                 "max_temperature": self.limits.max_temperature}}

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
        return prompt_from(self.model.tokenizer, data, prompt_bars, int(self.model.block_size), what=what).end_tick

    def submit(self, params: dict, prompt: bytes | None = None) -> Job:
        """Queue one generation; a bad prompt raises PromptError before anything is queued."""
        end_tick = None if prompt is None else self.check_prompt(prompt, params["name"], params["prompt_bars"])
        job_id = uuid.uuid4().hex[:12]
        folder = self.workdir / job_id
        job = Job(job_id, params, folder, prompt=prompt, prompt_end_tick=end_tick)
        with self._lock:
            waiting = sum(j.state == "queued" for j in self.jobs.values())
            if waiting >= self.limits.max_waiting:
                raise Busy(f"{waiting} pieces are already waiting to be generated; try again when one is done")
            folder.mkdir(parents=True)
            self.jobs[job_id] = job
            self._forget_old()
        self._pool.submit(self._run, job)
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

    def _forget_old(self) -> None:
        done = [j for j in self.jobs.values() if j.state in ("done", "error")]
        for job in done[: max(0, len(done) - self.limits.jobs_kept)]:
            del self.jobs[job.id]
            shutil.rmtree(job.folder, ignore_errors=True)

    def _run(self, job: Job) -> None:
        with self._lock:
            self._running, job.state, job.started = job, "running", time.monotonic()
            self._counter.reset()
        try:
            score = generate_one(self.model, job.params, job.prompt, self.limits.max_new_tokens)
            result = self._write(job, score)
            with self._lock:
                job.result, job.state = result, "done"
        except InputError as e:
            job.error, job.state = str(e), "error"
        except Exception as e:  # the page shows one line; the server's console keeps the trace
            import traceback

            traceback.print_exc()
            job.error, job.state = f"generation failed: {type(e).__name__}: {e}", "error"
        finally:
            with self._lock:
                job.finished, self._running = time.monotonic(), None

    def _write(self, job: Job, score: remi.Score) -> dict:
        """piece.mid, piece.png and (with a renderer) the audio file of one generated score."""
        midi = score.to_midi(job.folder / "piece.mid")
        title = (f"T={job.params['temperature']:g}" + (f", top-p={job.params['top_p']:g}" if job.params["top_p"] else "")
                 + (f", continuing {job.params['prompt_bars']} bars of {job.params['name']}" if job.prompt else ""))
        save_pianoroll(score, job.folder / "piece.png", title=title, prompt_end_tick=job.prompt_end_tick)
        files, audio, note = ["piece.mid", "piece.png"], None, None
        if self.renderer is None:
            note = INSTALL_HINT
        else:
            try:
                out = render_audio(midi, job.folder / f"piece{self.audio_format}", self.renderer, seconds=score.seconds())
                audio = out.name
                files.append(out.name)
            except (RuntimeError, OSError, ValueError) as e:
                note = f"audio could not be rendered: {e}"
        url = f"/api/jobs/{job.id}/"
        ids = self.model.tokenizer.encode_score(score)
        return {"files": files, "midi": url + "piece.mid", "png": url + "piece.png",
                "audio": url + audio if audio else None, "audio_note": note,
                "notes": len(score), "bars": count_bars(self.model.tokenizer, ids),
                "seconds": round(score.seconds(), 2), "tokens": self._counter.count,
                "seed": _seed_used(self.model)}


    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._counter.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def _seed_used(m) -> str | None:
    """The seed the API drew (or was given) for the last piece, as text: seeds reach 2**63,
    past the integers a JavaScript number holds exactly."""
    seed = (getattr(m, "last", None) or [{}])[0].get("seed")
    return None if seed is None else str(seed)


# ---------------------------------------------------------------- HTTP


def build_app(studio: Studio):
    """The starlette app over a `Studio`: the page, its static files and the JSON routes."""
    try:
        from starlette.applications import Starlette
        from starlette.responses import FileResponse, JSONResponse, Response
        from starlette.routing import Mount, Route
        from starlette.staticfiles import StaticFiles
    except ImportError:
        raise InputError(EXTRA_HINT) from None

    web = resources.files("pianolm") / "web"

    async def page(request):
        return Response((web / "index.html").read_bytes(), media_type="text/html; charset=utf-8")

    async def info(request):
        return JSONResponse(studio.info())

    async def generate(request):
        try:
            params = parse_params(request.query_params, studio.limits)
            body = await _read_body(request, studio.limits.max_upload_bytes, params["name"])
            has_prompt = "name" in request.query_params or bool(body)
            job = studio.submit(params, body if has_prompt else None)
        except InputError as e:
            return JSONResponse({"error": str(e)}, status_code=429 if isinstance(e, Busy) else 400)
        return JSONResponse({"job": job.id}, status_code=202)

    async def job_status(request):
        status = studio.status(request.path_params["job"])
        if status is None:
            return JSONResponse({"error": f"no job {request.path_params['job']!r} (finished jobs are kept "
                                          f"{studio.limits.jobs_kept} at a time)"}, status_code=404)
        return JSONResponse(status)

    async def job_file(request):
        name = request.path_params["name"]
        path = studio.file(request.path_params["job"], name)
        if path is None:
            return JSONResponse({"error": f"no file {name!r} for this job"}, status_code=404)
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
                            filename=None if path.suffix in (".png",) else f"pianolm-{request.path_params['job']}{path.suffix}")

    routes = [Route("/", page), Route("/api/info", info), Route("/api/generate", generate, methods=["POST"]),
              Route("/api/jobs/{job}", job_status), Route("/api/jobs/{job}/{name}", job_file),
              Mount("/static", StaticFiles(directory=str(web)), name="static")]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        studio.close()

    return Starlette(routes=routes, lifespan=lifespan)


async def _read_body(request, limit: int, name: str) -> bytes:
    """The request body, refused as soon as it passes `limit` bytes (never read whole)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PromptError(f"the uploaded prompt {name} is more than {limit:,} bytes, the most this server "
                              "accepts (start it with a larger --max-upload-mb)")
        chunks.append(chunk)
    return b"".join(chunks)


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
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        raise InputError(EXTRA_HINT) from None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    renderer = None if args.no_audio else find_renderer(args.soundfont)
    if renderer is None and not args.no_audio:
        print(f"[serve] {INSTALL_HINT}", file=sys.stderr)
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1e6), max_new_tokens=args.max_new_tokens)
    studio = Studio(load_model(args.ckpt), renderer, limits, audio_format="." + args.audio_format,
                    checkpoint=str(args.ckpt))
    app = build_app(studio)
    print(f"[serve] {args.ckpt} loaded; open http://{args.host}:{args.port}/ (Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
