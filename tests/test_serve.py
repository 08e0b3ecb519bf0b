"""`python -m pianolm serve`: the HTTP routes through starlette's TestClient, on a tiny random
checkpoint (the page's real-browser test is tests/test_serve_browser.py; hostile requests are
tests/test_serve_hostile.py, the server under load tests/test_serve_load.py)."""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest

import remi
from pianolm import serve
from pianolm.errors import InputError
from pianolm.serve import Busy, Limits, Studio, build_app, load_model, parse_params
from remi.media.audio import Renderer, find_renderer
from tests.midi_bytes import midi_file, note_events, tempo, time_sig, track
from tests.serve_helpers import prompt_midi, tiny_checkpoint

MISSING = [m for m in ("starlette", "uvicorn", "httpx") if importlib.util.find_spec(m) is None]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    if MISSING:
        pytest.skip(f"{', '.join(MISSING)} not installed (pip install 'pianolm[serve]' httpx)")
    from starlette.testclient import TestClient

    folder = tmp_path_factory.mktemp("serve")
    model = load_model(tiny_checkpoint(folder / "tiny.ckpt"))
    studio = Studio(model, find_renderer(), Limits(max_upload_bytes=20_000), workdir=folder / "jobs",
                    checkpoint="tiny.ckpt")
    with TestClient(build_app(studio)) as c:
        c.studio = studio
        yield c


def wait_done(client, job: str, timeout: float = 120.0, complete: bool = False) -> dict:
    """Poll the job as the page does until it is done (with `complete`, until its audio and PNG
    are in too) or failed."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/api/jobs/{job}").json()
        if finished(status, complete) or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def finished(status: dict, complete: bool = False) -> bool:
    """The job is over (done or failed); with `complete`, a done job's media are in as well."""
    if status["state"] == "error":
        return True
    return status["state"] == "done" and not (complete and status["result"]["pending"])


def test_the_page_and_its_scripts_load(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="temperature"', 'id="top_p"', 'id="bars"', 'id="prompt"', 'id="generate"',
                    'id="progress"', 'id="error"', 'id="audio"', 'id="download"', 'id="roll"'):
        assert element in page.text
    assert "poll" in client.get("/static/app.js").text
    info = client.get("/api/info").json()
    assert info["block_size"] == 64 and info["vocab_size"] == remi.Tokenizer().vocab_size
    assert info["limits"]["max_upload_bytes"] == 20_000


def test_generate_from_scratch_gives_a_midi_that_remi_reads(client):
    r = client.post("/api/generate?temperature=1.0&top_p=0.9&bars=2&seed=7")
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    status = wait_done(client, job)
    assert status["state"] == "done", status
    result = status["result"]
    assert result["bars"] <= 2 and result["tokens"] > 1 and result["seed"] == "7"
    midi = client.get(result["midi"])
    assert midi.status_code == 200 and midi.headers["content-type"] == "audio/midi"
    score = remi.read_midi(midi.content)
    assert len(score) == result["notes"]
    roll = client.get(result["roll"])
    assert roll.status_code == 200 and len(roll.json()["notes"]) == result["notes"]
    # The audio and the PNG come after the piece; once they are in, their URLs answer.
    result = wait_done(client, job, complete=True)["result"]
    assert result["pending"] == [] and result["png_note"] is None
    png = client.get(result["png"])
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    if client.studio.renderer is None:
        assert result["audio"] is None and "no audio" in result["audio_note"]
    else:
        audio = client.get(result["audio"])
        assert audio.status_code == 200 and audio.content[:4] == b"fLaC"


def test_the_same_seed_gives_the_same_piece(client):
    pieces = []
    for _ in range(2):
        job = client.post("/api/generate?temperature=1.2&bars=1&seed=123").json()["job"]
        pieces.append(client.get(wait_done(client, job)["result"]["midi"]).content)
    assert remi.read_midi(pieces[0]).notes.tolist() == remi.read_midi(pieces[1]).notes.tolist()
    # Without a seed the API draws one; the result reports it (as text), and it gives the piece again.
    drawn = wait_done(client, client.post("/api/generate?temperature=1.2&bars=1").json()["job"])["result"]
    again = wait_done(client, client.post(f"/api/generate?temperature=1.2&bars=1&seed={drawn['seed']}").json()["job"])
    assert client.get(drawn["midi"]).content == client.get(again["result"]["midi"]).content


def test_a_prompt_is_continued_and_kept(client):
    data = prompt_midi(n_bars=4)
    r = client.post("/api/generate?bars=1&seed=1&prompt_bars=2&name=scale.mid", content=data)
    assert r.status_code == 202, r.text
    status = wait_done(client, r.json()["job"])
    assert status["state"] == "done", status
    out = remi.read_midi(client.get(status["result"]["midi"]).content)
    given = remi.Tokenizer().quantize(remi.read_midi(data))
    # The first two bars (8 beats) are the prompt's, note for note, at the output's resolution.
    first = out.notes[out.notes[:, 0] < 8 * out.ticks_per_beat]
    scale = out.ticks_per_beat / given.ticks_per_beat
    expected = given.notes[given.notes[:, 0] < 8 * given.ticks_per_beat]
    assert first[:, 2].tolist() == expected[:, 2].tolist()
    assert (first[:, 0] == (expected[:, 0] * scale).astype(int)).all()


@pytest.mark.parametrize("body, message", [
    (b"this is a text file, not music\n", "is not a MIDI file"),
    (b"", "is empty"),
    (b"MThd" + b"\x00" * 10, "does not parse as MIDI"),
    (b"MThd" + b"\x00" * 30_000, "more than 20,000 bytes"),
])
def test_a_bad_upload_is_a_400_with_a_message(client, body, message):
    r = client.post("/api/generate?bars=2&name=upload.mid", content=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert message in error and "upload.mid" in error
    assert "Traceback" not in r.text


def test_a_prompt_without_notes_or_too_long_is_refused(client):
    empty = midi_file([track([tempo(0, 120), time_sig(0, 4, 4)])])
    r = client.post("/api/generate?name=silence.mid", content=empty)
    assert r.status_code == 400 and "silence.mid has no notes" in r.json()["error"]
    dense = [(t * 60, t * 60 + 50, 40 + t % 40, 80) for t in range(8 * 16)]  # 32 notes a bar
    long = midi_file([track([tempo(0, 120), time_sig(0, 4, 4), *note_events(dense)])])
    r = client.post("/api/generate?name=dense.mid&prompt_bars=4", content=long)
    assert r.status_code == 400 and "longer than the model's context of 64" in r.json()["error"]


@pytest.mark.parametrize("query, message", [
    ("temperature=abc", "temperature='abc' is not a number"),
    ("temperature=5", "out of range"),
    ("bars=0", "bars='0' is out of range"),
    ("bars=2.5", "bars='2.5' is not an integer"),
    ("top_p=0", "top_p=0 keeps no token"),
    ("colour=red", "unknown parameter 'colour'"),
])
def test_bad_settings_are_a_400_naming_the_key(client, query, message):
    r = client.post(f"/api/generate?{query}")
    assert r.status_code == 400 and message in r.json()["error"]


def test_parse_params_defaults_and_top_p_one_is_off():
    p = parse_params({})
    assert (p["temperature"], p["top_p"], p["bars"], p["seed"]) == (1.0, 0.95, 8, None)
    assert parse_params({"top_p": "1"})["top_p"] is None
    with pytest.raises(InputError, match="holds a path separator"):  # a file name, never a path
        parse_params({"name": "../../etc/passwd"})
    with pytest.raises(InputError, match="bars='65' is out of range"):
        parse_params({"bars": "65"})


def test_unknown_jobs_and_files_are_404(client):
    assert client.get("/api/jobs/nope").status_code == 404
    job = client.post("/api/generate?bars=1&seed=3").json()["job"]
    wait_done(client, job)
    assert client.get(f"/api/jobs/{job}/secret.txt").status_code == 404
    assert client.get(f"/api/jobs/{job}/..%2F..%2Ftiny.ckpt").status_code == 404


def test_the_server_answers_while_a_piece_is_generated(client, monkeypatch):
    # The piece is held on the worker until the test has asked: the tiny model with the compiled
    # decoder can finish 64 bars between two polls, so a poll may never see it running. While it
    # runs, the page, the info and the status routes still answer.
    release, real = threading.Event(), serve.generate_one

    def held(*args, **kwargs):
        if not release.wait(60):
            raise RuntimeError("the test never released the piece")
        return real(*args, **kwargs)

    monkeypatch.setattr(serve, "generate_one", held)
    job = client.post("/api/generate?bars=64&seed=5").json()["job"]
    deadline = time.monotonic() + 60
    while client.get(f"/api/jobs/{job}").json()["state"] != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)
    assert client.get("/api/info").status_code == 200
    assert client.get("/").status_code == 200
    assert client.get(f"/api/jobs/{job}").json()["state"] == "running"
    release.set()
    assert wait_done(client, job)["state"] == "done"



def test_pianolm_works_without_the_serve_extra_and_serve_says_what_to_install(tmp_path, monkeypatch, capsys):
    for name in ("starlette", "uvicorn"):
        monkeypatch.setitem(sys.modules, name, None)  # `import starlette` now raises ImportError
    monkeypatch.delitem(sys.modules, "pianolm.serve")
    importlib.import_module("pianolm.serve")  # the module imports without the extra
    from pianolm.__main__ import main

    assert main(["serve", str(tiny_checkpoint(tmp_path / "tiny.ckpt"))]) == 2
    assert "pianolm serve: error: the web page needs the `serve` extra: pip install 'pianolm[serve]'" in capsys.readouterr().err


class HeldModel:
    """A stand-in for `pianolm.PianoLM` whose generate waits until the test lets it go: the
    queue's behaviour without timing luck."""

    def __init__(self, real):
        self.tokenizer, self.model, self.block_size = real.tokenizer, real.model, real.block_size
        self.release = threading.Event()
        self.score = real.generate(n=1, bars=1, seed=0)[0]

    def generate(self, **kwargs):
        self.release.wait(timeout=60)
        return [self.score]


def test_a_full_queue_is_refused_with_429_and_the_queue_drains(tmp_path):
    if MISSING:
        pytest.skip(f"{', '.join(MISSING)} not installed")
    from starlette.testclient import TestClient

    model = HeldModel(load_model(tiny_checkpoint(tmp_path / "tiny.ckpt")))
    studio = Studio(model, None, Limits(max_waiting=2), workdir=tmp_path / "jobs")
    with TestClient(build_app(studio)) as client:
        jobs = [client.post("/api/generate?bars=1").json()["job"]]  # this one runs (and is held)
        while client.get(f"/api/jobs/{jobs[0]}").json()["state"] != "running":
            time.sleep(0.01)
        jobs += [client.post("/api/generate?bars=1").json()["job"] for _ in range(2)]  # these two wait
        assert [client.get(f"/api/jobs/{j}").json()["state"] for j in jobs] == ["running", "queued", "queued"]
        info = client.get("/api/info").json()
        assert info["queue"] == {"waiting": 2, "running": True} and info["limits"]["max_waiting"] == 2
        refused = client.post("/api/generate?bars=1")
        assert refused.status_code == 429 and "2 pieces are already waiting" in refused.json()["error"]
        with pytest.raises(Busy):
            studio.submit(parse_params({}))
        model.release.set()
        states = [wait_done(client, j) for j in jobs]
        assert [s["state"] for s in states] == ["done"] * 3
        assert all(s["result"]["audio"] is None and "no audio" in s["result"]["audio_note"] for s in states)
        assert client.post("/api/generate?bars=1").status_code == 202  # room again


class HeldRender:
    """A stand-in for `remi.media.audio.render_audio` that waits until the test lets it go, then
    writes a stub file (or raises `fail`): the piece's life after it is published, without timing
    luck."""

    def __init__(self, fail: Exception | None = None):
        self.release, self.calls, self.fail = threading.Event(), 0, fail

    def __call__(self, midi_path, out_path, renderer, **kwargs) -> Path:
        self.calls += 1
        assert self.release.wait(timeout=60), "the test never let the render go"
        if self.fail is not None:
            raise self.fail
        Path(out_path).write_bytes(b"fLaC, a stub")
        return Path(out_path)


@pytest.fixture
def held_studio(tmp_path, monkeypatch):
    """A `Studio` maker over the tiny checkpoint whose audio renders through a `HeldRender`."""
    model = load_model(tiny_checkpoint(tmp_path / "tiny.ckpt"))
    made = []

    def make(render: HeldRender, **limits) -> Studio:
        monkeypatch.setattr(serve, "render_audio", render)
        made.append((render, Studio(model, Renderer(None, "stub.sf2"), Limits(**limits), workdir=tmp_path / "jobs")))
        return made[-1][1]

    yield make
    for render, studio in made:
        render.release.set()
        studio.close()


def wait_status(studio: Studio, job: str, until, timeout: float = 30.0) -> dict:
    """`studio.status(job)` once `until(status)` holds, or when `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not until(status := studio.status(job)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return status


def test_the_piece_is_published_before_its_audio_and_the_audio_attaches_after(held_studio):
    render = HeldRender()
    studio = held_studio(render)
    job = studio.submit(parse_params({"bars": "2", "seed": "4"})).id
    done = wait_status(studio, job, finished)
    # The audio render is held, and yet the piece is out: MIDI, the roll's notes, the summary.
    assert done["state"] == "done", done
    r = done["result"]
    assert (r["audio"], r["png"], r["pending"], r["audio_note"]) == (None, None, ["audio", "png"], None)
    assert r["files"] == ["piece.mid", "roll.json"] and studio.file(job, "piece.flac") is None
    score = remi.read_midi(studio.file(job, "piece.mid").read_bytes())
    roll = json.loads(studio.file(job, "roll.json").read_text())
    assert len(score) == r["notes"] == len(roll["notes"]) > 0
    in_beats = sorted((Fraction(int(n[0]), score.ticks_per_beat), int(n[2])) for n in score.notes)
    assert in_beats == sorted((Fraction(a, roll["ticks_per_beat"]), p) for a, _, p, _ in roll["notes"])
    assert roll["bars"][0] == 0 and roll["prompt_end_tick"] is None
    # Let the render go: the audio arrives on the job, then the PNG, and the job stays done.
    render.release.set()
    final = wait_status(studio, job, lambda s: not s["result"]["pending"])
    r = final["result"]
    assert r["pending"] == [] and r["audio"] == f"/api/jobs/{job}/piece.flac" and r["audio_note"] is None
    assert studio.file(job, "piece.flac").read_bytes() == b"fLaC, a stub"
    assert r["png"] == f"/api/jobs/{job}/piece.png" and studio.file(job, "piece.png").read_bytes()[:4] == b"\x89PNG"
    assert r["files"] == ["piece.mid", "roll.json", "piece.flac", "piece.png"]
    assert final["state"] == "done" and final["seconds"] == done["seconds"]  # the piece's time, not the media's
    assert render.calls == 1


@pytest.mark.parametrize("fail, note", [
    (RuntimeError("fluidsynth exited with status 1"), "audio could not be rendered: fluidsynth exited with status 1"),
    (ZeroDivisionError("division by zero"), "audio could not be rendered: ZeroDivisionError: division by zero"),
])
def test_a_failed_render_is_the_jobs_audio_note_and_the_piece_stays(held_studio, fail, note):
    render = HeldRender(fail=fail)
    render.release.set()
    studio = held_studio(render)
    job = studio.submit(parse_params({"bars": "1", "seed": "1"})).id
    final = wait_status(studio, job, lambda s: finished(s, complete=True))
    r = final["result"]
    assert final["state"] == "done" and final["error"] is None, final
    assert (r["audio"], r["audio_note"], r["pending"]) == (None, note, [])
    assert "piece.flac" not in r["files"] and studio.file(job, "piece.flac") is None
    assert studio.file(job, "piece.mid") is not None and r["png"] is not None  # the rest still came


def test_a_job_whose_audio_is_rendering_keeps_its_folder(held_studio):
    render = HeldRender()
    studio = held_studio(render, jobs_kept=0)  # every submit drops every finished job
    first = studio.submit(parse_params({"bars": "1", "seed": "1"}))
    assert wait_status(studio, first.id, finished)["result"]["pending"] == ["audio", "png"]
    second = studio.submit(parse_params({"bars": "1", "seed": "2"}))  # drops finished jobs, not this one
    assert studio.status(first.id) is not None and (first.folder / "piece.mid").is_file()
    assert studio.status(second.id)["state"] == "queued"  # the worker still renders the first's audio
    render.release.set()
    assert wait_status(studio, first.id, lambda s: finished(s, complete=True))["result"]["audio"] is not None
    assert wait_status(studio, second.id, lambda s: finished(s, complete=True))["state"] == "done"
    third = studio.submit(parse_params({"bars": "1", "seed": "3"}))  # now both are finished, and dropped
    assert studio.status(first.id) is None and not first.folder.exists()
    assert studio.status(second.id) is None and not second.folder.exists()
    assert wait_status(studio, third.id, finished)["state"] == "done"


def test_serve_with_a_missing_checkpoint_is_one_line_and_status_2(tmp_path, capsys):
    if MISSING:
        pytest.skip(f"{', '.join(MISSING)} not installed")
    from pianolm.__main__ import main

    assert main(["serve", str(tmp_path / "missing.ckpt"), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"pianolm serve: error: checkpoint {tmp_path / 'missing.ckpt'} does not exist"


@pytest.mark.parametrize("option, message", [
    (["--max-waiting", "0"], "max_waiting=0: it must be an integer >= 1 (--max-waiting)"),
    (["--body-timeout", "0"], "body_timeout=0.0: it must be a number of seconds > 0 (--body-timeout)"),
    (["--body-timeout", "nan"], "body_timeout=nan: it must be a number of seconds > 0 (--body-timeout)"),
    (["--max-upload-mb", "0"], "max_upload_bytes=0: it must be >= 1 (--max-upload-mb)"),
])
def test_bad_limits_are_one_line_before_the_checkpoint_is_read(tmp_path, capsys, option, message):
    if MISSING:
        pytest.skip(f"{', '.join(MISSING)} not installed")
    from pianolm.__main__ import main

    assert main(["serve", str(tmp_path / "missing.ckpt"), "--no-audio", *option]) == 2
    assert capsys.readouterr().err.strip() == f"pianolm serve: error: {message}"


# ---------------------------------------------------------------- regenerating bars (infill=)


@pytest.fixture(scope="module")
def infill_client(tmp_path_factory):
    if MISSING:
        pytest.skip(f"{', '.join(MISSING)} not installed (pip install 'pianolm[serve]' httpx)")
    from starlette.testclient import TestClient

    from tests.serve_helpers import infill_checkpoint

    folder = tmp_path_factory.mktemp("serve_infill")
    studio = Studio(load_model(infill_checkpoint(folder / "infill.ckpt")), None, workdir=folder / "jobs",
                    checkpoint="infill.ckpt")
    with TestClient(build_app(studio)) as c:
        c.studio = studio
        yield c


def test_infill_regenerates_the_range_and_keeps_every_other_bar(infill_client):
    from remi.bars import bar_span_ticks, notes_outside

    assert infill_client.get("/api/info").json()["infill"] is True
    song = prompt_midi(n_bars=8)
    r = infill_client.post("/api/generate?infill=3-5&seed=2&name=song.mid", content=song)
    assert r.status_code == 202, r.text
    status = wait_done(infill_client, r.json()["job"], complete=True)
    assert status["state"] == "done" and status["infill"] == [3, 5], status
    tok = infill_client.studio.model.tokenizer
    ids = tok.encode(song)
    span = bar_span_ticks(tok, ids, 3, 5)
    roll = infill_client.get(status["result"]["roll"]).json()
    assert roll["span"] == list(span) and roll["prompt_end_tick"] is None
    got = remi.read_midi(infill_client.get(status["result"]["midi"]).content)
    new = tok.decode_score(tok.encode(got))
    assert status["result"]["bars"] == 8
    for kept, out in zip(notes_outside(tok.decode_score(ids), *span), notes_outside(new, *span)):
        assert (kept == out).all() and len(kept) == len(out)
    assert infill_client.get(status["result"]["png"]).content[:4] == b"\x89PNG"


@pytest.mark.parametrize("query,body,message", [
    ("infill=3-9", "song", "outside the piece: it has 8 bars"),
    ("infill=5-3", "song", "infill='5-3' is empty"),
    ("infill=three", "song", "FIRST-LAST"),
    ("infill=2-3", "", "needs a piece: upload a .mid file"),
])
def test_a_bad_infill_request_is_refused_before_it_is_queued(infill_client, query, body, message):
    data = prompt_midi(n_bars=8) if body else b""
    r = infill_client.post(f"/api/generate?{query}&name=song.mid", content=data)
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_a_model_without_infilling_says_so(client):
    assert client.get("/api/info").json()["infill"] is False
    r = client.post("/api/generate?infill=2-3&name=song.mid", content=prompt_midi(n_bars=4))
    assert r.status_code == 400 and "trained without infilling" in r.json()["error"]
