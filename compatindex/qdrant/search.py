"""Cross-version search on Qdrant (design.md §2): one request per (query, version), merged by score.

For a query of version ``v`` the versions rank as ``versions.preference(v)``. An item is seen
once, through its representative vector: the first version in that order that it holds. So the
request on version ``u`` carries the payload filter "``versions`` contains ``u`` and none of the
versions ranked before ``u``", and the query projected onto ``u`` (``versions.project_query``
with ``versions.shared_dim``). The filters partition the items, so the per-version top-k lists
are disjoint and merging them by exact score (no rank fusion: the scores are comparable by
construction) gives the same top-k as the embedded index. All requests of a search go in
``query_batch_points`` calls: one round trip per ``max_requests`` requests.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..core import versions as V
from ..core.scoring import Score
from ..core.datatypes import SearchResult, Version


def representative_filter(pref: Sequence[str], i: int) -> Any:
    """Items whose representative version, for the preference order ``pref``, is ``pref[i]``."""
    from qdrant_client import models as m

    must = [m.FieldCondition(key="versions", match=m.MatchValue(value=pref[i]))]
    must_not = [m.FieldCondition(key="versions", match=m.MatchAny(any=list(pref[:i])))] if i else None
    return m.Filter(must=must, must_not=must_not)


def plan(versions: Mapping[str, Version], v: Version, q: np.ndarray, score: Score) -> list[tuple[str, np.ndarray, Any]]:
    """``(version name, projected (nq, d_u) queries, filter)`` for every version, in preference order."""
    pref = V.preference(versions, v.name)
    out = []
    for i, name in enumerate(pref):
        u = versions[name]
        cut = V.shared_dim(versions, v.name, u.name)
        qu = q if (cut == v.dim == u.dim) else V.project_query(q, cut=cut, target_dim=u.dim, score=score)
        out.append((name, qu, representative_filter(pref, i)))
    return out


def run(call: Callable[..., Any], client: Any, collection: str, steps: list[tuple[str, np.ndarray, Any]], k: int,
        *, exact: bool, max_requests: int = 512) -> SearchResult:
    """Send the requests of ``plan`` in batches and merge each query's hits by score."""
    from qdrant_client import models as m

    nq = len(steps[0][1]) if steps else 0
    params = m.SearchParams(exact=True) if exact else None
    requests = []
    for qi in range(nq):
        for name, qu, flt in steps:
            requests.append(m.QueryRequest(query=qu[qi].tolist(), using=name, filter=flt, limit=k,
                                           params=params, with_payload=["ext"], with_vector=False))
    responses: list[Any] = []
    for lo in range(0, len(requests), max_requests):
        chunk = requests[lo:lo + max_requests]
        responses.extend(call("query_batch_points", lambda c=chunk: client.query_batch_points(collection, requests=c)))
    ids = np.empty((nq, k), dtype=object)
    vers = np.empty((nq, k), dtype=object)
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    nv = len(steps)
    for qi in range(nq):
        cand_s: list[float] = []
        cand_i: list[Any] = []
        cand_v: list[str] = []
        for j, (name, _, _) in enumerate(steps):
            for p in responses[qi * nv + j].points:
                cand_s.append(p.score)
                cand_i.append((p.payload or {}).get("ext"))
                cand_v.append(name)
        if not cand_s:
            continue
        s = np.asarray(cand_s, dtype=np.float32)
        order = np.argsort(-s, kind="stable")[:k]
        scores[qi, :len(order)] = s[order]
        for col, o in enumerate(order.tolist()):
            ids[qi, col] = cand_i[o]
            vers[qi, col] = cand_v[o]
    return SearchResult(ids, scores, vers)
