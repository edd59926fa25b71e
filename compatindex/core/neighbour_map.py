"""Retained pairs and the neighbour query map that serves old clients from them.

``backfill(..., drop_old=True)`` deletes an item's old vector once its new one is written. An old
client (a query of an ancestor ``a``) then meets only new vectors of ``u``, through the
algebra's projection or a linear query map (core/query_maps.py), and loses quality the more of
the gallery is backfilled: a linear map from ``a`` into ``u`` cannot follow a new model that is
better than the old one in a nonlinear way (measured in docs/benchmarks.md, section 7).

Before the old vectors go, a bounded uniform sample of the dropped items keeps both vectors:
the **retained pairs** of ``(a, u)``, stored with ``u`` in ``Version.serving["pairs"][a]``:

    {"ids": [...], "old": <f2 bytes (n, d_a)>, "new": <f2 bytes (n, d_u)>, "dims": [d_a, d_u],
     "seen": int, "capacity": int, "k": int | None, "gated_at": int, "fit": {...}}

``seen`` counts the dropped items offered so far; the sample is Vitter's reservoir sampling
(Algorithm R, "Random sampling with a reservoir", 1985), so every dropped item is in it with the
same probability ``capacity / seen``. float16 halves the record (the vectors are unit or of
bounded norm; neighbour ranks are what is read from them).

The **neighbour map** of a query ``q`` of ``a`` is the mean of the new vectors of its ``k``
nearest retained pairs in ``a``'s space (normalized for cosine; ``ip`` keeps the query's norm).
It replaces the linear map for ``(a, u)`` once its gate passes (``k`` is stored; None: not
served). It is a composed query like any other, one vector per query, so every shard kind stays
exact; its cost is one ``(nq, n)`` product with the retained old vectors.

numpy only (the core imports neither scipy nor torch).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .scoring import Metric

CAPACITY = 32768
"""Default number of retained pairs per (ancestor, version)."""

MAX_BYTES = 16 * 2 ** 20
"""The retained vectors of one pair of versions stay under this many bytes (float16), whatever
``capacity`` says: they live in the version record, which every open reads."""

BLOCK = 1024
"""Queries per block of the ``(block, n)`` score matrix (memory stays bounded)."""


def capacity_for(d_a: int, d_u: int, requested: int) -> int:
    """The capacity actually kept: ``requested``, capped by :data:`MAX_BYTES` of float16 vectors."""
    return int(max(0, min(int(requested), MAX_BYTES // (2 * (d_a + d_u)))))


class NeighbourMap:
    """The ``k``-nearest-pairs map from ``a``'s query space into ``u``'s.

    Parameters
    ----------
    old, new:
        ``(n, d_a)`` and ``(n, d_u)`` retained vectors of the same ``n`` items.
    k:
        Pairs averaged per query (``min(k, n)``).
    """

    def __init__(self, old: np.ndarray, new: np.ndarray, k: int) -> None:
        self.old = np.ascontiguousarray(old, dtype=np.float32)
        self.new = np.ascontiguousarray(new, dtype=np.float32)
        self.k = int(max(1, min(int(k), len(self.old))))
        self.shape = (self.new.shape[1], self.old.shape[1])  # like a (d_u, d_a) matrix

    def neighbours(self, q: np.ndarray) -> np.ndarray:
        """``(nq, k)`` row numbers of each query's ``k`` nearest retained old vectors (inner product)."""
        q = np.asarray(q, dtype=np.float32)
        out = np.empty((len(q), self.k), dtype=np.int64)
        for s in range(0, len(q), BLOCK):
            S = q[s:s + BLOCK] @ self.old.T
            if self.k < S.shape[1]:
                out[s:s + BLOCK] = np.argpartition(-S, self.k - 1, axis=1)[:, :self.k]
            else:
                out[s:s + BLOCK] = np.arange(S.shape[1])[None, :]
        return out

    def apply(self, q: np.ndarray, metric: Metric) -> np.ndarray:
        """``(nq, d_u)`` float32: the mean new vector of each query's neighbours, at the query's norm (unit for cosine)."""
        q64 = np.asarray(q, dtype=np.float64)
        m = self.new[self.neighbours(q)].astype(np.float64).mean(axis=1)
        mn = np.linalg.norm(m, axis=1)
        target = np.ones(len(q64)) if metric is Metric.COSINE else np.linalg.norm(q64, axis=1)
        scale = np.divide(target, mn, out=np.zeros_like(mn), where=mn > 0)
        return np.ascontiguousarray(m * scale[:, None], dtype=np.float32)


# -- stored form -------------------------------------------------------------------------------
def unpack_pairs(entry: Any) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """``(ids, (n, d_a) old, (n, d_u) new)`` float32 of a stored entry; ``ValueError`` when it is damaged."""
    if not isinstance(entry, Mapping) or not {"ids", "old", "new", "dims"} <= set(entry):
        raise ValueError("a retained-pairs entry must hold `ids`, `old`, `new` and `dims`")
    d_a, d_u = (int(d) for d in entry["dims"])
    ids = list(entry["ids"])
    n = len(ids)
    old, new = entry["old"], entry["new"]
    if not (isinstance(old, (bytes, bytearray)) and isinstance(new, (bytes, bytearray))
            and len(old) == 2 * n * d_a and len(new) == 2 * n * d_u):
        raise ValueError("a retained-pairs entry has the wrong number of bytes")
    X = np.frombuffer(bytes(old), dtype="<f2").reshape(n, d_a).astype(np.float32)
    Y = np.frombuffer(bytes(new), dtype="<f2").reshape(n, d_u).astype(np.float32)
    return ids, X, Y


def pack_pairs(ids: Sequence[Any], X: np.ndarray, Y: np.ndarray, *, seen: int, capacity: int,
               base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The stored entry of ``n`` retained pairs (``base``'s other keys, such as ``k`` and ``fit``, are kept)."""
    out = dict(base or {})
    out.update({"ids": list(ids), "old": np.ascontiguousarray(X, dtype="<f2").tobytes(),
                "new": np.ascontiguousarray(Y, dtype="<f2").tobytes(),
                "dims": [int(X.shape[1]), int(Y.shape[1])], "seen": int(seen), "capacity": int(capacity)})
    return out


def summary(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The plain figures of an entry (no vectors): what ``versions --json`` shows."""
    return {"pairs": len(entry.get("ids") or []), "seen": entry.get("seen"), "capacity": entry.get("capacity"),
            "k": entry.get("k"), "fit": entry.get("fit") or {}}


# -- the reservoir -----------------------------------------------------------------------------
def grow(entry: Mapping[str, Any] | None, ids: Sequence[Any], X: np.ndarray, Y: np.ndarray, *,
         capacity: int) -> dict[str, Any]:
    """Offer ``n`` dropped items' pairs to the reservoir; the updated entry.

    Algorithm R: the ``t``-th item offered (``t = seen + 1, ...``) enters while the reservoir
    holds fewer than ``capacity``, else replaces a uniformly drawn slot with probability
    ``capacity / t``. The draws are seeded by ``seen``, so a rerun of the same writes keeps the
    same sample. A smaller ``capacity`` than the stored one first thins the sample uniformly. An
    id the sample already holds is not offered again: its vectors are replaced in place.
    """
    d_a, d_u = X.shape[1], Y.shape[1]
    if entry:
        keep_ids, Xs, Ys = unpack_pairs(entry)
        seen = int(entry.get("seen") or 0)
    else:
        keep_ids, Xs, Ys, seen = [], np.zeros((0, d_a), np.float32), np.zeros((0, d_u), np.float32), 0
    rng = np.random.default_rng([0x5A11, seen])
    if len(keep_ids) > capacity:
        pick = np.sort(rng.choice(len(keep_ids), size=capacity, replace=False))
        keep_ids, Xs, Ys = [keep_ids[i] for i in pick.tolist()], Xs[pick], Ys[pick]
    ids = list(ids)
    where = {key: i for i, key in enumerate(keep_ids)}
    again = [j for j, key in enumerate(ids) if key in where]
    if again:
        rows = [where[ids[j]] for j in again]
        Xs, Ys = Xs.copy(), Ys.copy()
        Xs[rows], Ys[rows] = np.asarray(X, np.float32)[again], np.asarray(Y, np.float32)[again]
        fresh = np.setdiff1d(np.arange(len(ids)), again)
        ids, X, Y = [ids[j] for j in fresh.tolist()], np.asarray(X)[fresh], np.asarray(Y)[fresh]
    ids_l = list(ids)
    room = max(0, capacity - len(keep_ids))
    first = min(room, len(ids_l))
    out_ids = keep_ids + ids_l[:first]
    Xo = np.vstack([Xs, np.asarray(X[:first], np.float32)])
    Yo = np.vstack([Ys, np.asarray(Y[:first], np.float32)])
    rest = np.arange(first, len(ids_l))
    if len(rest) and capacity > 0:
        t = seen + rest + 1                                  # 1-based position of each offered item
        slot = (rng.random(len(rest)) * t).astype(np.int64)  # uniform on 0..t-1
        take = slot < capacity
        src, dst = rest[take], slot[take]
        # a slot drawn twice keeps the later item (the sequential algorithm's outcome)
        last = len(dst) - 1 - np.unique(dst[::-1], return_index=True)[1]
        src, dst = src[last], dst[last]
        Xo[dst], Yo[dst] = np.asarray(X, np.float32)[src], np.asarray(Y, np.float32)[src]
        for s, d in zip(src.tolist(), dst.tolist()):
            out_ids[d] = ids_l[s]
    return pack_pairs(out_ids, Xo, Yo, seen=seen + len(ids_l), capacity=capacity, base=entry)


def without(entry: Mapping[str, Any], ids: Sequence[Any]) -> dict[str, Any] | None:
    """The entry with the pairs of ``ids`` removed (deleted items leave the sample); None when none was held."""
    gone = set(ids)
    held, X, Y = unpack_pairs(entry)
    keep = [i for i, x in enumerate(held) if x not in gone]
    if len(keep) == len(held):
        return None
    return pack_pairs([held[i] for i in keep], X[keep], Y[keep], seen=int(entry.get("seen") or 0),
                      capacity=int(entry.get("capacity") or 0), base=entry)
