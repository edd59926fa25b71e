"""Keeping a sample of the pairs ``backfill(drop_old=True)`` deletes, and serving old clients from it.

The facade calls :func:`retain` with the old and new vectors of the items a ``drop_old`` backfill
is about to strip, and :func:`forget` with deleted ids; both return the version's new
``serving`` dict (the caller stores it). What is stored and how it is served:
core/neighbour_map.py; the gate: :func:`.query_maps.fit_neighbour_map`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .datatypes import Version
from .neighbour_map import capacity_for, grow, unpack_pairs, without
from .query_maps import fit_neighbour_map, query_map_table

REGATE = 1.25
"""The gate is run again once the number of dropped items offered has grown by this factor."""


def retain(versions: Mapping[str, Version], u: str, a: str, serving: Mapping[str, Any], ids: Sequence[Any],
           X: np.ndarray, Y: np.ndarray, *, capacity: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Offer dropped items' pairs of ``(a, u)`` to the reservoir; ``(new serving of u, gate report or None)``.

    The caller keeps the ``a`` vectors of the items the new entry holds (they are not dropped) and
    drops those of the items it no longer holds, so an old client scores every retained item
    exactly as before the backfill, and the neighbour map only serves the items that lost their
    old vector: the population its calibration row is fit for.

    Parameters
    ----------
    ids:
        The ``n`` items whose ``a`` vectors are being dropped.
    X, Y:
        Their ``(n, d_a)`` vectors of ``a`` and ``(n, d_u)`` of ``u``.
    capacity:
        Pairs kept at most (capped by :data:`.neighbour_map.MAX_BYTES`); 0 keeps none.

    The gate (:func:`.query_maps.fit_neighbour_map`, against the stored linear map or the
    projection) runs when the sample first reaches the fewest pairs it needs and again each time
    the items offered grow by :data:`REGATE`; its ``k`` (or None) is stored with the pairs. When
    the neighbour map is served and ``u`` stores calibration rows, the row of ``(a, u)`` is refit
    for it (:func:`neighbour_row`), so an old client's mix of old and backfilled items stays on
    one scale.
    """
    out = dict(serving)
    pairs = dict(out.get("pairs") or {})
    cap = capacity_for(versions[a].dim, versions[u].dim, capacity)
    entry = grow(pairs.get(a), ids, X, Y, capacity=cap)
    report = None
    seen, gated = int(entry["seen"]), int(entry.get("gated_seen") or 0)
    if gated == 0 or seen >= REGATE * gated:
        _, Xs, Ys = unpack_pairs(entry)
        linear = query_map_table(versions, neighbours=False).get((a, u))
        report = fit_neighbour_map(versions, a, u, Xs, Ys, baseline=linear)
        if report["neighbours"] is None:
            report = None  # too few pairs to gate yet: the next offer tries again
        else:
            entry["k"] = report["k"]
            entry["gated_seen"] = seen
            entry["fit"] = {key: report[key] for key in ("pairs", "held_out", "MRR_gain_z", "baseline_kind")}
            entry["fit"].update({f"{side}_{m}": val for side in ("neighbours", "baseline")
                                 for m, val in (report[side] or {}).items()})
    pairs[a] = entry
    out["pairs"] = pairs
    if entry.get("k"):
        rows = list(out.get("calibration") or [])
        base = next(((float(r[2]), float(r[3])) for r in rows if r[0] == a and r[1] == a), None)
        if base is not None:
            fit = neighbour_row(base)
            out["calibration"] = [list(r) for r in rows if not (r[0] == a and r[1] == u)] + [[a, u, fit["a"], fit["b"]]]
    return out, report


def neighbour_row(base: tuple[float, float]) -> dict[str, Any]:
    """The ``(a, u)`` calibration row served with a neighbour map: the ``(a, a)`` row ``base`` itself.

    The neighbour map serves only the items that lost their ``a`` vector (the retained items are
    scored by their ``a`` vector), and its output is a unit vector of ``u``'s space (``ip``: at the
    query's norm) that stands in for the query there: its score against an item's ``u`` vector is
    read on the scale of the query's score against an item's ``a`` vector. Fitting an offset or a
    slope on held-out retained pairs instead (each held-out item as a query against the others,
    by all their scores or by the per-query best ones) put fewer labels first at most backfill
    points in a study on the Fashion-MNIST models of bench/serving.py, and never by a clear margin
    more: the held-out items are gallery items, whose scores against each other run higher than a
    real query's, and the fit carries that bias into the merge.
    """
    a0, b0 = base
    return {"a": float(a0), "b": float(b0), "method": "neighbour-map (the old version's row)"}


def forget(serving: Mapping[str, Any], ids: Sequence[Any]) -> dict[str, Any] | None:
    """``serving`` without the retained pairs of ``ids``; None when it held none of them."""
    pairs = serving.get("pairs") or {}
    changed = {a: e for a, e in ((a, without(e, ids)) for a, e in pairs.items()) if e is not None}
    if not changed:
        return None
    out = dict(serving)
    out["pairs"] = {**pairs, **changed}
    return out
