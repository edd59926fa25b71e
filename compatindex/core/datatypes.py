"""Typed values returned by the public API."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence, Union

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


@dataclasses.dataclass(frozen=True)
class Hit:
    """One search hit."""

    id: ItemId
    score: float
    version: str


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
    """

    ids: np.ndarray
    scores: np.ndarray
    versions: np.ndarray

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
        return [
            Hit(self.ids[i, j], float(self.scores[i, j]), self.versions[i, j])
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
    """Stored items of one version: ``ids`` (n,), ``vectors`` (n, d) float32, ``labels`` (n,)."""

    ids: list[ItemId]
    vectors: np.ndarray
    labels: list[Any]
    version: str

    def __len__(self) -> int:
        return len(self.ids)
