"""Fitting the serving parameters of docs/concepts.md ("Migration-time serving") from paired vectors.

Both fits use items that hold a vector of each of two versions (the held-out training pairs of
an upgrade, or items already backfilled), and no query relevance data:

- :func:`fit_calibration`: the positive affine map ``a * s + b`` that puts the scores of (query
  version ``i``, gallery version ``u``) on the scale of ``i``'s own scores, by matching the top of
  each query's score list under both (the part of the list a merge compares);
- :func:`fit_fusion`: the weights of a query given in both versions, chosen on a proxy task: fused
  search of the stored old vectors must recover each sample item's neighbourhood among the other
  sample items, where the neighbourhood is what both models agree on (or shares the item's
  label, when labels are given). The old-only weights are always a candidate, and the chosen
  weights are never below them on that task.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InvalidInputError
from . import versions as V
from .datatypes import Version
from .fusion import compose
from .scoring import Score

FUSION_GRID = tuple(round(0.1 * i, 1) for i in range(11))
"""Candidate weights of the new version (the old version gets ``1 - w``)."""


def _project(versions: Mapping[str, Version], q: np.ndarray, i: str, u: str) -> np.ndarray:
    cut = V.shared_dim(versions, i, u)
    return V.project_query(q.astype(np.float32), cut=cut, target_dim=versions[u].dim, score=Score.PAD).astype(np.float64)


def _check_pairs(Gi: np.ndarray, Gu: np.ndarray, di: int, du: int) -> tuple[np.ndarray, np.ndarray]:
    Gi = np.asarray(Gi, dtype=np.float64)
    Gu = np.asarray(Gu, dtype=np.float64)
    if Gi.ndim != 2 or Gu.ndim != 2 or Gi.shape[1] != di or Gu.shape[1] != du or len(Gi) != len(Gu):
        raise InvalidInputError(f"paired vectors must be (n, {di}) and (n, {du}); got {Gi.shape} and {Gu.shape}")
    if len(Gi) < 3:
        raise InvalidInputError(f"at least 3 items holding both versions are needed; got {len(Gi)}")
    if not (np.isfinite(Gi).all() and np.isfinite(Gu).all()):
        raise InvalidInputError("paired vectors hold NaN or inf")
    return Gi, Gu


def fit_calibration(versions: Mapping[str, Version], i: str, u: str, Gi: np.ndarray, Gu: np.ndarray,
                    *, neighbours: int = 10) -> dict[str, Any]:
    """Fit ``(a, b)`` for (query version ``i``, gallery version ``u``) on items holding both.

    The merge of a mixed gallery compares, for one query, the best scores of items stored in
    ``u`` with the best scores of items stored in ``i``. So the map matches the distributions
    that meet there: the mean and spread of each query's top-``neighbours`` scores against the
    ``u`` vectors are mapped onto those of its top scores against the ``i`` vectors (the same
    items, self excluded). A regression of one score on the other would shrink the noisier
    cross-version scores towards their mean, and push items not yet backfilled out of the top.

    Parameters
    ----------
    versions:
        The index's versions by name.
    i, u:
        Query and gallery version names.
    Gi, Gu:
        ``(n, d_i)`` and ``(n, d_u)`` vectors of the same ``n`` items (as stored: normalized as the
        metric says).
    neighbours:
        How many of each query's nearest sample items describe the top of its list.

    Returns
    -------
    dict
        ``{"a", "b", "queries", "top_mean": [own, cross], "top_std": [own, cross], "fallback"}``;
        ``fallback`` is True when the fit was not a positive finite map and the identity was kept.
    """
    Gi, Gu = _check_pairs(Gi, Gu, versions[i].dim, versions[u].dim)
    n = len(Gi)
    R = Gi @ Gi.T                              # (n, n) the query version's own scores: the target scale
    S = _project(versions, Gi, i, u) @ Gu.T    # (n, n) the same queries against the gallery version
    np.fill_diagonal(R, -np.inf)
    np.fill_diagonal(S, -np.inf)
    m = max(1, min(neighbours, n - 1))
    r = -np.partition(-R, m - 1, axis=1)[:, :m]   # (n, m) each query's top own scores
    s = -np.partition(-S, m - 1, axis=1)[:, :m]   # (n, m) its top cross-version scores
    mr, ms, sr, ss = float(r.mean()), float(s.mean()), float(r.std()), float(s.std())
    a = sr / ss if ss > 0 else float("nan")
    b = mr - a * ms
    fallback = not (np.isfinite(a) and np.isfinite(b) and a > 1e-6)
    if fallback:
        a, b = 1.0, 0.0
    return {"a": float(a), "b": float(b), "queries": int(n), "top_mean": [mr, ms], "top_std": [sr, ss],
            "fallback": bool(fallback)}


def _targets(G_old: np.ndarray, Z_new: np.ndarray, labels: Sequence[Any] | None, m: int) -> list[np.ndarray]:
    n = len(G_old)
    if labels is not None:
        lab = np.asarray([str(x) for x in labels])
        return [np.flatnonzero((lab == lab[x]) & (np.arange(n) != x)) for x in range(n)]
    So = G_old @ G_old.T
    Sn = Z_new @ Z_new.T
    np.fill_diagonal(So, -np.inf)
    np.fill_diagonal(Sn, -np.inf)
    to = np.argpartition(-So, m - 1, axis=1)[:, :m]
    tn = np.argpartition(-Sn, m - 1, axis=1)[:, :m]
    return [np.intersect1d(to[x], tn[x]) for x in range(n)]


def fit_fusion(versions: Mapping[str, Version], new: str, old: str, Z_new: np.ndarray, G_old: np.ndarray, *,
               labels: Sequence[Any] | None = None, calibration: Mapping[tuple[str, str], tuple[float, float]] | None = None,
               score: Score = Score.CALIBRATED, neighbours: int = 10, grid: Sequence[float] = FUSION_GRID) -> dict[str, Any]:
    """Choose the weights of a query given in versions ``new`` and ``old`` on held-out sample items.

    Parameters
    ----------
    Z_new, G_old:
        ``(n, d_new)`` and ``(n, d_old)`` vectors of the same held-out items (each item is a query
        once, in both versions; the gallery is the other items' ``old`` vectors: day one).
    labels:
        Optional ``(n,)`` labels: the target neighbourhood is then the items of the same label.
    calibration:
        The (query, gallery) calibration the served search will use.
    neighbours:
        ``m``: the target is the items in both models' top-``m`` (self excluded), and the proxy score
        is the mean recall of the target in the fused top-``m``.
    grid:
        Candidate weights of ``new``.

    Returns
    -------
    dict
        ``{"fusion": {new: w, old: 1 - w}, "score", "old_only_score", "new_only_score", "gain",
        "queries", "grid": {w: score}}``.
    """
    Z_new, G_old = _check_pairs(Z_new, G_old, versions[new].dim, versions[old].dim)
    n = len(G_old)
    m = max(1, min(neighbours, n - 1))
    targets = _targets(G_old, Z_new, labels, m)
    useful = np.array([len(t) > 0 for t in targets])
    if not useful.any():
        raise InvalidInputError("no held-out item has a neighbour both models agree on; "
                                "fusion weights cannot be fit from this sample")
    cal = dict(calibration or {})
    parts = [(versions[new], Z_new.astype(np.float32)), (versions[old], G_old.astype(np.float32))]
    scores: dict[float, float] = {}
    for w in grid:
        plan = compose(versions, parts, [float(w), 1.0 - float(w)], score, cal)
        q_old = next(qu for name, qu, _, _ in plan if name == old)  # the composed query on the old gallery
        S = q_old.astype(np.float64) @ G_old.T
        np.fill_diagonal(S, -np.inf)
        top = np.argpartition(-S, m - 1, axis=1)[:, :m]
        rec = [len(np.intersect1d(top[x], targets[x])) / min(len(targets[x]), m) for x in np.flatnonzero(useful)]
        scores[float(w)] = float(np.mean(rec))
    old_only = scores.get(0.0)
    best = max(scores, key=lambda w: (round(scores[w], 12), -w))  # ties: the smaller new-model weight
    if old_only is not None and scores[best] < old_only:
        best = 0.0
    return {"fusion": {new: best, old: round(1.0 - best, 10)}, "score": scores[best], "old_only_score": old_only,
            "new_only_score": scores.get(1.0), "gain": None if old_only is None else scores[best] - old_only,
            "queries": int(useful.sum()), "grid": {str(w): s for w, s in scores.items()}}
