"""Shared test fixtures: where the real MIDI lives, and a skip when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_MIDI = Path(os.environ.get("PIANOLM_SHARED_MIDI", ROOT.parent / "shared" / "midi"))


def shared_midi_files(subdir: str = "") -> list[Path]:
    """Every .mid/.midi file under ../shared/midi/<subdir>, sorted; [] when the folder is absent."""
    base = SHARED_MIDI / subdir
    if not base.is_dir():
        return []
    return sorted(p for p in base.rglob("*") if p.suffix.lower() in (".mid", ".midi") and p.is_file())


@pytest.fixture(scope="session")
def shared_midi() -> Path:
    if not SHARED_MIDI.is_dir():
        pytest.skip(f"real MIDI folder {SHARED_MIDI} is absent (put the corpora there or set $PIANOLM_SHARED_MIDI)")
    return SHARED_MIDI


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
