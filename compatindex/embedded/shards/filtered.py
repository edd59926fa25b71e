"""Filtered search of one shard: top-``k`` among the items a filter allows.

The filter arrives as a bool mask over internal ids (:mod:`compatindex.embedded.payload_index`),
already combined with the items the shard represents for the query (its :class:`PrefView`). Which
way to search depends on the shard kind and on how many of its rows ``m`` are allowed out of ``n``
(measured at 1M x 64 on 2 cores: bench/bench_filter.py, docs/benchmarks.md):

- **flat, CPU** (exact; results equal brute force of filter-then-top-k):
  - a batch (:data:`BATCH_NQ` queries or more) under a broad filter (``m >= OVERFETCH_FRACTION
    * n``): the bare BLAS search for ``k n / m * 1.25 + 16`` candidates, the disallowed dropped
    (as the shadowed-item code does); queries left short are gathered (below). At 1M, 50-90%
    allowed, 100 queries: 1.2-5x faster than the gather.
  - a batch under a narrower filter, or a single query with ``m <= GATHER_FRACTION * n``:
    gather the allowed rows and score them with one matmul per block of rows, then an exact
    top-k. FAISS's selector turns off the BLAS path, so it scans row by row; the gather costs a
    copy of ``m`` rows and is 8-150x faster than the selector for a batch.
  - otherwise (single queries under a broad filter): FAISS's ``IDSelectorBitmap`` over *rows*
    of the inner flat index (no id translation per row), as a hand-built selector would.
- **HNSW**: ``m <= EXACT_ROWS``: the same exact gather from the graph's flat storage (a graph
  walk under a selective filter loses recall); otherwise the node-bitmap selector with
  ``efSearch`` raised by ``1 / sqrt(m / n)``.
- **IVF**: the bitmap selector, ``nprobe`` raised to ``nprobe / sqrt(m / n)`` and so that the
  lists probed hold about ``4 k`` allowed vectors on average (all lists, i.e. exact, when the
  filter is very selective); an untrained IVF shard is flat and is gathered.
- **GPU / torch mirrors**: the bitmap over internal ids (they filter by it natively).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .faiss_shard import FaissShard
    from .shard_set import PrefView, ShardSet

BATCH_NQ = 20          # from this many queries on, faiss's flat search would use BLAS
GATHER_FRACTION = 0.2  # single queries: gather when at most this fraction of the rows is allowed
EXACT_ROWS = 32768     # HNSW: allowed rows scored exactly up to this many
BLOCK_ROWS = 32768     # rows gathered and scored at once (bounds memory: nq x BLOCK_ROWS scores)
HNSW_EF_MAX = 2048
OVERFETCH_FRACTION = 0.3  # batches: at least this fraction allowed, search bare and drop the rest


def faiss_inner(idx):
    from ..faiss_import import faiss

    return faiss.downcast_index(idx.index)


SMALL_PRODUCT = 1 << 22  # scores (rows x queries) below which BLAS runs on one thread
_blas: list = []


def _one_blas_thread(size: int):
    """A context that keeps numpy's BLAS on one thread for a small product (threadpoolctl when
    installed). Waking BLAS threads costs more than the product itself when the cores are busy:
    measured on 2 loaded cores, 10,000 rows x 1 query took 11 ms threaded, 0.4 ms on one thread."""
    if size >= SMALL_PRODUCT:
        return contextlib.nullcontext()
    if not _blas:
        try:
            from threadpoolctl import ThreadpoolController

            _blas.append(ThreadpoolController())
        except ImportError:
            _blas.append(None)
    ctl = _blas[0]
    return contextlib.nullcontext() if ctl is None else ctl.limit(limits=1, user_api="blas")


def _empty(nq: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64)


def exact_topk(q: np.ndarray, xb: np.ndarray, rows: np.ndarray, ids: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``q`` among ``xb[rows]``; ids are ``ids[rows]``, best first.

    Scores are computed as ``X @ q.T`` (rows by queries): with BLAS that is several times faster
    than ``q @ X.T`` for small batches."""
    nq, m = len(q), len(rows)
    k = min(k, m)
    if k == 0:
        return _empty(nq)
    with _one_blas_thread(m * nq):
        return _exact_topk(q, xb, rows, ids, k)


def _exact_topk(q: np.ndarray, xb: np.ndarray, rows: np.ndarray, ids: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    nq, m = len(q), len(rows)
    qt = np.ascontiguousarray(q.T)
    best_d: np.ndarray | None = None  # (k', nq) scores and rows, one column per query
    best_r: np.ndarray | None = None
    for s in range(0, m, BLOCK_ROWS):
        r = rows[s : s + BLOCK_ROWS]
        S = np.take(xb, r, axis=0) @ qt
        if len(S) > k:
            part = np.argpartition(S, len(S) - k, axis=0)[-k:]
            S = np.take_along_axis(S, part, 0)
            R = r[part]
        else:
            R = np.broadcast_to(r[:, None], S.shape)
        if best_d is None:
            best_d, best_r = S, R
        else:
            assert best_r is not None
            best_d = np.concatenate([best_d, S], axis=0)
            best_r = np.concatenate([best_r, R], axis=0)
            if len(best_d) > k:
                part = np.argpartition(best_d, len(best_d) - k, axis=0)[-k:]
                best_d = np.take_along_axis(best_d, part, 0)
                best_r = np.take_along_axis(best_r, part, 0)
    assert best_d is not None and best_r is not None
    order = np.argsort(-best_d, axis=0, kind="stable")
    D = np.ascontiguousarray(np.take_along_axis(best_d, order, 0).T, dtype=np.float32)
    I = np.ascontiguousarray(ids[np.take_along_axis(best_r, order, 0)].T)
    return D, I


class _Allowed:
    """The rows of one shard a filter allows: the row mask, its count, and (built on first need)
    the sorted rows and the packed row bitmap. Cached per (mask, shard contents, view state)."""

    def __init__(self, rowmask: np.ndarray) -> None:
        self.rowmask = rowmask
        self.m = int(np.count_nonzero(rowmask))
        self._rows: np.ndarray | None = None
        self._bits: np.ndarray | None = None

    @property
    def rows(self) -> np.ndarray:
        if self._rows is None:
            self._rows = np.flatnonzero(self.rowmask)
        return self._rows

    @property
    def bits(self) -> np.ndarray:
        if self._bits is None:
            self._bits = np.packbits(self.rowmask, bitorder="little")
        return self._bits


CACHE = 8  # allowed-row sets kept per shard set (a few filters searched in turn)


def _allowed_rows(shards: "ShardSet", vcode: int, shard: "FaissShard", view: "PrefView | None",
                  match: np.ndarray) -> _Allowed | None:
    """The rows of ``shard`` whose item ``match`` allows and ``view`` has it represent (None: IVF)."""
    key = (id(match), vcode, shard.version, shards.seq, None if view is None else view.pref)
    cache = shards.filter_cache
    hit = cache.get(key)
    if hit is not None and hit[0] is match:
        return hit[1]
    access = shard.rows()
    if access is None:
        return None
    _, ids, pos, identity = access
    allowed = match
    if view is not None and view.shadowed.get(vcode, 0):
        w = min(len(match), len(view.rep))
        allowed = np.zeros(len(match), dtype=bool)
        allowed[:w] = match[:w] & (view.rep[:w] == vcode)
    n = len(ids)
    if identity:
        rowmask = np.zeros(n, dtype=bool)
        w = min(n, len(allowed))
        rowmask[:w] = allowed[:w]
    else:
        padded = allowed
        if len(padded) < len(pos):
            padded = np.zeros(len(pos), dtype=bool)
            padded[: len(allowed)] = allowed
        rowmask = padded[np.where(ids >= 0, ids, 0)] & (ids >= 0)
    out = _Allowed(rowmask)
    cache[key] = (match, out)
    try:
        while len(cache) > CACHE:
            cache.pop(next(iter(cache)))
    except (KeyError, RuntimeError, StopIteration):  # another search thread trimmed it meanwhile
        pass
    return out


def search_filtered(shards: "ShardSet", vcode: int, q: np.ndarray, k: int, view: "PrefView | None",
                    match: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of shard ``vcode`` among the items it represents in ``view`` that ``match`` allows.

    ``match`` is a read-only bool mask over internal ids (items past its end are not allowed).
    """
    shard = shards.shards[vcode]
    nq = q.shape[0]
    n = shard.ntotal
    if n == 0:
        return _empty(nq)
    kind = shards.spec.kind
    got = None if shards.device != "cpu" else _allowed_rows(shards, vcode, shard, view, match)
    if got is None:  # accelerator mirrors and trained IVF: a bitmap over internal ids
        allowed = match
        if view is not None and view.shadowed.get(vcode, 0):
            w = min(len(match), len(view.rep))
            allowed = np.zeros(len(match), dtype=bool)
            allowed[:w] = match[:w] & (view.rep[:w] == vcode)
        m = int(np.count_nonzero(allowed))
        if m == 0:
            return _empty(nq)
        bits = np.packbits(allowed, bitorder="little")
        if shards.device != "cpu":
            return shards._search(vcode, q, k, bits)
        # IVF: the nearest allowed vectors lie farther out than the nearest ones: probe
        # nprobe / sqrt(m / n) lists, and enough to hold about 4 k allowed vectors on average
        nlist = shards.spec.nlist
        want = max(math.ceil(shards.spec.nprobe / math.sqrt(m / max(n, m))), math.ceil(4 * min(k, m) * nlist / m))
        nprobe = int(min(nlist, max(shards.spec.nprobe, want)))
        return shard.search(q, min(k, m), bits, nprobe=nprobe)
    m = got.m
    if m == 0:
        return _empty(nq)
    xb, ids, _, _ = shard.rows()  # type: ignore[misc]
    if kind == "hnsw" and shard.staging is None:
        if m <= EXACT_ROWS:
            return exact_topk(q, xb, got.rows, ids, k)
        ef = int(min(HNSW_EF_MAX, max(shards.spec.ef_search, k) / math.sqrt(m / max(n, 1))))
        return shard.search_rows(q, min(k, m), got.bits, ef=ef)
    if nq >= BATCH_NQ and m >= OVERFETCH_FRACTION * n and kind == "flat":
        return _overfetch(shard, q, k, got, xb, ids)
    if nq >= BATCH_NQ or m <= GATHER_FRACTION * n:
        return exact_topk(q, xb, got.rows, ids, k)
    return shard.search_rows(q, min(k, m), got.bits)


def _overfetch(shard: "FaissShard", q: np.ndarray, k: int, got: _Allowed, xb: np.ndarray,
               ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A batch under a broad filter: the bare (BLAS) search for ``k n / m * 1.25 + 16`` candidates,
    the disallowed dropped; the queries left with fewer than ``k`` allowed ones are gathered."""
    n, m, nq = len(got.rowmask), got.m, len(q)
    k = min(k, m)
    kk = min(n, int(k * n / m * 1.25) + 16)
    idx = shard.staging if shard.staging is not None else shard.index
    inner = faiss_inner(idx)
    D, R = inner.search(q, kk)
    ok = (R >= 0) & got.rowmask[np.where(R >= 0, R, 0)]
    order = np.argsort(~ok, axis=1, kind="stable")[:, :k]  # allowed first, in score order
    D = np.take_along_axis(D, order, 1)
    R = np.take_along_axis(R, order, 1)
    okk = np.take_along_axis(ok, order, 1)
    I = np.where(okk, ids[np.where(okk, R, 0)], -1)
    D = np.where(okk, D, -np.inf).astype(np.float32)
    short = np.flatnonzero(~okk.all(axis=1))
    if len(short):
        D[short], I[short] = exact_topk(q[short], xb, got.rows, ids, k)
    return D, I
