"""Typed values returned by the public API."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence, TypedDict, Union

import numpy as np

from .scoring import Metric

ItemId = Union[int, str]


@dataclasses.dataclass(frozen=True)
class Version:
    """One model generation registered in an index.

    Attributes
    ----------
    name, dim, metric, parent:
        Identity, native dimension, metric (shared by the lineage) and parent name (None for the root).
    raw_dim:
        Dimension of the raw encoder output that ``raw=True`` takes (``<= dim``).
    extension:
        ``(dim, dim)`` float64 orthogonal matrix ``Q``; raw ``h`` maps to ``Q [head(h); 0]``.
        None means identity.
    head:
        Optional head spec applied to raw vectors before ``Q`` (see :mod:`compatindex.core.heads`).
    report, config:
        How the version was made (training report and config), free dicts.
    serving:
        Migration-time serving parameters stored with the version (docs/concepts.md):
        ``{"fusion": {version: weight}, "calibration": [[query version, gallery version, a, b], ...]}``;
        empty when none were fit.
    retired:
        The version's vectors were dropped (``Index.retire_version``); its record stays so that
        its queries still map onto its descendants, but it takes no writes.
    """

    name: str
    dim: int
    metric: Metric
    parent: str | None = None
    raw_dim: int = 0
    extension: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    head: dict[str, Any] | None = dataclasses.field(default=None, repr=False, compare=False)
    report: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    serving: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    config: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    code: int = dataclasses.field(default=0, repr=False)
    created_seq: int = dataclasses.field(default=0, repr=False)
    created_at: float = dataclasses.field(default=0.0, repr=False)
    retired: bool = dataclasses.field(default=False, repr=False)


@dataclasses.dataclass(frozen=True)
class Item:
    """One stored item, as :meth:`compatindex.Index.get` and ``list_items`` return it.

    Attributes
    ----------
    id:
        The external id.
    label:
        Its label (int or str), None when it has none.
    metadata:
        Its metadata dict, None when it has none.
    versions:
        The versions it holds a vector of, oldest first.
    vectors:
        ``{version: (d_version,) float32}`` for the requested versions it holds (empty when
        vectors were not asked for).
    """

    id: ItemId
    label: Any
    metadata: dict[str, Any] | None
    versions: tuple[str, ...]
    vectors: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class ItemPage:
    """One page of :meth:`compatindex.Index.list_items`: ``items`` and the ``next_offset`` (None at the end)."""

    items: list[Item]
    next_offset: int | None

    def __len__(self) -> int:
        return len(self.items)


@dataclasses.dataclass(frozen=True)
class Hit:
    """One search hit (``label``/``metadata`` filled when searched ``with_payload=True``)."""

    id: ItemId
    score: float
    version: str
    label: Any = None
    metadata: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """A batch of search results.

    Attributes
    ----------
    ids:
        ``(nq, k)`` object array of external ids, None where fewer than ``k`` items exist.
    scores:
        ``(nq, k)`` float32, ``-inf`` where empty; sorted in decreasing order.
    versions:
        ``(nq, k)`` object array: the version of the vector each hit matched through.
    labels, metadata:
        ``(nq, k)`` object arrays of each hit's label and metadata dict when the search asked
        ``with_payload=True``; None otherwise.
    """

    ids: np.ndarray
    scores: np.ndarray
    versions: np.ndarray
    labels: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    metadata: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    @property
    def found(self) -> np.ndarray:
        """``(nq,)`` int: how many real hits each query got (less than k on a small index)."""
        return np.asarray(np.isfinite(self.scores).sum(axis=1))

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, i: int) -> list[Hit]:
        lab, meta = self.labels, self.metadata
        return [
            Hit(self.ids[i, j], float(self.scores[i, j]), self.versions[i, j],
                None if lab is None else lab[i, j], None if meta is None else meta[i, j])
            for j in range(self.k)
            if self.versions[i, j] is not None
        ]

    def to_list(self) -> list[list[Hit]]:
        return [self[i] for i in range(len(self))]

    def recall(self, gt: Sequence[Sequence[ItemId]]) -> float:
        """Mean fraction of each query's ground-truth ids found in its hits."""
        total = 0.0
        for i, truth in enumerate(gt):
            truth = list(truth)
            if truth:
                got = set(x for x in self.ids[i] if x is not None)
                total += len(got.intersection(truth)) / len(truth)
        return total / max(len(gt), 1)

    def __repr__(self) -> str:
        return f"SearchResult(nq={len(self)}, k={self.k})"


@dataclasses.dataclass(frozen=True)
class AddResult:
    """What a write did: how many vectors of which version, committed as sequence number ``seq``."""

    count: int
    version: str
    seq: int


@dataclasses.dataclass(frozen=True)
class ItemBatch:
    """Stored items of one version: ``ids`` (n,), ``vectors`` (n, d) float32, ``labels`` (n,),
    ``metadata`` (n,) dicts (None where an item has none; ``Index.fetch`` always fills it)."""

    ids: list[ItemId]
    vectors: np.ndarray
    labels: list[Any]
    version: str
    metadata: list[Any] | None = dataclasses.field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ids)


class StorageStats(TypedDict):
    """Where the embedded store's bytes go (docs/on-disk-format.md); absent on other backends."""

    live_vector_bytes: int
    dead_vector_bytes: int
    chunks: int
    store_file_bytes: int
    store_used_bytes: int
    oplog_records: int
    oplog_from: int
    replay_backlog: int | None
    unsaved_writes: int


class VersionStats(TypedDict, total=False):
    """One version's entry in :class:`IndexStats` (``dead_vectors`` only on the embedded backend)."""

    dim: int
    parent: str | None
    metric: str
    vectors: int
    coverage: float
    retired: bool
    dead_vectors: int
    shard: dict[str, Any]


class IndexStats(TypedDict, total=False):
    """What ``Index.stats()`` returns (docs/api.md, "stats() shape").

    Every backend fills ``path``, ``backend``, ``items``, ``seq``, ``id_kind``, ``disk_bytes``,
    ``device``, ``shard_spec``, ``versions`` and ``payload_indexes``; the embedded backend adds
    ``storage``, the Qdrant backend ``collection`` and ``registry``.
    """

    path: str
    backend: str
    items: int
    seq: int | None
    id_kind: str | None
    disk_bytes: int
    device: str
    shard_spec: dict[str, Any]
    versions: dict[str, VersionStats]
    payload_indexes: dict[str, str]
    storage: StorageStats
    collection: str
    registry: str
