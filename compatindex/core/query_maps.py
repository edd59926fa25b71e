"""Forward query maps: a learned linear map from an ancestor version's query space into a version's.

The version algebra meets a query of an ancestor ``a`` with a stored vector of ``u`` by padding
the query to ``d_u`` dims (docs/concepts.md). That is all a model trained against its parent
promises, and an old client whose items were backfilled with ``drop_old`` loses much of its
quality through it. A **query map** ``W`` (``(d_u, d_a)``) is fitted on pairs (the same items or
queries embedded by both models) by ridge regression, and replaces the projection for that pair:

    pi_au(q) = normalize(W q)        (cosine; with ``ip`` the query keeps its norm)

It is stored with ``u`` in ``Version.serving["query_maps"]`` as
``{a: {"shape": [d_u, d_a], "dtype": "<f4", "data": bytes, "fit": {...}}}`` (msgpack-able), and
stored only when, on held-out pairs, mapped queries retrieve their own item's new vector better
than the projection does (the gate of :func:`fit_query_map`). Every composed shard query stays
one vector per query, so search costs one extra ``(d_a, d_u)`` matmul per query and nothing else.

Where a ``drop_old`` backfill retained pairs (core/neighbour_map.py) and their gate
(:func:`fit_neighbour_map`) chose a ``k``, the neighbour map of those pairs is served for the pair
in place of ``W`` (:func:`query_map_table`).

numpy only (the core imports neither scipy nor torch).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..errors import InvalidInputError
from . import versions as V
from .datatypes import Version
from .neighbour_map import NeighbourMap, unpack_pairs
from .scoring import Metric, Score

QueryMap = np.ndarray | NeighbourMap
"""A linear ``(d_u, d_a)`` float32 ``W``, or the neighbour map of the retained pairs (core/neighbour_map.py)."""

QueryMaps = dict[tuple[str, str], QueryMap]
"""``(query version a, gallery version u) -> map``."""

NEIGHBOUR_K = (1, 3, 5, 10)
"""Candidate numbers of retained pairs a neighbour map averages (chosen on held-out pairs)."""

NEIGHBOUR_HOLD = 2000
"""At most this many retained pairs are held out for the neighbour map's gate."""

RIDGE_GRID = tuple(10.0 ** e for e in range(-5, 3))
"""Candidate ridge strengths, relative to the mean eigenvalue of the old vectors' Gram matrix per pair."""

HOLDOUT = 0.2
"""Share of the pairs held out for the gate (the ridge strength is cross-validated on the rest)."""

FOLDS = 4
"""Folds of the ridge-strength cross-validation."""

GATE_Z = 3.0
"""The paired MRR gain over the projection must exceed this many standard errors (a chance gain is refused)."""

MIN_PAIRS_PER_DIM = 2
"""Fewest pairs per old dimension (``n >= 2 * d_a``) for a map to be fitted at all."""


# -- stored form -------------------------------------------------------------------------------
def pack_map(W: np.ndarray, fit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The stored entry of a ``(d_u, d_a)`` map (float32 little-endian bytes, shape, fit figures)."""
    W = np.ascontiguousarray(W, dtype="<f4")
    out: dict[str, Any] = {"shape": [int(W.shape[0]), int(W.shape[1])], "dtype": "<f4", "data": W.tobytes()}
    if fit:
        out["fit"] = {str(k): (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in fit.items()
                      if isinstance(v, (int, float, str, bool, np.floating, np.integer)) and not isinstance(v, np.bool_)}
    return out


def unpack_map(entry: Any) -> np.ndarray:
    """``(d_u, d_a)`` float32 of a stored entry; ``ValueError`` when it is damaged."""
    if not isinstance(entry, Mapping) or "data" not in entry or "shape" not in entry:
        raise ValueError("a query map entry must hold `shape` and `data`")
    shape = tuple(int(s) for s in entry["shape"])
    if len(shape) != 2 or entry.get("dtype", "<f4") != "<f4":
        raise ValueError(f"a query map must be a 2-d float32 matrix; got shape {shape}, dtype {entry.get('dtype')!r}")
    data = entry["data"]
    if not isinstance(data, (bytes, bytearray)) or len(data) != 4 * shape[0] * shape[1]:
        raise ValueError("a query map entry has the wrong number of bytes")
    return np.frombuffer(bytes(data), dtype="<f4").reshape(shape).astype(np.float32)


_NEIGHBOUR_CACHE: dict[tuple[str, str], tuple[bytes, int, NeighbourMap]] = {}
"""The unpacked neighbour map of each stored entry, keyed by the entry's bytes object (held here,
so identity is reliable): searches do not unpack the retained pairs again until they change."""


def neighbour_map(versions: Mapping[str, Version], a: str, u: str) -> NeighbourMap | None:
    """The neighbour map served for ``(a, u)``: retained pairs stored with ``u`` whose gate chose a ``k``."""
    v = versions.get(u)
    entry = ((v.serving or {}).get("pairs") or {}).get(a) if v is not None else None
    if not isinstance(entry, Mapping) or not entry.get("k") or a not in versions:
        return None
    cached = _NEIGHBOUR_CACHE.get((a, u))
    if cached is not None and cached[0] is entry.get("old") and cached[1] == int(entry["k"]):
        return cached[2]
    try:
        _, X, Y = unpack_pairs(entry)
    except (TypeError, ValueError):
        return None
    if len(X) == 0 or X.shape[1] != versions[a].dim or Y.shape[1] != versions[u].dim:
        return None
    m = NeighbourMap(X, Y, int(entry["k"]))
    _NEIGHBOUR_CACHE[(a, u)] = (entry["old"], int(entry["k"]), m)
    return m


def query_map_table(versions: Mapping[str, Version], *, neighbours: bool = True) -> QueryMaps:
    """Every query map stored with the versions: ``(ancestor, version) -> map``.

    A neighbour map (retained pairs whose gate passed) is served in place of a linear map of the
    same pair; ``neighbours=False`` gives the linear maps only. An entry whose shape does not fit
    the two versions, or that is not a proper ancestor's, is left out (it cannot be served).
    """
    out: QueryMaps = {}
    for v in versions.values():
        serving = v.serving or {}
        maps = serving.get("query_maps") or {}
        pairs = serving.get("pairs") or {}
        for a in {*(maps if isinstance(maps, Mapping) else {}), *(pairs if isinstance(pairs, Mapping) else {})}:
            a = str(a)
            if a not in versions or a == v.name or a not in V.lineage(versions, v.name):
                continue
            nm = neighbour_map(versions, a, v.name) if neighbours else None
            if nm is not None:
                out[(a, v.name)] = nm
                continue
            try:
                W = unpack_map(maps[a]) if isinstance(maps, Mapping) and a in maps else None
            except (TypeError, ValueError):
                continue
            if W is not None and W.shape == (v.dim, versions[a].dim):
                out[(a, v.name)] = W
    return out


def check_query_map(versions: Mapping[str, Version], a: str, u: str, W: Any, *, param: str) -> np.ndarray:
    """Validate a given map from ancestor ``a`` into ``u`` (or a stored entry); float32 ``(d_u, d_a)``."""
    if a == u or a not in V.lineage(versions, u):
        raise InvalidInputError(f"`{param}`: {a!r} is not an ancestor of {u!r}; a query map goes from an ancestor "
                                f"into the version it is stored with (ancestors of {u!r}: "
                                f"{', '.join(V.lineage(versions, u)[:-1]) or 'none'})")
    if isinstance(W, Mapping):
        try:
            M = unpack_map(W).astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"`{param}` is not a valid stored query map ({exc})") from None
    else:
        try:
            M = np.asarray(W, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidInputError(f"`{param}` must be a numeric (d_u, d_a) matrix; got {type(W).__name__}") from None
    want = (versions[u].dim, versions[a].dim)
    if M.shape != want:
        raise InvalidInputError(f"`{param}` must be a ({want[0]}, {want[1]}) matrix (dim of {u!r}, dim of {a!r}); "
                                f"got shape {M.shape}")
    if not np.isfinite(M).all():
        raise InvalidInputError(f"`{param}` holds NaN or inf")
    if not np.abs(M).max() > 0:
        raise InvalidInputError(f"`{param}` is all zeros")
    return M.astype(np.float32)


# -- applying a map ----------------------------------------------------------------------------
def apply_map(q: np.ndarray, W: QueryMap, metric: Metric) -> np.ndarray:
    """``(nq, d_u)`` float32 mapped queries: ``W q`` (or the neighbour map's) rescaled to the query's norm (unit for cosine)."""
    if isinstance(W, NeighbourMap):
        return W.apply(q, metric)
    q64 = np.asarray(q, dtype=np.float64)
    m = q64 @ np.asarray(W, dtype=np.float64).T
    mn = np.linalg.norm(m, axis=1)
    target = np.ones(len(q64)) if metric is Metric.COSINE else np.linalg.norm(q64, axis=1)
    scale = np.divide(target, mn, out=np.zeros_like(mn), where=mn > 0)
    return np.ascontiguousarray(m * scale[:, None], dtype=np.float32)


def project_or_map(versions: Mapping[str, Version], q: np.ndarray, i: str, u: str, maps: QueryMaps | None,
                   *, score: Score = Score.PAD) -> np.ndarray:
    """The query-side term of query version ``i`` on shard ``u``: the stored map, else the algebra's projection."""
    W = (maps or {}).get((i, u))
    if W is not None:
        return apply_map(q, W, versions[u].metric)
    cut = V.shared_dim(versions, i, u)
    if cut == versions[i].dim == versions[u].dim:
        return np.asarray(q, dtype=np.float32)
    return V.project_query(np.asarray(q, dtype=np.float32), cut=cut, target_dim=versions[u].dim, score=score)


# -- fitting -----------------------------------------------------------------------------------
def _ridge_svd(X: np.ndarray, Y: np.ndarray, lams: np.ndarray) -> list[np.ndarray]:
    """``(d_a, d_u)`` ridge solutions ``(X'X + lam I)^-1 X'Y`` for each ``lam`` (one SVD)."""
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    UtY = U.T @ Y
    return [Vt.T @ ((s / (s * s + lam))[:, None] * UtY) for lam in lams]


def _reciprocal_ranks(Q: np.ndarray, G: np.ndarray) -> np.ndarray:
    """``(n,)`` reciprocal rank of each query row's own row of ``G`` (``(n, d)`` both) among all rows."""
    own = np.einsum("ij,ij->i", Q, G)
    rank = np.empty(len(Q), dtype=np.int64)
    for s in range(0, len(Q), 1024):  # (1024, n) score blocks: memory stays bounded
        rank[s:s + 1024] = 1 + (Q[s:s + 1024] @ G.T > own[s:s + 1024, None]).sum(axis=1)  # ties count for the query
    return 1.0 / rank


def _retrieval(Q: np.ndarray, G: np.ndarray) -> tuple[float, float]:
    """MRR and recall@1 of each query row finding its own row of ``G``."""
    rr = _reciprocal_ranks(Q, G)
    return float(rr.mean()), float(np.mean(rr == 1.0))


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def fit_query_map(versions: Mapping[str, Version], a: str, u: str, Qa: Any, Qu: Any, *,
                  seed: int = 0, grid: tuple[float, ...] = RIDGE_GRID,
                  stored: QueryMap | None = None) -> dict[str, Any]:
    """Fit the map from ancestor ``a``'s query space into ``u``'s, and gate it on held-out pairs.

    Parameters
    ----------
    Qa, Qu:
        ``(n, d_a)`` and ``(n, d_u)`` vectors of the same ``n`` items or queries (as stored:
        normalized as the metric says).
    seed:
        The held-out split (a fifth of the pairs, :data:`HOLDOUT`).
    grid:
        Ridge strengths relative to the mean eigenvalue of ``Qa'Qa / n`` (times the number of
        training pairs); chosen by :data:`FOLDS`-fold cross-validation of the squared error on
        the training pairs.
    stored:
        The map stored now for the pair, if any: it is scored on the same held-out pairs, and
        kept (the result's ``W`` is None) when the fresh fit does not beat it.

    Returns
    -------
    dict
        ``{"W": (d_u, d_a) float32 or None, "stored": bool, "reason", "pairs", "held_out", "ridge",
        "mapped": {"MRR", "R@1"}, "projection": {"MRR", "R@1"}, "stored_map": {...} or None}``.
        ``W`` is refit on every pair with the chosen strength once the gate passes; it is None
        (nothing to store) when the gate fails or the fit is impossible, and ``reason`` says why.
        Held-out retrieval: each held-out old vector, mapped (or projected), must rank its own
        item's new vector first among the held-out new vectors. The gate: mapped MRR above the
        projection's, recall@1 not below it, and the paired gain in reciprocal rank more than
        :data:`GATE_Z` standard errors above zero (``MRR_gain_z``), so a chance gain is refused.
    """
    if a == u or a not in V.lineage(versions, u):
        raise InvalidInputError(f"a query map goes from an ancestor into a version; {a!r} is not an ancestor of {u!r}")
    da, du = versions[a].dim, versions[u].dim
    X = np.asarray(Qa, dtype=np.float64)
    Y = np.asarray(Qu, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[1] != da or Y.shape[1] != du or len(X) != len(Y):
        raise InvalidInputError(f"query map pairs must be (n, {da}) and (n, {du}); got {X.shape} and {Y.shape}")
    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        raise InvalidInputError("query map pairs hold NaN or inf")
    n = len(X)
    out: dict[str, Any] = {"W": None, "stored": False, "pairs": int(n), "held_out": 0, "ridge": None,
                           "mapped": None, "projection": None, "MRR_gain_z": None, "stored_map": None,
                           "from": a, "to": u}
    need = MIN_PAIRS_PER_DIM * da
    if n < need:
        out["reason"] = f"too few pairs: {n} < {need} (2 x dim {da} of {a!r}); the projection is kept"
        return out
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_hold = max(2, int(round(HOLDOUT * n)))
    hold, train = np.sort(perm[:n_hold]), perm[n_hold:]
    if len(train) < da:
        out["reason"] = f"too few training pairs after holding out {n_hold}: {len(train)} < {da}"
        return out
    Xt, Yt = X[train], Y[train]
    scale = float(np.trace(Xt.T @ Xt)) / da  # mean eigenvalue of X'X
    if not np.isfinite(scale) or scale <= 0:
        out["reason"] = f"the vectors of {a!r} in the pairs are all zero"
        return out
    lams = np.asarray(grid, dtype=np.float64) * scale
    # k-fold cross-validation of the ridge strength on the training pairs
    folds = np.array_split(rng.permutation(len(train)), FOLDS)
    err = np.zeros(len(lams))
    try:
        for f in folds:
            mask = np.ones(len(train), dtype=bool)
            mask[f] = False
            if mask.sum() < 1 or len(f) == 0:
                continue
            for j, B in enumerate(_ridge_svd(Xt[mask], Yt[mask], lams * mask.mean())):
                err[j] += float(((Xt[f] @ B - Yt[f]) ** 2).sum())
        best = int(np.argmin(err))
        lam = float(lams[best])
        B = _ridge_svd(Xt, Yt, np.array([lam]))[0]
    except np.linalg.LinAlgError as exc:
        out["reason"] = f"the ridge fit failed ({exc})"
        return out
    if not np.isfinite(B).all() or not np.isfinite(err).all():
        out["reason"] = "the ridge fit is not finite"
        return out
    out["ridge"] = lam / scale
    out["held_out"] = int(len(hold))
    Gh = _unit(Y[hold]) if versions[u].metric is Metric.COSINE else Y[hold]
    proj = project_or_map(versions, X[hold].astype(np.float32), a, u, None).astype(np.float64)
    mapped = apply_map(X[hold], B.T, versions[u].metric).astype(np.float64)
    rr_p, rr_m = _reciprocal_ranks(proj, Gh), _reciprocal_ranks(mapped, Gh)
    p_mrr, p_r1 = float(rr_p.mean()), float(np.mean(rr_p == 1.0))
    m_mrr, m_r1 = float(rr_m.mean()), float(np.mean(rr_m == 1.0))
    diff = rr_m - rr_p
    se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    out["projection"] = {"MRR": p_mrr, "R@1": p_r1}
    out["mapped"] = {"MRR": m_mrr, "R@1": m_r1}
    out["MRR_gain_z"] = float(diff.mean() / se) if se > 0 else (float("inf") if diff.mean() > 0 else 0.0)
    # better, and not by chance: the paired gain in reciprocal rank is GATE_Z standard errors above 0
    if not (m_mrr > p_mrr and m_r1 >= p_r1 and diff.mean() > GATE_Z * se):
        out["reason"] = (f"gate failed: on {len(hold)} held-out pairs the map scores MRR {m_mrr:.4f}, R@1 {m_r1:.4f} "
                         f"against the projection's MRR {p_mrr:.4f}, R@1 {p_r1:.4f} (paired MRR gain "
                         f"{diff.mean():+.4f}, {GATE_Z:g} standard errors needed: {GATE_Z * se:.4f}); "
                         "the projection is kept")
        return out
    if stored is not None:
        s_mrr, s_r1 = _retrieval(apply_map(X[hold], stored, versions[u].metric).astype(np.float64), Gh)
        out["stored_map"] = {"MRR": s_mrr, "R@1": s_r1}
        if s_mrr >= m_mrr:
            out["reason"] = (f"the stored map scores MRR {s_mrr:.4f} on the held-out pairs, the fresh fit {m_mrr:.4f}; "
                             "the stored map is kept")
            return out
    # the gate passed: refit on every pair with the chosen strength
    try:
        W = _ridge_svd(X, Y, np.array([lam * n / len(train)]))[0].T
    except np.linalg.LinAlgError as exc:
        out["reason"] = f"the final ridge fit failed ({exc})"
        return out
    if not np.isfinite(W).all():
        out["reason"] = "the final ridge fit is not finite"
        return out
    out["W"] = W.astype(np.float32)
    out["stored"] = True
    out["reason"] = (f"stored: on {len(hold)} held-out pairs MRR {m_mrr:.4f} vs the projection's {p_mrr:.4f}, "
                     f"R@1 {m_r1:.4f} vs {p_r1:.4f}")
    return out


def fit_summary(fit: Mapping[str, Any]) -> dict[str, Any]:
    """The fit figures worth keeping with a stored map (plain numbers)."""
    out: dict[str, Any] = {"pairs": fit.get("pairs"), "held_out": fit.get("held_out"), "ridge": fit.get("ridge")}
    for key in ("mapped", "projection"):
        for m, val in (fit.get(key) or {}).items():
            out[f"{key}_{m}"] = val
    return out


def fit_neighbour_map(versions: Mapping[str, Version], a: str, u: str, X: np.ndarray, Y: np.ndarray, *,
                      baseline: QueryMap | None, seed: int = 0) -> dict[str, Any]:
    """Choose ``k`` for the neighbour map of the retained pairs ``(X, Y)`` and gate it against ``baseline``.

    Parameters
    ----------
    X, Y:
        ``(n, d_a)`` and ``(n, d_u)`` retained vectors of the same items (core/neighbour_map.py).
    baseline:
        What the old client is served without the neighbour map: the stored linear map, or None
        for the algebra's projection.
    seed:
        The held-out split.

    Returns
    -------
    dict
        ``{"k": int or None, "stored": bool, "reason", "pairs", "held_out", "neighbours": {"MRR",
        "R@1"}, "baseline": {...}, "baseline_kind", "MRR_gain_z"}``. At most :data:`NEIGHBOUR_HOLD`
        pairs (a fifth of them, fewer when there are fewer) are held out, and the others are the
        map's pairs. The held-out pairs are split in two: ``k`` (:data:`NEIGHBOUR_K`) is chosen by
        MRR on the first half, and the gate is the linear map's (:func:`fit_query_map`) on the
        second: each held-out old vector, mapped, must rank its own item's new vector first among
        the held-out new vectors, with MRR above the baseline's, recall@1 not below it and the paired
        gain :data:`GATE_Z` standard errors above zero.
    """
    n = len(X)
    out: dict[str, Any] = {"k": None, "stored": False, "pairs": int(n), "held_out": 0, "neighbours": None,
                           "baseline": None, "baseline_kind": "projection" if baseline is None else "query map",
                           "MRR_gain_z": None}
    need = max(MIN_PAIRS_PER_DIM * versions[a].dim, 20)
    if n < need:
        out["reason"] = f"too few retained pairs: {n} < {need}; the neighbour map is not served"
        return out
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_hold = min(NEIGHBOUR_HOLD, max(4, int(round(HOLDOUT * n))))
    hold, rest = perm[:n_hold], np.sort(perm[n_hold:])
    pick, judge = np.sort(hold[: n_hold // 2]), np.sort(hold[n_hold // 2:])
    metric = versions[u].metric

    def rr(M: QueryMap | None, rows: np.ndarray) -> np.ndarray:
        Gh = _unit(Y[rows].astype(np.float64)) if metric is Metric.COSINE else Y[rows].astype(np.float64)
        if M is None:
            Q = project_or_map(versions, X[rows], a, u, None).astype(np.float64)
        else:
            Q = apply_map(X[rows], M, metric).astype(np.float64)
        return _reciprocal_ranks(Q, Gh)

    ks = [k for k in NEIGHBOUR_K if k <= len(rest)]
    by_k = {k: float(rr(NeighbourMap(X[rest], Y[rest], k), pick).mean()) for k in ks}
    k = max(ks, key=lambda j: (by_k[j], -j))
    rr_n, rr_b = rr(NeighbourMap(X[rest], Y[rest], k), judge), rr(baseline, judge)
    diff = rr_n - rr_b
    se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    out.update({"held_out": int(n_hold), "k_mrr": {str(j): m for j, m in by_k.items()},
                "neighbours": {"MRR": float(rr_n.mean()), "R@1": float(np.mean(rr_n == 1.0))},
                "baseline": {"MRR": float(rr_b.mean()), "R@1": float(np.mean(rr_b == 1.0))},
                "MRR_gain_z": float(diff.mean() / se) if se > 0 else (float("inf") if diff.mean() > 0 else 0.0)})
    nb, bb = out["neighbours"], out["baseline"]
    if not (nb["MRR"] > bb["MRR"] and nb["R@1"] >= bb["R@1"] and diff.mean() > GATE_Z * se):
        out["reason"] = (f"gate failed: on {len(judge)} held-out pairs the neighbour map (k={k}) scores MRR "
                         f"{nb['MRR']:.4f}, R@1 {nb['R@1']:.4f} against the {out['baseline_kind']}'s MRR "
                         f"{bb['MRR']:.4f}, R@1 {bb['R@1']:.4f}; it is not served")
        return out
    out.update({"k": int(k), "stored": True,
                "reason": f"served: on {len(judge)} held-out pairs the neighbour map (k={k}) scores MRR "
                          f"{nb['MRR']:.4f} against the {out['baseline_kind']}'s {bb['MRR']:.4f}"})
    return out
