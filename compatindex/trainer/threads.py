"""CPU thread counts for the trainer's numerics, chosen by measuring.

On a 2-core machine that other processes keep busy, one BLAS/torch thread ran a 1280-d SVD in
2.4 s and two threads in 11.9 s (oversubscription: each thread waits for a core). On an idle
machine more threads win. :func:`best_threads` therefore times the same small kernel with one
thread and with every core once per process and keeps the faster; :func:`limit_threads` applies
a count to torch and (through ``threadpoolctl``, when installed) to numpy/scipy's BLAS, and
restores the previous settings afterwards.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import numpy as np

_BEST: int | None = None


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _time_kernel(reps: int = 2) -> float:
    a = np.random.default_rng(0).standard_normal((256, 256))
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        np.linalg.svd(a, compute_uv=True)
        (a @ a) @ a
        best = min(best, time.perf_counter() - t)
    return float(best)


def best_threads() -> int:
    """The faster of 1 and all cores for a small SVD + matmul, measured once per process.

    ``COMPATINDEX_THREADS`` in the environment overrides the measurement.
    """
    global _BEST
    env = os.environ.get("COMPATINDEX_THREADS")
    if env:
        return max(1, int(env))
    if _BEST is None:
        n = _cores()
        if n == 1:
            _BEST = 1
        else:
            timings = {}
            for k in (1, n):
                with limit_threads(k):
                    timings[k] = _time_kernel()
            _BEST = min(timings, key=lambda k: (timings[k], k))
    return _BEST


@contextlib.contextmanager
def limit_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``n`` torch and BLAS threads (``None``: :func:`best_threads`)."""
    k = best_threads() if n is None else max(1, int(n))
    torch_prev = None
    try:
        import torch

        torch_prev = torch.get_num_threads()
        torch.set_num_threads(k)
    except ImportError:  # pragma: no cover - closed forms need no torch
        torch = None  # type: ignore[assignment]
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - BLAS keeps its own setting
        ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
    else:
        ctx = threadpool_limits(limits=k)
    try:
        with ctx:
            yield k
    finally:
        if torch is not None and torch_prev is not None:
            torch.set_num_threads(torch_prev)
