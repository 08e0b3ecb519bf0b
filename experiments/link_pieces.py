"""Link the held-out test pieces of a shard folder into one folder, for `evaluate.py --real`.

    python experiments/link_pieces.py SHARD_DIR OUT_FOLDER [--split val]

The test split is the one `remi.corpus.prepare` assigned (MAESTRO's official split, content hash for the
others) and recorded in the shard manifest; each file is linked as `<source>__<path with / as _>`,
so a sorted listing groups pieces by source and `evaluate.py --max-pieces` spreads over all.
`--split val` links the validation pieces instead: choose sampling settings on those, and
measure the chosen ones once on the test pieces.
"""
from __future__ import annotations

from pathlib import Path

from experiments.common import test_split_files


def link_split(shard_dir: str | Path, out: str | Path, split: str = "test") -> list[Path]:
    import json

    manifest = json.loads((Path(shard_dir) / "manifest.json").read_text())
    folders = {name: Path(s["folder"]).resolve() for name, s in manifest.get("sources", {}).items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    links = []
    for f in test_split_files(shard_dir, split):
        source = next(name for name, folder in folders.items() if f.resolve().is_relative_to(folder))
        link = out / f"{source}__{f.resolve().relative_to(folders[source]).as_posix().replace('/', '_')}"
        if not link.exists():
            link.symlink_to(f.resolve())
        links.append(link)
    return links


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Link a split's pieces of a shard folder into one folder.")
    p.add_argument("shard_dir")
    p.add_argument("out")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    a = p.parse_args()
    print(f"{len(link_split(a.shard_dir, a.out, a.split))} {a.split} pieces linked in {a.out}")
