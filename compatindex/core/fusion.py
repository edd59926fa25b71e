"""Migration-time serving: one composed query per shard for queries given in several versions.

During a migration the old encoder still runs, so a query may come as ``{v_new: q_n, v_old: q_o}``
(docs/concepts.md, "Migration-time serving"). For a stored vector ``g`` of version ``u`` the
served score is

    s(g) = sum_i w_i * (a_iu * <pi_iu(q_i), g> + b_iu)

with ``pi_iu`` the query-side projection of the version algebra (or, when ``u`` stores a query
map from ancestor ``i``, the mapped query ``normalize(W_iu q_i)``: core/query_maps.py), ``a_iu > 0, b_iu`` the
calibration of (query version ``i``, gallery version ``u``) and ``w_i >= 0`` the fusion weights.
Every term is linear in the queries, so each shard is searched once with the composed vector
``sum_i w_i a_iu pi_iu(q_i)`` and the constant ``sum_i w_i b_iu`` is added to its scores: exact
with every shard kind, and a positive affine map per shard keeps each shard's order, so the
merged top-k stays exact.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InvalidInputError
from . import versions as V
from .datatypes import Version
from .query_maps import QueryMaps, apply_map
from .scoring import Score

Calibration = dict[tuple[str, str], tuple[float, float]]
"""``(query version, gallery version) -> (a, b)``: the positive affine map of that pair's scores."""


def calibration_table(versions: Mapping[str, Version]) -> Calibration:
    """Every calibration stored with the versions (a later version's entry wins)."""
    out: Calibration = {}
    for v in sorted(versions.values(), key=lambda u: u.code):
        for row in (v.serving or {}).get("calibration") or []:
            i, u, a, b = row
            if i in versions and u in versions:
                out[(str(i), str(u))] = (float(a), float(b))
    return out


def stored_fusion(versions: Mapping[str, Version], names: Sequence[str]) -> dict[str, float] | None:
    """The weights stored with the newest version of ``names`` that covers exactly these query versions."""
    want = set(names)
    for v in sorted((versions[n] for n in names), key=lambda u: -u.code):
        fusion = (v.serving or {}).get("fusion")
        if fusion and set(fusion) == want:
            return {str(k): float(w) for k, w in fusion.items()}
    return None


def as_weights(fusion: Any, names: Sequence[str], *, param: str = "fusion") -> list[float]:
    """Check per-call fusion weights for the query versions ``names``; returns them in that order.

    A version of the query left out of ``fusion`` gets weight 0. Weights must be finite, >= 0 and
    not all zero; a key that is not one of the query's versions is refused.
    """
    if not isinstance(fusion, Mapping):
        raise InvalidInputError(f"`{param}` must be a mapping {{version: weight}}; got {type(fusion).__name__}")
    unknown = [k for k in fusion if k not in names]
    if unknown:
        raise InvalidInputError(f"`{param}` names {unknown[0]!r}, which is not a version of the query "
                                f"(the query's versions: {', '.join(names)})")
    out = []
    for n in names:
        w = fusion.get(n, 0.0)
        if isinstance(w, bool) or not isinstance(w, (int, float, np.floating, np.integer)):
            raise InvalidInputError(f"`{param}[{n!r}]` must be a number; got {w!r}")
        w = float(w)
        if not math.isfinite(w) or w < 0:
            raise InvalidInputError(f"`{param}[{n!r}]` must be a finite number >= 0; got {w!r}")
        out.append(w)
    if not any(out):
        raise InvalidInputError(f"`{param}` weights are all zero; give at least one version a weight > 0")
    return out


def compose(versions: Mapping[str, Version], parts: Sequence[tuple[Version, np.ndarray]], weights: Sequence[float],
            score: Score, calibration: Calibration,
            query_maps: QueryMaps | None = None) -> list[tuple[str, np.ndarray, tuple[str, ...], float]]:
    """The per-version searches of a query as one composed vector each: :func:`compose_terms` with
    the scale folded into the query (``(version, (nq, d) query, shadowing, offset)``)."""
    return [(name, q if scale == 1.0 else np.ascontiguousarray(q * np.float32(scale)), shadow, off)
            for name, q, shadow, off, scale in compose_terms(versions, parts, weights, score, calibration, query_maps)]


def compose_terms(versions: Mapping[str, Version], parts: Sequence[tuple[Version, np.ndarray]],
                  weights: Sequence[float], score: Score, calibration: Calibration,
                  query_maps: QueryMaps | None = None) -> list[tuple[str, np.ndarray, tuple[str, ...], float, float]]:
    """The per-version searches of a (possibly multi-version) query, in the primary's preference order.

    Parameters
    ----------
    versions:
        The index's versions by name.
    parts:
        ``(version, (nq, d_version) float32 queries)`` per query version; the first is the primary
        (it decides which vector represents each item).
    weights:
        One fusion weight per part.
    score:
        ``pad`` or ``renorm`` projection; ``calibrated`` projects like ``pad`` and applies ``calibration``.
    calibration:
        ``(query version, gallery version) -> (a, b)``; missing pairs are the identity.
    query_maps:
        ``(query version, gallery version) -> (d_u, d_i) W`` (:func:`.query_maps.query_map_table`):
        a pair with a map uses ``normalize(W q)`` (``ip``: rescaled to the query's norm) instead of
        the projection, under every score convention; calibration still applies on top.

    Returns
    -------
    list of (version, (nq, d_version) queries, shadowing versions, score offset, score scale)
        The served score of a stored vector ``g`` is ``scale * <query, g> + offset``. Where a single
        query version reaches the shard, ``query`` is its term unscaled and ``scale`` its weight
        times its calibration slope: the shard then ranks exactly as that query alone does (a
        positive scale applied to the scores keeps their order, where scaling the query in float32
        can swap near-ties). Otherwise ``query`` is the weighted sum and ``scale`` is 1.
    """
    primary = parts[0][0]
    pref = V.preference(versions, primary.name)
    project = Score.PAD if score is Score.CALIBRATED else score
    out = []
    for n, name in enumerate(pref):
        u = versions[name]
        terms: list[tuple[np.ndarray, float]] = []
        offset = 0.0
        for (qv, q), w in zip(parts, weights):
            if w == 0.0:
                continue
            a, b = calibration.get((qv.name, name), (1.0, 0.0)) if score is Score.CALIBRATED else (1.0, 0.0)
            W = query_maps.get((qv.name, name)) if query_maps else None
            cut = V.shared_dim(versions, qv.name, name)
            if W is not None:
                qu = apply_map(q, W, u.metric)
            else:
                qu = q if (cut == qv.dim == u.dim) else V.project_query(q, cut=cut, target_dim=u.dim, score=project)
            terms.append((qu, w * a))
            offset += w * b
        assert terms  # as_weights / the defaults give some part a weight > 0
        if len(terms) == 1:
            q1, scale = terms[0]
            out.append((name, np.ascontiguousarray(q1, dtype=np.float32), tuple(pref[:n]), offset, float(scale)))
            continue
        acc = None
        for t, sc in terms:
            term = t if sc == 1.0 else t * np.float32(sc)
            acc = term if acc is None else acc + term
        out.append((name, np.ascontiguousarray(acc, dtype=np.float32), tuple(pref[:n]), offset, 1.0))
    return out
