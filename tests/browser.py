"""Drive `python -m pianolm serve` in a real headless browser (selenium + Debian's chromium and
chromium-driver): used by tests/test_serve_browser.py, and runnable for the docs' screenshot:

    python -m tests.browser CKPT docs/img/serve.png [--bars 8] [--seed 3] [--temperature 0.9]

Starts the real server (uvicorn, in a subprocess, on a free port), opens the page, sets the
sliders, clicks Generate and waits for the piece, then for its audio. Imports selenium only when
a browser is made.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests import serve_helpers

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)


def find_browser() -> tuple[str | None, str | None]:
    """(chromium, chromedriver) executables, $CHROMIUM / $CHROMEDRIVER first; None where absent."""
    def first(env: str, names) -> str | None:
        found = [os.environ.get(env)] + [shutil.which(n) for n in names]
        return next((p for p in found if p and Path(p).is_file()), None)

    return first("CHROMIUM", CHROMIUM_NAMES), first("CHROMEDRIVER", DRIVER_NAMES)


def missing_browser() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    for module, hint in (("selenium", "pip install selenium (in the dev extra)"),
                         ("uvicorn", "pip install 'pianolm[serve]'"), ("starlette", "pip install 'pianolm[serve]'")):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed ({hint})"
    chromium, driver = find_browser()
    if chromium is None or driver is None:
        return ("no " + ("chromium" if chromium is None else "chromedriver") + " found: "
                "apt-get install chromium chromium-driver (.ci/run does), or set $CHROMIUM and $CHROMEDRIVER")
    return None


def get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def running_server(ckpt: str | Path, *args: str, timeout: float = 180.0, log: Path | None = None):
    """`python -m pianolm serve CKPT ARGS...` until the block ends (tests.serve_helpers'
    running_server, its output in `log`'s folder as server.log, or in a temporary folder); yields
    its base URL."""
    with contextlib.ExitStack() as stack:
        cwd = Path(log).parent if log else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        server = stack.enter_context(serve_helpers.running_server(Path(ckpt), *args, cwd=cwd, timeout=timeout))
        yield server.url


@contextlib.contextmanager
def in_process_server(studio, timeout: float = 30.0):
    """`build_app(studio)` under uvicorn on a thread of this process, on a free port, until the
    block ends; yields its base URL. For tests that reach into the server (hold or break its
    audio rendering) while the browser drives the page."""
    import uvicorn

    from pianolm.serve import build_app

    port = serve_helpers.free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(studio), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port} within {timeout:.0f} s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def chrome(width: int = 1000, height: int = 1250):
    """A headless chromium under selenium, driven through the system's chromedriver (no download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--autoplay-policy=no-user-gesture-required", f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def set_value(driver, element_id: str, value) -> None:
    """Set a slider or input as a person would (the page listens to `input` events)."""
    driver.execute_script("const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                          "e.dispatchEvent(new Event('input', {bubbles: true}));", element_id, str(value))


def wait_state(driver, states: tuple[str, ...], timeout: float, attribute: str = "data-state") -> str:
    """Wait until the page's body[attribute] is one of `states`; returns it."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        lambda d: d.find_element("tag name", "body").get_attribute(attribute) in states)
    return driver.find_element("tag name", "body").get_attribute(attribute)


AUDIO_SETTLED = ("ready", "none", "unplayable")  # body[data-audio] once the audio is in, or will not come


def wait_audio(driver, timeout: float) -> str:
    """Wait until the shown piece's audio has settled: `ready` (the browser read its length),
    `none` (no renderer, or rendering failed: the note says why) or `unplayable`; returns it."""
    return wait_state(driver, AUDIO_SETTLED, timeout, attribute="data-audio")


def open_page(driver, url: str, timeout: float = 30.0) -> None:
    """Load the page and wait until it has read the model's details (GET /api/info)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    WebDriverWait(driver, timeout).until(lambda d: "context" in d.find_element("id", "model").text)


# Stamps, in the page's own clock, the moment body[data-state] first becomes done or error (with
# what body[data-audio] said then), and the moment body[data-audio] first settles after that.
_STAMPS = """
const settled = arguments[0];
window.__pianolm = {end: null, audioAtEnd: null, audio: null};
new MutationObserver((changes, observer) => {
  const t = performance.now(), state = document.body.dataset.state, audio = document.body.dataset.audio, s = window.__pianolm;
  if (s.end === null && (state === "done" || state === "error")) { s.end = t; s.audioAtEnd = audio || null; }
  if (s.end !== null && s.audio === null && settled.includes(audio)) { s.audio = t; }
  if (s.audio !== null || state === "error") observer.disconnect();
}).observe(document.body, { attributes: true, attributeFilter: ["data-state", "data-audio"] });
"""


@dataclass
class Timing:
    """One click on Generate, by the browser's clock."""

    state: str  # done | error
    piece_s: float  # click to the piece shown: piano roll drawn, MIDI link, summary
    audio_s: float | None  # click to the audio settled (player ready, or the note why not); None: not waited for
    audio: str | None  # body[data-audio] once settled (ready | none | unplayable)
    audio_at_piece: str | None  # body[data-audio] when the piece was shown: `pending` while it renders


def generate(driver, timeout: float = 300.0, prompt: Path | None = None, button: str = "generate", **settings) -> str:
    """Set the page's controls (temperature, top_p, bars, seed, prompt_bars, infill_from,
    infill_to), attach `prompt`, click Generate (or `button`, e.g. "regenerate"); returns the
    page's state once it is done or shows an error (the audio may still be on its way: `wait_audio`)."""
    return timed_generate(driver, timeout, prompt, audio=False, button=button, **settings).state


def timed_generate(driver, timeout: float = 300.0, prompt: Path | None = None, audio: bool = True,
                   button: str = "generate", **settings) -> Timing:
    """`generate`, timed from the click by the browser's own clock: to the piece shown, and (with
    `audio`) to its audio settled. A MutationObserver stamps the page's state changes, so how
    often this side polls adds nothing."""
    if prompt is not None:
        driver.find_element("id", "prompt").send_keys(str(Path(prompt).resolve()))
    for key, value in settings.items():
        set_value(driver, key, value)
    driver.execute_script(_STAMPS, list(AUDIO_SETTLED))
    start = driver.execute_script("return performance.now();")
    driver.find_element("id", button).click()
    state = wait_state(driver, ("done", "error"), timeout)
    settled = wait_audio(driver, timeout) if audio and state == "done" else None
    stamps = driver.execute_script("return window.__pianolm;")
    audio_s = (stamps["audio"] - start) / 1000.0 if settled else None
    return Timing(state, (stamps["end"] - start) / 1000.0, audio_s, settled, stamps["audioAtEnd"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.browser", description="A screenshot of the page after a generation.")
    p.add_argument("ckpt")
    p.add_argument("out", type=Path)
    p.add_argument("--bars", type=int, default=8)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--prompt", type=Path, default=None)
    p.add_argument("--prompt-bars", type=int, default=4)
    args = p.parse_args(argv)
    reason = missing_browser()
    if reason:
        print(f"cannot take the screenshot: {reason}", file=sys.stderr)
        return 2
    with running_server(args.ckpt) as url:
        driver = chrome()
        try:
            open_page(driver, url)
            extra = {"prompt_bars": args.prompt_bars} if args.prompt else {}
            timing = timed_generate(driver, prompt=args.prompt, temperature=args.temperature,
                                    top_p=args.top_p, bars=args.bars, seed=args.seed, **extra)
            if timing.state != "done":
                print(f"the page shows an error: {driver.find_element('id', 'error').text}", file=sys.stderr)
                return 1
            from selenium.webdriver.support.ui import WebDriverWait

            # The PNG comes last, after the audio: the page is complete when its link shows.
            WebDriverWait(driver, 120).until(lambda d: d.find_element("id", "png-link").is_displayed())
            args.out.parent.mkdir(parents=True, exist_ok=True)
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1000, height + 40)
            driver.save_screenshot(str(args.out))
            print(f"wrote {args.out}; {driver.find_element('id', 'summary').text}; click to piece shown "
                  f"{timing.piece_s:.2f} s, to audio {timing.audio} {timing.audio_s:.2f} s (the browser's clock)",
                  file=sys.stderr)
        finally:
            driver.quit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
