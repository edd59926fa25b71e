"""Points of a Qdrant-backed index: ids, payload layout, and the collection calls built on them.

An item is one point, id ``uuid5(external id)``, payload ``{"ext", "label", "meta", "meta_mp",
"t"}`` (``t``: insertion order; metadata under ``meta``, see :func:`meta_fields`), holding one
named vector per version it has. Which versions a point holds is read from the vectors
themselves (``HasVectorCondition``), never from a payload list: a payload list would need a
read-modify-write on every backfill, and two clients backfilling the same items at once would
overwrite each other's list (docs/scaling.md).
"""

from __future__ import annotations

import base64
import functools
import json
import uuid
from typing import Any, Callable

import msgpack

from .registry import NAMESPACE


def point_id(ext: Any) -> str:
    """The point id of an external id: ``uuid5`` of its kind and value (deterministic, so retried
    writes are idempotent and lookups need no payload index)."""
    return str(uuid.uuid5(NAMESPACE, f"i:{ext}" if isinstance(ext, int) else f"s:{ext}"))


def meta_fields(meta: Any) -> dict[str, Any]:
    """The payload keys that store one item's metadata (``{}`` for None).

    ``meta`` stays readable JSON under ``"meta"`` (what Qdrant filters read) when it survives a
    JSON round trip unchanged and Qdrant's filters read it exactly like the reference evaluator
    (:func:`compatindex.qdrant.filters.is_filter_exact`). Other msgpack-able metadata (bytes, int
    keys, non-finite floats, ``None`` inside lists, nested lists) is kept exactly as base64 msgpack
    in ``"meta_mp"``, with its filter view (:func:`compatindex.qdrant.filters.filter_view`) under
    ``"meta"``. User keys live inside ``"meta"``, so they never collide with the internal keys.
    """
    from .filters import filter_view, is_filter_exact

    if meta is None:
        return {}
    plain = msgpack.unpackb(msgpack.packb(meta, use_bin_type=True), raw=False, strict_map_key=False)
    if is_filter_exact(plain):
        return {"meta": plain}
    return {"meta": filter_view(plain) if isinstance(plain, dict) else {},
            "meta_mp": base64.b64encode(msgpack.packb(meta, use_bin_type=True)).decode("ascii")}


def item_payload(ext: Any, label: Any, meta: Any, t: int) -> dict[str, Any]:
    """The payload of one item's point: ``ext``, ``t``, ``label`` and :func:`meta_fields`."""
    out: dict[str, Any] = {"ext": ext, "t": int(t)}
    if label is not None:
        out["label"] = label
    out.update(meta_fields(meta))
    return out


def item_meta(payload: dict[str, Any]) -> Any:
    """The metadata dict stored with an item (None when it has none)."""
    if "meta_mp" in payload:
        return msgpack.unpackb(base64.b64decode(payload["meta_mp"]), raw=False, strict_map_key=False)
    return payload.get("meta")


def holding(version: str, *, not_holding: tuple[str, ...] = ()) -> Any:
    """Filter: points that hold a vector of ``version`` and none of ``not_holding``."""
    from qdrant_client import models as m

    must_not: list[m.Condition] | None = [m.HasVectorCondition(has_vector=u) for u in not_holding] or None
    return m.Filter(must=[m.HasVectorCondition(has_vector=version)], must_not=must_not)


class Points:
    """The calls on one collection's points, each through the index's retry helper.

    Parameters
    ----------
    client:
        A ``QdrantClient``.
    collection:
        The collection's name.
    call:
        ``call(what, fn)``: runs ``fn()`` with retries, naming ``what`` in errors.
    """

    def __init__(self, client: Any, collection: str, call: Callable[[str, Callable[[], Any]], Any]) -> None:
        self.client = client
        self.collection = collection
        self.call = call

    def retrieve(self, pids: list[str], *, payload: Any = False, vectors: Any = False) -> dict[str, Any]:
        """The points among ``pids`` that exist, by point id (``Record`` objects)."""
        out: dict[str, Any] = {}
        for lo in range(0, len(pids), 1024):
            chunk = pids[lo:lo + 1024]
            recs = self.call("retrieve", functools.partial(
                self.client.retrieve, self.collection, ids=chunk, with_payload=payload, with_vectors=vectors))
            out.update({str(r.id): r for r in recs})
        return out

    def scan(self, *, flt: Any = None, payload: Any = True, vectors: Any = False, page: int = 1024) -> list[Any]:
        """Every point matching ``flt``, as ``Record`` objects."""
        out: list[Any] = []
        offset = None
        while True:
            recs, offset = self.call("scroll", functools.partial(
                self.client.scroll, self.collection, scroll_filter=flt, limit=page, offset=offset,
                with_payload=payload, with_vectors=vectors))
            out.extend(recs)
            if offset is None:
                return out

    def count(self, flt: Any = None) -> int:
        res = self.call("count", lambda: self.client.count(self.collection, count_filter=flt, exact=True))
        return int(res.count)

    def vector_names(self) -> dict[str, Any]:
        """The collection's named vectors and their configs."""
        params = self.call("get_collection", lambda: self.client.get_collection(self.collection)).config.params
        return dict(params.vectors) if isinstance(params.vectors, dict) else {}
