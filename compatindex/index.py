"""The Index facade: validates every call, applies the version algebra, and talks to a backend.

Data flow is one-way (docs/architecture.md): a write is validated here and handed to the
backend, which commits it in one transaction; a search is projected here onto every version's
space (docs/concepts.md), each version is searched by the backend restricted to the items it
represents, and the hits are merged here by score. Everything in this module is shared by every
backend, so both engines accept and refuse the same calls with the same errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .backend import Backend, ShardQuery
from .core import versions as V
from .core.datatypes import AddResult, ItemBatch, SearchResult, Version
from .core.heads import validate_head
from .core.merge import merge_topk
from .core.records import version_record
from .core.scoring import Metric, Score, normalize_metric, normalize_score
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
    unknown_ids,
)
from .errors import (
    CompatIndexError,
    DimensionMismatchError,
    InvalidInputError,
    ReadOnlyError,
    UnknownIdError,
    VersionExistsError,
)

SEARCH_ATTEMPTS = 50
"""Searches retried when concurrent deletes keep removing hits between search and id lookup."""


class Index:
    """A multi-version vector index. Use :func:`compatindex.open` to get one.

    Parameters
    ----------
    backend:
        The engine that stores and searches the vectors (see :class:`compatindex.backend.Backend`).
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._closed = False

    @property
    def path(self) -> Path | str:
        """Where the index lives: a folder (embedded) or a URL (Qdrant)."""
        return self.backend.path

    @property
    def readonly(self) -> bool:
        return self.backend.readonly

    @property
    def _versions(self) -> Mapping[str, Version]:
        return self.backend.versions()

    # -- versions ----------------------------------------------------------------------------
    def versions(self) -> list[Version]:
        """Every version, in creation order."""
        self._check_open()
        self.backend.refresh()
        return sorted(self._versions.values(), key=lambda v: v.code)

    def version(self, name: str) -> Version:
        """One version by name (raises ``UnknownVersionError``)."""
        self._check_open()
        return self._lookup(name)

    @property
    def latest(self) -> Version:
        """The newest version."""
        vs = self.versions()
        if not vs:
            raise V.UnknownVersionError("the index has no version yet", hint="create one with create_version(name, dim)")
        return vs[-1]

    def lineage(self, name: str) -> list[str]:
        """Version names from the root down to ``name``."""
        self._check_open()
        self._lookup(name)
        return V.lineage(self._versions, name)

    def lca(self, a: str, b: str) -> str:
        """Lowest common ancestor of two versions."""
        self._check_open()
        self._lookup(a, param="a")
        self._lookup(b, param="b")
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
        self.backend.refresh(force=True)
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
        self.backend.refresh(force=True)
        p = self._lookup(parent, param="parent")
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
        self.backend.put_version(version_record(self._versions, **kw))
        return self._versions[kw["name"]]

    def to_version_space(self, raw: Any, *, version: str | None = None) -> np.ndarray:
        """Map raw encoder outputs ``(n, raw_dim)`` into version space ``(n, dim)``."""
        self._check_open()
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
        seq = self.backend.add(v, ids_l, kind, x, labels_l, meta_l)
        return AddResult(len(ids_l), v.name, seq)

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
        seq = self.backend.backfill(v, ids_l, kind, x, drop_old=bool(drop_old))
        return AddResult(len(ids_l), v.name, seq)

    def delete(self, ids: Any) -> int:
        """Remove items and all their vectors; returns how many were removed."""
        self._writable()
        ids_l, kind = as_ids(ids, n=None)
        return self.backend.delete(ids_l, kind)

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
        for _attempt in range(SEARCH_ATTEMPTS):
            self.backend.refresh()
            v = self._resolve(version)
            q = self._prepare(queries, v, raw=raw, param="queries")
            out = self._search_once(q, k, v, sc)
            if out is not None:
                return out
        raise CompatIndexError(f"index {self.path} changed under {SEARCH_ATTEMPTS} search attempts in a row; "
                               "retry the search")

    def plan(self, q: np.ndarray, v: Version, score: Score) -> list[ShardQuery]:
        """The per-version searches of ``(nq, d_v)`` queries of version ``v``, in preference order.

        Every version is searched through the query's projection onto it (docs/concepts.md);
        an item is represented by the first version in the preference order that it holds.
        """
        vs = self._versions
        pref = V.preference(vs, v.name)
        steps = []
        for i, name in enumerate(pref):
            u = vs[name]
            cut = V.shared_dim(vs, v.name, u.name)
            qu = q if (cut == v.dim == u.dim) else V.project_query(q, cut=cut, target_dim=u.dim, score=score)
            steps.append(ShardQuery(name, qu, tuple(pref[:i])))
        return steps

    def _search_once(self, q: np.ndarray, k: int, v: Version, sc: Score) -> SearchResult | None:
        steps = self.plan(q, v, sc)
        hits = self.backend.search(steps, k)
        scores, keys, shard = merge_topk(hits.scores, hits.keys, k)
        uniq = np.unique(keys[keys >= 0])
        ext = hits.resolve(uniq)
        if ext is None:
            return None  # a concurrent write removed a hit's item: search again
        lookup = dict(zip(uniq.tolist(), ext))
        names = [s.version for s in steps]
        ids_out = np.empty(keys.shape, dtype=object)
        ver_out = np.empty(keys.shape, dtype=object)
        ids_flat, ver_flat = ids_out.ravel(), ver_out.ravel()
        for j, (key, w) in enumerate(zip(keys.ravel().tolist(), shard.ravel().tolist())):
            if key >= 0:
                ids_flat[j] = lookup[key]
                ver_flat[j] = names[w]
        return SearchResult(ids_out, scores, ver_out)

    def get_vectors(self, ids: Any, *, version: str) -> np.ndarray:
        """``(n, d_version)`` float32 stored vectors of ``version`` for ``ids``."""
        self._check_open()
        v = self._resolve(version)
        ids_l, _ = as_ids(ids, n=None, unique=False)
        self._require_known(ids_l)
        x, held = self.backend.vectors(v, ids_l)
        if not held.all():
            miss = [ids_l[i] for i in np.flatnonzero(~held)[:5]]
            raise UnknownIdError(f"`ids` {miss} hold no vector of version {v.name!r}")
        return x

    def fetch(self, version: str | None = None, *, ids: Any = None, limit: int | None = None,
              seed: int | None = None) -> ItemBatch:
        """Items holding a vector of ``version``, with their vectors and labels.

        ``ids`` picks items (each must hold the version); else every such item in insertion
        order, or a random ``limit`` of them drawn with ``seed``.
        """
        self._check_open()
        self.backend.refresh()
        v = self._resolve(version)
        if ids is not None:
            ids_l, _ = as_ids(ids, n=None)
            x = self.get_vectors(ids_l, version=v.name)
            return ItemBatch(list(ids_l), x, self.backend.labels(ids_l), v.name)
        limit, rng = as_sample(limit, seed)
        return self.backend.sample(v, limit, rng)

    def has(self, ids: Any) -> np.ndarray:
        """``(n,)`` bool: which ids are in the index."""
        self._check_open()
        ids_l, _ = as_ids(ids, n=None, unique=False)
        return self.backend.known(ids_l)

    @property
    def count(self) -> int:
        """Number of items."""
        self._check_open()
        return self.backend.count()

    def stats(self) -> dict[str, Any]:
        """Counts per version, coverage of the gallery, disk use and shard state."""
        self._check_open()
        self.backend.refresh(force=True)
        return self.backend.stats()

    def verify(self) -> list[str]:
        """Check the stored data against itself and the search structures; returns the problems found."""
        self._check_open()
        self.backend.refresh(force=True)
        return self.backend.verify()

    # -- lifecycle ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Persist what the backend keeps in memory (derived shards; done on close too)."""
        self._writable()
        self.backend.flush()

    def close(self) -> None:
        """Persist (writers) and release the backend: store, writer lock, client."""
        if self._closed:
            return
        self._closed = True
        self.backend.close()

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

    def _lookup(self, name: Any, *, param: str = "version") -> Version:
        if isinstance(name, str) and name not in self._versions:
            self.backend.refresh(force=True)  # registered meanwhile by another process or client?
        return V.get(self._versions, name, param=param)

    def _resolve(self, version: str | None) -> Version:
        if version is None:
            return self.latest
        return self._lookup(version)

    def _require_known(self, ids: list[Any]) -> None:
        err = unknown_ids(ids, self.backend.known(ids))
        if err is not None:
            raise err

    def _prepare(self, vectors: Any, v: Version, *, raw: bool, param: str) -> np.ndarray:
        if raw:
            x = V.to_version_space(v, as_matrix(vectors, dim=v.raw_dim, param=param,
                                                context=f" (raw encoder output of version {v.name!r})"))
        else:
            x = as_matrix(vectors, dim=v.dim, param=param, context=f" for version {v.name!r}")
        return normalize_rows(x, metric=v.metric, param=param)
