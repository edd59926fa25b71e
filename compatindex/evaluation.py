"""Retrieval and compatibility metrics (docs/trainer.md, "Metrics").

CMC top-k and mAP follow the leave-one-out protocol of OCA ("Backward-Compatible Aligned
Representations via an Orthogonal Transformation Layer", Ricci et al., 2024). The empirical
criterion M(new, old) > M(old, old) is BCT's ("Towards Backward-Compatible Representation
Learning", Shen et al., CVPR 2020). AC and AM over a compatibility matrix are those of
"Stationary Representations: Optimally Approximating Compatibility and Implications for Improved
Model Replacements" (Biondi et al., CVPR 2024).

Vectors of two versions are compared inside the shared prefix: both sides are cut to the
smaller dim (``q[:d_u]`` against ``g``, docs/concepts.md). ``score="renorm"`` (default) is cosine
inside the prefix; ``"pad"`` is the raw inner product of the cut vectors. Stored vectors are
unit-norm under the cosine metric, so the two rank an all-old gallery identically.

All functions take ``(n, d)`` float arrays and return plain Python floats / numpy arrays.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "similarity",
    "retrieval_metrics",
    "cmc_map",
    "recall_at_k",
    "mrr",
    "pair_alignment",
    "negative_flip_rate",
    "compatibility_matrix",
    "average_compatibility",
    "average_accuracy",
    "empirical_compatibility",
]

_CHUNK = 1024


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def similarity(queries: np.ndarray, gallery: np.ndarray, *, score: str = "renorm") -> np.ndarray:
    """``(nq, ng)`` similarities inside the shared prefix.

    Examples
    --------
    >>> q = np.array([[1.0, 0.0, 5.0]]); g = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> similarity(q, g).round(3).tolist()
    [[1.0, 0.0]]
    """
    q = np.asarray(queries, dtype=np.float32)
    g = np.asarray(gallery, dtype=np.float32)
    d = min(q.shape[1], g.shape[1])
    q, g = q[:, :d], g[:, :d]
    if score == "renorm":
        q, g = _unit(q), _unit(g)
    elif score != "pad":
        raise ValueError(f"`score` must be 'renorm' or 'pad'; got {score!r}")
    return q @ g.T


def gallery_prefix(gallery: np.ndarray, d_q: int, score: str) -> np.ndarray:
    """The gallery as :func:`similarity` compares it (float32, shared prefix, unit rows under
    ``renorm``), made once per call instead of once per chunk of queries (at 1280 dims and
    10^5 rows normalizing the gallery costs more than a chunk's product)."""
    if score not in ("renorm", "pad"):
        raise ValueError(f"`score` must be 'renorm' or 'pad'; got {score!r}")
    g = np.asarray(gallery, dtype=np.float32)
    g = g[:, :min(d_q, g.shape[1])]
    return _unit(g) if score == "renorm" else g


def prefix_similarity(queries: np.ndarray, prepared: np.ndarray, score: str) -> np.ndarray:
    """:func:`similarity` against a gallery from :func:`gallery_prefix` (same values)."""
    q = np.asarray(queries, dtype=np.float32)[:, :prepared.shape[1]]
    return (_unit(q) if score == "renorm" else q) @ prepared.T


def _chunks(n: int) -> Iterator[slice]:
    for s in range(0, n, _CHUNK):
        yield slice(s, min(n, s + _CHUNK))


def cmc_map(queries: np.ndarray, gallery: np.ndarray, q_labels: npt.ArrayLike, g_labels: npt.ArrayLike,
            *, topk: Sequence[int] = (1, 5), leave_one_out: bool = False, score: str = "renorm"
            ) -> dict[str, float]:
    """CMC top-k and mAP of label retrieval (OCA / openBCT protocol).

    ``leave_one_out=True`` needs query i and gallery i to be the same item (query set = gallery
    set, possibly embedded by two models) and removes item i from query i's gallery.
    top-k is the fraction of queries whose first same-label hit is at rank <= k; AP is computed
    over the full ranking; queries without any relevant gallery item are skipped.

    Returns
    -------
    dict
        ``{"top1": ..., "top5": ..., "mAP": ..., "n_queries": ...}``

    Examples
    --------
    >>> x = np.eye(3)[[0, 0, 1, 1]] + 0.01 * np.arange(4)[:, None]
    >>> cmc_map(x, x, [0, 0, 1, 1], [0, 0, 1, 1], leave_one_out=True)["top1"]
    1.0
    """
    ql = np.asarray(q_labels)
    gl = np.asarray(g_labels)
    ks = sorted(set(int(k) for k in topk))
    hits = {k: 0 for k in ks}
    ap_sum, n_valid = 0.0, 0
    gp = gallery_prefix(gallery, np.shape(queries)[1], score)
    for sl in _chunks(len(ql)):
        S = prefix_similarity(queries[sl], gp, score)
        rel = ql[sl, None] == gl[None, :]
        if leave_one_out:
            rows = np.arange(sl.start, sl.stop)
            S[rows - sl.start, rows] = -np.inf
            rel[rows - sl.start, rows] = False
        order = np.argsort(-S, axis=1, kind="stable")
        R = np.take_along_axis(rel, order, axis=1)
        if leave_one_out:  # the removed self sits last (-inf); drop that column
            R = R[:, :-1]
        npos = R.sum(1)
        valid = npos > 0
        first = np.where(valid, R.argmax(1), R.shape[1])
        for k in ks:
            hits[k] += int(np.sum(valid & (first < k)))
        cum = np.cumsum(R, axis=1)
        prec = cum / np.arange(1, R.shape[1] + 1)
        ap = (prec * R).sum(1)[valid] / npos[valid]
        ap_sum += float(ap.sum())
        n_valid += int(valid.sum())
    out = {f"top{k}": hits[k] / max(n_valid, 1) for k in ks}
    out["mAP"] = ap_sum / max(n_valid, 1)
    out["n_queries"] = n_valid
    return out


def retrieval_metrics(queries: np.ndarray, gallery: np.ndarray, q_labels: npt.ArrayLike,
                      g_labels: npt.ArrayLike, **kw: Any) -> dict[str, float]:
    """Alias of :func:`cmc_map` (top-1, top-5, mAP)."""
    return cmc_map(queries, gallery, q_labels, g_labels, **kw)


def _relevant_sets(relevant: Any) -> list[set]:
    return [set(r) if isinstance(r, (set, list, tuple, np.ndarray)) else {r} for r in relevant]


def recall_at_k(retrieved: Any, relevant: Any, k: int) -> float:
    """Mean over queries of |relevant ∩ top-k| / min(|relevant|, k).

    ``retrieved``: ``(nq, >=k)`` ids; ``relevant``: one id or a collection of ids per query.

    Examples
    --------
    >>> recall_at_k([[1, 2], [3, 4]], [2, 9], k=2)
    0.5
    """
    rel = _relevant_sets(relevant)
    tot = 0.0
    for row, r in zip(retrieved, rel):
        if not r:
            continue
        top = list(row)[:k]
        tot += len(r.intersection(top)) / min(len(r), k)
    return tot / max(len(rel), 1)


def mrr(retrieved: Any, relevant: Any) -> float:
    """Mean reciprocal rank of the first relevant id (0 when absent from the list).

    Examples
    --------
    >>> mrr([[1, 2], [3, 4]], [2, 3])
    0.75
    """
    rel = _relevant_sets(relevant)
    tot = 0.0
    for row, r in zip(retrieved, rel):
        for i, x in enumerate(list(row)):
            if x in r:
                tot += 1.0 / (i + 1)
                break
    return tot / max(len(rel), 1)


def pair_alignment(queries: np.ndarray, gallery: np.ndarray, targets: Sequence[int] | None = None,
                   *, ks: Sequence[int] = (1, 10), score: str = "renorm") -> dict[str, float]:
    """How well each query finds its own item in a gallery (identity retrieval).

    Parameters
    ----------
    queries:
        ``(n, d_q)`` transformed new vectors.
    gallery:
        ``(m, d_g)`` stored parent vectors.
    targets:
        ``(n,)`` row of each query's own item in ``gallery`` (default: ``arange(n)``).

    Returns
    -------
    dict
        ``recall@k`` for each k, ``mrr``, ``median_rank`` (1 = first), ``mean_cos`` (cosine
        with the own vector inside the prefix).

    Examples
    --------
    >>> g = np.eye(4); pair_alignment(g, g)["recall@1"]
    1.0
    """
    q = np.asarray(queries, dtype=np.float32)
    n = q.shape[0]
    t = np.arange(n) if targets is None else np.asarray(targets, dtype=np.int64)
    ranks = np.empty(n, dtype=np.int64)
    cos = np.empty(n, dtype=np.float64)
    gp = gallery_prefix(gallery, q.shape[1], score)
    for sl in _chunks(n):
        S = prefix_similarity(q[sl], gp, score)
        own = S[np.arange(S.shape[0]), t[sl]]
        ranks[sl] = 1 + (S > own[:, None]).sum(1)
        # cosine with the own vector: row-wise, not a (chunk, chunk) product for its diagonal, and
        # from the prepared prefix rows (not the whole gallery converted again for every chunk)
        cos[sl] = np.einsum("ij,ij->i", _unit(q[sl, :gp.shape[1]]), _unit(gp[t[sl]]))
    out = {f"recall@{k}": float(np.mean(ranks <= k)) for k in ks}
    out["mrr"] = float(np.mean(1.0 / ranks))
    out["median_rank"] = float(np.median(ranks))
    out["mean_cos"] = float(cos.mean())
    out["n"] = int(n)
    return out


def negative_flip_rate(old_correct: Sequence[bool], new_correct: Sequence[bool]) -> float:
    """Fraction of queries the old system got right and the new one gets wrong.

    Examples
    --------
    >>> negative_flip_rate([True, True, False, False], [True, False, True, False])
    0.25
    """
    o = np.asarray(old_correct, dtype=bool)
    n = np.asarray(new_correct, dtype=bool)
    return float(np.mean(o & ~n)) if o.size else 0.0


def label_retrieval(queries: np.ndarray, own: np.ndarray, labels: npt.ArrayLike,
                    distractors: np.ndarray | None = None, distractor_labels: npt.ArrayLike | None = None, *,
                    score: str = "renorm", ap_max_gallery: int | None = 20_000) -> dict[str, np.ndarray]:
    """Per-query label retrieval of held-out items in a gallery like the stored one.

    Query ``i`` searches ``own`` (the stored vectors of the held-out items, its own row ``i``
    left out) stacked over ``distractors`` (other stored items): the search a user runs, so a
    fit is judged among as many competitors as the index holds, not only among the few held-out
    items (a map that looks good in a 1,000-item gallery can lose in a 60,000-item one).

    Parameters
    ----------
    queries:
        ``(n, d_q)`` query vectors (compared in the shared prefix).
    own:
        ``(n, d_g)`` stored vectors of the same items; ``labels`` ``(n,)`` their labels.
    distractors, distractor_labels:
        ``(m, d_g)`` other stored items and their ``(m,)`` labels (``-1``: unknown, never relevant).
    ap_max_gallery:
        AP needs the full ranking: it is computed over the first ``ap_max_gallery`` rows of the
        stacked gallery (``own`` first; None: all; 0: no AP, NaN). top-1 and top-5 always use
        the whole gallery.

    Returns
    -------
    dict
        ``top1``, ``top5`` and ``ap``, each ``(n,)`` float64, NaN where a query has no relevant
        gallery item.

    Examples
    --------
    >>> x = np.eye(2)[[0, 0, 1, 1]]; d = np.eye(2)[[1]]
    >>> label_retrieval(x, x, [0, 0, 1, 1], d, [0])["top1"].tolist()
    [1.0, 1.0, 1.0, 1.0]
    """
    y = np.asarray(labels)
    n = len(y)
    D = np.zeros((0, own.shape[1]), np.float32) if distractors is None else np.asarray(distractors, np.float32)
    dl = np.zeros(0, y.dtype) if distractor_labels is None else np.asarray(distractor_labels)
    gal = np.vstack([np.asarray(own, np.float32), D]) if len(D) else np.asarray(own, np.float32)
    gl = np.concatenate([y, dl]) if len(D) else y
    n_ap = len(gal) if ap_max_gallery is None else min(len(gal), ap_max_gallery)
    top1 = np.full(n, np.nan)
    top5 = np.full(n, np.nan)
    ap = np.full(n, np.nan)
    gp = gallery_prefix(gal, np.shape(queries)[1], score)
    for sl in _chunks(n):
        rows = np.arange(sl.start, sl.stop)
        S = prefix_similarity(queries[sl], gp, score)
        S[rows - sl.start, rows] = -np.inf
        rel = (gl[None, :] == y[sl, None]) & (y[sl, None] >= 0)
        rel[rows - sl.start, rows] = False
        valid = rel.any(1)
        # rank of the first relevant item = how many items score above the best relevant one
        # (ties resolved optimistically, as a stable sort that meets the relevant item first)
        best_rel = np.where(rel, S, -np.inf).max(1)
        first = (S > best_rel[:, None]).sum(1)
        top1[sl] = np.where(valid, first < 1, np.nan)
        top5[sl] = np.where(valid, first < 5, np.nan)
        if n_ap <= 0:
            continue
        Sa, ra = S[:, :n_ap], rel[:, :n_ap]
        order = np.argsort(-Sa, axis=1, kind="stable")
        R = np.take_along_axis(ra, order, axis=1)
        npos = R.sum(1)
        prec = np.cumsum(R, axis=1) / np.arange(1, R.shape[1] + 1)
        ap[sl] = np.where(npos > 0, (prec * R).sum(1) / np.maximum(npos, 1), np.nan)
    return {"top1": top1, "top5": top5, "ap": ap}


def summarize_label_retrieval(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """``{"top1", "top5", "mAP", "n_queries"}`` (means over queries with a relevant item)."""
    t1 = per_query["top1"]
    ok = np.isfinite(t1)
    ap = per_query["ap"]
    return {"top1": float(np.mean(t1[ok])) if ok.any() else 0.0,
            "top5": float(np.mean(per_query["top5"][ok])) if ok.any() else 0.0,
            "mAP": float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0,
            "n_queries": int(ok.sum())}


def top1_correct(queries: np.ndarray, gallery: np.ndarray, q_labels: npt.ArrayLike,
                 g_labels: npt.ArrayLike, *, leave_one_out: bool = False, score: str = "renorm"
                 ) -> np.ndarray:
    """``(nq,) bool``: is the top hit of each query of the query's label (input for the NFR)."""
    ql, gl = np.asarray(q_labels), np.asarray(g_labels)
    out = np.empty(len(ql), dtype=bool)
    for sl in _chunks(len(ql)):
        S = similarity(queries[sl], gallery, score=score)
        if leave_one_out:
            rows = np.arange(sl.start, sl.stop)
            S[rows - sl.start, rows] = -np.inf
        out[sl] = gl[S.argmax(1)] == ql[sl]
    return out


def compatibility_matrix(features: Sequence[np.ndarray], labels: Sequence[Any], *,
                         metric: str = "top1", leave_one_out: bool = True, score: str = "renorm"
                         ) -> np.ndarray:
    """``M[i][j]`` = retrieval with model i's queries against model j's gallery, ``j <= i``.

    ``features[t]`` holds the same items embedded by version t (prefix-compatible lineage);
    the upper triangle is NaN (iamcl2r convention).
    """
    T = len(features)
    M = np.full((T, T), np.nan)
    for i in range(T):
        for j in range(i + 1):
            M[i, j] = cmc_map(features[i], features[j], labels, labels,
                              leave_one_out=leave_one_out, score=score)[metric]
    return M


def average_compatibility(M: np.ndarray) -> float:
    """AC = fraction of pairs i > j with ``M[i][j] > M[j][j]`` (1 when T = 1).

    Examples
    --------
    >>> average_compatibility(np.array([[0.5, np.nan], [0.6, 0.9]]))
    1.0
    """
    T = M.shape[0]
    if T < 2:
        return 1.0
    ok = sum(int(M[i, j] > M[j, j]) for i in range(T) for j in range(i))
    return ok / (T * (T - 1) / 2)


def average_accuracy(M: np.ndarray) -> float:
    """AM = mean of the lower triangle of ``M``, diagonal included."""
    T = M.shape[0]
    return float(np.mean([M[i, j] for i in range(T) for j in range(i + 1)]))


def empirical_compatibility(new_old: float, old_old: float) -> bool:
    """BCT's empirical criterion M(new, old) > M(old, old)."""
    return bool(new_old > old_old)
