"""Closed-form fits on pairs ``(h_i, g_i)``: raw new-encoder vector, stored parent vector.

Shapes: ``H`` is ``(n, d_h)`` (new), ``G`` is ``(n, d_p)`` (parent). Maps act on columns,
``g ~ A h``, so in row form ``G ~ H A^T``. Everything is computed in float64 and returned as
float32.

The version algebra (design.md §2): a raw vector enters v-space as ``z = Q [h; 0]``. Given a
contraction ``A`` (spectral norm <= 1) the isometry ``h -> [A h; C h]`` with
``C = (I - A^T A)^(1/2)`` reduced to its rank is a unitary dilation; it becomes the first
``d_h`` columns of an orthogonal ``Q``.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError

_TOL = 1e-6


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def fit_linear(H: np.ndarray, G: np.ndarray, *, ridge: float = 1e-3, bias: bool = False
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Ridge least squares ``g ~ A h (+ b)``.

    Parameters
    ----------
    H, G:
        ``(n, d_h)`` and ``(n, d_p)`` paired rows.
    ridge:
        Strength relative to the mean eigenvalue of ``H^T H`` (scale free).
    bias:
        Fit an intercept ``b`` (affine map).

    Returns
    -------
    (A, b):
        ``A`` ``(d_p, d_h)`` float64, ``b`` ``(d_p,)`` or None.

    Examples
    --------
    >>> rng = np.random.default_rng(0); H = rng.normal(size=(50, 3)); A = rng.normal(size=(2, 3))
    >>> np.allclose(fit_linear(H, H @ A.T, ridge=0.0)[0], A)
    True
    """
    H, G = _f64(H), _f64(G)
    if bias:
        mh, mg = H.mean(0), G.mean(0)
        A, _ = fit_linear(H - mh, G - mg, ridge=ridge, bias=False)
        return A, mg - A @ mh
    d = H.shape[1]
    HtH = H.T @ H
    lam = ridge * max(np.trace(HtH) / max(d, 1), 1e-12)
    At = np.linalg.solve(HtH + lam * np.eye(d), H.T @ G)  # (d_h, d_p)
    return At.T, None


def to_contraction(A: np.ndarray, *, spectrum: str = "scale") -> np.ndarray:
    """Make ``A`` a contraction (spectral norm <= 1).

    ``scale`` divides by the top singular value (keeps the shape of the fit, which is all a
    cosine ranking inside the prefix sees); ``clip`` clips each singular value at 1.

    Examples
    --------
    >>> float(np.linalg.norm(to_contraction(np.diag([3.0, 1.5])), 2))
    1.0
    >>> np.diag(to_contraction(np.diag([3.0, 0.5]), spectrum="clip")).round(3).tolist()
    [1.0, 0.5]
    """
    A = _f64(A)
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    if s.size == 0 or s[0] <= 0:
        return A
    if spectrum == "scale":
        s = s / s[0]
    elif spectrum == "clip":
        s = np.minimum(s, 1.0)
    else:
        raise InvalidInputError(f"`spectrum` must be 'scale' or 'clip'; got {spectrum!r}")
    return (U * s) @ Vt


def min_extra_dims(d_parent: int, d_raw: int) -> int:
    """Fewest extra dims an isometry from ``d_raw`` dims needs on top of ``d_parent``."""
    return max(0, d_raw - d_parent)


def dilate(A: np.ndarray, extra_dims: int) -> tuple[np.ndarray, int]:
    """Complete a contraction to an isometry ``M = [A'; C]`` with at most ``extra_dims`` rows of C.

    Where ``C = (I - A^T A)^(1/2)`` has a rank above the budget, the singular values of ``A``
    closest to 1 are raised to 1 (their defect is dropped), so ``A'`` differs from ``A`` only
    there; the rest of ``A`` is kept exactly.

    Parameters
    ----------
    A:
        ``(d_p, d_h)`` contraction.
    extra_dims:
        Budget; must be at least ``max(0, d_h - d_p)``.

    Returns
    -------
    (M, r):
        ``M`` ``(d_p + r, d_h)`` with orthonormal columns (``M^T M = I``), ``r <= extra_dims``
        the rank of the kept defect.
    """
    A = _f64(A)
    d_p, d_h = A.shape
    need = min_extra_dims(d_p, d_h)
    if extra_dims < need:
        raise InvalidInputError(
            f"`extra_dims` must be >= {need} to embed {d_h} raw dims isometrically above a "
            f"{d_p}-dim parent; got {extra_dims}")
    U, s, Vt = np.linalg.svd(A, full_matrices=True)  # U (d_p,d_p), Vt (d_h,d_h)
    if s.size and s[0] > 1 + 1e-6:
        raise InvalidInputError(f"`A` must be a contraction (spectral norm <= 1); got {s[0]:.6f}")
    m = min(d_p, d_h)
    s_full = np.zeros(d_h)
    s_full[:m] = np.minimum(s[:m], 1.0)
    c = np.sqrt(np.clip(1.0 - s_full**2, 0.0, None))  # (d_h,)
    defect = np.flatnonzero(c > _TOL)
    # keep the largest defects (s = 0 directions beyond d_p come first: c = 1)
    order = defect[np.argsort(-c[defect], kind="stable")]
    keep = np.sort(order[:extra_dims])
    drop = np.setdiff1d(defect, keep)
    s_new = s_full.copy()
    s_new[drop] = 1.0  # every dropped index is < m: those beyond d_p all have c = 1 and are kept
    A2 = (U[:, :m] * s_new[:m]) @ Vt[:m]
    C = c[keep, None] * Vt[keep]  # (r, d_h)
    return np.vstack([A2, C]), int(keep.size)


def complete_orthogonal(M: np.ndarray) -> np.ndarray:
    """Orthogonal ``Q`` (``d_v x d_v``) whose first ``d_h`` columns are ``M`` (``d_v x d_h``).

    ``M`` is first snapped to the nearest matrix with orthonormal columns (polar factor), so
    round-off in ``M`` never leaks into ``Q``.
    """
    M = _f64(M)
    d_v, d_h = M.shape
    if d_h > d_v:
        raise InvalidInputError(f"cannot complete a {d_v}x{d_h} map: raw dim exceeds the version dim")
    U, _, Vt = np.linalg.svd(M, full_matrices=False)
    M = U @ Vt
    Uf, _, _ = np.linalg.svd(M, full_matrices=True)
    rest = Uf[:, d_h:]
    rest -= M @ (M.T @ rest)  # re-orthogonalize the complement against M
    rest, _ = np.linalg.qr(rest)
    return np.hstack([M, rest])


def fit_isometric(H: np.ndarray, G: np.ndarray, *, extra_dims: int, ridge: float = 1e-3,
                  spectrum: str = "scale") -> tuple[np.ndarray, dict]:
    """Best contraction ``A`` from ``H`` onto ``G``, completed to an orthogonal ``Q``.

    Returns
    -------
    (Q, info):
        ``Q`` ``(d_v, d_v)`` float32 with ``d_v = d_p + r``, ``r <= extra_dims``: a raw ``h``
        maps to ``Q[:, :d_h] @ h``, whose first ``d_p`` coordinates approximate ``g``.
        ``info`` holds ``rank_defect``, ``dim`` and the singular values of ``A``.

    Examples
    --------
    >>> rng = np.random.default_rng(0); H = rng.normal(size=(200, 6)); G = H[:, :4]
    >>> Q, info = fit_isometric(H, G, extra_dims=4, ridge=0.0)
    >>> Q.shape, bool(np.allclose(Q.T @ Q, np.eye(Q.shape[0]), atol=1e-5))
    ((6, 6), True)
    """
    d_p, d_h = G.shape[1], H.shape[1]
    A, _ = fit_linear(H, G, ridge=ridge)
    A = to_contraction(A, spectrum=spectrum)
    e = max(int(extra_dims), min_extra_dims(d_p, d_h))
    M, r = dilate(A, e)
    Q = complete_orthogonal(M)
    sv = np.linalg.svd(A, compute_uv=False)
    info = {"dim": int(d_p + r), "rank_defect": int(r), "extra_dims_budget": int(e),
            "singular_values_min": float(sv.min()) if sv.size else 0.0,
            "singular_values_mean": float(sv.mean()) if sv.size else 0.0}
    return Q.astype(np.float32), info


def fit_procrustes(H: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, dict]:
    """Orthogonal Procrustes: rotation ``R`` minimizing ``||G - H R||`` (zero-padding the smaller side).

    Returns
    -------
    (Q, info):
        ``Q`` ``(d, d)`` float32 with ``d = max(d_h, d_p)``: ``z = Q [h; 0]``.

    Examples
    --------
    >>> rng = np.random.default_rng(0); G = rng.normal(size=(100, 5))
    >>> R0, _ = np.linalg.qr(rng.normal(size=(5, 5))); H = G @ R0
    >>> Q, _ = fit_procrustes(H, G)
    >>> bool(np.allclose(H @ Q.T, G, atol=1e-4))
    True
    """
    H, G = _f64(H), _f64(G)
    d = max(H.shape[1], G.shape[1])
    Hp = np.zeros((H.shape[0], d)); Hp[:, : H.shape[1]] = H
    Gp = np.zeros((G.shape[0], d)); Gp[:, : G.shape[1]] = G
    U, _, Vt = np.linalg.svd(Hp.T @ Gp)
    R = U @ Vt  # rows: G ~ Hp R  =>  columns: g ~ R^T h
    return np.ascontiguousarray(R.T, dtype=np.float32), {"dim": int(d), "rank_defect": int(d - G.shape[1])}


def fit_affine(H: np.ndarray, G: np.ndarray, *, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Ridge affine map ``g ~ W h + b`` (Drift-Adapter's low-cost adapter; not isometric).

    Returns ``W`` ``(d_p, d_h)`` float32 and ``b`` ``(d_p,)`` float32.
    """
    W, b = fit_linear(H, G, ridge=ridge, bias=True)
    assert b is not None
    return W.astype(np.float32), b.astype(np.float32)
