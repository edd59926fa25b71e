"""The store interface: the source of truth that shards are derived from.

Kept small so another engine (Qdrant, issue 7) can stand behind the same facade.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol, TypeVar

import numpy as np

T = TypeVar("T")


class Store(Protocol):
    """Durable, transactional storage of versions, items and vectors."""

    def seq(self) -> int:
        """Sequence number of the last committed write."""

    def read(self) -> Any:
        """Context manager giving a consistent read snapshot (a reader object)."""

    def write(self, fn: Callable[[Any], T], *, op_version: str | None = None) -> tuple[T, int]:
        """Run ``fn(writer)`` in one atomic transaction; return its result and the new sequence number."""

    def iter_live(self, vcode: int, dim: int, *, batch: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(iids (n,), vectors (n, dim))`` of every live vector of one version."""

    def oplog_since(self, seq: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield ``(seq, op)`` for every write committed after ``seq``, in order."""

    def close(self) -> None:
        """Release the environment."""
