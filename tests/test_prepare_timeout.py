"""remi.corpus.prepare's per-file bound (data.file_timeout): one file that runs long or hangs is skipped
and named with the bound, the rest of the corpus is prepared, and a resumed preparation does not
try it again unless the bound is raised.

The slow file is made slow on purpose: `prepare.encode_file` is replaced, in a child process that
runs `prepare` with two worker processes (forked, so they inherit the replacement), by one that
sleeps for an hour on the file named `hostile.mid`. Nothing here measures time: the test would
hang (and pytest-timeout fail it) if the bound did not hold."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from remi.corpus.datasets import DataConfig
from tests.hostile import note_pairs

ROOT = Path(__file__).resolve().parents[1]

_CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    import remi
    from remi.corpus import prepare
    from remi.corpus.datasets import DataConfig

    mode, folder, cache, timeout, calls = sys.argv[1:6]
    real = prepare.encode_file

    def encode_file(path, tok):
        with open(calls, "a") as f:
            f.write(Path(path).name + "\\n")
        if Path(path).name == "hostile.mid" and mode == "crash":
            os._exit(9)  # as a segfault or the OOM killer would end the worker
        if Path(path).name == "hostile.mid" and mode in ("slow", "hang"):
            if mode == "hang":
                # SIGALRM blocked: the interrupt cannot land, as in a long call inside C code
                signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGALRM}})
            time.sleep(3600)
        return real(path, tok)

    prepare.encode_file = encode_file
    if mode == "broken":  # every worker dies before its first file
        prepare._init_worker = lambda *a: os._exit(3)
    prepare.KILL_GRACE_S = 0.5
    tok = remi.Tokenizer.from_file({root!r} + "/conf/tokenizer/coarse.yaml")
    cfg = DataConfig(name="t", sources=(folder,), file_timeout=float(timeout))
    r = prepare.prepare(cfg, tok, cache_dir=cache, workers=2, progress=False)
    print(json.dumps({{"files": [f["file"] for f in r.manifest["files"]], "skipped": r.manifest["skipped"],
                      "reused": r.reused}}))
""")


def _corpus(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    for k in range(6):
        (d / f"song{k}.mid").write_bytes(note_pairs(40 + k))
    (d / "hostile.mid").write_bytes(note_pairs(100))
    return d


def _prepare(tmp_path: Path, mode: str, timeout: float, ok: bool = True) -> tuple[dict, list[str]]:
    """Run prepare in a child process; return its summary (its stderr if `ok` is False) and the
    files the encoder was called on."""
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    code = _CHILD.format(root=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code, mode, str(tmp_path / "corpus"), str(tmp_path / "cache"),
                          str(timeout), str(calls)], capture_output=True, text=True, timeout=300)
    if not ok:
        assert out.returncode != 0
        return out.stderr, calls.read_text().split()
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), calls.read_text().split()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["slow", "hang"])
def test_a_file_over_the_bound_is_skipped_named_and_not_retried(tmp_path, mode):
    _corpus(tmp_path)
    first, calls = _prepare(tmp_path, mode, 1.0)
    assert sorted(first["files"]) == [f"song{k}.mid" for k in range(6)]  # the rest are prepared
    (skip,) = first["skipped"]
    assert skip["file"] == "hostile.mid"
    assert "took longer than 1 s" in skip["reason"] and "data.file_timeout" in skip["reason"]
    if mode == "hang":  # the interrupt could not land: the main process killed the worker
        assert "worker was killed" in skip["reason"]
    assert "hostile.mid" in calls

    # Resumed at the same bound: nothing is encoded again, the hostile file least of all.
    again, calls = _prepare(tmp_path, mode, 1.0)
    assert calls == [] and again["skipped"] == first["skipped"]


@pytest.mark.timeout(600)
def test_a_higher_bound_tries_a_timed_out_file_again(tmp_path):
    _corpus(tmp_path)
    _prepare(tmp_path, "slow", 1.0)
    # The file is quick now ("fast" mode): under a higher bound it is tried again and prepared;
    # the files that were prepared before come from the cache.
    raised, calls = _prepare(tmp_path, "fast", 30.0)
    assert calls == ["hostile.mid"]
    assert "hostile.mid" in raised["files"] and raised["skipped"] == []


def test_in_process_bound_interrupts_python_code(tmp_path, monkeypatch):
    # One worker: the file is encoded in this process, where SIGALRM interrupts Python code.
    from remi.corpus import prepare

    if not hasattr(prepare.signal, "setitimer"):
        pytest.skip("no SIGALRM on this platform")
    monkeypatch.setattr(prepare, "encode_file", lambda path, tok: prepare.time.sleep(3600))
    r = prepare.encode_bounded("x.mid", None, 0.2)
    assert r.ids is None and r.error == prepare.timed_out_reason(0.2)


@pytest.mark.parametrize("bad", [0, -1, float("inf"), "60", True])
def test_file_timeout_is_checked(bad):
    with pytest.raises(ValueError, match="data.file_timeout"):
        DataConfig(file_timeout=bad)


@pytest.mark.timeout(600)
def test_a_worker_that_dies_skips_its_file_for_this_run_only(tmp_path):
    _corpus(tmp_path)
    first, _ = _prepare(tmp_path, "crash", 30.0)
    assert sorted(first["files"]) == [f"song{k}.mid" for k in range(6)]
    (skip,) = first["skipped"]
    assert skip["file"] == "hostile.mid" and skip["reason"].startswith("worker process died (exit code")
    # A crash may be transient (the OOM killer): the next run tries that file, and only that file.
    again, calls = _prepare(tmp_path, "fast", 30.0)
    assert calls == ["hostile.mid"] and again["skipped"] == []


@pytest.mark.timeout(600)
def test_workers_that_cannot_start_stop_the_run_instead_of_skipping_every_file(tmp_path):
    _corpus(tmp_path)
    err, calls = _prepare(tmp_path, "broken", 30.0, ok=False)
    assert "worker processes died in a row" in err and calls == []
