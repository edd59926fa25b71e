"""Calibrating from a reference sample (docs/concepts.md, "Calibrating from a reference sample").

``Index.calibrate(version, reference=(ids, vectors))`` hands these functions a random sample of
stored items with their vectors of the new version and their labels (the queries), and draws of
the two populations a search of a half-backfilled gallery scores: the new version's vectors of
backfilled items and the old version's vectors of the others, with their served sizes. The
``served`` dict holds them: ``ids`` and ``labels`` (n,), ``Z`` (n, d_new), ``G_old`` (n_old, d_old)
and ``held_old`` (n,) bool (which reference items still hold an old vector), ``gallery``
``{version: ItemBatch}`` and ``sizes`` ``{version: served count}``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .calibration import fit_served_calibration, lower_bound, served_retrieval
from .datatypes import Version
from .query_maps import QueryMaps


def _queries(new: str, old: str, served: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{query version: (vectors, labels as str, ids)}``: the reference items in each version."""
    lab = np.asarray([str(x) for x in served["labels"]])
    ids = np.asarray(served["ids"], dtype=object)
    held = served["held_old"]
    return {new: (served["Z"], lab, ids), old: (served["G_old"], lab[held], ids[held])}


def _galleries(served: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{gallery version: (vectors, labels as str, ids)}``: the drawn population each version scores."""
    return {u: (g.vectors, np.asarray([str(x) for x in g.labels]), np.asarray(g.ids, dtype=object))
            for u, g in served["gallery"].items()}


def reference_fits(versions: Mapping[str, Version], new: str, old: str, served: Mapping[str, Any],
                   maps: QueryMaps | None) -> dict[str, dict[str, Any]]:
    """The reference calibration rows by ``"query->gallery"``: labels as relevance, each pair fit
    on the population it scores (a side with fewer than 3 items has no row)."""
    fits: dict[str, dict[str, Any]] = {}
    galleries = _galleries(served)
    for i, (Q, lq, iq) in _queries(new, old, served).items():
        if len(Q) < 3:
            continue
        for u, (G, lg, ig) in galleries.items():
            if len(G) < 3:
                continue
            fits[f"{i}->{u}"] = {**fit_served_calibration(versions, i, u, Q, G, lq[:, None] == lg[None, :],
                                                          iq[:, None] == ig[None, :], query_maps=maps),
                                 "method": "reference"}
    return fits


def choose_calibration(versions: Mapping[str, Version], new: str, old: str, served: Mapping[str, Any],
                       fits: dict[str, dict[str, Any]], ref: Mapping[str, dict[str, Any]],
                       maps: QueryMaps | None) -> dict[str, Any]:
    """For each query version, keep the pairs' rows in ``fits`` or replace them by the reference rows.

    The judge is the reference queries' search of a draw of the gallery in its served composition
    (as many items as the smaller population allows): the reference rows are kept unless the pairs'
    rows put an item of the query's label first more often, by a one-sided 95% bound over the
    queries. That is what the backfill curves measure; AP (the whole ranking) is reported beside it
    and can disagree (measured on Fashion-MNIST's uncertainty order at p = 0.1: the pairs' rows gain
    15 points of first hits and lose 1.6 of AP). ``fits`` is updated in place; returns the report.
    """
    gal = _galleries(served)
    tot = sum(served["sizes"].values())
    share = {u: served["sizes"][u] / tot if tot else 0.0 for u in gal}
    m = min((len(gal[u][0]) / share[u] for u in gal if share[u] > 0), default=0.0)
    parts = []
    for u, (G, lg, ig) in gal.items():
        k = min(len(G), int(round(m * share[u])))
        if k:
            parts.append((u, G[:k], lg[:k], ig[:k]))
    out: dict[str, Any] = {}
    for i, (Q, lq, iq) in _queries(new, old, served).items():
        rows = {"pairs": {u: fits.get(f"{i}->{u}") for u in gal}, "reference": {u: ref.get(f"{i}->{u}") for u in gal}}
        if len(Q) < 3 or not parts or any(r is None for c in rows.values() for r in c.values()):
            continue
        res = {c: served_retrieval(versions, i, Q, lq, iq, parts,
                                   {u: (r["a"], r["b"]) for u, r in rows[c].items() if r is not None}, query_maps=maps)
               for c in rows}
        bound = lower_bound(res["pairs"][0] - res["reference"][0])
        chosen = "pairs" if bound > 0 else "reference"
        out[i] = {"chosen": chosen, "gallery": int(sum(len(p[1]) for p in parts)), "queries": int(len(Q)),
                  "first_hit": {c: float(r[0].mean()) for c, r in res.items()},
                  "AP": {c: float(r[1].mean()) for c, r in res.items()}, "lower_bound": bound}
        if chosen == "reference":
            fits.update({f"{i}->{u}": r for u, r in rows["reference"].items() if r is not None})
    return out
