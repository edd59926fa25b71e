"""The Backend Protocol: what the :class:`~compatindex.Index` facade needs from an engine.

The facade owns everything both engines share: input validation, the version algebra,
query-side projection, the choice of one representative vector per item, and the merge of
per-version hits (docs/architecture.md). A backend owns durable state and raw search:

- the version catalog (records built by :func:`compatindex.core.records.version_record`);
- transactional writes of already-validated items and vectors;
- per-version searches restricted to the items a version represents for a query
  (:class:`ShardQuery`), returning scores and opaque item keys;
- reads: stored vectors, labels, samples, counts, stats and a consistency check.

Two implementations ship: :class:`compatindex.embedded.backend.EmbeddedBackend` (LMDB + FAISS)
and :class:`compatindex.qdrant.backend.QdrantBackend` (one named vector per version). A third
engine needs only this Protocol and a row in :mod:`compatindex.connect`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from .core.datatypes import ItemBatch, ItemId, Version
from .core.filters import Filter


@dataclasses.dataclass(frozen=True)
class ShardQuery:
    """One per-version search inside a facade search.

    Attributes
    ----------
    version:
        The version whose stored vectors are searched.
    queries:
        ``(nq, d_version)`` float32 queries, already projected onto that version's space.
    shadowing:
        Versions ranked before ``version`` for this query: an item holding any of them is
        represented by that vector instead, so it is excluded here (one hit per item).
    """

    version: str
    queries: np.ndarray
    shadowing: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ShardHits:
    """Per-version hits of one facade search, and how to turn item keys into external ids.

    Attributes
    ----------
    scores:
        One ``(nq, k)`` float32 array per :class:`ShardQuery`, best first, ``-inf`` where empty.
    keys:
        One ``(nq, k)`` int64 array of item keys per :class:`ShardQuery`, ``-1`` where empty.
    resolve:
        Maps ``(m,)`` distinct keys to their ``m`` external ids; returns None when a concurrent
        write removed one of them since the search (the facade searches again).
    """

    scores: list[np.ndarray]
    keys: list[np.ndarray]
    resolve: Callable[[np.ndarray], list[ItemId] | None]


@runtime_checkable
class Backend(Protocol):
    """Durable storage and raw search of a multi-version index (see the module docstring)."""

    # Read-only properties, so that an implementation may narrow them (a ``Path`` or a ``str``
    # attribute both satisfy ``Path | str``; a plain Protocol attribute would be invariant).
    @property
    def path(self) -> Path | str:
        """Where the index lives: a folder, or a URL; error messages name it."""
        ...

    @property
    def readonly(self) -> bool:
        """Whether the index was opened with ``readonly=True`` (writes are refused)."""
        ...

    # -- versions ------------------------------------------------------------------------
    def versions(self) -> Mapping[str, Version]:
        """The version catalog as last loaded, by name."""
        ...

    def refresh(self, *, force: bool = False) -> None:
        """Catch up with writes made by other processes or clients (``force``: do it now)."""
        ...

    def put_version(self, record: dict[str, Any]) -> None:
        """Store a new version record atomically; ``VersionExistsError`` if its name is taken."""
        ...

    def set_serving(self, name: str, serving: dict[str, Any]) -> None:
        """Replace the serving parameters (fusion, calibration) stored with version ``name``."""
        ...

    # -- writes (arguments validated by the facade) ---------------------------------------
    def add(self, version: Version, ids: list[ItemId], id_kind: str, vectors: np.ndarray,
            labels: list[Any] | None, metadata: list[Any] | None) -> int:
        """Add new items with ``(n, d)`` vectors; ``DuplicateIdError`` if one exists. Returns a sequence number.

        Metadata whose value for a declared payload index has another type is refused before
        anything is written (``core.filters.check_payload``), so the index stays typed.
        """
        ...

    def backfill(self, version: Version, ids: list[ItemId], id_kind: str, vectors: np.ndarray,
                 *, drop_old: bool) -> int:
        """Give existing items a vector of ``version``; ``UnknownIdError`` if one is absent."""
        ...

    def delete(self, ids: list[ItemId], id_kind: str) -> int:
        """Remove items and all their vectors; returns how many were removed."""
        ...

    def set_payload(self, ids: list[ItemId], id_kind: str, *, labels: list[Any] | None,
                    metadata: list[dict[str, Any] | None] | None, merge: bool) -> int:
        """Replace the labels and/or metadata of existing items in one transaction.

        ``UnknownIdError`` (nothing written) if an id is absent. ``merge``: each dict updates the
        stored one key by key (a None value removes the key) instead of replacing it. Returns a
        sequence number.
        """
        ...

    def create_payload_index(self, field: str, schema: str) -> None:
        """Declare ``field`` indexed with ``schema`` (one of ``core.filters.SCHEMAS``), so that
        filters on it need not read every item's metadata; ``InvalidInputError`` naming the item if
        a stored value has another type (nothing changes)."""
        ...

    def payload_schema(self) -> dict[str, str]:
        """The declared payload indexes, ``{field: schema}``."""
        ...

    def retire(self, version: Version) -> int:
        """Drop every stored vector of ``version`` and mark its record retired; returns how many.

        ``InvalidInputError`` with the count (nothing changes) when some item holds no vector of
        another version. The record stays: the version algebra still maps its queries.
        """
        ...

    # -- reads ---------------------------------------------------------------------------
    def search(self, queries: Sequence[ShardQuery], k: int, *, where: Filter | None = None) -> ShardHits:
        """Top-``k`` per :class:`ShardQuery`, by inner product at the version's native dim.

        ``where`` (parsed by :func:`compatindex.core.filters.parse_filter`) restricts every step to
        the items it matches (semantics: :func:`compatindex.core.filters.matches`); exact shards
        stay exact under a filter.
        """
        ...

    def known(self, ids: list[ItemId]) -> np.ndarray:
        """``(n,)`` bool: which ids are in the index."""
        ...

    def vectors(self, version: Version, ids: list[ItemId]) -> tuple[np.ndarray, np.ndarray]:
        """``(n, d)`` float32 vectors of known ``ids`` and ``(n,)`` bool: which hold one."""
        ...

    def labels(self, ids: list[ItemId]) -> list[Any]:
        """The labels of known ``ids`` (None where an item has none)."""
        ...

    def payload(self, ids: list[ItemId]) -> tuple[list[Any], list[dict[str, Any] | None]]:
        """Labels and metadata dicts of known ``ids`` (None where an item has none)."""
        ...

    def held(self, ids: list[ItemId]) -> list[tuple[str, ...]]:
        """For each known id, the names of the versions it holds a vector of, oldest version first."""
        ...

    def list_items(self, offset: int, limit: int, where: Filter | None) -> tuple[list[ItemId], int]:
        """Up to ``limit`` ids in insertion order, skipping the first ``offset`` matching ``where``.

        Returns the ids and the offset to pass for the next page (``-1`` when there is none).
        """
        ...

    def sample(self, version: Version, limit: int | None, rng: np.random.Generator, *,
               seeded: bool = True) -> ItemBatch:
        """Items holding a vector of ``version`` in insertion order, or ``limit`` of them drawn with ``rng``.

        ``seeded=False``: the caller gave no seed, so any uniform draw will do (a server may draw it).
        """
        ...

    def count(self) -> int:
        """Number of items."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counts per version, coverage, disk use and engine state (``Index.stats``)."""
        ...

    def verify(self) -> list[str]:
        """Plain descriptions of the problems found (empty when sound)."""
        ...

    # -- lifecycle -----------------------------------------------------------------------
    def flush(self) -> None:
        """Persist whatever the backend keeps in memory (derived shards)."""
        ...

    def close(self) -> None:
        """Release every resource (persisting first where the backend is writable)."""
        ...
