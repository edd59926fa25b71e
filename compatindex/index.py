"""The Index facade: validates every call, applies the version algebra, and talks to a backend.

Data flow is one-way (docs/architecture.md): a write is validated here and handed to the
backend, which commits it in one transaction; a search is projected here onto every version's
space (docs/concepts.md), each version is searched by the backend restricted to the items it
represents, and the hits are merged here by score. Everything in this module is shared by every
backend, so both engines accept and refuse the same calls with the same errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence, cast

import numpy as np

from .backend import Backend, ShardQuery
from .core import versions as V
from .core.datatypes import AddResult, IndexStats, Item, ItemBatch, ItemPage, SearchResult, Version
from .core.filters import Filter, check_payload, check_schema_name, parse_filter
from .core.heads import validate_head
from .core.calibration import fit_calibration, fit_fusion, fit_mapped_calibration, relevance
from .core.fusion import as_weights, calibration_table, compose_terms, stored_fusion
from .core.reference import choose_calibration, reference_fits
from .core.neighbour_map import NeighbourMap
from .core.query_maps import check_query_map, fit_query_map, fit_summary, pack_map, query_map_table
from .core.retention import forget, neighbour_row, retain
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
    RawRequiredError,
    ReadOnlyError,
    UnknownIdError,
    VersionExistsError,
    VersionRequiredError,
)

SEARCH_ATTEMPTS = 50
"""Searches retried when concurrent deletes keep removing hits between search and id lookup."""


class Index:
    """A multi-version vector index. Use :func:`compatindex.open` to get one.

    Versions and transforms are explicit. A call that takes ``version=`` (``add``, ``backfill``,
    ``search``, ``fetch``, ``to_version_space``, ``composed_queries``) uses, when it is left out,
    the pinned version, else the only version of a one-version index; on an index of several
    versions with none pinned it raises :class:`~compatindex.errors.VersionRequiredError`. A call that takes
    ``raw=`` needs it said (raises :class:`~compatindex.errors.RawRequiredError` otherwise) when
    the version's raw transform is not the identity (a head, a non-identity ``Q``, or
    ``raw_dim != dim``); for an identity version ``raw=None`` means ``False``.

    Parameters
    ----------
    backend:
        The engine that stores and searches the vectors (see :class:`compatindex.backend.Backend`).
    version:
        Pin a default version for every call that leaves out ``version=`` (e.g. an old client
        after an upgrade); it must be a version of the index (``UnknownVersionError`` otherwise,
        and the backend is closed).
    """

    def __init__(self, backend: Backend, *, version: str | None = None) -> None:
        self.backend = backend
        self._closed = False
        self._pinned: str | None = None
        if version is not None:
            try:
                if not isinstance(version, str):
                    raise InvalidInputError(f"`version` to pin must be a version name (str); got {type(version).__name__}")
                self._pinned = self._lookup(version, param="version").name
            except BaseException:
                self.close()
                raise

    @property
    def pinned_version(self) -> str | None:
        """The version used when a call leaves out ``version=`` (set at open), or None."""
        return self._pinned

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
        """Map raw encoder outputs ``(n, raw_dim)`` into version space ``(n, dim)``.

        ``version`` defaults to the pinned version, else the only one (see :class:`Index`).
        """
        self._check_open()
        v = self._resolve(version, call="to_version_space")
        return V.to_version_space(v, as_matrix(raw, dim=v.raw_dim, param="raw"))

    # -- writes ------------------------------------------------------------------------------
    def add(self, ids: Any, vectors: Any, *, version: str | None = None, labels: Any = None,
            metadata: Any = None, raw: bool | None = None) -> AddResult:
        """Add new items with their vectors of one version.

        Parameters
        ----------
        ids:
            ``(n,)`` new external ids (all int or all str across the index).
        vectors:
            ``(n, d)`` vectors of ``version`` (``(n, raw_dim)`` raw encoder outputs when ``raw``).
        version:
            The vectors' version; default: the pinned version, else the only version (required
            when the index holds several).
        labels, metadata:
            Optional ``(n,)`` labels (int/str) and ``n`` dicts kept with the items.
        raw:
            True: ``vectors`` are encoder outputs, mapped by the version's head and ``Q``; False:
            they already are version-space vectors. Required when the version's raw transform is
            not the identity; None means False otherwise.
        """
        self._writable()
        v = self._resolve(version, call="add")
        x = self._prepare(vectors, v, raw=self._raw(v, raw, call="add"), param="vectors")
        ids_l, kind = as_ids(ids, n=len(x))
        labels_l = as_labels(labels, n=len(x))
        meta_l = as_metadata(metadata, n=len(x))
        self._live(v, "add to")  # declared payload types are checked by the backend, in its write
        seq = self.backend.add(v, ids_l, kind, x, labels_l, meta_l)
        return AddResult(len(ids_l), v.name, seq)

    def backfill(self, ids: Any, vectors: Any, *, version: str | None = None, raw: bool | None = None,
                 drop_old: bool = False, keep_pairs: int = 0) -> AddResult:
        """Give existing items a vector of ``version`` (replacing one they hold of it).

        Parameters
        ----------
        ids:
            ``(n,)`` ids already in the index.
        vectors:
            ``(n, d_version)`` vectors (``(n, raw_dim)`` raw encoder outputs when ``raw``).
        version:
            The vectors' version; default: the pinned version, else the only version (required
            when the index holds several).
        raw:
            True: ``vectors`` are encoder outputs, mapped by the version's head and ``Q``; False:
            they already are version-space vectors. Required when the version's raw transform is
            not the identity; None means False otherwise.
        drop_old:
            Also remove the items' vectors of every other version.
        keep_pairs:
            With ``drop_old``: how many pairs (an ancestor's vector and this version's) of the
            dropped items are kept per ancestor, a uniform sample of every item dropped so far
            (reservoir sampling): those items keep their old vector, and a float16 copy of the
            pairs is stored with the version; 0 (the default) keeps none. The 32768 of
            ``core.neighbour_map.CAPACITY`` is what docs/benchmarks.md measures. An old client's query
            (of that ancestor) is then served by the mean new vector of its nearest retained pairs
            once that beats the linear query map (or the projection) on held-out pairs
            (docs/serving.md, "Retained pairs"; core/neighbour_map.py). The sample is at most 16 MiB
            of float16 vectors per ancestor, whatever ``keep_pairs`` says.
        """
        self._writable()
        v = self._resolve(version, call="backfill")
        if isinstance(keep_pairs, bool) or not isinstance(keep_pairs, (int, np.integer)) or keep_pairs < 0:
            raise InvalidInputError(f"`keep_pairs` must be an integer >= 0; got {keep_pairs!r}")
        x = self._prepare(vectors, v, raw=self._raw(v, raw, call="backfill"), param="vectors")
        ids_l, kind = as_ids(ids, n=len(x))
        self._live(v, "backfill")
        # the ancestors' vectors the drop deletes, read first: a sample of them is kept as pairs
        dropped = self._dropped_pairs(v, ids_l) if drop_old and keep_pairs > 0 else {}
        if not dropped:
            seq = self.backend.backfill(v, ids_l, kind, x, drop_old=bool(drop_old))
            return AddResult(len(ids_l), v.name, seq)
        return AddResult(len(ids_l), v.name, self._backfill_keeping_pairs(v, ids_l, kind, x, dropped, int(keep_pairs)))

    def _backfill_keeping_pairs(self, v: Version, ids_l: list[Any], kind: str, x: np.ndarray,
                                dropped: dict[str, tuple[np.ndarray, np.ndarray]], keep_pairs: int) -> int:
        """A ``drop_old`` backfill that keeps a sample of the dropped pairs (core/retention.py); the last seq."""
        serving: dict[str, Any] = dict(self._versions[v.name].serving or {})
        before = {a: set(((serving.get("pairs") or {}).get(a) or {}).get("ids") or []) for a in dropped}
        for a, (Xa, held) in dropped.items():
            pick = np.flatnonzero(held)
            serving, _ = retain(self._versions, v.name, a, serving, [ids_l[i] for i in pick.tolist()],
                                Xa[held], x[pick], capacity=keep_pairs)
        now = {a: set(serving["pairs"][a]["ids"]) for a in dropped}
        kept = set().union(*now.values())
        # the retained items keep their old vectors (an old client scores them exactly); the others
        # lose them. A crash between the writes loses nothing written: at worst a few old vectors
        # stay that a later drop_old backfill of those items removes.
        keep_at = [i for i, key in enumerate(ids_l) if key in kept]
        drop_at = [i for i, key in enumerate(ids_l) if key not in kept]
        seq = 0
        for at, drop in ((drop_at, True), (keep_at, False)):
            if at:
                seq = self.backend.backfill(v, [ids_l[i] for i in at], kind, x[at], drop_old=drop)
        self.backend.set_serving(v.name, serving)
        evicted = sorted(set().union(*before.values()) - kept, key=str)
        if evicted:  # items a later draw pushed out of the sample lose their old vectors now
            xe, held = self.backend.vectors(v, evicted)
            ev = [e for e, h in zip(evicted, held) if h]
            if ev:
                self.backend.backfill(v, ev, kind, np.asarray(xe, dtype=np.float32)[held], drop_old=True)
        return seq

    def _dropped_pairs(self, v: Version, ids_l: list[Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{ancestor: ((n, d_a) vectors, (n,) held)}`` of the ids, for the ancestors that hold any."""
        out = {}
        for a in V.lineage(self._versions, v.name)[:-1]:
            anc = self._versions[a]
            if anc.retired:
                continue
            Xa, held = self.backend.vectors(anc, ids_l)
            if held.any():
                out[a] = (np.asarray(Xa, dtype=np.float32), held)
        return out

    def delete(self, ids: Any) -> int:
        """Remove items and all their vectors (and any retained pair of theirs); returns how many were removed."""
        self._writable()
        ids_l, kind = as_ids(ids, n=None)
        n = self.backend.delete(ids_l, kind)
        for v in list(self._versions.values()):
            serving = forget(v.serving or {}, ids_l)
            if serving is not None:
                self.backend.set_serving(v.name, serving)
        return n

    # -- reads -------------------------------------------------------------------------------
    def search(self, queries: Any, k: int, *, version: str | None = None, score: str = "renorm",
               raw: bool | None = None, fusion: Mapping[str, float] | None = None, where: Any = None,
               with_payload: bool = False) -> SearchResult:
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
            The queries' version; default: the pinned version, else the only version (required
            when the index holds several). Not used with a mapping.
        score:
            ``"renorm"``, ``"pad"`` or ``"calibrated"`` (see :class:`compatindex.core.scoring.Score`).
        raw:
            True: the queries are raw encoder outputs, mapped by each version's head and ``Q``;
            False: they already are version-space vectors. Required when a queried version's raw
            transform is not the identity (with a mapping: any of its versions); None means
            False otherwise.
        fusion:
            Weights ``{version: w >= 0}`` of a multi-version query (a version left out weighs 0);
            default: the weights stored with the versions by ``upgrade``/``set_serving``, else equal.
        where:
            A filter on labels and metadata (docs/api.md, "Filters"; :mod:`compatindex.core.filters`):
            only matching items are searched, and exact shards stay exact. A filter matching
            nothing gives empty rows.
        with_payload:
            Also return each hit's label and metadata (``SearchResult.labels``/``.metadata``).

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
            flt = self._filter(where)
            parts = self._query_parts(queries, version, raw, call="search")
            weights = self._weights(parts, fusion)
            out = self._search_once(parts, weights, k, sc, flt)
            if out is not None and with_payload:
                out = self._with_payload(out)
            if out is not None:
                return out
        raise CompatIndexError(f"index {self.path} changed under {SEARCH_ATTEMPTS} search attempts in a row; "
                               "retry the search")

    def composed_queries(self, queries: Any, *, version: str | None = None, score: str = "renorm",
                         raw: bool | None = None,
                         fusion: Mapping[str, float] | None = None) -> dict[str, tuple[np.ndarray, float]]:
        """What :meth:`search` sends each version's shard: ``{version: ((nq, d_version) query, offset)}``.

        The served score of a stored vector ``g`` of version ``u`` is ``<query_u, g> + offset_u``
        (one composed vector per shard, docs/concepts.md); useful to check a search by brute force.
        ``version`` and ``raw`` follow the rules of :meth:`search`.
        """
        self._check_open()
        sc = normalize_score(score)
        self.backend.refresh()
        parts = self._query_parts(queries, version, raw, call="composed_queries")
        weights = self._weights(parts, fusion)
        return {name: (q if scale == 1.0 else q * np.float32(scale), off)
                for name, q, _, off, scale in self._compose(parts, weights, sc)}

    def _compose(self, parts: list[tuple[Version, np.ndarray]], weights: list[float],
                 sc: Score) -> list[tuple[str, np.ndarray, tuple[str, ...], float, float]]:
        """The per-version searches of a query (``core.fusion.compose_terms`` with the stored calibration and query maps)."""
        vs = self._versions
        return compose_terms(vs, parts, weights, sc, calibration_table(vs), query_map_table(vs))

    def _query_parts(self, queries: Any, version: str | None, raw: bool | None,
                     *, call: str) -> list[tuple[Version, np.ndarray]]:
        if not isinstance(queries, Mapping):
            v = self._resolve(version, call=call)
            return [(v, self._prepare(queries, v, raw=self._raw(v, raw, call=call), param="queries"))]
        if version is not None:
            raise InvalidInputError(f"`version` {version!r} was given with a mapping of queries; "
                                    "the mapping's keys name the versions (the first is the primary)")
        if not queries:
            raise InvalidInputError("`queries` is an empty mapping; give {version: (nq, d) array}")
        parts: list[tuple[Version, np.ndarray]] = []
        for name, arr in queries.items():
            v = self._lookup(name, param="queries")
            parts.append((v, self._prepare(arr, v, raw=self._raw(v, raw, call=call, param=f"queries[{name!r}]"),
                                           param=f"queries[{name!r}]")))
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
                     sc: Score, where: Filter | None = None) -> SearchResult | None:
        # a retired version holds no vectors: nothing to search there, nothing it shadows
        composed = [c for c in self._compose(parts, weights, sc) if not self._versions[c[0]].retired]
        steps = [ShardQuery(name, q, shadow) for name, q, shadow, _, _ in composed]
        hits = self.backend.search(steps, k, where=where) if where is not None else self.backend.search(steps, k)
        # scale then offset, in float32: a positive scale keeps each shard's order (core.fusion.compose_terms)
        shard_scores = [(D if scale == 1.0 else D * np.float32(scale)) + np.float32(off)
                        for D, (_, _, _, off, scale) in zip(hits.scores, composed)]
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

    def _filter(self, where: Any) -> Filter | None:
        if where is None:
            return None
        return parse_filter(where, schema=self.backend.payload_schema())

    def _with_payload(self, res: SearchResult) -> SearchResult | None:
        found = [x for x in res.ids.ravel().tolist() if x is not None]
        uniq = list(dict.fromkeys(found))
        if uniq and not self.backend.known(uniq).all():
            return None  # deleted since the search: search again
        labels, meta = self.backend.payload(uniq) if uniq else ([], [])
        lab_of = dict(zip(uniq, labels))
        meta_of = dict(zip(uniq, meta))
        L = np.empty(res.ids.shape, dtype=object)
        M = np.empty(res.ids.shape, dtype=object)
        for j, x in enumerate(res.ids.ravel().tolist()):
            if x is not None:
                L.ravel()[j] = lab_of[x]
                M.ravel()[j] = meta_of[x]
        return SearchResult(res.ids, res.scores, res.versions, L, M)

    # -- items: read-back and payload updates ---------------------------------------------------
    def get(self, ids: Any, *, versions: Sequence[str] | None = None, with_vectors: bool = True) -> list[Item]:
        """Stored items by id, in the order given: labels, metadata, versions held and vectors.

        Parameters
        ----------
        ids:
            ``(n,)`` ids in the index (``UnknownIdError`` names the missing ones).
        versions:
            Versions whose vectors to return (default: every version each item holds); an item
            that holds none of them gets no vector for it.
        with_vectors:
            False returns labels, metadata and versions only.

        Returns
        -------
        list[Item]
            ``n`` items; ``Item.vectors[v]`` is ``(d_v,)`` float32.
        """
        self._check_open()
        self.backend.refresh()
        ids_l, _ = as_ids(ids, n=None, unique=False)
        self._require_known(ids_l)
        wanted = None if versions is None else [self._lookup(n, param="versions").name for n in
                                                ([versions] if isinstance(versions, str) else versions)]
        labels, meta = self.backend.payload(ids_l)
        held = self.backend.held(ids_l)
        vecs: list[dict[str, np.ndarray]] = [{} for _ in ids_l]
        if with_vectors:
            names = sorted({n for h in held for n in h} if wanted is None else set(wanted),
                           key=lambda n: self._versions[n].code)
            for name in names:
                rows = [i for i, h in enumerate(held) if name in h]
                if not rows:
                    continue
                x, ok = self.backend.vectors(self._versions[name], [ids_l[i] for i in rows])
                for r, i in enumerate(rows):
                    if ok[r]:
                        vecs[i][name] = x[r]
        return [Item(i, lab, m, tuple(h), v) for i, lab, m, h, v in zip(ids_l, labels, meta, held, vecs)]

    def list_items(self, *, offset: int = 0, limit: int = 100, where: Any = None) -> ItemPage:
        """One page of items in insertion order (labels, metadata and versions; no vectors).

        ``where`` filters as in :meth:`search`; pass ``next_offset`` of a page to get the next.
        """
        self._check_open()
        self.backend.refresh()
        for name, val, lo in (("offset", offset, 0), ("limit", limit, 1)):
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < lo:
                raise InvalidInputError(f"`{name}` must be an int >= {lo}; got {val!r}")
        flt = self._filter(where)
        ids, nxt = self.backend.list_items(int(offset), min(int(limit), 100_000), flt)
        items = self.get(ids, with_vectors=False) if ids else []
        return ItemPage(items, None if nxt < 0 else nxt)

    def set_metadata(self, ids: Any, metadata: Any, *, merge: bool = True) -> int:
        """Update the metadata of existing items in one transaction; returns how many.

        Parameters
        ----------
        ids:
            ``(n,)`` ids in the index.
        metadata:
            One dict applied to every id, or ``n`` dicts (None: leave that item as it is).
        merge:
            True: each dict updates the stored one key by key (a None value removes the key).
            False: each dict replaces the stored metadata.
        """
        self._writable()
        ids_l, kind = as_ids(ids, n=None)
        if isinstance(metadata, Mapping):
            metadata = [dict(metadata)] * len(ids_l)
        meta_l = as_metadata(metadata, n=len(ids_l))
        assert meta_l is not None
        schema = self.backend.payload_schema()
        check_payload([{k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m
                       for m in meta_l], schema)
        self._require_known(ids_l)
        self.backend.set_payload(ids_l, kind, labels=None, metadata=meta_l, merge=bool(merge))
        return len(ids_l)

    def set_labels(self, ids: Any, labels: Any) -> int:
        """Replace the labels of existing items (ints or strings; None clears) in one transaction."""
        self._writable()
        ids_l, kind = as_ids(ids, n=None)
        if labels is None or isinstance(labels, (str, int, np.integer)):
            labels = [labels] * len(ids_l)
        labels_l = as_labels(labels, n=len(ids_l))
        self._require_known(ids_l)
        self.backend.set_payload(ids_l, kind, labels=labels_l, metadata=None, merge=False)
        return len(ids_l)

    def create_payload_index(self, field: str, schema: str = "keyword") -> None:
        """Declare a metadata field indexed (``schema``: keyword, integer, float or bool).

        Filters on declared fields are evaluated from the index instead of every item's metadata,
        and writes of another type to the field are refused.
        """
        self._writable()
        field, schema = check_schema_name(field, schema)
        self.backend.create_payload_index(field, schema)

    @property
    def payload_indexes(self) -> dict[str, str]:
        """The declared payload indexes, ``{field: schema}``."""
        self._check_open()
        return dict(self.backend.payload_schema())

    def retire_version(self, name: str) -> int:
        """Drop every vector of a version no item depends on alone; returns how many were dropped.

        Refused (``InvalidInputError`` with the count; nothing changes) while some item holds a
        vector of no other version: backfill those items first. The version's record stays, so
        queries of it still map onto its descendants; writes to it are refused.
        """
        self._writable()
        v = self._lookup(name)
        if v.retired:
            raise InvalidInputError(f"`name`: version {v.name!r} is already retired")
        return self.backend.retire(v)

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
        """Items holding a vector of ``version``, with their vectors, labels and metadata.

        ``version`` defaults to the pinned version, else the only version (required when the index
        holds several). ``ids`` picks items (each must hold the version); else every such item in
        insertion order, or a random ``limit`` of them drawn with ``seed``.
        """
        self._check_open()
        self.backend.refresh()
        v = self._resolve(version, call="fetch")
        if ids is not None:
            ids_l, _ = as_ids(ids, n=None)
            x = self.get_vectors(ids_l, version=v.name)
            labels, meta = self.backend.payload(ids_l)
            return ItemBatch(list(ids_l), x, labels, v.name, meta)
        limit, rng = as_sample(limit, seed)
        batch = self.backend.sample(v, limit, rng, seeded=seed is not None)
        if batch.metadata is None:
            meta = self.backend.payload(batch.ids)[1] if batch.ids else []
            batch = ItemBatch(batch.ids, batch.vectors, batch.labels, batch.version, meta)
        return batch

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

    def stats(self) -> IndexStats:
        """Counts per version, coverage of the gallery, disk use, shard state and payload indexes
        (typed as :class:`compatindex.core.datatypes.IndexStats`)."""
        self._check_open()
        self.backend.refresh(force=True)
        out = dict(self.backend.stats())
        out["payload_indexes"] = dict(self.backend.payload_schema())
        for name, entry in out.get("versions", {}).items():
            entry["retired"] = self._versions[name].retired if name in self._versions else False
        return cast(IndexStats, out)

    def verify(self) -> list[str]:
        """Check the stored data against itself and the search structures; returns the problems found."""
        self._check_open()
        self.backend.refresh(force=True)
        return self.backend.verify()

    # -- migration-time serving ---------------------------------------------------------------
    def set_serving(self, version: str, *, fusion: Mapping[str, float] | None = None,
                    calibration: Sequence[tuple[str, str, float, float]] | None = None,
                    query_maps: Mapping[str, Any] | None = None) -> Version:
        """Store serving parameters with ``version`` (what :meth:`fit_serving` and ``calibrate`` do).

        Parameters
        ----------
        fusion:
            ``{version: weight >= 0}`` used by default when a query arrives in exactly these versions.
        calibration:
            ``(query version, gallery version, a, b)`` rows, ``a > 0``: the ``calibrated`` score
            convention maps that pair's scores ``s`` to ``a * s + b``.
        query_maps:
            ``{ancestor: (d_version, d_ancestor) matrix W}``: queries of that ancestor meet this
            version's vectors as ``normalize(W q)`` instead of the algebra's projection
            (core/query_maps.py; what :meth:`fit_serving` and ``calibrate`` fit). The mapping
            replaces every stored map of ``version``; ``{}`` removes them all, an ancestor given
            None is removed. A value may also be a stored entry (``version.serving["query_maps"][a]``).
        None keeps what is stored. Everything is checked before anything is written.
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
        if query_maps is not None:
            if not isinstance(query_maps, Mapping):
                raise InvalidInputError(f"`query_maps` must be a mapping {{ancestor version: (d_u, d_a) matrix}}; "
                                        f"got {type(query_maps).__name__}")
            packed: dict[str, Any] = {}
            for anc_name, W in query_maps.items():
                if W is None:
                    continue
                anc = self._lookup(anc_name, param="query_maps")
                M = check_query_map(self._versions, anc.name, v.name, W, param=f"query_maps[{anc.name!r}]")
                fit = W.get("fit") if isinstance(W, Mapping) else None
                packed[anc.name] = pack_map(M, fit)
            if packed:
                serving["query_maps"] = packed
            else:
                serving.pop("query_maps", None)
        self.backend.set_serving(v.name, serving)
        return self._versions[v.name]

    def fit_serving(self, version: str, vectors: Any, ids: Any = None, *, old_vectors: Any = None,
                    against: str | None = None, labels: Any = None, raw: bool | None = None,
                    fusion: bool = True, query_map: bool = True, distractors: int = 50_000,
                    seed: int = 0) -> dict[str, Any]:
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
            Optional ``(n,)`` labels; fusion then maximizes same-label retrieval among the pairs'
            ``against`` vectors and ``distractors`` other labelled stored items of ``against``.
        distractors:
            With ``labels``: how many other stored items (drawn with ``seed``) the fusion fit
            searches beside the pairs, as the served search will (0: the pairs only).
        raw:
            ``vectors`` are raw encoder outputs (True) or version-space vectors (False); required
            when ``version``'s raw transform is not the identity (``old_vectors`` are always
            version-space vectors of ``against``).
        fusion:
            Also choose fusion weights (else only the calibration is fit).
        query_map:
            Also fit the query map from ``against`` into ``version`` (when ``against`` is an
            ancestor): it is stored only when, on a held-out fifth of the pairs, mapped old
            vectors find their own new vector better than the projection does (MRR higher,
            recall@1 not lower; core/query_maps.py). The calibration of (``against``, ``version``) is
            then fit on the mapped scores, onto the (``against``, ``against``) scale: the old
            scores the mapped ones predict (``core.calibration.fit_mapped_calibration``), so an old
            client's backfilled items rank where their old vectors would have.

        Returns
        -------
        dict
            ``{"calibration": {pair: fit}, "fusion": fit or None, "query_map": fit or None}`` (see
            :mod:`compatindex.core.calibration` and :func:`compatindex.core.query_maps.fit_query_map`:
            ``stored``, ``reason``, held-out ``mapped`` and ``projection`` MRR and R@1).
        """
        self._writable()
        v = self._lookup(version)
        old = self._lookup(against if against is not None else v.parent, param="against")
        if old.name == v.name:
            raise InvalidInputError(f"`against` must be another version than {v.name!r}")
        if (ids is None) == (old_vectors is None):
            raise InvalidInputError("give exactly one of `ids` (stored items) and `old_vectors` (the pairs' other half)")
        Z = self._prepare(vectors, v, raw=self._raw(v, raw, call="fit_serving"), param="vectors")
        if ids is not None:
            ids_l, _ = as_ids(ids, n=len(Z))
            G = self.get_vectors(ids_l, version=old.name)
        else:
            G = self._prepare(old_vectors, old, raw=False, param="old_vectors")
            if len(G) != len(Z):
                raise InvalidInputError(f"`old_vectors` holds {len(G)} rows, `vectors` {len(Z)}; they must pair up")
        lab = as_labels(labels, n=len(Z))
        extra = None
        if lab is not None and fusion and distractors > 0:
            drawn = self.backend.sample(old, int(distractors) + len(Z), np.random.default_rng(seed))
            skip = set(ids_l) if ids is not None else set()
            keep = [k for k, (i, y) in enumerate(zip(drawn.ids, drawn.labels)) if i not in skip and y is not None]
            keep = keep[: int(distractors)]
            if keep:
                extra = (np.asarray(drawn.vectors, dtype=np.float32)[keep], [drawn.labels[k] for k in keep])
        return self._fit_and_store(v, old, Z, G, labels=lab, fusion=fusion, query_map=query_map,
                                   distractors=extra)

    def calibrate(self, version: str, *, against: str | None = None, limit: int = 2000, seed: int = 0,
                  query_map: bool = True, reference: Any = None) -> dict[str, Any]:
        """Refit the calibration (and the query map) of ``version`` from items that hold vectors of both it and ``against``.

        After any partial backfill those items are exact pairs. Stored fusion weights are kept. The
        query map from ``against`` is refit first (``query_map=False`` skips it) and replaces the
        stored one only when it passes the held-out gate and beats the stored map on the same
        held-out pairs; the calibration is then fit on the scores the search will serve.

        Parameters
        ----------
        reference:
            Optional ``(ids, vectors)``: stored items drawn at random from the whole gallery (for
            example the held-out pairs of the upgrade) and their ``(n, d_version)`` vectors of
            ``version``. The calibration is then fit with these items as the queries and the stored
            labels as relevance, each (query version, gallery version) pair on a draw of the items
            it will score: the ``version`` vectors of items holding one, the ``against`` vectors of
            items not backfilled yet (``core.calibration.fit_served_calibration``). A backfill order
            that is not random (the hardest items first) then no longer skews the calibration, as
            fitting on the backfilled items alone does. Every reference item and every drawn item
            must have a label. The old version's query rows are fit from the reference items that
            still hold an ``against`` vector (at least 3; else from the pairs, as without
            ``reference``). For each query version, the reference rows are stored unless the pairs'
            rows (the fit without ``reference``) put an item of the query's label first
            significantly more often (one-sided 95% bound) for the reference queries, searching a
            draw of the gallery in its served composition of backfilled and not-yet-backfilled
            items; the report's ``reference`` entry gives both first-hit rates, both APs and the choice.
        """
        self._writable()
        v = self._lookup(version)
        old = self._lookup(against if against is not None else v.parent, param="against")
        if old.name == v.name:
            raise InvalidInputError(f"`against` must be another version than {v.name!r}")
        served = self._reference_sample(v, old, reference, limit, seed) if reference is not None else None
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
        return self._fit_and_store(v, old, both.vectors[pick], G, labels=None, fusion=False, query_map=query_map,
                                   served=served)

    def _reference_sample(self, v: Version, old: Version, reference: Any, limit: int, seed: int) -> dict[str, Any]:
        """Check ``calibrate``'s ``reference`` and draw the populations each calibration will score."""
        if not (isinstance(reference, (tuple, list)) and len(reference) == 2):
            raise InvalidInputError(f"`reference` must be (ids, vectors); got {type(reference).__name__}"
                                    + (f" of length {len(reference)}" if isinstance(reference, (tuple, list)) else ""))
        Zr = self._prepare(reference[1], v, raw=False, param="reference[1]")
        ids_r, _ = as_ids(reference[0], n=len(Zr), param="reference[0]")
        if len(ids_r) < 3:
            raise InvalidInputError(f"`reference` holds {len(ids_r)} items; at least 3 are needed")
        known = self.backend.known(ids_r)
        if not known.all():
            raise InvalidInputError(f"`reference[0]`: {int((~known).sum())} id(s) are not in the index, "
                                    f"e.g. {ids_r[int(np.flatnonzero(~known)[0])]!r}")
        lab_r = self.backend.labels(ids_r)
        if any(x is None for x in lab_r):
            bad = next(i for i, x in zip(ids_r, lab_r) if x is None)
            raise InvalidInputError(f"`reference`: item {bad!r} has no label; a reference calibration uses the "
                                    "stored labels as relevance")
        rng = np.random.default_rng(seed + 1)
        gal_v = self.backend.sample(v, limit, rng)
        drawn = self.backend.sample(old, 4 * limit, rng)
        _, has_v = self.backend.vectors(v, list(drawn.ids))
        rest = np.flatnonzero(~has_v)[:limit]
        gal_old = ItemBatch([drawn.ids[i] for i in rest.tolist()], drawn.vectors[rest],
                            [drawn.labels[i] for i in rest.tolist()], old.name)
        for name, g in (("the version's", gal_v), ("the not-backfilled", gal_old)):
            if any(x is None for x in g.labels):
                raise InvalidInputError(f"a reference calibration uses the stored labels as relevance, and "
                                        f"{sum(x is None for x in g.labels)} of {name} drawn items have none")
        G_r, held_r = self.backend.vectors(old, ids_r)
        # the served composition: items holding `version` against items of `against` not backfilled yet
        counts = self.backend.stats()["versions"]
        share_v = float(has_v.mean()) if len(has_v) else 0.0
        sizes = {v.name: int(counts[v.name]["vectors"]), old.name: int(round(counts[old.name]["vectors"] * (1 - share_v)))}
        return {"ids": ids_r, "labels": lab_r, "Z": Zr, "G_old": G_r[held_r], "held_old": held_r,
                "gallery": {v.name: gal_v, old.name: gal_old}, "sizes": sizes}

    def _fit_and_store(self, v: Version, old: Version, Z: np.ndarray, G: np.ndarray, *, labels: list[Any] | None,
                       fusion: bool, query_map: bool = True,
                       distractors: tuple[np.ndarray, list[Any]] | None = None,
                       served: dict[str, Any] | None = None) -> dict[str, Any]:
        vs = self._versions
        Z = np.asarray(Z, dtype=np.float64)
        G = np.asarray(G, dtype=np.float64)
        maps = query_map_table(vs)
        map_fit: dict[str, Any] | None = None
        new_maps: dict[str, Any] | None = None
        if query_map:
            if old.name in V.lineage(vs, v.name):
                # the map first: the calibration of (old, v) is fit on the scores it serves (a
                # neighbour map of retained pairs, where one is served, stays in front of it)
                linear = query_map_table(vs, neighbours=False)
                map_fit = fit_query_map(vs, old.name, v.name, G, Z, stored=linear.get((old.name, v.name)))
                W = map_fit.pop("W")
                if W is not None:
                    if not isinstance(maps.get((old.name, v.name)), NeighbourMap):
                        maps[(old.name, v.name)] = W
                    new_maps = dict((v.serving or {}).get("query_maps") or {})
                    new_maps[old.name] = pack_map(W, fit_summary(map_fit))
            else:
                map_fit = {"stored": False, "from": old.name, "to": v.name,
                           "reason": f"{old.name!r} is not an ancestor of {v.name!r}; query maps go from an ancestor "
                                     "into a version"}
        rel = relevance(G, Z, labels, neighbours=10)
        vecs = {v.name: Z, old.name: G}
        fits = {f"{i}->{u}": fit_calibration(vs, i, u, vecs[i], vecs[u], rel, query_maps=maps)
                for i in (v.name, old.name) for u in (v.name, old.name)}
        # with a query map, (old, v) goes onto the (old, old) scale through the old scores it predicts
        base = fits[f"{old.name}->{old.name}"]
        if isinstance(maps.get((old.name, v.name)), NeighbourMap):
            mapped: dict[str, Any] | None = neighbour_row((base["a"], base["b"]))
        else:
            mapped = fit_mapped_calibration(vs, old.name, v.name, G, Z, (base["a"], base["b"]), maps)
        if mapped is not None:
            fits[f"{old.name}->{v.name}"] = mapped
        chosen = None
        if served is not None:
            # per query version, the reference rows or the pairs' rows, whichever ranks the reference
            # queries' labels better in the served mix (a population with fewer than 3 items, or fewer
            # than 3 reference items holding `against`, keeps the pairs' rows)
            chosen = choose_calibration(vs, v.name, old.name, served, fits,
                                        reference_fits(vs, v.name, old.name, served, maps), maps)
        rows = [(i, u, fits[f"{i}->{u}"]["a"], fits[f"{i}->{u}"]["b"])
                for i in (v.name, old.name) for u in (v.name, old.name)]
        fresh = {(i, u) for i, u, _, _ in rows}
        kept = [tuple(r) for r in (v.serving or {}).get("calibration") or [] if (r[0], r[1]) not in fresh]
        calibration = kept + rows
        fused = None
        if fusion:
            table = {(a, b): (x, y) for a, b, x, y in calibration}
            fused = fit_fusion(vs, v.name, old.name, Z, G, labels=labels, calibration=table, query_maps=maps,
                               distractors=None if distractors is None else distractors[0],
                               distractor_labels=None if distractors is None else distractors[1])
        self.set_serving(v.name, calibration=calibration,
                         fusion=None if fused is None else fused["fusion"], query_maps=new_maps)
        out = {"calibration": fits, "fusion": fused, "query_map": map_fit}
        if chosen is not None:
            out["reference"] = chosen
        return out

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

    def _live(self, v: Version, what: str) -> None:
        if v.retired:
            raise InvalidInputError(f"`version` {v.name!r} is retired (its vectors were dropped); cannot {what} it",
                                    hint="write to one of its descendants instead")

    def _version_listing(self) -> str:
        names = [v.name for v in self.versions()]
        if not names:
            return "this index has no version yet"
        return "this index holds version" + ("s " if len(names) > 1 else " ") + ", ".join(repr(n) for n in names)

    def _resolve(self, version: str | None, *, call: str = "this call") -> Version:
        """``version``, else the pinned version, else the only version; several and none pinned: an error."""
        if version is not None:
            return self._lookup(version)
        if self._pinned is not None:
            return self._lookup(self._pinned)
        vs = self.versions()
        if not vs:
            raise V.UnknownVersionError("the index has no version yet", hint="create one with create_version(name, dim)")
        if len(vs) == 1:
            return vs[0]
        raise VersionRequiredError(
            f"`{call}` needs `version`: {self._version_listing()}; pass version={vs[-1].name!r} "
            "(or pin one: compatindex.open(path, version=...))",
            hint="an index of several versions never guesses which space vectors or queries belong to",
        )

    def _raw(self, v: Version, raw: bool | None, *, call: str, param: str = "raw") -> bool:
        """``raw`` as said; None is False for an identity version and an error otherwise."""
        if raw is not None:
            return bool(raw)
        what = V.raw_transform(v)
        if not what:
            return False
        where = "" if param == "raw" else f" (for {param})"
        raise RawRequiredError(
            f"`{call}` needs `raw`{where}: version {v.name!r} maps encoder outputs into its space with "
            f"{' and '.join(what)}; pass raw=True (encoder outputs, mapped by the version's head and Q) "
            "or raw=False (vectors already in version space)",
            hint="",
        )

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
