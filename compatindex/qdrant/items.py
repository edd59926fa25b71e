"""Payload layout, scans, counts, ``stats()`` and ``verify()`` of a Qdrant-backed index."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from .registry import NAMESPACE

if TYPE_CHECKING:
    from .index import QdrantIndex


def point_id(ext: Any) -> str:
    """The point id of an external id: ``uuid5`` of its kind and value (deterministic, so retried
    writes are idempotent and lookups need no payload index)."""
    return str(uuid.uuid5(NAMESPACE, f"i:{ext}" if isinstance(ext, int) else f"s:{ext}"))


def item_payload(ext: Any, label: Any, meta: Any, versions: list[str], t: int) -> dict[str, Any]:
    """The payload of one item's point.

    ``meta`` stays readable JSON (filterable in Qdrant) when it survives a JSON round trip
    unchanged; other msgpack-able metadata (bytes, int keys) is kept as base64 msgpack in ``meta_mp``.
    """
    out: dict[str, Any] = {"ext": ext, "versions": versions, "t": int(t)}
    if label is not None:
        out["label"] = label
    if meta is not None:
        plain = msgpack.unpackb(msgpack.packb(meta, use_bin_type=True), raw=False, strict_map_key=False)
        try:
            same = json.loads(json.dumps(plain)) == plain
        except (TypeError, ValueError):
            same = False
        if same:
            out["meta"] = plain
        else:
            out["meta_mp"] = base64.b64encode(msgpack.packb(meta, use_bin_type=True)).decode("ascii")
    return out


def item_meta(payload: dict[str, Any]) -> Any:
    """The metadata dict stored with an item (None when it has none)."""
    if "meta_mp" in payload:
        return msgpack.unpackb(base64.b64decode(payload["meta_mp"]), raw=False, strict_map_key=False)
    return payload.get("meta")


def _has_vector(name: str) -> Any:
    from qdrant_client import models as m

    return m.Filter(must=[m.HasVectorCondition(has_vector=name)])


def scan(ix: "QdrantIndex", *, version: str | None = None, payload: Any = True, vectors: Any = False,
         flt: Any = None, page: int = 1024) -> list[Any]:
    """Every point (holding a vector of ``version`` when given), as qdrant ``Record`` objects."""
    if version is not None:
        flt = _has_vector(version)
    out: list[Any] = []
    offset = None
    while True:
        recs, offset = ix._call("scroll", lambda o=offset: ix._client.scroll(
            ix.collection, scroll_filter=flt, limit=page, offset=o, with_payload=payload, with_vectors=vectors))
        out.extend(recs)
        if offset is None:
            return out


def count(ix: "QdrantIndex", flt: Any = None) -> int:
    res = ix._call("count", lambda: ix._client.count(ix.collection, count_filter=flt, exact=True))
    return int(res.count)


def disk_bytes(ix: "QdrantIndex") -> int | None:
    """Bytes under a local-mode folder (None for a server or an in-memory index)."""
    if not ix.target.local or ix.target.path == ":memory:":
        return None
    root = Path(ix.target.path)  # type: ignore[arg-type]
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.exists() else 0


def stats(ix: "QdrantIndex") -> dict[str, Any]:
    n = count(ix)
    out: dict[str, Any] = {
        "path": ix.target.url, "backend": "qdrant-local" if ix.target.local else "qdrant",
        "collection": ix.collection, "registry": ix.target.registry, "items": n, "seq": None,
        "id_kind": ix.reg.meta.get("id_kind"), "disk_bytes": disk_bytes(ix),
        "device": "qdrant (local mode)" if ix.target.local else "qdrant server",
        "shard_spec": {"kind": "qdrant", "exact": bool(ix.target.exact or ix.target.local)}, "versions": {},
    }
    for v in sorted(ix._versions.values(), key=lambda u: u.code):
        held = count(ix, _has_vector(v.name))
        out["versions"][v.name] = {
            "dim": v.dim, "parent": v.parent, "metric": v.metric.value, "vectors": held,
            "coverage": held / n if n else 0.0,
            "shard": {"ntotal": held, "named_vector": v.name, "distance": "dot", "persisted": True},
        }
    return out


def verify(ix: "QdrantIndex") -> list[str]:
    """Plain descriptions of the problems found (empty when the index is sound)."""
    from qdrant_client import models as m

    problems: list[str] = []
    params = ix._call("get_collection", lambda: ix._client.get_collection(ix.collection)).config.params
    have = params.vectors if isinstance(params.vectors, dict) else {}
    for v in ix._versions.values():
        cfg = have.get(v.name)
        if cfg is None:
            problems.append(f"version {v.name!r} has no named vector in collection {ix.collection!r}")
            continue
        if cfg.size != v.dim or cfg.distance != m.Distance.DOT:
            problems.append(f"named vector {v.name!r} is dim {cfg.size} / {cfg.distance}, the version says dim {v.dim} / Dot")
    for name in sorted(set(have) - set(ix._versions)):
        problems.append(f"named vector {name!r} has no version record (an interrupted register_version; register it again)")
    known = set(ix._versions)
    names = [v.name for v in ix._versions.values() if v.name in have]
    for u in names:
        in_payload = m.FieldCondition(key="versions", match=m.MatchValue(value=u))
        holds = m.HasVectorCondition(has_vector=u)
        listed = count(ix, m.Filter(must=[in_payload], must_not=[holds]))
        lagging = count(ix, m.Filter(must=[holds], must_not=[in_payload]))
        if listed:
            problems.append(f"version {u!r}: {listed} points list it in their payload but hold no {u!r} vector")
        if lagging:
            problems.append(f"version {u!r}: {lagging} points hold a {u!r} vector their payload does not list "
                            "(an interrupted backfill: run it again)")
    if names:
        empty = count(ix, m.Filter(must_not=[m.HasVectorCondition(has_vector=u) for u in names]))
        if empty:
            problems.append(f"{empty} points hold no vector")
    bad_id = unknown = 0
    for r in scan(ix, payload=["ext", "versions"]):
        p = r.payload or {}
        if "ext" not in p or str(r.id) != point_id(p["ext"]):
            bad_id += 1
        if set(p.get("versions") or []) - known:
            unknown += 1
    if bad_id:
        problems.append(f"{bad_id} points have no external id or an id that is not uuid5 of it (written by another tool?)")
    if unknown:
        problems.append(f"{unknown} points list versions the registry does not know")
    return problems
