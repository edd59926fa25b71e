"""Version records: the one stored form of a :class:`~compatindex.core.datatypes.Version`.

Every backend stores the same record (a dict of plain values: the embedded store packs it with
msgpack, the Qdrant registry with msgpack and base64), so a version is the same record wherever
it is registered, and decoding lives here once (docs/on-disk-format.md).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np

from ..errors import CorruptIndexError, InvalidInputError
from .datatypes import Version
from .packing import pack_head, pack_tree, unpack_head
from .scoring import Metric
from .versions import MAX_VERSIONS


def version_record(existing: Mapping[str, Version], *, name: str, dim: int, metric: Metric, parent: str | None,
                   raw_dim: int, extension: np.ndarray | None, head: dict[str, Any] | None,
                   report: dict[str, Any], config: dict[str, Any], created_at: float | None = None) -> dict[str, Any]:
    """The stored record of a new version (arguments already checked), with the next free code.

    Parameters
    ----------
    existing:
        The index's versions by name; the new code is one past the largest.
    extension:
        ``(dim, dim)`` orthogonal matrix, or None for the identity.
    """
    if len(existing) >= MAX_VERSIONS:
        raise InvalidInputError(f"an index holds at most {MAX_VERSIONS} versions")
    return {
        "name": name, "code": max((v.code for v in existing.values()), default=-1) + 1, "dim": dim,
        "metric": metric.value, "parent": parent, "raw_dim": raw_dim,
        "extension": None if extension is None else np.ascontiguousarray(extension, dtype="<f8").tobytes(),
        "head": pack_head(head), "report": pack_tree(report), "config": pack_tree(config),
        "created_at": created_at or time.time(),
    }


def version_from_record(rec: Mapping[str, Any], *, where: str) -> Version:
    """The :class:`Version` of a stored record; ``CorruptIndexError`` naming ``where`` when damaged."""
    try:
        ext = rec.get("extension")
        dim = int(rec["dim"])
        Q = None if ext is None else np.frombuffer(ext, dtype="<f8").reshape(dim, dim).copy()
        return Version(
            name=rec["name"], dim=dim, metric=Metric(rec["metric"]), parent=rec.get("parent"),
            raw_dim=rec["raw_dim"], extension=Q, head=unpack_head(rec.get("head")),
            report=rec.get("report") or {}, config=rec.get("config") or {}, serving=rec.get("serving") or {},
            code=rec["code"],
            created_seq=rec.get("created_seq", 0), created_at=rec.get("created_at", 0.0),
            retired=bool(rec.get("retired", False)),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptIndexError(f"a version record in {where} is damaged ({type(exc).__name__}: {exc})") from None
