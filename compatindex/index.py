"""The Index facade: opens a folder, validates every call, and routes it to store and shards.

Data flow is one-way: a write is validated, committed to the LMDB store in one transaction
(the source of truth), then applied to the derived shards; a search projects the query onto
each version's shard (design.md §2) and merges the results by score.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .core import versions as V
from .errors import (
    CompatIndexError,
    CorruptIndexError,
    DimensionMismatchError,
    FormatVersionError,
    InvalidInputError,
    NotAnIndexError,
    ReadOnlyError,
    UnknownIdError,
    VersionExistsError,
)
from .core.heads import validate_head
from .embedded.lock import WriterLock
from .core.scoring import Metric, normalize_metric, normalize_score
from .core.packing import unpack_head
from .embedded.shards import ShardSet, ShardSpec
from .embedded.shards.shard_set import resolve_device
from .embedded.store import FORMAT_VERSION, LmdbStore
from .core.datatypes import AddResult, ItemBatch, SearchResult, Version
from .core.validate import (
    as_dim,
    as_ids,
    as_k,
    as_labels,
    as_matrix,
    as_metadata,
    as_name,
    as_sample,
    normalize_rows,
    sample_rows,
)

log = logging.getLogger("compatindex")

MARKER = "compatindex.json"


def open(  # noqa: A001 - the public name users expect (compatindex.open)
    path: str | os.PathLike[str] = ":memory:",
    *,
    readonly: bool = False,
    create: bool = True,
    shard: Any = None,
    device: str = "auto",
    lock_timeout: float = 0.0,
) -> "Index":
    """Open (or create) an index.

    Parameters
    ----------
    path:
        Index folder; ``":memory:"`` for a throwaway index in a temporary folder;
        ``"qdrant://HOST:PORT/COLLECTION"`` or ``"qdrant+local://PATH"`` for the Qdrant backend.
    readonly:
        Take no writer lock; searches follow writes committed by other processes.
    create:
        Create the index when the folder is absent or empty.
    shard:
        Shard kind and parameters (``{"kind": "flat" | "ivf" | "hnsw", ...}``); None keeps the
        index's recorded spec (``flat`` for a new index).
    device:
        ``"auto"``, ``"cpu"``, ``"gpu"``, ``"torch"`` or ``"torch-fp16"``.
    lock_timeout:
        Seconds to wait for another writer before raising ``IndexLockedError``.

    Examples
    --------
    >>> import numpy as np, compatindex
    >>> with compatindex.open() as ix:
    ...     _ = ix.create_version("v1", dim=4)
    ...     _ = ix.add([1, 2], np.eye(4, dtype=np.float32)[:2])
    ...     ix.search(np.eye(4, dtype=np.float32)[:1], k=1).ids.tolist()
    [[1]]
    """
    text = str(path)
    if text.startswith(("qdrant://", "qdrant+local://")):
        # Past one machine: the same API on Qdrant (optional extra `qdrant`).
        from .qdrant import open_qdrant

        return open_qdrant(text, readonly=readonly, create=create)
    return Index(path, readonly=readonly, create=create, shard=shard, device=device, lock_timeout=lock_timeout)


class Index:
    """An on-disk, multi-version vector index. Use :func:`compatindex.open` to get one."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool, create: bool, shard: Any,
                 device: str, lock_timeout: float) -> None:
        self._tmp: str | None = None
        if str(path) == ":memory:":
            self._tmp = tempfile.mkdtemp(prefix="compatindex-mem-")
            path = self._tmp
            readonly = False
        self.path = Path(path)
        self.readonly = readonly
        self._lock: WriterLock | None = None
        self._closed = False
        self._creating = False
        self.store: LmdbStore | None = None
        spec = None if shard is None else ShardSpec.parse(shard)
        device_resolved = resolve_device(device)
        try:
            self._open_folder(create=create)
            if not readonly:
                self._lock = WriterLock(self.path / ".lock", timeout=lock_timeout)
            self.store = LmdbStore(self.path / "store", readonly=readonly, create=not readonly)
            if self._creating:
                self._write_marker()
            spec = self._shard_spec(spec)
            self._load_versions()
            self.shards = ShardSet(self.path / "shards", spec, device_resolved)
            self.shards.open(self.store, [(v.code, v.dim) for v in self._versions.values()])
            for event in self.shards.events:
                log.info("%s: %s", self.path, event)
            if self.shards.events and not readonly and self._tmp is None:
                # A shard was rebuilt or replayed (e.g. after a crash mid-flush): persist it now, so
                # that a damaged file does not outlive the recovery (verify() checks the files).
                try:
                    self.shards.flush(self.store.seq())
                except OSError as exc:
                    log.warning("%s: could not save recovered shards (%s); they will be rebuilt on open", self.path, exc)
        except BaseException:
            self._release()
            raise

    # -- opening -----------------------------------------------------------------------------
    def _open_folder(self, *, create: bool) -> None:
        marker = self.path / MARKER
        if marker.exists():
            try:
                info = json.loads(marker.read_text())
                fmt = int(info["format_version"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise NotAnIndexError(f"{marker} is damaged ({exc}); this folder is not a readable index") from None
            if info.get("format") != "compatindex":
                raise NotAnIndexError(f"{self.path} is not a compatindex index ({marker} says {info.get('format')!r})")
            if fmt > FORMAT_VERSION:
                raise FormatVersionError(
                    f"index {self.path} has format version {fmt}; this compatindex reads up to {FORMAT_VERSION}"
                )
            return
        interrupted = (self.path / "store" / "data.mdb").exists() and not self.readonly and create
        if not interrupted and self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise NotAnIndexError(
                f"{self.path} is not a compatindex index (no {MARKER})",
                hint="point at an index folder, or at an absent or empty folder to create one",
            )
        if not create or self.readonly:
            raise NotAnIndexError(f"no index at {self.path}", hint="create it with compatindex.open(path) or `compatindex init`")
        # The marker is written once the store exists (see __init__), so a reader never finds a
        # marker without a store; a creation interrupted before the marker is finished on retry.
        self.path.mkdir(parents=True, exist_ok=True)
        self._creating = True

    def _write_marker(self) -> None:
        tmp = self.path / (MARKER + ".tmp")
        tmp.write_text(json.dumps({"format": "compatindex", "format_version": FORMAT_VERSION,
                                   "created_at": time.time()}, indent=1))
        os.replace(tmp, self.path / MARKER)

    def _shard_spec(self, spec: ShardSpec | None) -> ShardSpec:
        assert self.store is not None
        with self.store.read() as r:
            stored = r.meta("shard_spec")
        if spec is None:
            return ShardSpec.parse(stored) if stored else ShardSpec()
        if stored != spec.to_dict() and not self.readonly:
            # Shards are derived: a new spec is recorded and the shards rebuild themselves.
            self.store.write(lambda w: w.put_meta("shard_spec", spec.to_dict()), log=False)
        return spec

    def _load_versions(self) -> None:
        assert self.store is not None
        with self.store.read() as r:
            records = r.versions()
            self._seen_seq = r.seq()
        self._versions: dict[str, Version] = {}
        for rec in records:
            try:
                ext = rec.get("extension")
                Q = None if ext is None else np.frombuffer(ext, dtype="<f8").reshape(rec["dim"], rec["dim"]).copy()
                self._versions[rec["name"]] = Version(
                    name=rec["name"], dim=rec["dim"], metric=Metric(rec["metric"]), parent=rec.get("parent"),
                    raw_dim=rec["raw_dim"], extension=Q, head=unpack_head(rec.get("head")),
                    report=rec.get("report") or {}, config=rec.get("config") or {}, code=rec["code"],
                    created_seq=rec.get("created_seq", 0), created_at=rec.get("created_at", 0.0),
                )
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                raise CorruptIndexError(
                    f"a version record in {self.store.file} is damaged ({type(exc).__name__}: {exc})") from None

    def _sync(self) -> None:
        """Catch up with writes committed by other processes (readers) since the last call."""
        assert self.store is not None
        seq = self.store.seq()
        if seq != self._seen_seq:
            self._load_versions()
            self.shards.sync(self.store)

    # -- versions ----------------------------------------------------------------------------
    def versions(self) -> list[Version]:
        """Every version, in creation order."""
        self._check_open()
        self._sync()
        return sorted(self._versions.values(), key=lambda v: v.code)

    def version(self, name: str) -> Version:
        """One version by name (raises ``UnknownVersionError``)."""
        self._check_open()
        return V.get(self._versions, name)

    @property
    def latest(self) -> Version:
        """The newest version."""
        vs = self.versions()
        if not vs:
            raise V.UnknownVersionError("the index has no version yet", hint="create one with create_version(name, dim)")
        return vs[-1]

    def lineage(self, name: str) -> list[str]:
        """Version names from the root down to ``name``."""
        return V.lineage(self._versions, name)

    def lca(self, a: str, b: str) -> str:
        """Lowest common ancestor of two versions."""
        V.get(self._versions, a, param="a")
        V.get(self._versions, b, param="b")
        return V.lca(self._versions, a, b)

    def create_version(self, name: str, dim: int, *, metric: str | Metric = "cosine") -> Version:
        """Create the root version (an index has exactly one root).

        Parameters
        ----------
        name:
            Version name.
        dim:
            Vector dimension.
        metric:
            ``"cosine"`` (vectors are unit-normalized on the way in) or ``"ip"``.
        """
        self._writable()
        name = as_name(name)
        dim = as_dim(dim)
        metric = normalize_metric(metric)
        if self._versions:
            root = next(v for v in self._versions.values() if v.parent is None)
            raise VersionExistsError(
                f"the index already has root version {root.name!r}; `create_version` makes the root only",
                hint="add a child with register_version(name, parent=..., dim=..., extension=Q)",
            )
        return self._put_version(name=name, dim=dim, metric=metric, parent=None, raw_dim=dim,
                                 extension=None, head=None, report={}, config={})

    def register_version(self, name: str, parent: str, dim: int, *, extension: Any = None,
                         head: dict[str, Any] | None = None, raw_dim: int | None = None,
                         report: dict[str, Any] | None = None, config: dict[str, Any] | None = None) -> Version:
        """Register a child version whose first ``parent.dim`` coordinates live in the parent's space.

        Parameters
        ----------
        name:
            New version name.
        parent:
            Name of an existing version.
        dim:
            Native dim, ``>= parent.dim``.
        extension:
            ``(dim, dim)`` orthogonal matrix ``Q`` (checked to ``versions.ORTHO_TOL``); None is identity.
        head:
            Optional head spec applied to raw vectors before ``Q``.
        raw_dim:
            Dim of the raw encoder output (default: the head's input dim, else ``dim``).
        report, config:
            How the version was made (kept with it, shown by ``versions``).
        """
        self._writable()
        name = as_name(name)
        dim = as_dim(dim)
        p = V.get(self._versions, parent, param="parent")
        if name in self._versions:
            raise VersionExistsError(f"`name` {name!r} is already a version of this index")
        if dim < p.dim:
            raise DimensionMismatchError(f"`dim` must be >= the parent's dim {p.dim}; got {dim}")
        Q = None if extension is None else V.check_extension(extension, dim=dim)
        head_out = None
        if head is not None:
            h_in, head_out = validate_head(head)
            if raw_dim is None:
                raw_dim = h_in
            elif h_in is not None and h_in != raw_dim:
                raise DimensionMismatchError(f"`raw_dim` is {raw_dim} but the head takes {h_in} dims")
        raw_dim = dim if raw_dim is None else as_dim(raw_dim, param="raw_dim")
        out_dim = head_out if head_out is not None else raw_dim
        if out_dim > dim:
            raise DimensionMismatchError(f"raw vectors map to {out_dim} dims, more than `dim` {dim}")
        for what, val in (("report", report), ("config", config)):
            if val is not None and not isinstance(val, dict):
                raise InvalidInputError(f"`{what}` must be a dict; got {type(val).__name__}")
        return self._put_version(name=name, dim=dim, metric=p.metric, parent=p.name, raw_dim=raw_dim,
                                 extension=Q, head=head, report=report or {}, config=config or {})

    def _put_version(self, **kw: Any) -> Version:
        record = V.version_record(self._versions, **kw)
        code = record["code"]

        def fn(w):
            if w.txn.get(kw["name"].encode(), db=w.s.db["versions"]) is not None:
                raise VersionExistsError(f"`name` {kw['name']!r} is already a version of this index")
            record["created_seq"] = w.seq() + 1
            w.put_version(record)

        assert self.store is not None
        _, seq = self.store.write(fn)
        self._load_versions()
        self.shards.add_version(code, kw["dim"], seq)
        self.shards.seq = max(self.shards.seq, seq)
        return self._versions[kw["name"]]

    def to_version_space(self, raw: Any, *, version: str | None = None) -> np.ndarray:
        """Map raw encoder outputs ``(n, raw_dim)`` into version space ``(n, dim)``."""
        v = self._resolve(version)
        return V.to_version_space(v, as_matrix(raw, dim=v.raw_dim, param="raw"))

    # -- writes ------------------------------------------------------------------------------
    def add(self, ids: Any, vectors: Any, *, version: str | None = None, labels: Any = None,
            metadata: Any = None, raw: bool = False) -> AddResult:
        """Add new items with their vectors of one version.

        Parameters
        ----------
        ids:
            ``(n,)`` new external ids (all int or all str across the index).
        vectors:
            ``(n, d)`` vectors of ``version`` (``(n, raw_dim)`` raw encoder outputs when ``raw``).
        version:
            Defaults to the newest version.
        labels, metadata:
            Optional ``(n,)`` labels (int/str) and ``n`` dicts kept with the items.
        """
        self._writable()
        v = self._resolve(version)
        x = self._prepare(vectors, v, raw=raw, param="vectors")
        ids_l, kind = as_ids(ids, n=len(x))
        labels_l = as_labels(labels, n=len(x))
        meta_l = as_metadata(metadata, n=len(x))

        def fn(w):
            self._check_kind(w, kind)
            iids = w.new_items(ids_l, labels_l, meta_l)  # raises DuplicateIdError for existing ids
            w.put_vectors(v.code, iids, x, fresh=True)
            return iids, w.op

        (iids, op), seq = self._commit(fn)
        self._apply(seq, op, [(v.code, iids, x)])
        return AddResult(len(iids), v.name, seq)

    def backfill(self, ids: Any, vectors: Any, *, version: str, raw: bool = False, drop_old: bool = False) -> AddResult:
        """Give existing items a vector of ``version`` (replacing one they hold of it).

        Parameters
        ----------
        ids:
            ``(n,)`` ids already in the index.
        vectors:
            ``(n, d_version)`` vectors (raw encoder outputs when ``raw``).
        drop_old:
            Also remove the items' vectors of every other version.
        """
        self._writable()
        v = self._resolve(version)
        x = self._prepare(vectors, v, raw=raw, param="vectors")
        ids_l, kind = as_ids(ids, n=len(x))
        codes = [u.code for u in self._versions.values() if u.code != v.code]

        def fn(w):
            self._check_kind(w, kind)
            iids = w.lookup(ids_l)
            self._require_known(ids_l, iids)
            w.put_vectors(v.code, iids, x)
            if drop_old:
                for c in codes:
                    w.remove_vectors(c, iids, missing_ok=True)
            return iids, w.op

        (iids, op), seq = self._commit(fn)
        self._apply(seq, op, [(v.code, iids, x)])
        return AddResult(len(iids), v.name, seq)

    def delete(self, ids: Any) -> int:
        """Remove items and all their vectors; returns how many were removed."""
        self._writable()
        ids_l, kind = as_ids(ids, n=None)
        codes = [u.code for u in self._versions.values()]

        def fn(w):
            self._check_kind(w, kind)
            iids = w.lookup(ids_l)
            self._require_known(ids_l, iids)
            w.delete_items(iids, codes)
            return iids, w.op

        (iids, op), seq = self._commit(fn)
        self._apply(seq, op, [])
        return len(iids)

    def _commit(self, fn):
        assert self.store is not None
        return self.store.write(fn)

    def _apply(self, seq: int, op: dict[str, Any], adds: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        removes = [(vc, np.frombuffer(b, dtype=">i8").astype(np.int64)) for vc, b in op.get("r", [])]
        try:
            self.shards.apply(seq, removes, adds)
        except Exception as exc:  # the write is committed; shards are derived, so rebuild them
            log.warning("%s: shard update failed (%s); rebuilding shards from the store", self.path, exc)
            self.shards = ShardSet(self.path / "shards", self.shards.spec, self.shards.device)
            self.shards.open(self.store, [(v.code, v.dim) for v in self._versions.values()])
        self._seen_seq = seq

    @staticmethod
    def _check_kind(w, kind: str) -> None:
        stored = w.meta("id_kind")
        if stored is None:
            w.put_meta("id_kind", kind)
        elif stored != kind:
            raise InvalidInputError(f"`ids` are {kind} but this index holds {stored} ids")

    @staticmethod
    def _require_known(ids: Sequence[Any], iids: np.ndarray) -> None:
        missing = np.flatnonzero(iids < 0)
        if missing.size:
            shown = ", ".join(repr(ids[i]) for i in missing[:5])
            raise UnknownIdError(f"`ids` not in the index: {shown}" + (" ..." if missing.size > 5 else "")
                                 + f" ({missing.size} of {len(ids)})")

    # -- reads -------------------------------------------------------------------------------
    def search(self, queries: Any, k: int, *, version: str | None = None, score: str = "renorm",
               raw: bool = False) -> SearchResult:
        """Search every version's vectors with queries of one version; one hit per item.

        Parameters
        ----------
        queries:
            ``(nq, d_version)`` (``(nq, raw_dim)`` when ``raw``).
        k:
            Hits per query; fewer come back when the index holds fewer items (``-inf`` scores pad).
        version:
            The queries' version (default: newest).
        score:
            ``"renorm"`` or ``"pad"`` (see :class:`compatindex.core.scoring.Score`).

        Returns
        -------
        SearchResult
            ``ids``, ``scores``, ``versions``, each ``(nq, k)``, best first.
        """
        self._check_open()
        k = as_k(k)
        sc = normalize_score(score)
        for _attempt in range(50):
            self._sync()
            v = self._resolve(version)
            q = self._prepare(queries, v, raw=raw, param="queries")
            out = self._search_once(q, k, v, sc)
            if out is not None:
                return out
        raise CompatIndexError(f"index {self.path} changed under 50 search attempts in a row; retry the search")

    def _search_once(self, q: np.ndarray, k: int, v: Version, sc) -> SearchResult | None:
        nq = len(q)
        pref = V.preference(self._versions, v.name)
        allowed = self.shards.allowed([self._versions[u].code for u in pref])
        Ds, Is, Vs = [], [], []
        for u_name in pref:
            u = self._versions[u_name]
            if self.shards.shards[u.code].ntotal == 0:
                continue
            cut = V.shared_dim(self._versions, v.name, u.name)
            qu = q if (cut == v.dim == u.dim) else V.project_query(q, cut=cut, target_dim=u.dim, score=sc)
            D, I = self.shards.search(u.code, qu, k, allowed[u.code])
            Ds.append(D)
            Is.append(I)
            Vs.append(np.full(I.shape, u.code, dtype=np.int16))
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        iids = np.full((nq, k), -1, dtype=np.int64)
        vcodes = np.full((nq, k), -1, dtype=np.int16)
        if Ds:
            D = np.concatenate(Ds, axis=1)
            I = np.concatenate(Is, axis=1)
            C = np.concatenate(Vs, axis=1)
            D = np.where(I >= 0, D, -np.inf).astype(np.float32)
            order = np.argsort(-D, axis=1, kind="stable")[:, :k]
            kk = order.shape[1]
            scores[:, :kk] = np.take_along_axis(D, order, 1)
            iids[:, :kk] = np.take_along_axis(I, order, 1)
            vcodes[:, :kk] = np.take_along_axis(C, order, 1)
            empty = ~np.isfinite(scores)
            iids[empty] = -1
            vcodes[empty] = -1
        return self._result(scores, iids, vcodes)

    def _result(self, scores: np.ndarray, iids: np.ndarray, vcodes: np.ndarray) -> SearchResult | None:
        """Map internal ids to external ids; None when a write committed by another process since
        the shards' snapshot removed a hit's item (the caller syncs and searches again)."""
        uniq = np.unique(iids[iids >= 0])
        assert self.store is not None
        with self.store.read() as r:
            try:
                ext = dict(zip(uniq.tolist(), r.external(uniq.tolist())))
            except CorruptIndexError:
                if self.readonly and r.seq() != self.shards.seq:
                    return None  # internal ids are never reused, so only a concurrent delete does this
                raise
        names = {v.code: v.name for v in self._versions.values()}
        ids_out = np.empty(iids.shape, dtype=object)
        ver_out = np.empty(iids.shape, dtype=object)
        flat_i, flat_v = iids.ravel(), vcodes.ravel()
        ids_flat = ids_out.ravel()
        ver_flat = ver_out.ravel()
        for j in range(flat_i.size):
            i = int(flat_i[j])
            ids_flat[j] = ext[i] if i >= 0 else None
            ver_flat[j] = names[int(flat_v[j])] if i >= 0 else None
        return SearchResult(ids_out, scores, ver_out)

    def get_vectors(self, ids: Any, *, version: str) -> np.ndarray:
        """``(n, d_version)`` float32 stored vectors of ``version`` for ``ids``."""
        self._check_open()
        v = self._resolve(version)
        ids_l, _ = as_ids(ids, n=None, unique=False)
        assert self.store is not None
        with self.store.read() as r:
            iids = r.lookup(ids_l)
            self._require_known(ids_l, iids)
            x, ok = r.vectors(v.code, v.dim, iids.tolist())
        if not ok.all():
            miss = [ids_l[i] for i in np.flatnonzero(~ok)[:5]]
            raise UnknownIdError(f"`ids` {miss} hold no vector of version {v.name!r}")
        return x

    def fetch(self, version: str | None = None, *, ids: Any = None, limit: int | None = None,
              seed: int | None = None) -> ItemBatch:
        """Items holding a vector of ``version``, with their vectors and labels.

        ``ids`` picks items (each must hold the version); else every such item, or a random
        ``limit`` of them drawn with ``seed``.
        """
        self._check_open()
        self._sync()
        v = self._resolve(version)
        assert self.store is not None
        if ids is not None:
            ids_l, _ = as_ids(ids, n=None)
            x = self.get_vectors(ids_l, version=v.name)
            with self.store.read() as r:
                labels = r.labels(r.lookup(ids_l).tolist())
            return ItemBatch(list(ids_l), x, labels, v.name)
        limit, rng = as_sample(limit, seed)
        with self.store.read() as r:
            parts = list(self.store.iter_live(v.code, v.dim, reader=r))
            iids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
            x = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, v.dim), np.float32)
            order = np.argsort(iids, kind="stable")
            iids, x = iids[order], x[order]
            pick = sample_rows(len(iids), limit, rng)
            if pick is not None:
                iids, x = iids[pick], x[pick]
            ext = r.external(iids.tolist())
            labels = r.labels(iids.tolist())
        return ItemBatch(ext, x, labels, v.name)

    def has(self, ids: Any) -> np.ndarray:
        """``(n,)`` bool: which ids are in the index."""
        self._check_open()
        ids_l, _ = as_ids(ids, n=None, unique=False)
        assert self.store is not None
        with self.store.read() as r:
            return r.lookup(ids_l) >= 0

    @property
    def count(self) -> int:
        """Number of items."""
        self._check_open()
        assert self.store is not None
        with self.store.read() as r:
            return int(r.meta("n_items", 0))

    def stats(self) -> dict[str, Any]:
        """Counts per version, coverage of the gallery, disk use and shard state."""
        self._check_open()
        self._sync()
        assert self.store is not None
        with self.store.read() as r:
            n = int(r.meta("n_items", 0))
            seq = r.seq()
            # one list of versions for the counts and the loop below: a reader's _sync() in between
            # could load a version registered meanwhile by another process
            listed = sorted(self._versions.values(), key=lambda u: u.code)
            counts = {v.name: int(r.meta(f"count:{v.code}", 0)) for v in listed}
            id_kind = r.meta("id_kind")
        disk = 0
        for f in self.path.rglob("*"):
            try:  # another process may rename or remove files meanwhile (shard saves: .tmp -> final)
                if f.is_file():
                    disk += f.stat().st_size
            except OSError:
                pass
        out: dict[str, Any] = {"path": str(self.path), "items": n, "seq": seq, "id_kind": id_kind,
                               "disk_bytes": disk, "device": self.shards.device,
                               "shard_spec": self.shards.spec.to_dict(), "versions": {}}
        for v in listed:
            shard = self.shards.shards[v.code]
            saved = self.shards._saved_seq.get(v.code, -1)
            out["versions"][v.name] = {
                "dim": v.dim, "parent": v.parent, "metric": v.metric.value, "vectors": counts[v.name],
                "coverage": counts[v.name] / n if n else 0.0,
                "shard": {"ntotal": shard.ntotal, "seq": shard.seq, "saved_seq": saved,
                          "persisted": saved == seq},
            }
        return out

    def verify(self) -> list[str]:
        """Check the store and every shard against each other; returns the problems found."""
        from .embedded.verify import verify_index

        self._check_open()
        self._sync()
        return verify_index(self)

    # -- lifecycle ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Persist every shard that changed (done on close too)."""
        self._writable()
        assert self.store is not None
        self.shards.flush(self.store.seq())

    def close(self) -> None:
        """Persist shards (writers), release the store and the writer lock."""
        if self._closed:
            return
        try:
            if not self.readonly and self.store is not None and self._tmp is None:
                try:
                    self.shards.flush(self.store.seq())
                except OSError as exc:  # shards are derived: a failed save only costs a rebuild
                    log.warning("%s: could not save shards (%s); they will be rebuilt on open", self.path, exc)
        finally:
            self._release()

    def _release(self) -> None:
        self._closed = True
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.readonly else "writable")
        return f"Index({str(self.path)!r}, {state})"

    # -- helpers -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise CompatIndexError(f"index {self.path} is closed")

    def _writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise ReadOnlyError(f"index {self.path} was opened with readonly=True; writes are refused")

    def _resolve(self, version: str | None) -> Version:
        if version is None:
            return self.latest
        return V.get(self._versions, version)

    def _prepare(self, vectors: Any, v: Version, *, raw: bool, param: str) -> np.ndarray:
        if raw:
            x = V.to_version_space(v, as_matrix(vectors, dim=v.raw_dim, param=param,
                                                context=f" (raw encoder output of version {v.name!r})"))
        else:
            x = as_matrix(vectors, dim=v.dim, param=param, context=f" for version {v.name!r}")
        return normalize_rows(x, metric=v.metric, param=param)
