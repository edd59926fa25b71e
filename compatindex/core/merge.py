"""Merging per-version hits into one top-k (one hit per item, exact scores).

The per-version lists are disjoint (each item is searched only through its representative
vector), so the merged top-k is the top-k of their union by score.
"""

from __future__ import annotations

import numpy as np


def merge_topk(scores: list[np.ndarray], keys: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge per-shard ``(nq, k_i)`` scores and keys into the overall top-``k``.

    Parameters
    ----------
    scores:
        One ``(nq, k_i)`` float array per shard, higher is better.
    keys:
        One ``(nq, k_i)`` int64 array per shard, ``-1`` where a shard had no hit.
    k:
        Hits per query.

    Returns
    -------
    (scores, keys, shard)
        ``(nq, k)`` float32 (``-inf`` where empty), ``(nq, k)`` int64 (``-1`` where empty) and
        ``(nq, k)`` int16: the index into ``scores`` of the shard each hit came from (``-1`` empty).
        Ties keep shard order, then rank order.

    Examples
    --------
    >>> s, i, w = merge_topk([np.array([[0.9, 0.1]]), np.array([[0.5, -np.inf]])],
    ...                      [np.array([[7, 8]]), np.array([[3, -1]])], k=3)
    >>> i.tolist(), w.tolist()
    ([[7, 3, 8]], [[0, 1, 0]])
    """
    nq = scores[0].shape[0] if scores else 0
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    out_w = np.full((nq, k), -1, dtype=np.int16)
    if not scores:
        return out_s, out_i, out_w
    D = np.concatenate(scores, axis=1)
    I = np.concatenate(keys, axis=1)
    W = np.concatenate([np.full(s.shape, j, dtype=np.int16) for j, s in enumerate(scores)], axis=1)
    D = np.where(I >= 0, D, -np.inf).astype(np.float32)
    if len(scores) == 1 and D.shape[1] == k:
        order = None  # one shard: already sorted by the engine
    else:
        order = np.argsort(-D, axis=1, kind="stable")[:, :k]
    if order is None:
        out_s[:], out_i[:], out_w[:] = D, I, W
    else:
        kk = order.shape[1]
        out_s[:, :kk] = np.take_along_axis(D, order, 1)
        out_i[:, :kk] = np.take_along_axis(I, order, 1)
        out_w[:, :kk] = np.take_along_axis(W, order, 1)
    empty = ~np.isfinite(out_s)
    out_i[empty] = -1
    out_w[empty] = -1
    return out_s, out_i, out_w
