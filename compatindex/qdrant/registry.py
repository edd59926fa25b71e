"""The version registry of a Qdrant-backed index, kept in Qdrant itself.

A reserved collection ``<COLLECTION>__registry`` (no vectors, payload only) holds one point per
version and one meta point, so every application server that opens the same URL sees the same
lineage, extension matrices, heads and training reports. A version record is the embedded
store's record (``name, code, dim, metric, parent, raw_dim, extension, head, report, config,
created_at``) packed with msgpack and base64 (Qdrant payloads are JSON); a few fields are also
stored in the clear for people browsing the collection.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any, Callable

import msgpack

from ..core.datatypes import Version
from ..core.records import version_from_record
from ..errors import CorruptIndexError, FormatVersionError, NotAnIndexError
from .url import Target

FORMAT = "compatindex"
BACKEND = "qdrant"
FORMAT_VERSION = 1
NAMESPACE = uuid.UUID("5b0c7c2e-8d0f-5f5e-9a51-6d1b3c0e7a11")
META_ID = str(uuid.uuid5(NAMESPACE, "meta"))


def version_point_id(name: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "version:" + name))


def encode(record: dict[str, Any]) -> str:
    return base64.b64encode(msgpack.packb(record, use_bin_type=True)).decode("ascii")


def decode(text: str, *, what: str) -> Any:
    try:
        return msgpack.unpackb(base64.b64decode(text), raw=False, strict_map_key=False)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is damage
        raise CorruptIndexError(f"damaged {what} in the Qdrant registry: {exc}") from None


class Registry:
    """Reads and writes the registry collection; creates both collections of a new index."""

    def __init__(self, client: Any, target: Target, call: Callable[..., Any]) -> None:
        self.client = client
        self.t = target
        self.call = call  # call(what, fn): the retry helper bound to this index
        self.meta: dict[str, Any] = {}

    # -- opening -----------------------------------------------------------------------------
    def open(self, *, create: bool, readonly: bool) -> None:
        c, t = self.client, self.t
        has_main = self.call("collection_exists", lambda: c.collection_exists(t.collection))
        has_reg = self.call("collection_exists", lambda: c.collection_exists(t.registry))
        meta = self._read_meta() if has_reg else None
        if meta is not None:
            self._check_meta(meta)
            if not has_main:
                raise CorruptIndexError(f"{t.url}: the registry exists but collection {t.collection!r} is gone",
                                        hint="restore the collection from a snapshot, or export the index again")
            self.meta = meta
            return
        if has_main and not has_reg:
            raise NotAnIndexError(
                f"{t.url} is not a compatindex index (collection {t.collection!r} has no registry {t.registry!r})",
                hint="point at another collection (qdrant://HOST:PORT/NAME), or export an index into a new one",
            )
        if not create or readonly:
            raise NotAnIndexError(f"no index at {t.url}", hint="create it with compatindex.open(url) or `compatindex export`")
        self._create(has_main=has_main, has_reg=has_reg)

    def _create(self, *, has_main: bool, has_reg: bool) -> None:
        from qdrant_client import models as m

        c, t = self.client, self.t
        # The meta point is written last: a crash before it leaves a half-made index that the
        # next open with create=True finishes.
        if not has_reg:
            self.call("create_collection", lambda: c.create_collection(t.registry, vectors_config={}))
        if not has_main:
            self.call("create_collection", lambda: c.create_collection(t.collection, vectors_config={}))
        meta = {"kind": "meta", "format": FORMAT, "backend": BACKEND, "format_version": FORMAT_VERSION,
                "collection": t.collection, "id_kind": None, "created_at": time.time()}
        self._put(META_ID, meta)
        self.meta = meta

    def _check_meta(self, meta: dict[str, Any]) -> None:
        if meta.get("format") != FORMAT:
            raise NotAnIndexError(f"{self.t.url} is not a compatindex index (registry says {meta.get('format')!r})")
        try:
            fmt = int(meta["format_version"])
        except (KeyError, TypeError, ValueError):
            raise NotAnIndexError(f"{self.t.url}: the registry's meta record is damaged") from None
        if fmt > FORMAT_VERSION:
            raise FormatVersionError(
                f"index {self.t.url} has format version {fmt}; this compatindex reads up to {FORMAT_VERSION}")

    def _read_meta(self) -> dict[str, Any] | None:
        recs = self.call("retrieve", lambda: self.client.retrieve(self.t.registry, [META_ID], with_payload=True))
        return dict(recs[0].payload or {}) if recs else None

    def refresh_meta(self) -> dict[str, Any]:
        meta = self._read_meta()
        if meta is not None:
            self.meta = meta
        return self.meta

    def set_meta(self, **values: Any) -> None:
        self.call("set_payload", lambda: self.client.set_payload(self.t.registry, payload=values,
                                                                 points=[META_ID], wait=True))
        self.meta.update(values)

    def _put(self, pid: str, payload: dict[str, Any]) -> None:
        from qdrant_client import models as m

        point = m.PointStruct(id=pid, vector={}, payload=payload)
        self.call("upsert", lambda: self.client.upsert(self.t.registry, points=[point], wait=True))

    # -- versions ----------------------------------------------------------------------------
    def load_versions(self) -> dict[str, Version]:
        """Every version record, by name, in creation (code) order."""
        from qdrant_client import models as m

        flt = m.Filter(must=[m.FieldCondition(key="kind", match=m.MatchValue(value="version"))])
        records, offset = [], None
        while True:
            page, offset = self.call("scroll", lambda o=offset: self.client.scroll(
                self.t.registry, scroll_filter=flt, limit=256, offset=o, with_payload=True, with_vectors=False))
            for p in page:
                records.append(decode((p.payload or {}).get("record", ""), what=f"version record {p.id}"))
            if offset is None:
                break
        records.sort(key=lambda r: r["code"])
        return {r["name"]: version_from_record(r, where=f"the Qdrant registry {self.t.registry!r}") for r in records}

    def version_record(self, name: str) -> dict[str, Any]:
        """The stored record of version ``name`` (``CorruptIndexError`` when it is gone)."""
        recs = self.call("retrieve", lambda: self.client.retrieve(self.t.registry, [version_point_id(name)],
                                                                  with_payload=True))
        if not recs:
            raise CorruptIndexError(f"version {name!r} has no record in the Qdrant registry {self.t.registry!r}")
        rec: dict[str, Any] = decode((recs[0].payload or {}).get("record", ""), what=f"version record {name!r}")
        return rec

    def put_version(self, record: dict[str, Any]) -> None:
        payload = {"kind": "version", "name": record["name"], "code": record["code"], "dim": record["dim"],
                   "parent": record["parent"], "metric": record["metric"], "record": encode(record)}
        self._put(version_point_id(record["name"]), payload)
