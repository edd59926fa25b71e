"""Helpers shared by the core tests: a random orthogonal matrix and a naive brute-force model
of the index (docs/concepts.md), written without any code from the library."""

from __future__ import annotations

from typing import Any

import numpy as np


def random_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


class BruteForce:
    """A naive model of the index: dicts of vectors, the representative rule and the score table
    written out directly from docs/concepts.md (no code shared with the library)."""

    def __init__(self, metric: str = "cosine") -> None:
        self.metric = metric
        self.parent: dict[str, str | None] = {}
        self.dim: dict[str, int] = {}
        self.order: list[str] = []
        self.items: dict[Any, dict[str, np.ndarray]] = {}

    def version(self, name: str, dim: int, parent: str | None = None) -> None:
        self.parent[name] = parent
        self.dim[name] = dim
        self.order.append(name)

    def _norm(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x / np.linalg.norm(x, axis=-1, keepdims=True) if self.metric == "cosine" else x

    def add(self, ids, X, version: str) -> None:
        for i, x in zip(ids, X):
            self.items[i] = {version: self._norm(x)}

    def backfill(self, ids, X, version: str, drop_old: bool = False) -> None:
        for i, x in zip(ids, X):
            if drop_old:
                self.items[i] = {}
            self.items[i][version] = self._norm(x)

    def delete(self, ids) -> None:
        for i in ids:
            del self.items[i]

    def chain(self, v: str) -> list[str]:
        out = []
        while v is not None:
            out.append(v)
            v = self.parent[v]
        return out[::-1]

    def lca(self, a: str, b: str) -> str:
        ca, cb = self.chain(a), self.chain(b)
        common = [x for x, y in zip(ca, cb) if x == y]
        return common[-1]

    def rep(self, item: dict[str, np.ndarray], qv: str) -> str:
        def key(u):
            l = self.lca(qv, u)
            dist = len(self.chain(qv)) + len(self.chain(u)) - 2 * len(self.chain(l))
            return (-self.dim[l], dist, self.order.index(u))

        return min(item, key=key)

    def search(self, Q: np.ndarray, k: int, qv: str, score: str = "renorm"):
        Q = self._norm(Q)
        out_ids, out_scores, out_vers = [], [], []
        for q in Q:
            cands = []
            for i, item in self.items.items():
                u = self.rep(item, qv)
                d = self.dim[self.lca(qv, u)]
                s = float(q[:d] @ item[u][:d])
                if score == "renorm" and d < len(q):
                    s *= np.linalg.norm(q) / np.linalg.norm(q[:d])
                cands.append((s, i, u))
            cands.sort(key=lambda t: -t[0])
            top = cands[:k]
            out_ids.append([t[1] for t in top])
            out_scores.append([t[0] for t in top])
            out_vers.append([t[2] for t in top])
        return out_ids, out_scores, out_vers
