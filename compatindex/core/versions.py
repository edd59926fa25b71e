"""The version algebra (docs/concepts.md): lineage, prefix compatibility, query-side projection.

A version ``v`` of dim ``d_v`` extends its parent ``p`` (``d_p <= d_v``): the first ``d_p``
coordinates of a v-vector live in p-space. So a query of version ``v`` meets a stored vector of
version ``u`` inside the space of their lowest common ancestor ``l``: the query is cut to
``d_l`` dims and zero-padded to ``d_u``, and the shard of ``u`` is searched at its native dim.
Stored vectors are never rewritten.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..errors import InvalidInputError, NotOrthogonalError, UnknownVersionError
from .heads import apply_head
from .scoring import Metric, Score
from .datatypes import Version

MAX_VERSIONS = 64
"""Most versions an index holds: the embedded backend keeps one bit per version and item."""

ORTHO_TOL = 1e-4
"""Largest ``|Q^T Q - I|`` entry accepted for an extension matrix (float32 inputs reach ~1e-6)."""


def get(versions: Mapping[str, Version], name: str, *, param: str = "version") -> Version:
    try:
        return versions[name]
    except (KeyError, TypeError):
        known = ", ".join(versions) or "none"
        raise UnknownVersionError(f"`{param}` {name!r} is not a version of this index (versions: {known})") from None


def lineage(versions: Mapping[str, Version], name: str) -> list[str]:
    """Names from the root down to ``name``.

    Examples
    --------
    >>> from compatindex.core.scoring import Metric
    >>> vs = {"a": Version("a", 4, Metric.IP), "b": Version("b", 6, Metric.IP, parent="a")}
    >>> lineage(vs, "b")
    ['a', 'b']
    """
    out = []
    cur: str | None = name
    while cur is not None:
        out.append(cur)
        cur = get(versions, cur).parent
    return out[::-1]


def lca(versions: Mapping[str, Version], a: str, b: str) -> str:
    """Lowest common ancestor of two versions (every index has one root, so it always exists)."""
    la, lb = lineage(versions, a), lineage(versions, b)
    common = None
    for x, y in zip(la, lb):
        if x != y:
            break
        common = x
    assert common is not None  # internal invariant: one root per index
    return common


def tree_distance(versions: Mapping[str, Version], a: str, b: str) -> int:
    la, lb = lineage(versions, a), lineage(versions, b)
    depth_l = len(lineage(versions, lca(versions, a, b)))
    return (len(la) - depth_l) + (len(lb) - depth_l)


def shared_dim(versions: Mapping[str, Version], a: str, b: str) -> int:
    """Dims in which a-vectors and b-vectors are comparable: the dim of their LCA."""
    return versions[lca(versions, a, b)].dim


def preference(versions: Mapping[str, Version], query: str) -> list[str]:
    """Order in which an item's vectors represent it for a query of version ``query``.

    An item is seen once, through the vector that shares the most dims with the query (its own
    version first, then descendants nearest first, then ancestors nearest first, then other
    branches); ties go to the nearer version in the tree, then to the older one.
    """
    def key(u: str) -> tuple[int, int, int]:
        return (-shared_dim(versions, query, u), tree_distance(versions, query, u), versions[u].code)

    return sorted(versions, key=key)


def project_query(q: np.ndarray, *, cut: int, target_dim: int, score: Score) -> np.ndarray:
    """Map ``(nq, d_q)`` queries onto a shard of dim ``target_dim`` that shares ``cut`` dims.

    ``pad`` keeps the cut as is; ``renorm`` rescales each cut row to the norm of the whole row
    (a cosine inside the shared prefix). Rows whose cut is zero stay zero (they score 0).
    Returns a ``(nq, target_dim)`` float32 array.
    """
    nq, dq = q.shape
    out = np.zeros((nq, target_dim), dtype=np.float32)
    part = q[:, :cut]
    if score is Score.RENORM and cut < dq:
        full = np.linalg.norm(q, axis=1)
        sub = np.linalg.norm(part, axis=1)
        scale = np.divide(full, sub, out=np.zeros_like(full), where=sub > 0)
        part = part * scale[:, None]
    out[:, :cut] = part
    return out


def check_extension(extension: object, *, dim: int, param: str = "extension", tol: float = ORTHO_TOL) -> np.ndarray:
    """Validate an orthogonal extension matrix ``Q`` of shape ``(dim, dim)``; return it as float64."""
    try:
        Q = np.asarray(extension, dtype=np.float64)
    except (TypeError, ValueError):
        raise NotOrthogonalError(f"`{param}` must be a numeric (dim, dim) matrix; got {type(extension).__name__}") from None
    if Q.ndim != 2 or Q.shape[0] != Q.shape[1]:
        raise NotOrthogonalError(f"`{param}` must be square; got shape {Q.shape}")
    if Q.shape[0] != dim:
        raise NotOrthogonalError(f"`{param}` must be ({dim}, {dim}) for dim={dim}; got shape {Q.shape}")
    if not np.isfinite(Q).all():
        raise NotOrthogonalError(f"`{param}` holds NaN or inf")
    err = float(np.abs(Q.T @ Q - np.eye(dim)).max())
    if err > tol:
        raise NotOrthogonalError(
            f"`{param}` is not orthogonal: max |Q^T Q - I| = {err:.3g} > tolerance {tol:g}",
            hint="orthonormalize it first (e.g. U @ Vt from np.linalg.svd(Q))",
        )
    return Q


IDENTITY_TOL = 1e-7
"""Largest ``|Q - I|`` entry of an extension still taken as the identity (a stored identity is exact)."""


def raw_transform(version: Version) -> list[str]:
    """What maps raw encoder outputs of ``version`` into its space, beyond the identity.

    Empty when the version has no head, its ``Q`` is None or the identity (to
    :data:`IDENTITY_TOL`) and its ``raw_dim`` is its ``dim``.

    Examples
    --------
    >>> from compatindex.core.scoring import Metric
    >>> raw_transform(Version("a", 4, Metric.IP, raw_dim=4, extension=np.eye(4)))
    []
    >>> raw_transform(Version("b", 4, Metric.IP, raw_dim=3, extension=np.eye(4)[::-1]))
    ['a non-identity Q', 'raw_dim 3 != dim 4']
    """
    out = []
    if version.head is not None:
        kind = version.head.get("kind") if isinstance(version.head, dict) else None
        out.append(f"a {kind} head" if kind else "a head")
    Q = version.extension
    if Q is not None:
        Q = np.asarray(Q, dtype=np.float64)
        if Q.shape != (version.dim, version.dim) or float(np.abs(Q - np.eye(version.dim)).max()) > IDENTITY_TOL:
            out.append("a non-identity Q")
    raw_dim = version.raw_dim or version.dim
    if raw_dim != version.dim:
        out.append(f"raw_dim {raw_dim} != dim {version.dim}")
    return out


def raw_is_identity(version: Version) -> bool:
    """Whether raw encoder outputs of ``version`` already are its version-space vectors.

    Then ``raw=True`` and ``raw=False`` mean the same (:func:`raw_transform` is empty).

    Examples
    --------
    >>> from compatindex.core.scoring import Metric
    >>> raw_is_identity(Version("a", 4, Metric.IP, raw_dim=4))
    True
    >>> raw_is_identity(Version("b", 4, Metric.IP, raw_dim=4, extension=np.eye(4)[::-1]))
    False
    """
    return not raw_transform(version)


def to_version_space(version: Version, raw: np.ndarray) -> np.ndarray:
    """Map raw encoder outputs ``(n, raw_dim)`` into version space ``(n, dim)``: ``Q [head(h); 0]``."""
    h = raw
    if version.head is not None:
        h = apply_head(version.head, h)
    n, dh = h.shape
    if dh > version.dim:
        raise InvalidInputError(f"head output dim {dh} exceeds version {version.name!r} dim {version.dim}")
    z = np.zeros((n, version.dim), dtype=np.float64)
    z[:, :dh] = h
    if version.extension is not None:
        z = z @ version.extension.T  # row-wise Q z
    return np.ascontiguousarray(z, dtype=np.float32)
