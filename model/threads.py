"""CPU threads for decoding, chosen by the work: `decode_threads(batch)` is the rule,
`threads_for(n)` applies it to torch and to NumPy's BLAS for one generation and puts both back.

Batch-1 decoding is ~60 tiny operations per token. A second thread speeds none of them up much
and, on a machine where another job holds the cores, every operation waits for a thread that is
not running (torch's two default threads on a busy 2-core machine decoded 31 tokens/s, one
thread 271: issue 28). The table in docs/sampling.md, from `python benchmarks/bench_decode.py`,
chose the rule; `threads=` (the API, sample.py's `cpu_threads`, the page's and evaluate.py's
`--threads`) overrides it.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

SINGLE_THREAD_MAX_BATCH = 8  # up to this many rows, one thread decodes fastest (docs/sampling.md)


def decode_threads(batch: int) -> int:
    """Threads for decoding `batch` rows at once: 1 for small batches, else torch's thread count."""
    return 1 if batch <= SINGLE_THREAD_MAX_BATCH else torch.get_num_threads()


def check_threads(n) -> int:
    """`n`, or the one ValueError for a thread count that is not an integer >= 1."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads={n!r}: must be an integer >= 1 (CPU threads while decoding), or None for the "
                         f"rule (one thread for up to {SINGLE_THREAD_MAX_BATCH} rows)")
    return n


@contextlib.contextmanager
def threads_for(n: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block with `n` intra-op threads in torch and in NumPy's BLAS (threadpoolctl); on
    anything but the CPU it changes nothing."""
    check_threads(n)
    if torch.device(device).type != "cpu":
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(min(n, os.cpu_count() or n))
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)
