"""experiments/link_pieces.py: a split's pieces of a shard folder, linked into one folder by source."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_each_split_links_its_own_files(tmp_path):
    src = tmp_path / "corpus"
    (src / "sub").mkdir(parents=True)
    files = {"a.mid": "test", "sub/b.mid": "val", "c.mid": "train", "d.mid": "val"}
    for name in files:
        (src / name).write_bytes(b"MThd")
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({
        "sources": {"toy": {"folder": str(src)}},
        "files": [{"source": "toy", "file": f, "split": s} for f, s in files.items()]}))
    linked = {}
    for split in ("test", "val"):
        out = tmp_path / split
        args = [sys.executable, "experiments/link_pieces.py", str(shards), str(out)] + (["--split", split] if split != "test" else [])
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        linked[split] = sorted(p.name for p in out.iterdir())
        assert all((out / n).resolve().is_file() for n in linked[split])
    assert linked["test"] == ["toy__a.mid"]
    assert linked["val"] == ["toy__d.mid", "toy__sub_b.mid"]
