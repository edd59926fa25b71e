"""``compatindex.open``: pick the backend from the location's URL scheme.

A plain path (or ``":memory:"``) opens the embedded backend (LMDB + FAISS); a URL opens the
backend registered for its scheme. Backends are named here by module path and imported only
when used, so the facade never imports an engine and an optional one (Qdrant) costs nothing
until a URL asks for it. A new engine is one row in :data:`SCHEMES`.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable

from .backend import Backend
from .errors import InvalidInputError
from .index import Index

SCHEMES: dict[str, str] = {
    "qdrant": "compatindex.qdrant.backend:open_backend",
    "qdrant+local": "compatindex.qdrant.backend:open_backend",
}
"""URL scheme -> ``module:function`` that opens the backend (``function(url, readonly=, create=)``)."""

EMBEDDED = "compatindex.embedded.backend:open_backend"
"""Opener of the embedded backend, for paths (``function(path, readonly=, create=, shard=, device=, lock_timeout=)``)."""


def scheme(location: str | os.PathLike[str]) -> str | None:
    """The registered URL scheme of ``location`` (None for a path).

    Examples
    --------
    >>> scheme("qdrant+local:///srv/idx"), scheme("/srv/idx"), scheme(":memory:")
    ('qdrant+local', None, None)
    """
    text = os.fspath(location) if isinstance(location, os.PathLike) else location
    if not isinstance(text, str):
        return None
    head, sep, _ = text.partition("://")
    return head if sep and head in SCHEMES else None


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a server-backed index (a registered URL scheme) rather than a folder."""
    return scheme(location) is not None


def _opener(target: str) -> Callable[..., Backend]:
    module, _, name = target.partition(":")
    fn: Callable[..., Backend] = getattr(importlib.import_module(module), name)
    return fn


def open(  # noqa: A001 - the public name users expect (compatindex.open)
    path: str | os.PathLike[str] = ":memory:",
    *,
    readonly: bool = False,
    create: bool = True,
    shard: Any = None,
    device: str = "auto",
    lock_timeout: float = 0.0,
    version: str | None = None,
) -> Index:
    """Open (or create) an index.

    Parameters
    ----------
    path:
        Index folder; ``":memory:"`` for a throwaway index in a temporary folder;
        ``"qdrant://HOST:PORT/COLLECTION"`` or ``"qdrant+local://PATH"`` for the Qdrant backend
        (docs/scaling.md).
    readonly:
        Take no writer lock; searches follow writes committed by other processes.
    create:
        Create the index when the folder (or collection) is absent or empty.
    shard:
        Embedded only: shard kind and parameters (``{"kind": "flat" | "ivf" | "hnsw", ...}``);
        None keeps the index's recorded spec (``flat`` for a new index).
    device:
        Embedded only: ``"auto"``, ``"cpu"``, ``"gpu"``, ``"torch"`` or ``"torch-fp16"``.
    lock_timeout:
        Embedded only: seconds to wait for another writer before raising ``IndexLockedError``.
    version:
        Pin the version used by every call that leaves out ``version=`` (``add``, ``search``,
        ``fetch``, ...): an old client keeps writing and querying its own version's space after an
        upgrade. It must be a version of the index (``UnknownVersionError`` otherwise). Unpinned,
        an index of several versions requires ``version=`` on those calls (docs/api.md).

    Returns
    -------
    Index
        The facade over the chosen backend.

    Examples
    --------
    >>> import numpy as np, compatindex
    >>> with compatindex.open() as ix:
    ...     _ = ix.create_version("v1", dim=4)
    ...     _ = ix.add([1, 2], np.eye(4, dtype=np.float32)[:2])
    ...     ix.search(np.eye(4, dtype=np.float32)[:1], k=1).ids.tolist()
    [[1]]
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"`path` must be a folder path or an index URL; got {type(path).__name__}")
    name = scheme(path)
    backend: Backend
    if name is None:
        backend = _opener(EMBEDDED)(path, readonly=readonly, create=create, shard=shard, device=device,
                                    lock_timeout=lock_timeout)
    else:
        if shard is not None:
            raise InvalidInputError(f"`shard` applies to embedded indexes only; {name}:// indexes have no FAISS shards")
        backend = _opener(SCHEMES[name])(os.fspath(path), readonly=readonly, create=create)
    return Index(backend, version=version)
