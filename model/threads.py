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

SINGLE_THREAD_MAX_BATCH = 8  # torch's decoding: up to this many rows, one thread is fastest


def decode_threads(batch: int, numpy: bool = True) -> int:
    """Threads for decoding `batch` rows at once (docs/sampling.md's table):

    - the NumPy decoder (`model.cpu_decode`) and the fused one built on it (`model.fused_decode`,
      single-threaded compiled code, NumPy's step for long prompts): 1 at every batch measured (1,
      4 and 48). The BLAS products are matrix-vector or thin, and a second OpenBLAS thread made
      batch 4 3.6x and batch 48 1.5x slower on 2 cores, quiet or busy;
    - torch's path: 1 up to SINGLE_THREAD_MAX_BATCH rows, else torch's thread count (batch 48 ran
      1.4x faster on 2 threads than on 1).
    """
    return 1 if numpy or batch <= SINGLE_THREAD_MAX_BATCH else torch.get_num_threads()


def check_threads(n) -> int:
    """`n`, or the one ValueError for a thread count that is not an integer >= 1."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads={n!r}: must be an integer >= 1 (CPU threads while decoding), or None for the "
                         "rule (model/threads.py: one thread on the CPU decoder)")
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
