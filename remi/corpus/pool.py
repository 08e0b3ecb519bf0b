"""Worker pools for the corpus steps (bundled conversion, tokenizing): how many, and how started."""
from __future__ import annotations

import multiprocessing as mp
import os
import sys


def pool_context() -> mp.context.BaseContext:
    """fork where it is safe (cheap start; nothing threaded such as torch imported yet), else spawn."""
    if "fork" in mp.get_all_start_methods() and "torch" not in sys.modules:
        return mp.get_context("fork")
    return mp.get_context("spawn")


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
