"""Hostile requests to `python -m pianolm serve`: each gets its one 4xx with a sentence saying
what was wrong, and nothing is written outside the job store (docs/reliability.md, "The page").

Most cases go through starlette's TestClient; a 100 MB body and a body sent a byte a second
need a real socket, so they go to the real server (a subprocess on 127.0.0.1, started once).
"""
from __future__ import annotations

import importlib.util
import json
import struct
import uuid
from pathlib import Path

import pytest

from pianolm.serve import Limits, Studio, build_app, load_model
from tests.midi_bytes import midi_file, note_events, tempo, track
from tests.serve_helpers import prompt_midi, raw_request, rss_bytes, running_server, tiny_checkpoint

MISSING = [m for m in ("starlette", "uvicorn", "httpx") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"{', '.join(MISSING)} not installed (pip install 'pianolm[serve]' httpx)")
BODY_TIMEOUT = 2  # seconds, the real server's --body-timeout here
BUSY = "pieces are already waiting"


def tree(root: Path) -> set[str]:
    """Every file and folder under `root`, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def sentence(r) -> str:
    """The JSON error of a refusal: one line that says what was wrong, never a traceback."""
    error = r.json()["error"]
    assert isinstance(error, str) and 20 < len(error) < 300 and "\n" not in error and "Traceback" not in error
    return error


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from starlette.testclient import TestClient

    folder = tmp_path_factory.mktemp("hostile")
    model = load_model(tiny_checkpoint(folder / "tiny.ckpt"))
    studio = Studio(model, None, Limits(), workdir=folder / "jobs")  # the default limits: 2 MB uploads
    with TestClient(build_app(studio)) as c:
        c.studio, c.folder = studio, folder
        yield c


@pytest.fixture
def untouched(app):
    """Asserts after the test that nothing was written in the test's folder and no job queued."""
    before, jobs = tree(app.folder), set(app.studio.jobs)
    yield
    assert tree(app.folder) == before
    assert set(app.studio.jobs) == jobs


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize("path", [
    "/api/jobs/..%2F..%2Ftiny.ckpt", "/api/jobs/..%2F..%2Ftiny.ckpt/piece.mid", "/api/jobs/%2E%2E/tiny.ckpt",
    "/api/jobs/..%5C..%5Ctiny.ckpt", "/api/jobs/....%2F%2F....%2F%2Ftiny.ckpt", "/static/..%2F..%2Fserve.py",
])
def test_a_job_id_with_dot_dot_is_a_404_sentence(app, untouched, path):
    r = app.get(path)
    assert r.status_code == 404
    error = sentence(r)
    assert error.startswith(("no job", "no file", "nothing at")), error
    assert b"state_dict" not in r.content and b"def " not in r.content


def test_a_thousand_unknown_jobs_are_404_sentences_and_leave_nothing(app, untouched):
    ids = [uuid.uuid4().hex[:12] for _ in range(900)]  # well-formed, never issued
    ids += [f"{'x' * k}..%2F{k}" for k in range(50)] + ["%00" * k + "a" for k in range(1, 51)]
    assert len(ids) == 1000
    for job in ids:
        r = app.get(f"/api/jobs/{job}")
        assert r.status_code == 404, (job, r.text)
        assert sentence(r).startswith(("no job", "nothing at"))
    r = app.get(f"/api/jobs/{ids[0]}")
    assert sentence(r) == f"no job '{ids[0]}' (finished jobs are kept 16 at a time)"
    r = app.get("/api/jobs/" + "f" * 5000)  # echoed cut short
    assert sentence(r) == f"no job '{'f' * 40}...' (a job id is the 12 hex digits POST /api/generate answered)"


def test_unknown_routes_and_methods_answer_a_json_sentence(app, untouched):
    r = app.get("/etc/passwd")
    assert r.status_code == 404 and sentence(r).startswith("nothing at GET '/etc/passwd': the page is GET /")
    r = app.get("/api/generate")
    assert r.status_code == 405 and sentence(r).startswith("GET '/api/generate' is not allowed here")


# ---------------------------------------------------------------- the name parameter


@pytest.mark.parametrize("name", ["a\x00b.mid", "song\n.mid", "\x1b[31mred.mid", "tab\there.mid", "del\x7f.mid",
                                  "c1\x85.mid"])
def test_a_name_with_a_control_character_is_a_400(app, untouched, name):
    r = app.post("/api/generate", params={"name": name, "bars": "1"}, content=prompt_midi(2))
    assert r.status_code == 400
    assert sentence(r) == f"name={name!r} holds a control character: send the prompt file's own name"


def test_an_overlong_name_is_a_400(app, untouched):
    r = app.post("/api/generate", params={"name": "a" * 300 + ".mid"}, content=prompt_midi(2))
    assert r.status_code == 400
    assert sentence(r).startswith("name is 304 characters long, more than the 255 a file name may have")


@pytest.mark.parametrize("name", ["../../etc/passwd", "..\\..\\windows\\win.ini", "/tmp/x/../../root/.ssh/id_rsa",
                                  "sub/song.mid"])
def test_a_name_with_path_separators_is_a_400(app, untouched, name):
    # The name only labels the upload, and a browser sends the bare file name: a path is refused
    # before the body is read, and nothing is written.
    r = app.post("/api/generate", params={"name": name, "bars": "1"}, content=prompt_midi(2))
    assert r.status_code == 400
    assert sentence(r) == (f"name={name!r} holds a path separator: send the prompt file's own name, "
                           "without folders")


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize("query, message", [
    ("temperature=abc", "temperature='abc' is not a number"),
    ("temperature=nan", "temperature='nan' is not a finite number: it must lie in [0, 2]"),
    ("temperature=NaN", "temperature='NaN' is not a finite number"),
    ("temperature=inf", "temperature='inf' is not a finite number"),
    ("temperature=-Infinity", "temperature='-Infinity' is not a finite number"),
    ("temperature=1e999", "temperature='1e999' is not a finite number"),
    ("temperature=-1", "temperature='-1' is out of range: it must lie in [0, 2]"),
    ("temperature=-0.0001", "temperature='-0.0001' is out of range"),
    ("top_p=nan", "top_p='nan' is not a finite number: it must lie in [0, 1]"),
    ("top_p=-0.5", "top_p='-0.5' is out of range: it must lie in [0, 1]"),
    ("top_p=0x1", "top_p='0x1' is not a number"),
    ("bars=nan", "bars='nan' is not an integer"),
    ("bars=inf", "bars='inf' is not an integer"),
    ("bars=-3", "bars='-3' is out of range: it must lie in [1, 64]"),
    ("bars=1e3", "bars='1e3' is not an integer"),
    ("bars=99999999999999999999999", "bars='99999999999999999999999' is out of range"),
    ("bars=" + "9" * 5000, "bars='" + "9" * 40 + "...' is not an integer"),  # int() refuses 4,300+ digits
    ("seed=-1", "seed='-1' is out of range: it must lie in [0, 9.22337e+18]"),
    ("seed=nan", "seed='nan' is not an integer"),
    ("seed=9223372036854775808", "seed='9223372036854775808' is out of range"),
    ("prompt_bars=-2", "prompt_bars='-2' is out of range: it must lie in [1, 16]"),
    ("prompt_bars=%00", "prompt_bars='\\x00' is not an integer"),
])
def test_bad_numbers_are_a_400_naming_the_key(app, untouched, query, message):
    r = app.post(f"/api/generate?{query}")
    assert r.status_code == 400
    assert sentence(r).startswith(message)


# ---------------------------------------------------------------- MIDI files


def test_a_header_claiming_65535_tracks_over_one_is_a_400(app, untouched):
    one = track([tempo(0, 120), *note_events([(0, 400, 60, 80)])])
    data = b"MThd" + struct.pack(">IHHH", 6, 1, 65535, 480) + one
    r = app.post("/api/generate?name=claims.mid", content=data)
    assert r.status_code == 400
    assert sentence(r) == ("the uploaded prompt claims.mid is damaged: its header declares 65,535 tracks but it "
                           "holds 1; re-save it from a MIDI editor")


def test_65535_real_empty_tracks_are_read_and_refused_for_having_no_notes(app, untouched):
    data = midi_file([track([])] * 65535)  # 786 kB, under the 2 MB limit
    r = app.post("/api/generate?name=many.mid", content=data)
    assert r.status_code == 400
    assert sentence(r) == "the uploaded prompt many.mid has no notes to continue"


# ---------------------------------------------------------------- the real server, over a socket


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile-server")
    for sub in ("cwd", "tmp"):
        (folder / sub).mkdir()
    ckpt = tiny_checkpoint(folder / "tiny.ckpt")
    with running_server(ckpt, "--no-audio", "--workdir", str(folder / "jobs"), "--body-timeout", str(BODY_TIMEOUT),
                        cwd=folder / "cwd", env={"TMPDIR": str(folder / "tmp")}) as s:
        s.folder = folder
        yield s


def written_by(server, request) -> tuple:
    """Run `request()`; returns its answer and what appeared in the server's folders (its cwd, its
    TMPDIR, the job store), the log aside."""
    before = tree(server.folder)
    answer = request()
    return answer, tree(server.folder) - before - {"cwd/server.log"}


def test_a_100_mb_body_is_refused_from_its_content_length_without_reading_it(server):
    rss = rss_bytes(server.pid)
    head = ("POST /api/generate?name=huge.mid HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: audio/midi\r\nContent-Length: 100000000")
    body = (b"MThd" + b"\0" * 65532 if i == 0 else b"\0" * 65536 for i in range(1526))  # 100 MB
    answer, new = written_by(server, lambda: raw_request(server.port, head, body))
    assert answer.status == 400 and answer.headers.get("connection") == "close"
    assert answer.json()["error"] == ("the uploaded prompt huge.mid is 100,000,000 bytes, more than 2,000,000 bytes, "
                                      "the most this server accepts (start it with a larger --max-upload-mb)")
    assert answer.closed and answer.sent < 100_000_000
    assert not new
    assert rss_bytes(server.pid) - rss < 20_000_000  # reading the body would have added 100 MB


def test_a_100_mb_chunked_body_is_cut_off_past_the_limit(server):
    rss = rss_bytes(server.pid)
    head = "POST /api/generate?name=huge.mid HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked"
    block = b"%x\r\n" % 65536 + b"\0" * 65536 + b"\r\n"
    body = (block for _ in range(1526))  # no length declared: 100 MB in 64 kB chunks
    answer, new = written_by(server, lambda: raw_request(server.port, head, body))
    assert answer.status == 400 and answer.headers.get("connection") == "close"
    assert answer.json()["error"] == ("the uploaded prompt huge.mid is more than 2,000,000 bytes, the most this "
                                      "server accepts (start it with a larger --max-upload-mb)")
    assert answer.closed and answer.sent < 100_000_000
    assert not new
    assert rss_bytes(server.pid) - rss < 20_000_000


def test_a_body_sent_one_byte_a_second_is_cut_off_by_the_body_timeout(server):
    head = "POST /api/generate?name=slow.mid HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 200"
    answer, new = written_by(server, lambda: raw_request(server.port, head, [b"M"] * 30, pause=1.0))
    assert answer.status == 408 and answer.headers.get("connection") == "close", answer
    error = answer.json()["error"]
    assert error.startswith(f"the uploaded prompt slow.mid did not arrive within {BODY_TIMEOUT} s (")
    assert error.endswith("send it at once, or start the server with a larger --body-timeout")
    assert answer.closed and answer.sent < 30  # cut off, not waited out
    assert not new
    status, info = server.get_json("/api/info")  # and the server goes on
    assert status == 200 and info["limits"]["body_timeout"] == BODY_TIMEOUT


@pytest.mark.parametrize("target", ["/api/jobs/../../../../etc/passwd", "/api/jobs/..%2F..%2Ftiny.ckpt",
                                    "/api/jobs/%2E%2E/tiny.ckpt", "/static/../../pianolm/serve.py"])
def test_a_raw_dot_dot_path_is_a_404_sentence(server, target):
    answer, new = written_by(server, lambda: raw_request(
        server.port, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close", []))
    assert answer.status == 404, answer
    assert answer.json()["error"].startswith(("no job", "no file", "nothing at")), answer.body
    assert b"state_dict" not in answer.body and b"def " not in answer.body
    assert not new


def test_hostile_requests_leave_the_real_server_answering(server):
    # After everything above: the queue is empty, nothing was queued, and a good request works.
    status, info = server.get_json("/api/info")
    assert status == 200 and info["queue"] == {"waiting": 0, "running": False}
    assert not (server.folder / "jobs").exists() or not any((server.folder / "jobs").iterdir())
    answer = raw_request(server.port, "POST /api/generate?bars=1&seed=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         "Content-Length: 0\r\nConnection: close", [])
    assert answer.status == 202 and len(json.loads(answer.body)["job"]) == 12
