"""``QdrantIndex``: the :class:`compatindex.Index` API on a Qdrant collection.

Mapping (docs/scaling.md): one collection per index; one named vector per version (the
version's dim, ``Distance.DOT`` on vectors normalized as the metric says, exactly what the
embedded shards hold); one point per item, id ``uuid5(external id)``, payload
``{"ext", "label", "meta", "versions", "t"}`` (``versions``: the versions whose vectors the point
holds; ``t``: insertion order); the version registry in ``<COLLECTION>__registry``.

Validation, the version algebra and the version-creation checks are the embedded index's own
code (``compatindex.validate``, ``compatindex.versions`` and the ``Index`` methods borrowed
below), so both backends accept and refuse the same calls with the same errors.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core import versions as V
from ..errors import InvalidInputError, NotAnIndexError, UnknownIdError, VersionExistsError
from ..index import Index
from ..core.scoring import normalize_score
from ..embedded.store import _duplicate
from ..core.datatypes import AddResult, ItemBatch, SearchResult, Version
from ..core.validate import as_ids, as_k, as_labels, as_metadata, as_sample, sample_rows
from . import items, search
from .errors import BackendError, BackendVersionError, MIN_SERVER, parse_version, require_client, retry, translate
from .items import point_id
from .registry import Registry
from .url import Target, parse

WRITE_BATCH = 512


def open_qdrant(url: str, *, readonly: bool = False, create: bool = True) -> "QdrantIndex":
    """Open (or create) the index at a ``qdrant://`` or ``qdrant+local://`` URL (see ``url.parse``)."""
    return QdrantIndex(parse(url), readonly=readonly, create=create)


class QdrantIndex:
    """A multi-version index stored in Qdrant. Use :func:`compatindex.open` with a Qdrant URL."""

    # The embedded index's own checks, reused as they are (they only touch the members below:
    # _versions, _put_version, _check_open, _writable, versions()).
    create_version = Index.create_version
    lineage = Index.lineage
    lca = Index.lca
    to_version_space = Index.to_version_space
    latest = Index.latest
    _check_open = Index._check_open
    _writable = Index._writable
    _prepare = Index._prepare
    _require_known = staticmethod(Index._require_known)

    def __init__(self, target: Target, *, readonly: bool = False, create: bool = True) -> None:
        self.target = target
        self.path = target.url  # named like Index.path: error messages say where the index is
        self.readonly = readonly
        self._closed = False
        self._client: Any = None
        self._versions: dict[str, Version] = {}
        self._last_t = 0
        require_client()
        if target.local and target.path != ":memory:" and (readonly or not create) and not Path(target.path).exists():  # type: ignore[arg-type]
            self._closed = True
            raise NotAnIndexError(f"no index at {target.url}", hint="create it with compatindex.open(url)")
        try:
            try:
                self._client = target.client()
            except Exception as exc:  # noqa: BLE001 - a local folder locked by another client
                raise translate(exc, what="open", where=target.url) from None
            self.check_server()
            self.reg = Registry(self._client, target, self._call)
            self.reg.open(create=create, readonly=readonly)
            self._load()
        except BaseException:
            self._release()
            raise

    # -- plumbing ----------------------------------------------------------------------------
    def _call(self, what: str, fn: Any) -> Any:
        return retry(fn, what=what, where=self.target.url, attempts=1 if self.target.local else 4)

    def check_server(self) -> str:
        """The server's version; raises ``BackendVersionError`` below ``errors.MIN_SERVER``."""
        info = self._call("server info", self._client.info)
        text = str(getattr(info, "version", "") or "")
        if not self.target.local and text and parse_version(text) < MIN_SERVER:
            raise BackendVersionError(f"the Qdrant server at {self.target.url} is version {text}; compatindex "
                                      f"needs {'.'.join(map(str, MIN_SERVER))} or later (named vectors added live)")
        return text

    def _load(self) -> None:
        self._versions = self.reg.load_versions()
        self._loaded_at = time.monotonic()

    def _refresh(self, *, force: bool = False) -> None:
        """Reload the registry when another client may have changed it (servers only; ttl from the URL)."""
        if force or (not self.target.local and time.monotonic() - self._loaded_at >= self.target.registry_ttl):
            self._load()
            self.reg.refresh_meta()

    @property
    def client(self) -> Any:
        """The underlying ``QdrantClient``."""
        self._check_open()
        return self._client

    @property
    def collection(self) -> str:
        return self.target.collection

    # -- versions ----------------------------------------------------------------------------
    def versions(self) -> list[Version]:
        """Every version, in creation order."""
        self._check_open()
        self._refresh()
        return sorted(self._versions.values(), key=lambda v: v.code)

    def register_version(self, name: str, parent: str, dim: int, **kw: Any) -> Version:
        """Register a child version (``Index.register_version``; the same checks and errors)."""
        self._check_open()
        if parent not in self._versions:
            self._refresh(force=not self.target.local)
        return Index.register_version(self, name, parent, dim, **kw)  # type: ignore[arg-type]

    def version(self, name: str) -> Version:
        """One version by name (raises ``UnknownVersionError``)."""
        self._check_open()
        if isinstance(name, str) and name not in self._versions:
            self._refresh(force=not self.target.local)
        return V.get(self._versions, name)

    def _resolve(self, version: str | None) -> Version:
        self._check_open()
        if version is None:
            return self.latest
        if not isinstance(version, str) or version not in self._versions:
            if isinstance(version, str):
                self._refresh(force=not self.target.local)
        return V.get(self._versions, version)

    def _put_version(self, **kw: Any) -> Version:
        from qdrant_client import models as m

        self._refresh(force=not self.target.local)
        if kw["parent"] is None and self._versions:
            root = next(v for v in self._versions.values() if v.parent is None)
            raise VersionExistsError(f"the index already has root version {root.name!r}; `create_version` makes the root only")
        if kw["name"] in self._versions:
            raise VersionExistsError(f"`name` {kw['name']!r} is already a version of this index")
        record = {**V.version_record(self._versions, **kw), "created_seq": 0}
        # The named vector first, the record second: a version exists once its record does, and
        # a retry after a failure in between finds the vector already there.
        params = self._call("get_collection", lambda: self._client.get_collection(self.collection)).config.params
        have = params.vectors if isinstance(params.vectors, dict) else {}
        if kw["name"] in have:
            if have[kw["name"]].size != kw["dim"]:
                raise BackendError(f"collection {self.collection!r} already has a named vector {kw['name']!r} of "
                                   f"dim {have[kw['name']].size}, not {kw['dim']} (left by another tool?)")
        else:
            cfg = m.DenseVectorNameConfig(dense=m.DenseVectorConfig(size=kw["dim"], distance=m.Distance.DOT))
            self._call("create_vector_name", lambda: self._client.create_vector_name(
                self.collection, kw["name"], cfg, wait=True))
        self.reg.put_version(record)
        self._load()
        return self._versions[kw["name"]]

    # -- lookups -----------------------------------------------------------------------------
    def _retrieve(self, pids: list[str], *, payload: Any = False, vectors: Any = False) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for lo in range(0, len(pids), 1024):
            chunk = pids[lo:lo + 1024]
            recs = self._call("retrieve", lambda c=chunk: self._client.retrieve(
                self.collection, ids=c, with_payload=payload, with_vectors=vectors))
            out.update({str(r.id): r for r in recs})
        return out

    def _check_kind(self, kind: str, *, record: bool) -> None:
        stored = self.reg.meta.get("id_kind") or self.reg.refresh_meta().get("id_kind")
        if stored is None:
            if record:
                self.reg.set_meta(id_kind=kind)
        elif stored != kind:
            raise InvalidInputError(f"`ids` are {kind} but this index holds {stored} ids")

    def _next_t(self, n: int) -> int:
        base = max(time.time_ns(), self._last_t + 1)
        self._last_t = base + n - 1
        return base

    # -- writes ------------------------------------------------------------------------------
    def add(self, ids: Any, vectors: Any, *, version: str | None = None, labels: Any = None,
            metadata: Any = None, raw: bool = False) -> AddResult:
        """Add new items with their vectors of one version (``Index.add``)."""
        from qdrant_client import models as m

        self._writable()
        v = self._resolve(version)
        x = self._prepare(vectors, v, raw=raw, param="vectors")
        ids_l, kind = as_ids(ids, n=len(x))
        labels_l = as_labels(labels, n=len(x))
        meta_l = as_metadata(metadata, n=len(x))
        self._check_kind(kind, record=True)
        pids = [point_id(i) for i in ids_l]
        found = self._retrieve(pids)
        if found:
            raise _duplicate(ids_l, np.array([p in found for p in pids]))
        t0 = self._next_t(len(ids_l))
        payloads = [items.item_payload(i, None if labels_l is None else labels_l[j],
                                         None if meta_l is None else meta_l[j], [v.name], t0 + j)
                    for j, i in enumerate(ids_l)]
        op = 0
        for lo in range(0, len(pids), WRITE_BATCH):
            hi = lo + WRITE_BATCH
            batch = m.Batch(ids=pids[lo:hi], vectors={v.name: x[lo:hi].tolist()}, payloads=payloads[lo:hi])
            res = self._call("upsert", lambda b=batch: self._client.upsert(self.collection, points=b, wait=True))
            op = getattr(res, "operation_id", None) or op
        return AddResult(len(ids_l), v.name, int(op or 0))

    def backfill(self, ids: Any, vectors: Any, *, version: str, raw: bool = False, drop_old: bool = False) -> AddResult:
        """Give existing items a vector of ``version`` (``Index.backfill``).

        Each batch is one ``batch_update_points`` call: the new vectors, then the ``versions``
        payload, then (``drop_old``) the removal of the other vectors, in that order, so that
        the payload never lists a vector a point lacks (an interrupted call leaves every item
        searchable; rerunning it completes it).
        """
        from qdrant_client import models as m

        self._writable()
        v = self._resolve(version)
        x = self._prepare(vectors, v, raw=raw, param="vectors")
        ids_l, kind = as_ids(ids, n=len(x))
        self._check_kind(kind, record=False)
        pids = [point_id(i) for i in ids_l]
        found = self._retrieve(pids, payload=["versions"])
        self._require_known(ids_l, np.array([0 if p in found else -1 for p in pids], dtype=np.int64))
        order = {u.name: u.code for u in self._versions.values()}
        op = 0
        for lo in range(0, len(pids), WRITE_BATCH):
            chunk = pids[lo:lo + WRITE_BATCH]
            ops: list[Any] = [m.UpdateVectorsOperation(update_vectors=m.UpdateVectors(points=[
                m.PointVectors(id=p, vector={v.name: row}) for p, row in zip(chunk, x[lo:lo + WRITE_BATCH].tolist())]))]
            if drop_old:
                ops.append(m.SetPayloadOperation(set_payload=m.SetPayload(payload={"versions": [v.name]}, points=chunk)))
                old = sorted({u for p in chunk for u in (found[p].payload or {}).get("versions", [])} - {v.name})
                if old:
                    ops.append(m.DeleteVectorsOperation(delete_vectors=m.DeleteVectors(points=chunk, vector=old)))
            else:
                groups: dict[tuple[str, ...], list[str]] = {}
                for p in chunk:
                    held = set((found[p].payload or {}).get("versions", [])) | {v.name}
                    groups.setdefault(tuple(sorted(held, key=lambda u: order.get(u, 1 << 30))), []).append(p)
                for names, members in groups.items():
                    ops.append(m.SetPayloadOperation(set_payload=m.SetPayload(payload={"versions": list(names)},
                                                                              points=members)))
            res = self._call("batch_update_points", lambda o=ops: self._client.batch_update_points(
                self.collection, update_operations=o, wait=True))
            op = (getattr(res[-1], "operation_id", None) if res else None) or op
        return AddResult(len(ids_l), v.name, int(op or 0))

    def delete(self, ids: Any) -> int:
        """Remove items and all their vectors; returns how many were removed (``Index.delete``)."""
        from qdrant_client import models as m

        self._writable()
        ids_l, kind = as_ids(ids, n=None)
        self._check_kind(kind, record=False)
        pids = [point_id(i) for i in ids_l]
        found = self._retrieve(pids)
        self._require_known(ids_l, np.array([0 if p in found else -1 for p in pids], dtype=np.int64))
        for lo in range(0, len(pids), WRITE_BATCH):
            sel = m.PointIdsList(points=pids[lo:lo + WRITE_BATCH])
            self._call("delete", lambda s=sel: self._client.delete(self.collection, points_selector=s, wait=True))
        return len(ids_l)

    # -- reads -------------------------------------------------------------------------------
    def search(self, queries: Any, k: int, *, version: str | None = None, score: str = "renorm",
               raw: bool = False) -> SearchResult:
        """Search every version's vectors with queries of one version; one hit per item (``Index.search``).

        One ``query_batch_points`` round trip per 512 (query, version) requests.
        """
        self._check_open()
        k = as_k(k)
        sc = normalize_score(score)
        self._refresh()
        v = self._resolve(version)
        q = self._prepare(queries, v, raw=raw, param="queries")
        steps = search.plan(self._versions, v, q, sc)
        return search.run(self._call, self._client, self.collection, steps, k, exact=self.target.exact)

    def get_vectors(self, ids: Any, *, version: str) -> np.ndarray:
        """``(n, d_version)`` float32 stored vectors of ``version`` for ``ids``."""
        self._check_open()
        v = self._resolve(version)
        ids_l, _ = as_ids(ids, n=None, unique=False)
        pids = [point_id(i) for i in ids_l]
        found = self._retrieve(sorted(set(pids)), vectors=[v.name])
        self._require_known(ids_l, np.array([0 if p in found else -1 for p in pids], dtype=np.int64))
        x = np.zeros((len(ids_l), v.dim), dtype=np.float32)
        ok = np.zeros(len(ids_l), dtype=bool)
        for j, p in enumerate(pids):
            vec = (found[p].vector or {}).get(v.name) if isinstance(found[p].vector, dict) else None
            if vec is not None:
                x[j] = vec
                ok[j] = True
        if not ok.all():
            miss = [ids_l[i] for i in np.flatnonzero(~ok)[:5]]
            raise UnknownIdError(f"`ids` {miss} hold no vector of version {v.name!r}")
        return x

    def fetch(self, version: str | None = None, *, ids: Any = None, limit: int | None = None,
              seed: int | None = None) -> ItemBatch:
        """Items holding a vector of ``version``, with their vectors and labels (``Index.fetch``)."""
        self._check_open()
        self._refresh()
        v = self._resolve(version)
        if ids is not None:
            ids_l, _ = as_ids(ids, n=None)
            x = self.get_vectors(ids_l, version=v.name)
            found = self._retrieve([point_id(i) for i in ids_l], payload=["label"])
            return ItemBatch(list(ids_l), x, [(found[point_id(i)].payload or {}).get("label") for i in ids_l], v.name)
        limit, rng = as_sample(limit, seed)
        rows = items.scan(self, version=v.name, payload=["ext", "label", "t"], vectors=[v.name])
        rows.sort(key=lambda r: (r.payload or {}).get("t", 0))
        x = np.asarray([r.vector[v.name] for r in rows], dtype=np.float32).reshape(len(rows), v.dim)
        pick = sample_rows(len(rows), limit, rng)
        if pick is None:
            pick = np.arange(len(rows))
        sel = [rows[i] for i in pick.tolist()]
        return ItemBatch([r.payload["ext"] for r in sel], x[pick], [r.payload.get("label") for r in sel], v.name)

    def has(self, ids: Any) -> np.ndarray:
        """``(n,)`` bool: which ids are in the index."""
        self._check_open()
        ids_l, _ = as_ids(ids, n=None, unique=False)
        pids = [point_id(i) for i in ids_l]
        found = self._retrieve(sorted(set(pids)))
        return np.array([p in found for p in pids], dtype=bool)

    @property
    def count(self) -> int:
        """Number of items."""
        self._check_open()
        return items.count(self)

    def stats(self) -> dict[str, Any]:
        """Counts per version and coverage (``Index.stats``; ``shard`` describes the named vector)."""
        self._check_open()
        self._refresh(force=not self.target.local)
        return items.stats(self)

    def verify(self) -> list[str]:
        """Check points, payloads, named vectors and the registry against each other."""
        self._check_open()
        self._refresh(force=not self.target.local)
        return items.verify(self)

    # -- lifecycle ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Nothing to do: every write is acknowledged by Qdrant once applied (``wait=True``)."""
        self._writable()

    def close(self) -> None:
        """Close the client (and release a local folder's lock)."""
        if not self._closed:
            self._release()

    def _release(self) -> None:
        self._closed = True
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing must not raise
                pass
            self._client = None

    def __enter__(self) -> "QdrantIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.readonly else "writable")
        return f"QdrantIndex({self.target.url!r}, {state})"
