"""remi.corpus.bundled: music21 corpus -> MIDI cache (small `limit` runs; the full corpus is in test_prepare)."""
from __future__ import annotations

import json

import pytest

import remi
from remi.corpus import bundled


def test_jobs_are_fixed_ordered_unique_and_cover_the_collections():
    js = bundled.jobs()
    assert js == bundled.jobs()
    assert len({j.name for j in js}) == len(js)
    names = [c for c, _ in bundled.COLLECTIONS]
    assert [names.index(j.collection) for j in js] == sorted(names.index(j.collection) for j in js)
    have = {j.collection for j in js}
    assert {"bach", "oneills1850", "monteverdi", "joplin", "miscFolk"} <= have
    assert sum(j.collection == "bach" for j in js) > 300


def test_limit_converts_a_prefix_with_key_signatures_and_resumes(tmp_path):
    r = bundled.convert(tmp_path, limit=3, workers=1, progress=False)
    files = r["files"]
    assert len(files) == 3 and r["converted_jobs"] >= 3
    for f in files:
        assert f.is_file() and f.is_relative_to(tmp_path / "bundled")
        score = remi.read_midi(f)
        assert len(score) > 20
    # the first collection is the Bach chorales, whose key signatures must survive
    assert all(f.parent.name == "bach" for f in files)
    assert all(remi.read_midi(f).key_signatures for f in files)
    markers = sorted((tmp_path / "bundled" / bundled.DONE).glob("*.json"))
    assert len(markers) == 3 and all(json.loads(m.read_text())["written"] for m in markers)

    again = bundled.convert(tmp_path, limit=3, workers=1, progress=False)
    assert again["converted_jobs"] == 0 and again["files"] == files

    # a lost piece (or marker) is converted again; the others are reused
    files[1].unlink()
    resumed = bundled.convert(tmp_path, limit=3, workers=1, progress=False)
    assert resumed["converted_jobs"] == 1 and resumed["files"] == files and files[1].is_file()


def test_a_piece_that_fails_is_reported_not_raised(tmp_path):
    bad = tmp_path / "broken.xml"
    bad.write_text("<score-partwise><part-list>this is not MusicXML")
    r = bundled.convert_job(bundled.Job("bach", str(bad), "broken.xml"), str(tmp_path / "out"))
    assert r["written"] == [] and len(r["failed"]) == 1
    piece, reason = r["failed"][0]
    assert piece == "bach__broken" and reason
    assert (tmp_path / "out" / bundled.DONE / "bach__broken.json").is_file()


def test_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PIANOLM_CACHE", str(tmp_path / "c"))
    assert bundled.bundled_dir() == tmp_path / "c" / "bundled"
    assert bundled.bundled_dir(tmp_path / "x") == tmp_path / "x" / "bundled"


@pytest.mark.slow  # music21 parses a whole ABC tune book
def test_abc_opus_gives_many_pieces_per_file(tmp_path):
    """O'Neill's tune book files hold ~50 tunes each: one job, many MIDI files."""
    job = next(j for j in bundled.jobs() if j.collection == "oneills1850")
    r = bundled.convert_job(job, str(tmp_path))
    assert len(r["written"]) + len(r["failed"]) >= 40
    assert len(r["written"]) >= 30
    assert len(set(r["written"])) == len(r["written"])
