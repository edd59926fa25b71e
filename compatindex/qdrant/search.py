"""Per-version searches on Qdrant, sent as one batch.

The facade plans a search as one :class:`~compatindex.backend.ShardQuery` per version: queries
projected onto that version, restricted to the items it represents (holding its vector and none
of the versions ranked before it). Here each (query, version) pair becomes one ``QueryRequest``
on the version's named vector with that ``HasVectorCondition`` filter (and the translated
``where``), and all of them go to Qdrant in one ``query_batch_points`` call (split only past
:data:`MAX_BATCH` requests), so a search costs one round trip whatever the number of queries and versions.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import numpy as np

from ..backend import ShardHits, ShardQuery
from ..core.datatypes import ItemId
from ..core.filters import Filter
from .filters import native, require
from .items import holding

MAX_BATCH = 8192
"""Most requests in one ``query_batch_points`` call (bounds the size of one HTTP/gRPC message)."""


def run(call: Callable[[str, Callable[[], Any]], Any], client: Any, collection: str,
        steps: Sequence[ShardQuery], k: int, *, exact: bool, where: Filter | None = None) -> ShardHits:
    """Search every step for every query; keys index a per-search table of external ids.

    ``where`` is translated once (:mod:`compatindex.qdrant.filters`) and required next to each
    step's version conditions, in the same ``QueryRequest``.
    """
    from qdrant_client import models as m

    nq = len(steps[0].queries) if steps else 0
    params = m.SearchParams(exact=True) if exact else None
    extra = native(where)
    filters = [require(holding(s.version, not_holding=s.shadowing), extra) for s in steps]
    requests = [m.QueryRequest(query=row, using=s.version, filter=flt, limit=k, params=params,
                               with_payload=["ext"], with_vector=False)
                for s, flt in zip(steps, filters) for row in s.queries.tolist()]
    responses: list[Any] = []
    for lo in range(0, len(requests), MAX_BATCH):
        chunk = requests[lo:lo + MAX_BATCH]
        responses.extend(call("query_batch_points", functools.partial(client.query_batch_points, collection,
                                                                      requests=chunk)))
    table: list[ItemId] = []
    scores, keys = [], []
    for j in range(len(steps)):
        D = np.full((nq, k), -np.inf, dtype=np.float32)
        K = np.full((nq, k), -1, dtype=np.int64)
        for qi in range(nq):
            for col, p in enumerate(responses[j * nq + qi].points[:k]):
                D[qi, col] = p.score
                K[qi, col] = len(table)
                payload: Any = p.payload or {}  # a point without "ext" (another tool's) gets id None
                table.append(payload.get("ext"))
        scores.append(D)
        keys.append(K)

    def resolve(found: np.ndarray) -> list[ItemId] | None:
        return [table[i] for i in found.tolist()]

    return ShardHits(scores, keys, resolve)
