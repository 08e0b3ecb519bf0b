"""Where pianolm keeps things on disk when no path is given: the corpora, the cache and `conf/`.

Every default is read from the environment or the working directory, never from where this
package is installed, so an installed copy (`pip install .`) finds them as a checkout does:
`$PIANOLM_DATA`, `$PIANOLM_CACHE`, `$PIANOLM_CONF`, else `data/`, `cache/`, `conf/` under
`$PIANOLM_ROOT` (default: the current folder). conf/paths/default.yaml says the same for Hydra.
"""
from __future__ import annotations

import os
from pathlib import Path


def root_dir() -> Path:
    return Path(os.environ.get("PIANOLM_ROOT") or ".")


def default_cache_dir() -> Path:
    """`$PIANOLM_CACHE`, else `<root>/cache` — the same place as `paths.cache_dir` in conf/paths,
    so shards prepared on the command line are the ones train.py finds."""
    return Path(os.environ.get("PIANOLM_CACHE") or root_dir() / "cache").expanduser()


def default_data_dir() -> Path:
    """`$PIANOLM_DATA`, else `<root>/data` (as `paths.data_dir`): one folder per corpus."""
    return Path(os.environ.get("PIANOLM_DATA") or root_dir() / "data").expanduser()


def default_conf_dir() -> Path:
    """`$PIANOLM_CONF`, else `<root>/conf`: the Hydra configs the command lines read by name
    (`--tokenizer fine` is `<conf>/tokenizer/fine.yaml`). Pass a path to use another."""
    return Path(os.environ.get("PIANOLM_CONF") or root_dir() / "conf").expanduser()
