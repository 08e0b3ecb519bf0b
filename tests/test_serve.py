"""`python -m pianolm serve`: the HTTP routes through starlette's TestClient, on a tiny random
checkpoint (the page's real-browser test is tests/test_serve_browser.py; hostile requests are
tests/test_serve_hostile.py, the server under load tests/test_serve_load.py)."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import time

import pytest

import remi
from pianolm.errors import InputError
from pianolm.serve import Busy, Limits, Studio, build_app, load_model, parse_params
from remi.media.audio import find_renderer
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


def wait_done(client, job: str, timeout: float = 120.0) -> dict:
    """Poll the job as the page does until it is done or failed."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/api/jobs/{job}").json()
        if status["state"] in ("done", "error") or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


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
    status = wait_done(client, r.json()["job"])
    assert status["state"] == "done", status
    result = status["result"]
    assert result["bars"] <= 2 and result["tokens"] > 1 and result["seed"] == "7"
    midi = client.get(result["midi"])
    assert midi.status_code == 200 and midi.headers["content-type"] == "audio/midi"
    score = remi.read_midi(midi.content)
    assert len(score) == result["notes"]
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


def test_the_server_answers_while_a_piece_is_generated(client):
    # A long piece on the one worker: while it runs, the page and the status route still answer.
    job = client.post("/api/generate?bars=64&seed=5").json()["job"]
    seen = set()
    for _ in range(200):
        assert client.get("/api/info").status_code == 200
        state = client.get(f"/api/jobs/{job}").json()
        seen.add(state["state"])
        if state["state"] == "running" and state["tokens"] > 1:
            break
        time.sleep(0.02)
    assert "running" in seen
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
