"""What the tests of `python -m pianolm serve` share with `benchmarks/bench_serve_load.py`: a tiny
checkpoint, a prompt file, the real server in a subprocess (with its pid, for its memory), a raw
socket client that can send a body slowly or send too much, and the load driver (32 clients
posting generations and polling their jobs while a probe times GET /api/info).

Everything talks to 127.0.0.1 only, and every loop is bounded in count and in time.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

import remi
from model import GPT, GPTConfig
from tests.midi_bytes import midi_file, note_events, tempo, time_sig, track

ROOT = Path(__file__).resolve().parents[1]


def tiny_checkpoint(path: Path, block_size: int = 64, seed: int = 0) -> Path:
    """A genuine (untrained) checkpoint: random GPT weights beside the default tokenizer."""
    torch.manual_seed(seed)
    tok = remi.Tokenizer()
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16)
    torch.save({"state_dict": {f"gpt.{k}": v for k, v in GPT(config).state_dict().items()},
                "tokenizer": tok.to_dict(), "tokenizer_hash": tok.hash, "model_config": config.to_dict()}, path)
    return path


def infill_checkpoint(path: Path, block_size: int = 256, seed: int = 0) -> Path:
    """A genuine (untrained) checkpoint whose tokenizer has the Infill tokens (the rounds'
    tokenizer, conf/tokenizer/coarse.yaml, with `infill_tokens`): a model the page offers Regenerate for."""
    import dataclasses

    torch.manual_seed(seed)
    coarse = remi.TokenizerConfig.from_yaml(ROOT / "conf" / "tokenizer" / "coarse.yaml")
    tok = remi.Tokenizer(dataclasses.replace(coarse, infill_tokens=True))
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16)
    torch.save({"state_dict": {f"gpt.{k}": v for k, v in GPT(config).state_dict().items()},
                "tokenizer": tok.to_dict(), "tokenizer_hash": tok.hash, "model_config": config.to_dict()}, path)
    return path


def recipe_shaped_checkpoint(path: Path, seed: int = 0) -> Path:
    """Random weights of the recipe's shape (4 x 256, 4 heads, context 512) beside the rounds'
    tokenizer (conf/tokenizer/coarse.yaml): what a page serving `make train-real`'s model computes
    per token, for timing. EOS is made unlikely, so a piece runs to the bars asked for as a trained
    model's would: the final LayerNorm's output is centred (its gain is 1), so with a constant bias
    b and EOS's row of the tied head -20 b / |b|^2, EOS's logit is -20 whatever the input."""
    torch.manual_seed(seed)
    tok = remi.Tokenizer.from_yaml(Path(__file__).resolve().parents[1] / "conf" / "tokenizer" / "coarse.yaml")
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=512, n_layer=4, n_head=4, n_embd=256,
                       pad_vocab_multiple=64)
    gpt = GPT(config)
    with torch.no_grad():
        direction = torch.full((config.n_embd,), config.n_embd ** -0.5)  # unit length, orthogonal to centred
        gpt.transformer.ln_f.bias.copy_(direction)
        gpt.lm_head.weight[tok.eos_id] = -20.0 * direction  # tied: also EOS's embedding, never an input
    torch.save({"state_dict": {f"gpt.{k}": v for k, v in gpt.state_dict().items()},
                "tokenizer": tok.to_dict(), "tokenizer_hash": tok.hash, "model_config": config.to_dict()}, path)
    return path


def prompt_midi(n_bars: int = 4, tpq: int = 480) -> bytes:
    """A 4/4 file with one quarter note a beat: `n_bars` bars of a rising C major scale."""
    scale = [60, 62, 64, 65, 67, 69, 71, 72]
    notes = [(b * tpq, b * tpq + tpq - 10, scale[b % 8], 80) for b in range(4 * n_bars)]
    return midi_file([track([tempo(0, 120), time_sig(0, 4, 4), *note_events(notes)])], tpq=tpq)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from VmRSS in /proc/<pid>/status (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line (a zombie process?)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running `python -m pianolm serve`: where it listens and its process id."""

    url: str
    port: int
    pid: int
    log: Path

    def get_json(self, path: str, timeout: float = 10.0) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()


@contextlib.contextmanager
def running_server(ckpt: Path, *args: str, cwd: Path, timeout: float = 180.0, env: dict | None = None):
    """`python -m pianolm serve CKPT --port P --threads 1 ARGS...` run in `cwd`, its output in
    cwd/server.log, until the block ends; yields a `Server`. Fails with the server's own output
    if it exits or does not answer GET /api/info within `timeout` seconds."""
    port = free_port()
    log = Path(cwd) / "server.log"
    path = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.pathsep.join(path),
           **(env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pianolm", "serve", str(ckpt), "--port", str(port),
                                 "--threads", "1", *args], cwd=cwd, env=env, stdout=out, stderr=out)
    server = Server(f"http://127.0.0.1:{port}", port, proc.pid, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                server.get_json("/api/info", timeout=2.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not answer within {timeout:.0f} s: "
                                       f"{log.read_text()[-2000:]}") from None
                time.sleep(0.25)
        yield server
    finally:
        proc.terminate()  # the process started here, by its own handle
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- a raw socket client


@dataclass
class RawAnswer:
    status: int | None  # None: no status line came back
    headers: dict
    body: bytes
    sent: int  # body bytes the client managed to send
    closed: bool  # the server closed the connection (or reset it)

    def json(self) -> dict:
        return json.loads(self.body)


def raw_request(port: int, head: str, chunks, pause: float = 0.0, deadline_s: float = 60.0) -> RawAnswer:
    """Send `head` (request line and headers, without the blank line), then the body `chunks`
    one by one, `pause` seconds apart, reading at the same time; stops sending at the first
    complete answer, when the server closes the connection, or when the chunks run out, then
    reads until the server closes the connection (`closed`) or `deadline_s` has passed. A reset or
    broken pipe from the server ends the sending."""
    deadline = time.monotonic() + deadline_s
    received, sent, closed = bytearray(), 0, False
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(head.encode("latin-1") + b"\r\n\r\n")
        sock.setblocking(False)
        chunks = iter(chunks)
        pending, next_send = b"", time.monotonic()
        exhausted = False
        while time.monotonic() < deadline and not closed:
            if _complete(received):
                pending, exhausted = b"", True  # answered: send nothing more, wait for the close
            if not pending and not exhausted and time.monotonic() >= next_send:
                pending = next(chunks, None)
                exhausted = pending is None
                pending = pending or b""
                next_send = time.monotonic() + pause
            wait = max(0.0, min(0.05, next_send - time.monotonic())) if not pending else 0.05
            readable, writable, _ = select.select([sock], [sock] if pending else [], [], wait)
            if readable:
                try:
                    data = sock.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                received += data
                closed = not data
            if writable and pending and not closed:
                try:
                    n = sock.send(pending)
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
                    continue
                sent, pending = sent + n, pending[n:]
    finally:
        sock.close()
    return _parse_answer(bytes(received), sent, closed)


def _complete(data: bytearray) -> bool:
    head, sep, body = bytes(data).partition(b"\r\n\r\n")
    if not sep:
        return False
    length = _headers(head).get("content-length")
    return length is not None and len(body) >= int(length)


def _headers(head: bytes) -> dict:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _parse_answer(data: bytes, sent: int, closed: bool) -> RawAnswer:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return RawAnswer(None, {}, data, sent, closed)
    status = int(head.split(b" ", 2)[1])
    return RawAnswer(status, _headers(head), body, sent, closed)


# ---------------------------------------------------------------- the load


@dataclass
class LoadReport:
    """What the clients and the probe saw."""

    statuses: Counter = field(default_factory=Counter)  # HTTP status -> count, every request
    problems: list = field(default_factory=list)  # 5xx answers, unexpected 4xx, dropped connections
    busy_errors: Counter = field(default_factory=Counter)  # the 429s' messages, their numbers blanked
    info_ms: list = field(default_factory=list)  # GET /api/info latencies after the warm-up
    info_slow: list = field(default_factory=list)  # (seconds into the load, ms) of those over 200 ms
    info_ms_running: int = 0  # how many of those found a generation running
    most_waiting: int = 0  # the longest queue /api/info reported
    jobs_done: int = 0
    jobs_failed: int = 0
    rss_start: int = 0  # after the warm-up
    rss_end: int = 0  # after the load, once the queue has drained
    rss_most: int = 0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) of the /api/info latencies, nearest rank, in ms."""
        ordered = sorted(self.info_ms)
        return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


class _Client:
    """One keep-alive connection; every request is timed out, a dropped connection reopened."""

    def __init__(self, port: int, report: LoadReport, lock: threading.Lock):
        self.port, self.report, self.lock = port, report, lock
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int | None, bytes]:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.conn.request(method, path, body=body)
            r = self.conn.getresponse()
            status, data = r.status, r.read()
            if r.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            with self.lock:
                self.report.problems.append(f"{method} {path}: {type(e).__name__}: {e}")
            return None, b""
        with self.lock:
            self.report.statuses[status] += 1
            if status >= 500:
                self.report.problems.append(f"{method} {path}: {status} {data[:200]!r}")
        return status, data

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def run_load(server: Server, clients: int = 32, seconds: float = 30.0, warmup: float = 3.0,
             prompts: tuple = (None,), big_prompt: bytes | None = None, bars: int = 1, poll: float = 0.2, busy_pause: float = 0.2,
             probe_every: float = 0.05, drain_s: float = 120.0, warmup_pieces: int = 0) -> LoadReport:
    """`clients` threads for `warmup` + `seconds` seconds, each posting a generation (client k
    continuing `prompts[k % len(prompts)]`, a MIDI file's bytes, or from scratch where that is
    None; client 0 continuing `big_prompt` instead, when given), polling its job until done,
    fetching its MIDI file, and after a 429 pausing `busy_pause` s before posting again; a probe
    thread times
    GET /api/info every `probe_every` s. The warm-up lasts `warmup` seconds and until
    `warmup_pieces` pieces are done (at most `drain_s` s more): the server's memory grows while its
    store of finished jobs fills and its allocator settles, so "after the warm-up" is counted in
    pieces, not only in seconds. RSS is read at the end of the warm-up and once the queue has
    drained after the load (at most `drain_s` s). Nothing is asserted here: the caller judges."""
    report, lock = LoadReport(), threading.Lock()
    start = time.monotonic()
    cap = start + warmup + (drain_s if warmup_pieces else 0.0)  # the warm-up's end at the latest
    measuring, stop_at = start + warmup, cap + seconds  # both set again when the warm-up ends
    hard_stop = stop_at + drain_s  # no loop outlives this

    def client(k: int) -> None:
        c = _Client(server.port, report, lock)
        prompt = big_prompt if k == 0 and big_prompt is not None else prompts[k % len(prompts)]
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            query = f"bars={bars}&seed={k * 100_000 + n}" + ("" if prompt is None else "&prompt_bars=1&name=scale.mid")
            status, data = c.request("POST", f"/api/generate?{query}", prompt)
            if status == 429:
                with lock:
                    report.busy_errors[_blank_numbers(json.loads(data)["error"])] += 1
                time.sleep(busy_pause)
            elif status == 202:
                _follow(c, json.loads(data)["job"], poll, hard_stop, report, lock)
            else:
                if status is not None and status < 500:
                    with lock:
                        report.problems.append(f"POST /api/generate?{query}: {status} {data[:200]!r}")
                time.sleep(busy_pause)
        c.close()

    def probe() -> None:
        c = _Client(server.port, report, lock)
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            status, data = c.request("GET", "/api/info")
            ms = (time.perf_counter() - t0) * 1000
            if status == 200:
                queue = json.loads(data)["queue"]
                with lock:
                    report.most_waiting = max(report.most_waiting, queue["waiting"])
                    if time.monotonic() >= measuring:
                        report.info_ms.append(ms)
                        if ms > 200:
                            report.info_slow.append((round(time.monotonic() - start, 1), round(ms)))
                        report.info_ms_running += queue["running"]
                        report.rss_most = max(report.rss_most, rss_bytes(server.pid))
            time.sleep(probe_every)
        c.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    threads.append(threading.Thread(target=probe, daemon=True))
    for t in threads:
        t.start()
    time.sleep(max(0.0, measuring - time.monotonic()))
    while report.jobs_done < warmup_pieces and time.monotonic() < cap:
        time.sleep(0.1)
    with lock:  # the load's seconds start now
        measuring = time.monotonic()
        stop_at = measuring + seconds
        hard_stop = stop_at + drain_s
    report.rss_start = rss_bytes(server.pid)
    for t in threads:
        t.join(timeout=max(0.0, hard_stop - time.monotonic()))
    # Let the queue drain (the clients stopped posting), then the memory at the end.
    while time.monotonic() < hard_stop:
        status, info = server.get_json("/api/info")
        if not info["queue"]["waiting"] and not info["queue"]["running"]:
            break
        time.sleep(0.2)
    report.rss_end = rss_bytes(server.pid)
    return report


def _follow(c: _Client, job: str, poll: float, hard_stop: float, report: LoadReport, lock) -> None:
    """Poll one job as the page does until it ends, then fetch its MIDI file."""
    while time.monotonic() < hard_stop:
        status, data = c.request("GET", f"/api/jobs/{job}")
        if status != 200:
            with lock:
                report.problems.append(f"GET /api/jobs/{job}: {status} {data[:200]!r}")
            return
        state = json.loads(data)
        if state["state"] == "done":
            midi, _ = c.request("GET", state["result"]["midi"])
            with lock:
                report.jobs_done += 1
                if midi != 200:
                    report.problems.append(f"GET {state['result']['midi']}: {midi}")
            return
        if state["state"] == "error":
            with lock:
                report.jobs_failed += 1
                report.problems.append(f"job {job} failed: {state['error']}")
            return
        time.sleep(poll)


def _blank_numbers(text: str) -> str:
    return re.sub(r"\d+", "N", text)
