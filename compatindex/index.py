"""The Index facade: validates every call, applies the version algebra, and talks to a backend.

Data flow is one-way (docs/architecture.md): a write is validated here and handed to the
backend, which commits it in one transaction; a search is projected here onto every version's
space (docs/concepts.md), each version is searched by the backend restricted to the items it
represents, and the hits are merged here by score. Everything in this module is shared by every
backend, so both engines accept and refuse the same calls with the same errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .backend import Backend, ShardQuery
from .core import versions as V
from .core.datatypes import AddResult, ItemBatch, SearchResult, Version
from .core.heads import validate_head
from .core.calibration import fit_calibration, fit_fusion, relevance
from .core.fusion import as_weights, calibration_table, compose, stored_fusion
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
               raw: bool = False, fusion: Mapping[str, float] | None = None) -> SearchResult:
        """Search every version's vectors with queries of one version, or of several at once; one hit per item.

        Parameters
        ----------
        queries:
            ``(nq, d_version)`` queries of ``version`` (``(nq, raw_dim)`` when ``raw``), or a mapping
            ``{version name: (nq, d) array}`` of the same queries embedded by several models (during
            a migration both encoders run): every array has the same ``nq``, and the first key is
            the primary version, which decides the vector that represents each item. The served
            score of a stored vector is the weighted sum of the (calibrated) scores of every query
            representation (docs/concepts.md, "Migration-time serving").
        k:
            Hits per query; fewer come back when the index holds fewer items (``-inf`` scores pad).
        version:
            The queries' version (default: newest); not used with a mapping.
        score:
            ``"renorm"``, ``"pad"`` or ``"calibrated"`` (see :class:`compatindex.core.scoring.Score`).
        raw:
            The queries are raw encoder outputs: each version's head and ``Q`` are applied.
        fusion:
            Weights ``{version: w >= 0}`` of a multi-version query (a version left out weighs 0);
            default: the weights stored with the versions by ``upgrade``/``set_serving``, else equal.

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
            parts = self._query_parts(queries, version, raw)
            weights = self._weights(parts, fusion)
            out = self._search_once(parts, weights, k, sc)
            if out is not None:
                return out
        raise CompatIndexError(f"index {self.path} changed under {SEARCH_ATTEMPTS} search attempts in a row; "
                               "retry the search")

    def composed_queries(self, queries: Any, *, version: str | None = None, score: str = "renorm", raw: bool = False,
                         fusion: Mapping[str, float] | None = None) -> dict[str, tuple[np.ndarray, float]]:
        """What :meth:`search` sends each version's shard: ``{version: ((nq, d_version) query, offset)}``.

        The served score of a stored vector ``g`` of version ``u`` is ``<query_u, g> + offset_u``
        (one composed vector per shard, docs/concepts.md); useful to check a search by brute force.
        """
        self._check_open()
        sc = normalize_score(score)
        self.backend.refresh()
        parts = self._query_parts(queries, version, raw)
        weights = self._weights(parts, fusion)
        return {name: (q, off) for name, q, _, off in self._compose(parts, weights, sc)}

    def _compose(self, parts: list[tuple[Version, np.ndarray]], weights: list[float],
                 sc: Score) -> list[tuple[str, np.ndarray, tuple[str, ...], float]]:
        """The per-version searches of a query (``core.fusion.compose`` with the stored calibration)."""
        return compose(self._versions, parts, weights, sc, calibration_table(self._versions))

    def _query_parts(self, queries: Any, version: str | None, raw: bool) -> list[tuple[Version, np.ndarray]]:
        if not isinstance(queries, Mapping):
            v = self._resolve(version)
            return [(v, self._prepare(queries, v, raw=raw, param="queries"))]
        if version is not None:
            raise InvalidInputError(f"`version` {version!r} was given with a mapping of queries; "
                                    "the mapping's keys name the versions (the first is the primary)")
        if not queries:
            raise InvalidInputError("`queries` is an empty mapping; give {version: (nq, d) array}")
        parts: list[tuple[Version, np.ndarray]] = []
        for name, arr in queries.items():
            v = self._lookup(name, param="queries")
            parts.append((v, self._prepare(arr, v, raw=raw, param=f"queries[{name!r}]")))
        nqs = {v.name: len(q) for v, q in parts}
        if len(set(nqs.values())) > 1:
            raise InvalidInputError("`queries` arrays must hold the same number of queries; got "
                                    + ", ".join(f"{n}: {c}" for n, c in nqs.items()))
        return parts

    def _weights(self, parts: list[tuple[Version, np.ndarray]], fusion: Mapping[str, float] | None) -> list[float]:
        names = [v.name for v, _ in parts]
        if fusion is not None:
            return as_weights(fusion, names)
        if len(parts) == 1:
            return [1.0]
        stored = stored_fusion(self._versions, names)
        if stored is not None:
            return [stored[n] for n in names]
        return [1.0 / len(parts)] * len(parts)

    def _search_once(self, parts: list[tuple[Version, np.ndarray]], weights: list[float], k: int,
                     sc: Score) -> SearchResult | None:
        composed = self._compose(parts, weights, sc)
        steps = [ShardQuery(name, q, shadow) for name, q, shadow, _ in composed]
        hits = self.backend.search(steps, k)
        shard_scores = [D if off == 0.0 else D + np.float32(off) for D, (_, _, _, off) in zip(hits.scores, composed)]
        scores, keys, shard = merge_topk(shard_scores, hits.keys, k)
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
        return self.backend.sample(v, limit, rng, seeded=seed is not None)

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

    # -- migration-time serving ---------------------------------------------------------------
    def set_serving(self, version: str, *, fusion: Mapping[str, float] | None = None,
                    calibration: Sequence[tuple[str, str, float, float]] | None = None) -> Version:
        """Store serving parameters with ``version`` (what :meth:`fit_serving` and ``calibrate`` do).

        Parameters
        ----------
        fusion:
            ``{version: weight >= 0}`` used by default when a query arrives in exactly these versions.
        calibration:
            ``(query version, gallery version, a, b)`` rows, ``a > 0``: the ``calibrated`` score
            convention maps that pair's scores ``s`` to ``a * s + b``.
        None keeps what is stored.
        """
        self._writable()
        v = self._lookup(version)
        serving = dict(v.serving or {})
        if fusion is not None:
            names = list(fusion) if isinstance(fusion, Mapping) else []
            for n in names:
                self._lookup(n, param="fusion")
            weights = as_weights(fusion, names)
            serving["fusion"] = dict(zip(names, weights))
        if calibration is not None:
            rows = []
            for row in calibration:
                try:
                    i, u, a, b = row
                    a, b = float(a), float(b)
                except (TypeError, ValueError):
                    raise InvalidInputError(f"`calibration` rows must be (query version, gallery version, a, b); "
                                            f"got {row!r}") from None
                self._lookup(i, param="calibration")
                self._lookup(u, param="calibration")
                if not (np.isfinite(a) and np.isfinite(b) and a > 0):
                    raise InvalidInputError(f"`calibration` row {row!r}: a must be finite and > 0, b finite")
                rows.append([str(i), str(u), a, b])
            serving["calibration"] = rows
        self.backend.set_serving(v.name, serving)
        return self._versions[v.name]

    def fit_serving(self, version: str, vectors: Any, ids: Any = None, *, old_vectors: Any = None,
                    against: str | None = None, labels: Any = None, raw: bool = False,
                    fusion: bool = True) -> dict[str, Any]:
        """Fit and store the serving parameters of ``version`` from held-out pairs.

        Parameters
        ----------
        version:
            The new version.
        vectors:
            ``(n, d_version)`` vectors of ``version`` (raw encoder outputs when ``raw``).
        ids:
            ``(n,)`` ids of stored items holding a vector of ``against`` (e.g. the held-out pairs of an
            upgrade): their stored vectors are the other half of each pair.
        old_vectors:
            Instead of ``ids``: ``(n, d_against)`` vectors of ``against`` for the same ``n`` things, e.g.
            a sample of recent queries embedded by both encoders during the migration.
        against:
            The old version (default: ``version``'s parent).
        labels:
            Optional ``(n,)`` labels; fusion then maximizes same-label retrieval.
        fusion:
            Also choose fusion weights (else only the calibration is fit).

        Returns
        -------
        dict
            ``{"calibration": {pair: fit}, "fusion": fit or None}`` (see :mod:`compatindex.core.calibration`).
        """
        self._writable()
        v = self._lookup(version)
        old = self._lookup(against if against is not None else v.parent, param="against")
        if old.name == v.name:
            raise InvalidInputError(f"`against` must be another version than {v.name!r}")
        if (ids is None) == (old_vectors is None):
            raise InvalidInputError("give exactly one of `ids` (stored items) and `old_vectors` (the pairs' other half)")
        Z = self._prepare(vectors, v, raw=raw, param="vectors")
        if ids is not None:
            ids_l, _ = as_ids(ids, n=len(Z))
            G = self.get_vectors(ids_l, version=old.name)
        else:
            G = self._prepare(old_vectors, old, raw=False, param="old_vectors")
            if len(G) != len(Z):
                raise InvalidInputError(f"`old_vectors` holds {len(G)} rows, `vectors` {len(Z)}; they must pair up")
        return self._fit_and_store(v, old, Z, G, labels=as_labels(labels, n=len(Z)), fusion=fusion)

    def calibrate(self, version: str, *, against: str | None = None, limit: int = 2000, seed: int = 0) -> dict[str, Any]:
        """Refit the calibration of ``version`` from items that hold vectors of both it and ``against``.

        After any partial backfill those items are exact pairs. Stored fusion weights are kept.
        """
        self._writable()
        v = self._lookup(version)
        old = self._lookup(against if against is not None else v.parent, param="against")
        if old.name == v.name:
            raise InvalidInputError(f"`against` must be another version than {v.name!r}")
        # a draw of the version's items (bounded: memory follows `limit`, not the gallery), of which
        # those that also hold `against` are the pairs
        both = self.backend.sample(v, 4 * limit, np.random.default_rng(seed))
        _, held = self.backend.vectors(old, list(both.ids))
        pick = np.flatnonzero(held)
        if len(pick) < 3:
            raise InvalidInputError(f"only {len(pick)} items hold vectors of both {v.name!r} and {old.name!r}; "
                                    "calibrate needs at least 3", hint="backfill some items first")
        if len(pick) > limit:
            pick = np.sort(np.random.default_rng(seed).choice(pick, size=limit, replace=False))
        ids_l = [both.ids[i] for i in pick.tolist()]
        G = self.get_vectors(ids_l, version=old.name)
        return self._fit_and_store(v, old, both.vectors[pick], G, labels=None, fusion=False)

    def _fit_and_store(self, v: Version, old: Version, Z: np.ndarray, G: np.ndarray, *, labels: list[Any] | None,
                       fusion: bool) -> dict[str, Any]:
        vs = self._versions
        Z = np.asarray(Z, dtype=np.float64)
        G = np.asarray(G, dtype=np.float64)
        rel = relevance(G, Z, labels, neighbours=10)
        vecs = {v.name: Z, old.name: G}
        fits = {f"{i}->{u}": fit_calibration(vs, i, u, vecs[i], vecs[u], rel)
                for i in (v.name, old.name) for u in (v.name, old.name)}
        rows = [(i, u, fits[f"{i}->{u}"]["a"], fits[f"{i}->{u}"]["b"])
                for i in (v.name, old.name) for u in (v.name, old.name)]
        fresh = {(i, u) for i, u, _, _ in rows}
        kept = [tuple(r) for r in (v.serving or {}).get("calibration") or [] if (r[0], r[1]) not in fresh]
        calibration = kept + rows
        fused = None
        if fusion:
            table = {(a, b): (x, y) for a, b, x, y in calibration}
            fused = fit_fusion(vs, v.name, old.name, Z, G, labels=labels, calibration=table)
        self.set_serving(v.name, calibration=calibration,
                         fusion=None if fused is None else fused["fusion"])
        return {"calibration": fits, "fusion": fused}

    # -- lifecycle ---------------------------------------------------------------------------
    def _maintenance(self, name: str) -> Any:
        fn = getattr(self.backend, name, None)
        if fn is None:
            raise CompatIndexError(f"index {self.path} is served by an engine without `{name}`",
                                   hint=f"{name} is for index folders (the embedded backend)")
        return fn

    def compact(self) -> dict[str, Any]:
        """Reclaim the space of replaced and deleted vectors (crash-safe: the old index or the new one).

        Embedded backend only; see docs/reliability.md. Returns what was reclaimed.
        """
        self._writable()
        out: dict[str, Any] = self._maintenance("compact")()
        return out

    def backup(self, dest: str | Path) -> dict[str, Any]:
        """Write a consistent, compacted copy of the index to the new folder ``dest``, while it serves.

        Embedded backend only. Returns what was copied.
        """
        self._check_open()
        out: dict[str, Any] = self._maintenance("backup")(dest)
        return out

    def checkpoint(self) -> dict[str, Any]:
        """Save the shards that changed now (done in the background by op count and by time)."""
        self._writable()
        out: dict[str, Any] = self._maintenance("checkpoint")()
        return out

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
