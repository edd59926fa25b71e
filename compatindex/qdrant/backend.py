"""``QdrantBackend``: a multi-version index stored in a Qdrant collection.

Mapping (docs/scaling.md): one collection per index; one named vector per version (the
version's dim, ``Distance.DOT`` on vectors normalized as the metric says, exactly what the
embedded shards hold); one point per item (see :mod:`compatindex.qdrant.items`); the version
registry in ``<COLLECTION>__registry`` (:mod:`compatindex.qdrant.registry`). Validation, the
version algebra, projection and merge are the facade's (:class:`compatindex.Index`), so both
backends accept and refuse the same calls with the same errors.
"""

from __future__ import annotations

import functools
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from ..backend import ShardHits, ShardQuery
from ..core.datatypes import ItemBatch, ItemId, Version
from ..core.filters import SCHEMAS, Filter, check_payload
from ..core.validate import check_id_kind, duplicate_ids, sample_rows, unknown_ids
from ..errors import InvalidInputError, NotAnIndexError, VersionExistsError
from . import search
from .filters import native, payload_key, require
from .errors import MIN_SERVER, BackendError, BackendVersionError, parse_version, require_client, retry, translate
from .items import Points, holding, item_meta, item_payload, meta_fields, point_id
from .registry import Registry
from .url import Target, parse

if TYPE_CHECKING:
    from ..backend import Backend

WRITE_BATCH = 512
"""Points per upsert / batch update (bounds one request's size)."""

T = TypeVar("T")


def _ext(rec: Any) -> Any:
    """The external id of a point (None for a point without one: another tool's)."""
    return (rec.payload or {}).get("ext")


def _fails(meta: Any, schema: Mapping[str, str]) -> bool:
    try:
        check_payload([meta], schema)
    except InvalidInputError:
        return True
    return False


def open_backend(url: str, *, readonly: bool = False, create: bool = True) -> "QdrantBackend":
    """Open (or create) the index at a ``qdrant://`` or ``qdrant+local://`` URL (see :func:`url.parse`)."""
    return QdrantBackend(parse(url), readonly=readonly, create=create)


class QdrantBackend:
    """A Qdrant collection behind the :class:`compatindex.backend.Backend` Protocol.

    Parameters
    ----------
    target:
        Where the index lives (a parsed URL).
    readonly:
        Refuse writes (the facade checks; Qdrant itself has no read-only client).
    create:
        Create the collections when absent.
    """

    def __init__(self, target: Target, *, readonly: bool = False, create: bool = True) -> None:
        self.target = target
        self.path = target.url
        self.readonly = readonly
        self._client: Any = None
        self._versions: dict[str, Version] = {}
        self._last_t = 0
        self._loaded_at = 0.0
        require_client()
        if target.local and target.path != ":memory:" and (readonly or not create) and not Path(str(target.path)).exists():
            raise NotAnIndexError(f"no index at {target.url}", hint="create it with compatindex.open(url)")
        try:
            try:
                self._client = target.client()
            except Exception as exc:  # noqa: BLE001 - a local folder locked by another client
                raise translate(exc, what="open", where=target.url) from None
            self.check_server()
            self.points = Points(self._client, target.collection, self._call)
            self.reg = Registry(self._client, target, self._call)
            self.reg.open(create=create, readonly=readonly)
            self._load()
        except BaseException:
            self._release()
            raise

    # -- plumbing ----------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return retry(fn, what=what, where=self.target.url, attempts=1 if self.target.local else 4)

    def check_server(self) -> str:
        """The server's version; raises ``BackendVersionError`` below ``errors.MIN_SERVER``."""
        info = self._call("server info", self._client.info)
        text = str(getattr(info, "version", "") or "")
        if not self.target.local and text and parse_version(text) < MIN_SERVER:
            raise BackendVersionError(f"the Qdrant server at {self.target.url} is version {text}; compatindex "
                                      f"needs {'.'.join(map(str, MIN_SERVER))} or later (named vectors added live)")
        return text

    @property
    def client(self) -> Any:
        """The underlying ``QdrantClient``."""
        return self._client

    @property
    def collection(self) -> str:
        return self.target.collection

    def _load(self) -> None:
        self._versions = self.reg.load_versions()
        self._loaded_at = time.monotonic()

    # -- versions ----------------------------------------------------------------------------
    def versions(self) -> Mapping[str, Version]:
        return self._versions

    def refresh(self, *, force: bool = False) -> None:
        """Reload the registry when another client may have changed it: on a server, once the URL's
        ``registry_ttl`` has passed or when ``force``; a local folder has one client, this one."""
        if self.target.local:
            return
        if force or time.monotonic() - self._loaded_at >= self.target.registry_ttl:
            self._load()
            self.reg.refresh_meta()

    def put_version(self, record: dict[str, Any]) -> None:
        from qdrant_client import models as m

        name, dim = record["name"], record["dim"]
        self._load()
        if record["parent"] is None and self._versions:
            root = next(v for v in self._versions.values() if v.parent is None)
            raise VersionExistsError(f"the index already has root version {root.name!r}; `create_version` makes the root only")
        if name in self._versions:
            raise VersionExistsError(f"`name` {name!r} is already a version of this index")
        record = {**record, "created_seq": 0}
        # The named vector first, the record second: a version exists once its record does, and
        # a retry after a failure in between finds the vector already there.
        have = self.points.vector_names()
        if name in have:
            if have[name].size != dim:
                raise BackendError(f"collection {self.collection!r} already has a named vector {name!r} of "
                                   f"dim {have[name].size}, not {dim} (left by another tool?)")
        else:
            cfg = m.DenseVectorNameConfig(dense=m.DenseVectorConfig(size=dim, distance=m.Distance.DOT))
            self._call("create_vector_name", lambda: self._client.create_vector_name(
                self.collection, name, cfg, wait=True))
        self.reg.put_version(record)
        self._load()

    def set_serving(self, name: str, serving: dict[str, Any]) -> None:
        record = self.reg.version_record(name)
        record["serving"] = serving
        self.reg.put_version(record)
        self._load()

    # -- writes ------------------------------------------------------------------------------
    def record_id_kind(self, kind: str) -> None:
        """Check ids of ``kind`` ("int" or "str") against the index's, recording it on the first write."""
        self._check_kind(kind, record=True)

    def _check_kind(self, kind: str, *, record: bool) -> None:
        stored = self.reg.meta.get("id_kind") or self.reg.refresh_meta().get("id_kind")
        check_id_kind(stored, kind)
        if stored is None and record:
            self.reg.set_meta(id_kind=kind)

    def _next_t(self, n: int) -> int:
        base = max(time.time_ns(), self._last_t + 1)
        self._last_t = base + n - 1
        return base

    def _require_known(self, ids: list[ItemId], pids: list[str]) -> None:
        found = self.points.retrieve(pids)
        err = unknown_ids(ids, np.array([p in found for p in pids], dtype=bool))
        if err is not None:
            raise err

    def add(self, version: Version, ids: list[ItemId], id_kind: str, vectors: np.ndarray,
            labels: list[Any] | None, metadata: list[Any] | None) -> int:
        from qdrant_client import models as m

        if metadata is not None:
            check_payload(metadata, self.payload_schema())  # before anything is written
        self._check_kind(id_kind, record=True)
        pids = [point_id(i) for i in ids]
        found = self.points.retrieve(pids)
        if found:
            raise duplicate_ids(ids, np.array([p in found for p in pids]))
        t0 = self._next_t(len(ids))
        payloads = [item_payload(i, None if labels is None else labels[j], None if metadata is None else metadata[j],
                                 t0 + j) for j, i in enumerate(ids)]
        op = 0
        for lo in range(0, len(pids), WRITE_BATCH):
            hi = lo + WRITE_BATCH
            batch = m.Batch(ids=list(pids[lo:hi]), vectors={version.name: vectors[lo:hi].tolist()},
                            payloads=payloads[lo:hi])
            res = self._call("upsert", functools.partial(self._client.upsert, self.collection, points=batch, wait=True))
            op = getattr(res, "operation_id", None) or op
        return int(op or 0)

    def backfill(self, version: Version, ids: list[ItemId], id_kind: str, vectors: np.ndarray,
                 *, drop_old: bool) -> int:
        """Each batch is one ``batch_update_points`` call: the new vectors, then (``drop_old``) the
        removal of every other version's vector. No payload is read or rewritten, so concurrent
        backfills of the same items by several clients never overwrite each other."""
        from qdrant_client import models as m

        self._check_kind(id_kind, record=False)
        pids = [point_id(i) for i in ids]
        self._require_known(ids, pids)
        others = [u for u in self._versions if u != version.name]
        op = 0
        for lo in range(0, len(pids), WRITE_BATCH):
            chunk = pids[lo:lo + WRITE_BATCH]
            rows = vectors[lo:lo + WRITE_BATCH].tolist()
            ops: list[Any] = [m.UpdateVectorsOperation(update_vectors=m.UpdateVectors(points=[
                m.PointVectors(id=p, vector={version.name: row}) for p, row in zip(chunk, rows)]))]
            if drop_old and others:
                ops.append(m.DeleteVectorsOperation(delete_vectors=m.DeleteVectors(points=list(chunk), vector=others)))
            res = self._call("batch_update_points", functools.partial(
                self._client.batch_update_points, self.collection, update_operations=ops, wait=True))
            op = (getattr(res[-1], "operation_id", None) if res else None) or op
        return int(op or 0)

    def delete(self, ids: list[ItemId], id_kind: str) -> int:
        from qdrant_client import models as m

        self._check_kind(id_kind, record=False)
        pids = [point_id(i) for i in ids]
        self._require_known(ids, pids)
        for lo in range(0, len(pids), WRITE_BATCH):
            sel = m.PointIdsList(points=list(pids[lo:lo + WRITE_BATCH]))
            self._call("delete", functools.partial(self._client.delete, self.collection, points_selector=sel, wait=True))
        return len(ids)

    def set_payload(self, ids: list[ItemId], id_kind: str, *, labels: list[Any] | None,
                    metadata: list[dict[str, Any] | None] | None, merge: bool) -> int:
        """Read the points' metadata, compute the new one here (``merge``: key by key, a None value
        removes the key; a None entry leaves the item as it is), then write each batch with one
        ``batch_update_points`` call (per point: delete the dropped payload keys, set the new ones).
        Unknown ids are refused before anything is written. Only ``label``/``meta``/``meta_mp`` are
        touched, so concurrent backfills are never overwritten; two clients changing the metadata
        of the same item at once: the last write wins."""
        from qdrant_client import models as m

        self._check_kind(id_kind, record=False)
        pids = [point_id(i) for i in ids]
        self._require_known(ids, pids)
        new_meta: list[Any] = [None] * len(ids)
        todo = [j for j in range(len(ids)) if metadata is not None and metadata[j] is not None]
        if todo:
            old = self.points.retrieve(sorted({pids[j] for j in todo}), payload=["meta", "meta_mp"]) if merge else {}
            for j in todo:
                m_new: dict[str, Any] = metadata[j] or {}  # type: ignore[index]
                if merge:
                    d = dict(item_meta((old[pids[j]].payload or {}) if pids[j] in old else {}) or {})
                    d.update(m_new)
                    new_meta[j] = {a: b for a, b in d.items() if b is not None} or None
                else:
                    new_meta[j] = dict(m_new)
            schema = self.payload_schema()
            if schema:
                self._check_payload([ids[j] for j in todo], [new_meta[j] for j in todo], schema)
        ops: list[Any] = []
        for j, p in enumerate(pids):
            put: dict[str, Any] = {}
            drop: list[str] = []
            if labels is not None:
                if labels[j] is None:
                    drop.append("label")
                else:
                    put["label"] = labels[j]
            if metadata is not None and metadata[j] is not None:
                fields = meta_fields(new_meta[j])
                put.update(fields)
                drop.extend(k for k in ("meta", "meta_mp") if k not in fields)
            if drop:
                ops.append(m.DeletePayloadOperation(delete_payload=m.DeletePayload(keys=drop, points=[p])))
            if put:
                ops.append(m.SetPayloadOperation(set_payload=m.SetPayload(payload=put, points=[p])))
        op = 0
        for lo in range(0, len(ops), 2 * WRITE_BATCH):
            chunk = ops[lo:lo + 2 * WRITE_BATCH]
            res = self._call("batch_update_points", functools.partial(
                self._client.batch_update_points, self.collection, update_operations=chunk, wait=True))
            op = (getattr(res[-1], "operation_id", None) if res else None) or op
        return int(op or 0)

    @staticmethod
    def _check_payload(ids: list[ItemId], metas: list[Any], schema: Mapping[str, str]) -> None:
        try:
            check_payload(metas, schema)
        except InvalidInputError as exc:  # name the item, not its position in this list
            j = next(j for j in range(len(metas)) if _fails(metas[j], schema))
            raise InvalidInputError(f"item {ids[j]!r}: {exc}".replace(f"`metadata[{j}]", "`metadata")) from None

    def create_payload_index(self, field: str, schema: str) -> None:
        """Check every stored value of ``field`` first (nothing changes on a mismatch), then
        ``client.create_payload_index`` on ``meta.<field>`` and the declaration in the registry's
        meta record (``payload_schema``), so it survives a reopen and other clients see it."""
        from qdrant_client import models as m

        if schema not in SCHEMAS:
            raise InvalidInputError(f"`schema` must be one of {', '.join(SCHEMAS)}; got {schema!r}")
        key = payload_key(field, path="field")
        rows = self.points.scan(payload=["ext", "t", "meta", "meta_mp"])
        rows.sort(key=lambda r: (r.payload or {}).get("t", 0))
        self._check_payload([_ext(r) for r in rows],
                            [item_meta(r.payload or {}) for r in rows], {field: schema})
        kind = {"keyword": m.PayloadSchemaType.KEYWORD, "integer": m.PayloadSchemaType.INTEGER,
                "float": m.PayloadSchemaType.FLOAT, "bool": m.PayloadSchemaType.BOOL}[schema]
        with warnings.catch_warnings():  # local mode: "payload indexes have no effect" (filters still apply)
            warnings.simplefilter("ignore", UserWarning)
            self._call("create_payload_index", lambda: self._client.create_payload_index(
                self.collection, field_name=key, field_schema=kind, wait=True))
        declared = dict(self.reg.refresh_meta().get("payload_schema") or {})
        declared[field] = schema
        self.reg.set_meta(payload_schema=declared)

    def payload_schema(self) -> dict[str, str]:
        return dict(self.reg.meta.get("payload_schema") or {})

    def retire(self, version: Version) -> int:
        """Count the points holding ``version`` and no other (a filter count): refused when any;
        else ``delete_vectors`` of that named vector on every point holding it and another one
        (so a point added meanwhile with only this version keeps its vector), and the record
        marked ``retired``. The named vector stays in the collection config (``verify`` expects
        one per version record)."""
        from qdrant_client import models as m

        others = tuple(u for u in self._versions if u != version.name)
        alone = self.points.count(holding(version.name, not_holding=others))
        if alone:
            raise InvalidInputError(
                f"`version` {version.name!r}: {alone} items hold no vector of another version",
                hint="backfill them into a newer version first (Index.backfill), then retire")
        flt = m.Filter(must=[m.HasVectorCondition(has_vector=version.name),
                             m.Filter(should=[m.HasVectorCondition(has_vector=u) for u in others])])
        n = self.points.count(flt) if others else 0
        if n:
            self._call("delete_vectors", lambda: self._client.delete_vectors(
                self.collection, vectors=[version.name], points=m.FilterSelector(filter=flt), wait=True))
        record = self.reg.version_record(version.name)
        record["retired"] = True
        self.reg.put_version(record)
        self._load()
        return n

    # -- reads -------------------------------------------------------------------------------
    def search(self, queries: Sequence[ShardQuery], k: int, *, where: Filter | None = None) -> ShardHits:
        """One ``query_batch_points`` call; ``where`` is translated to a native ``models.Filter``
        (:mod:`compatindex.qdrant.filters`) and required next to each step's version conditions."""
        return search.run(self._call, self._client, self.collection, queries, k, exact=self.target.exact, where=where)

    def known(self, ids: list[ItemId]) -> np.ndarray:
        pids = [point_id(i) for i in ids]
        found = self.points.retrieve(sorted(set(pids)))
        return np.array([p in found for p in pids], dtype=bool)

    def vectors(self, version: Version, ids: list[ItemId]) -> tuple[np.ndarray, np.ndarray]:
        pids = [point_id(i) for i in ids]
        found = self.points.retrieve(sorted(set(pids)), vectors=[version.name])
        x = np.zeros((len(ids), version.dim), dtype=np.float32)
        held = np.zeros(len(ids), dtype=bool)
        for j, p in enumerate(pids):
            rec = found.get(p)
            vec = rec.vector.get(version.name) if rec is not None and isinstance(rec.vector, dict) else None
            if vec is not None:
                x[j] = vec
                held[j] = True
        return x, held

    def labels(self, ids: list[ItemId]) -> list[Any]:
        found = self.points.retrieve([point_id(i) for i in ids], payload=["label"])
        return [(found[point_id(i)].payload or {}).get("label") if point_id(i) in found else None for i in ids]

    def payload(self, ids: list[ItemId]) -> tuple[list[Any], list[dict[str, Any] | None]]:
        pids = [point_id(i) for i in ids]
        found = self.points.retrieve(sorted(set(pids)), payload=["label", "meta", "meta_mp"])
        pays = [(found[p].payload or {}) if p in found else {} for p in pids]
        return [pl.get("label") for pl in pays], [item_meta(pl) for pl in pays]

    def held(self, ids: list[ItemId]) -> list[tuple[str, ...]]:
        """Per version (oldest first), one scroll of the ids' points holding its vector (ids only:
        no vector is downloaded)."""
        from qdrant_client import models as m

        pids = [point_id(i) for i in ids]
        uniq = sorted(set(pids))
        have: dict[str, list[str]] = {p: [] for p in uniq}
        for v in sorted(self._versions.values(), key=lambda u: u.code):
            if v.retired:
                continue
            for lo in range(0, len(uniq), 1024):
                flt = m.Filter(must=[m.HasIdCondition(has_id=list[Any](uniq[lo:lo + 1024])),
                                     m.HasVectorCondition(has_vector=v.name)])
                for r in self.points.scan(flt=flt, payload=False):
                    have[str(r.id)].append(v.name)
        return [tuple(have[p]) for p in pids]

    def list_items(self, offset: int, limit: int, where: Filter | None) -> tuple[list[ItemId], int]:
        """One scroll of the matching points' ids and insertion stamps (a few bytes per point),
        sorted by stamp (Qdrant scrolls in point-id order, and ``order_by`` needs a payload index
        on the server); the page is sliced from it."""
        rows = self.points.scan(flt=require(None, native(where)), payload=["ext", "t"])
        rows.sort(key=lambda r: (r.payload or {}).get("t", 0))
        page = rows[offset:offset + limit]
        nxt = offset + limit if offset + limit < len(rows) else -1
        return [_ext(r) for r in page], nxt

    def sample(self, version: Version, limit: int | None, rng: np.random.Generator, *,
               seeded: bool = True) -> ItemBatch:
        """Items holding ``version`` with their vectors, labels and metadata (see :meth:`_sample`)."""
        recs = self._sample(version, limit, rng, seeded=seeded)
        x = np.asarray([r.vector[version.name] for r in recs], dtype=np.float32).reshape(len(recs), version.dim)
        pays = [r.payload or {} for r in recs]
        return ItemBatch([pl["ext"] for pl in pays], x, [pl.get("label") for pl in pays], version.name,
                         [item_meta(pl) for pl in pays])

    def _sample(self, version: Version, limit: int | None, rng: np.random.Generator, *,
                seeded: bool = True) -> list[Any]:
        """The records of :meth:`sample`: items in insertion order, or ``limit`` of them drawn with ``rng``.

        Without a seed (``seeded=False``) the server draws the sample: one ``query_points`` call with
        Qdrant's random ``SampleQuery``, returning ``limit`` points with their vectors.

        Vectors are downloaded only for the items drawn: the draw itself scans point ids and
        insertion stamps (a few bytes per point), so sampling 100k items of a large collection
        costs 100k vectors, not the whole collection. The draw is the embedded backend's
        (the same rows in insertion order), so both backends return the same sample.
        """
        flt = holding(version.name)
        keys = ["ext", "label", "t", "meta", "meta_mp"]
        if limit is None:
            rows = self.points.scan(flt=flt, payload=keys, vectors=[version.name])
            rows.sort(key=lambda r: (r.payload or {}).get("t", 0))
            return rows
        if not seeded:
            from qdrant_client import models as m

            res = self._call("query_points", functools.partial(
                self._client.query_points, self.collection, query=m.SampleQuery(sample=m.Sample.RANDOM),
                query_filter=flt, limit=limit, with_payload=keys, with_vectors=[version.name]))
            return sorted(res.points, key=lambda r: (r.payload or {}).get("t", 0))  # insertion order, as documented
        stamps = self.points.scan(flt=flt, payload=["t"], vectors=False)
        stamps.sort(key=lambda r: (r.payload or {}).get("t", 0))
        pick = sample_rows(len(stamps), limit, rng)
        chosen = [str(stamps[i].id) for i in (range(len(stamps)) if pick is None else pick.tolist())]
        found = self.points.retrieve(chosen, payload=keys, vectors=[version.name])
        return [found[p] for p in chosen if p in found]  # a point deleted meanwhile drops out

    def count(self) -> int:
        return self.points.count()

    def disk_bytes(self) -> int | None:
        """Bytes under a local-mode folder (None for a server or an in-memory index)."""
        if not self.target.local or self.target.path == ":memory:":
            return None
        root = Path(str(self.target.path))
        return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.exists() else 0

    def stats(self) -> dict[str, Any]:
        n = self.points.count()
        t = self.target
        out: dict[str, Any] = {
            "path": t.url, "backend": "qdrant-local" if t.local else "qdrant",
            "collection": self.collection, "registry": t.registry, "items": n, "seq": None,
            "id_kind": self.reg.meta.get("id_kind"), "disk_bytes": self.disk_bytes(),
            "device": "qdrant (local mode)" if t.local else "qdrant server",
            "shard_spec": {"kind": "qdrant", "exact": bool(t.exact or t.local)}, "versions": {},
        }
        for v in sorted(self._versions.values(), key=lambda u: u.code):
            held = self.points.count(holding(v.name))
            out["versions"][v.name] = {
                "dim": v.dim, "parent": v.parent, "metric": v.metric.value, "vectors": held,
                "coverage": held / n if n else 0.0,
                "shard": {"ntotal": held, "named_vector": v.name, "distance": "dot", "persisted": True},
            }
        return out

    def verify(self) -> list[str]:
        """Named vectors against the registry, points without vectors, point ids against external ids."""
        from qdrant_client import models as m

        problems: list[str] = []
        have = self.points.vector_names()
        for v in self._versions.values():
            cfg = have.get(v.name)
            if cfg is None:
                problems.append(f"version {v.name!r} has no named vector in collection {self.collection!r}")
            elif cfg.size != v.dim or cfg.distance != m.Distance.DOT:
                problems.append(f"named vector {v.name!r} is dim {cfg.size} / {cfg.distance}, the version says dim {v.dim} / Dot")
        for name in sorted(set(have) - set(self._versions)):
            problems.append(f"named vector {name!r} has no version record (an interrupted register_version; register it again)")
        names = [v.name for v in self._versions.values() if v.name in have]
        if names:
            empty = self.points.count(m.Filter(must_not=[m.HasVectorCondition(has_vector=u) for u in names]))
            if empty:
                problems.append(f"{empty} points hold no vector")
        bad_id = sum(1 for r in self.points.scan(payload=["ext"])
                     if "ext" not in (r.payload or {}) or str(r.id) != point_id(r.payload["ext"]))
        if bad_id:
            problems.append(f"{bad_id} points have no external id or an id that is not uuid5 of it (written by another tool?)")
        return problems

    # -- lifecycle ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Nothing to do: every write is acknowledged by Qdrant once applied (``wait=True``)."""

    def close(self) -> None:
        """Close the client (and release a local folder's lock)."""
        self._release()

    def _release(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing must not raise
                pass
            self._client = None


if TYPE_CHECKING:
    def _typecheck(b: QdrantBackend) -> Backend:  # mypy verifies QdrantBackend satisfies the Protocol
        return b
