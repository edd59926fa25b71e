"""Closed-form fits on pairs ``(h_i, g_i)``: raw new-encoder vector, stored parent vector.

Shapes: ``H`` is ``(n, d_h)`` (new), ``G`` is ``(n, d_p)`` (parent). Maps act on columns,
``g ~ A h``, so in row form ``G ~ H A^T``. Everything is computed in float64 and the fitted maps
are returned as float32.

A raw vector enters v-space as ``z = Q [h; 0]`` (docs/trainer.md, "What a version is" and
"Methods"). Given a contraction ``A`` (spectral norm <= 1) the isometry ``h -> [A h; C h]`` with
``C = (I - A^T A)^(1/2)`` reduced to its rank is a unitary dilation (P. R. Halmos, "Normal
dilations and extensions of operators"); it becomes the first ``d_h`` columns of an orthogonal
``Q``. Procrustes follows P. H. Schönemann, "A generalized solution of the orthogonal Procrustes
problem".

The decompositions are scipy.linalg's (``orthogonal_procrustes``, ``polar``, ``null_space``,
``svd``). Every input is checked for NaN and inf first, and a decomposition that does not
converge is retried with the slower but more robust ``gesvd`` driver before it is reported as an
:class:`~compatindex.errors.InvalidInputError`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import scipy.linalg as sla

from ..errors import InvalidInputError

_TOL = 1e-6
# numpy.linalg.LinAlgError and scipy.linalg.LinAlgError are one class today; catch both by name
# so that neither package splitting them later lets a raw LAPACK error through.
_LINALG_ERRORS = (np.linalg.LinAlgError, sla.LinAlgError)
_HINT_FINITE = "drop or repair those rows (e.g. np.isfinite(x).all(axis=1)) before fitting"


def _as_f64(x: Any, name: str, what: str) -> np.ndarray:
    """``x`` as a finite 2-D float64 array, or an InvalidInputError naming ``name``.

    Parameters
    ----------
    x:
        ``(n, d)`` array-like.
    name, what:
        The parameter's name and what it holds, for the message.

    Returns
    -------
    numpy.ndarray
        ``(n, d)`` float64 (no copy when ``x`` already is one).
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise InvalidInputError(f"`{name}` ({what}) must be a 2-D array; got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise InvalidInputError(
            f"`{name}` ({what}) holds NaN or inf in {rows.size} of {a.shape[0]} rows "
            f"(first: row {int(rows[0])})", hint=_HINT_FINITE)
    return a


def _pairs(H: Any, G: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check paired rows: ``(n, d_h)`` and ``(n, d_p)`` finite float64 arrays."""
    H = _as_f64(H, "H", "new-encoder vectors")
    G = _as_f64(G, "G", "parent vectors")
    if H.shape[0] != G.shape[0]:
        raise InvalidInputError(
            f"`H` and `G` must hold one row per pair; got {H.shape[0]} and {G.shape[0]} rows")
    return H, G


def _eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of a finite symmetric ``(d, d)`` matrix.

    LAPACK's divide-and-conquer driver (``evd``) first: about twice as fast as
    ``numpy.linalg.eigh`` at 1280 dims on this project's machines; numpy's where it fails.
    """
    try:
        w, v = sla.eigh(a, driver="evd", check_finite=False)
        return w, v
    except _LINALG_ERRORS:
        w, v = np.linalg.eigh(a)
        return w, v


def _svd(a: np.ndarray, what: str, *, full_matrices: bool = False, compute_uv: bool = True,
         drivers: tuple[Literal["gesdd", "gesvd"], ...] = ("gesdd", "gesvd")) -> Any:
    """``scipy.linalg.svd`` of a finite ``(m, n)`` float64 ``a``, trying each LAPACK driver in turn.

    ``gesdd`` (divide and conquer, numpy's only driver) is fast but on rare matrices does not
    converge; ``gesvd`` (QR iteration) is slower and converges where it fails.

    Returns
    -------
    ``(U, s, Vt)`` as ``scipy.linalg.svd`` gives them, or ``s`` alone without ``compute_uv``.
    """
    err: Exception | None = None
    for driver in drivers:
        try:
            if compute_uv:  # two calls: the stubs type the result by a literal compute_uv
                return sla.svd(a, full_matrices=full_matrices, compute_uv=True, check_finite=False,
                               lapack_driver=driver)
            return sla.svd(a, full_matrices=full_matrices, compute_uv=False, check_finite=False,
                           lapack_driver=driver)
        except _LINALG_ERRORS as exc:
            err = exc
    raise InvalidInputError(f"the SVD of {what} (shape {a.shape}) did not converge: {err}",
                            hint="check the input for rows of huge magnitude or rescale it")


def fit_linear(H: np.ndarray, G: np.ndarray, *, ridge: float = 1e-3, bias: bool = False
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Ridge least squares ``g ~ A h (+ b)``.

    Parameters
    ----------
    H, G:
        ``(n, d_h)`` and ``(n, d_p)`` paired rows, finite.
    ridge:
        Strength relative to the mean eigenvalue of ``H^T H`` (scale free).
    bias:
        Fit an intercept ``b`` (affine map).

    Returns
    -------
    (A, b):
        ``A`` ``(d_p, d_h)`` float64, ``b`` ``(d_p,)`` float64 or None.

    Raises
    ------
    InvalidInputError
        ``H`` or ``G`` holds NaN or inf, their row counts differ, or ``ridge=0`` with a
        singular ``H^T H``.

    Examples
    --------
    >>> rng = np.random.default_rng(0); H = rng.normal(size=(50, 3)); A = rng.normal(size=(2, 3))
    >>> np.allclose(fit_linear(H, H @ A.T, ridge=0.0)[0], A)
    True
    """
    H, G = _pairs(H, G)
    if bias:
        mh, mg = H.mean(0), G.mean(0)
        A, _ = fit_linear(H - mh, G - mg, ridge=ridge, bias=False)
        return A, mg - A @ mh
    d = H.shape[1]
    HtH = H.T @ H
    lam = ridge * max(np.trace(HtH) / max(d, 1), 1e-12)
    # numpy's LU solve is kept: Cholesky (scipy assume_a="pos") would refuse the merely
    # semi-definite H^T H that ridge=0 allows, and at d_h of a few hundred the speed is moot.
    try:
        At = np.linalg.solve(HtH + lam * np.eye(d), H.T @ G)  # (d_h, d_p)
    except _LINALG_ERRORS as exc:
        raise InvalidInputError(
            f"`H` (new-encoder vectors, {H.shape[0]} x {d}) gives a singular normal matrix "
            f"with ridge={ridge}: {exc}",
            hint="pass ridge > 0: `H` has collinear columns or fewer rows than columns") from None
    return At.T, None


def to_contraction(A: np.ndarray, *, spectrum: str = "scale") -> np.ndarray:
    """Make ``A`` a contraction (spectral norm <= 1).

    ``scale`` divides by the top singular value (keeps the shape of the fit, which is all a
    cosine ranking inside the prefix sees); ``clip`` clips each singular value at 1.

    Parameters
    ----------
    A:
        ``(d_p, d_h)`` finite map.
    spectrum:
        ``"scale"`` or ``"clip"``.

    Returns
    -------
    numpy.ndarray
        ``(d_p, d_h)`` float64 with spectral norm <= 1 (``A`` itself when it is zero).

    Examples
    --------
    >>> float(np.linalg.norm(to_contraction(np.diag([3.0, 1.5])), 2))
    1.0
    >>> np.diag(to_contraction(np.diag([3.0, 0.5]), spectrum="clip")).round(3).tolist()
    [1.0, 0.5]
    """
    A = _as_f64(A, "A", "the fitted map")
    if spectrum not in ("scale", "clip"):
        raise InvalidInputError(f"`spectrum` must be 'scale' or 'clip'; got {spectrum!r}")
    U, s, Vt = _svd(A, "`A`")
    if s.size == 0 or s[0] <= 0:
        return A
    return (U * _contract_spectrum(s, spectrum)) @ Vt


def _contract_spectrum(s: np.ndarray, spectrum: str) -> np.ndarray:
    """Singular values (descending) of :func:`to_contraction`'s result."""
    if s.size == 0 or s[0] <= 0:
        return s
    return s / s[0] if spectrum == "scale" else np.minimum(s, 1.0)


def min_extra_dims(d_parent: int, d_raw: int) -> int:
    """Fewest extra dims an isometry from ``d_raw`` dims needs on top of ``d_parent``."""
    return max(0, d_raw - d_parent)


def dilate(A: np.ndarray, extra_dims: int, *, svd: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
           ) -> tuple[np.ndarray, int]:
    """Complete a contraction to an isometry ``M = [A'; C]`` with at most ``extra_dims`` rows of C.

    Where ``C = (I - A^T A)^(1/2)`` has a rank above the budget, the singular values of ``A``
    closest to 1 are raised to 1 (their defect is dropped), so ``A'`` differs from ``A`` only
    there; the rest of ``A`` is kept exactly.

    ``C`` comes from the SVD ``A = U diag(s) V^T`` as ``diag(sqrt(1 - s^2)) V^T``, not from
    ``scipy.linalg.sqrtm`` or an eigen-decomposition of ``I - A^T A``: forming ``A^T A`` squares
    the condition number, sqrtm of a near-singular matrix loses accuracy (and may turn complex),
    and one SVD also gives the factors that raising singular values to 1 needs.

    Parameters
    ----------
    A:
        ``(d_p, d_h)`` contraction, finite.
    extra_dims:
        Budget; must be at least ``max(0, d_h - d_p)``.
    svd:
        ``A``'s full SVD ``(U, s, Vt)`` when the caller already has it (one SVD per fit).

    Returns
    -------
    (M, r):
        ``M`` ``(d_p + r, d_h)`` float64 with orthonormal columns (``M^T M = I``),
        ``r <= extra_dims`` the rank of the kept defect.
    """
    A = _as_f64(A, "A", "the contraction")
    d_p, d_h = A.shape
    need = min_extra_dims(d_p, d_h)
    if extra_dims < need:
        raise InvalidInputError(
            f"`extra_dims` must be >= {need} to embed {d_h} raw dims isometrically above a "
            f"{d_p}-dim parent; got {extra_dims}")
    U, s, Vt = _svd(A, "`A`", full_matrices=True) if svd is None else svd  # U (d_p,d_p), Vt (d_h,d_h)
    if s.size and s[0] > 1 + 1e-6:
        raise InvalidInputError(f"`A` must be a contraction (spectral norm <= 1); got {s[0]:.6f}")
    m = min(d_p, d_h)
    s_new, c, keep = _raise_singular_values(s, d_p, d_h, extra_dims)
    A2 = (U[:, :m] * s_new[:m]) @ Vt[:m]
    C = c[keep, None] * Vt[keep]  # (r, d_h)
    return np.vstack([A2, C]), int(keep.size)


def _raise_singular_values(s: np.ndarray, d_p: int, d_h: int, extra_dims: int
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`dilate`'s rule on the singular values ``s`` (descending) of a contraction.

    Returns ``(s_new, c, keep)``: the ``(d_h,)`` singular values of the kept prefix map ``A'``
    (those whose defect does not fit the budget raised to 1), the ``(d_h,)`` defects
    ``sqrt(1 - s^2)`` and the indices of the kept ones (at most ``extra_dims``).
    """
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
    return s_new, c, keep


def _polar_factor(M: np.ndarray) -> np.ndarray:
    """Nearest ``(d_v, d_h)`` matrix with orthonormal columns (``scipy.linalg.polar``'s ``U``)."""
    try:
        return sla.polar(M)[0]
    except _LINALG_ERRORS:  # polar has gesdd only: redo its U V^T with the gesvd fallback
        U, _, Vt = _svd(M, "`M`", drivers=("gesvd",))
        return U @ Vt


def complete_orthogonal(M: np.ndarray) -> np.ndarray:
    """Orthogonal ``Q`` (``d_v x d_v``) whose first ``d_h`` columns are ``M`` (``d_v x d_h``).

    ``M`` is first snapped to the nearest matrix with orthonormal columns (its polar factor:
    a few Newton-Schulz steps when ``M`` is orthonormal up to float32 round-off, else
    ``scipy.linalg.polar``), so round-off in ``M`` never leaks into ``Q``; an exactly
    orthonormal ``M`` is completed by a Householder QR, otherwise the other columns are
    an orthonormal basis of the complement of its range (``scipy.linalg.null_space`` of
    ``M^T``). That basis is not unique, and which one LAPACK returns varies with the LAPACK
    build (numpy's and scipy's bundled builds already differ); it never matters, since a raw
    vector enters as ``Q [h; 0]`` and only ``Q[:, :d_h]`` ever multiplies a nonzero.

    Parameters
    ----------
    M:
        ``(d_v, d_h)`` with ``d_h <= d_v``, finite; orthonormal columns up to round-off.

    Returns
    -------
    numpy.ndarray
        ``(d_v, d_v)`` float64 orthogonal ``Q`` with ``Q[:, :d_h]`` the polar factor of ``M``.
    """
    M = _as_f64(M, "M", "the isometry to complete")
    d_v, d_h = M.shape
    if d_h > d_v:
        raise InvalidInputError(f"cannot complete a {d_v}x{d_h} map: raw dim exceeds the version dim")
    if d_h == 0:
        return np.eye(d_v)
    err = np.abs(M.T @ M - np.eye(d_h)).max()
    if 1e-10 <= err < 1e-3:  # float32 round-off of an orthonormal M: Newton-Schulz to its polar factor
        for _ in range(8):
            M = 1.5 * M - 0.5 * M @ (M.T @ M)
            err = np.abs(M.T @ M - np.eye(d_h)).max()
            if err < 1e-10:
                break
    if err < 1e-10:
        # already orthonormal (a dilation builds it so): a Householder QR completes it, several
        # times faster than polar + null_space (two more SVDs) at 1280 dims
        Qf, R = sla.qr(M, mode="full", check_finite=False)
        Qf[:, :d_h] = M  # Q's first columns are M up to signs; keep M itself
        rest = Qf[:, d_h:]
        rest -= M @ (M.T @ rest)
        rest, _ = np.linalg.qr(rest)
        return np.hstack([M, rest])
    M = _polar_factor(M)
    try:
        # no keywords: scipy < 1.15 has neither check_finite nor lapack_driver here
        rest = sla.null_space(M.T)  # (d_v, d_v - d_h)
    except _LINALG_ERRORS:  # the same complement from a gesvd SVD of M itself
        rest = _svd(M, "`M`", full_matrices=True, drivers=("gesvd",))[0][:, d_h:]
    if rest.shape[1] != d_v - d_h:  # cannot happen for a polar factor; refuse rather than pad
        raise InvalidInputError(
            f"`M` ({d_v}x{d_h}) has a complement of {rest.shape[1]} dims, not {d_v - d_h}")
    rest -= M @ (M.T @ rest)  # re-orthogonalize the complement against M
    rest, _ = np.linalg.qr(rest)
    return np.hstack([M, rest])


def fit_isometric(H: np.ndarray, G: np.ndarray, *, extra_dims: int, ridge: float = 1e-3,
                  spectrum: str = "scale") -> tuple[np.ndarray, dict]:
    """Best contraction ``A`` from ``H`` onto ``G``, completed to an orthogonal ``Q``.

    Parameters
    ----------
    H, G:
        ``(n, d_h)`` new-encoder and ``(n, d_p)`` parent vectors, paired by row, finite.
    extra_dims:
        Budget of dims above ``d_p`` (raised to ``max(0, d_h - d_p)`` where smaller).
    ridge, spectrum:
        As in :func:`fit_linear` and :func:`to_contraction`.

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
    H, G = _pairs(H, G)
    d_p, d_h = G.shape[1], H.shape[1]
    if spectrum not in ("scale", "clip"):
        raise InvalidInputError(f"`spectrum` must be 'scale' or 'clip'; got {spectrum!r}")
    A, _ = fit_linear(H, G, ridge=ridge)
    U, sv, Vt = _svd(A, "`A`", full_matrices=True)  # the one SVD of the fit
    sv = _contract_spectrum(sv, spectrum)
    m = sv.size
    A = (U[:, :m] * sv) @ Vt[:m]
    e = max(int(extra_dims), min_extra_dims(d_p, d_h))
    M, r = dilate(A, e, svd=(U, sv, Vt))
    Q = complete_orthogonal(M)
    info = {"dim": int(d_p + r), "rank_defect": int(r), "extra_dims_budget": int(e),
            "singular_values_min": float(sv.min()) if sv.size else 0.0,
            "singular_values_mean": float(sv.mean()) if sv.size else 0.0}
    return Q.astype(np.float32), info


def fit_procrustes(H: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, dict]:
    """Orthogonal Procrustes: rotation ``R`` minimizing ``||G - H R||`` (zero-padding the smaller side).

    ``R = U V^T`` from the SVD ``H^T G = U S V^T`` (``scipy.linalg.orthogonal_procrustes``).

    Parameters
    ----------
    H, G:
        ``(n, d_h)`` new-encoder and ``(n, d_p)`` parent vectors, paired by row, finite.

    Returns
    -------
    (Q, info):
        ``Q`` ``(d, d)`` float32 with ``d = max(d_h, d_p)``: ``z = Q [h; 0]``. ``info`` holds
        ``dim`` and ``rank_defect`` (``d - d_p``).

    Examples
    --------
    >>> rng = np.random.default_rng(0); G = rng.normal(size=(100, 5))
    >>> R0, _ = np.linalg.qr(rng.normal(size=(5, 5))); H = G @ R0
    >>> Q, _ = fit_procrustes(H, G)
    >>> bool(np.allclose(H @ Q.T, G, atol=1e-4))
    True
    """
    H, G = _pairs(H, G)
    d = max(H.shape[1], G.shape[1])
    Hp = np.zeros((H.shape[0], d)); Hp[:, : H.shape[1]] = H
    Gp = np.zeros((G.shape[0], d)); Gp[:, : G.shape[1]] = G
    try:
        R, _ = sla.orthogonal_procrustes(Hp, Gp, check_finite=False)
    except _LINALG_ERRORS:  # orthogonal_procrustes has gesdd only: redo it with gesvd
        U, _, Vt = _svd(Hp.T @ Gp, "`H^T G`", drivers=("gesvd",))
        R = U @ Vt
    # rows: G ~ Hp R  =>  columns: g ~ R^T h
    return np.ascontiguousarray(R.T, dtype=np.float32), {"dim": int(d), "rank_defect": int(d - G.shape[1])}


def fit_affine(H: np.ndarray, G: np.ndarray, *, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Ridge affine map ``g ~ W h + b`` (not isometric).

    The low-cost adapter of "Drift-Adapter: A Practical Approach to Near Zero-Downtime Embedding
    Model Upgrades in Vector Databases".

    Parameters
    ----------
    H, G:
        ``(n, d_h)`` and ``(n, d_p)`` paired rows, finite.
    ridge:
        As in :func:`fit_linear`.

    Returns
    -------
    (W, b):
        ``W`` ``(d_p, d_h)`` float32 and ``b`` ``(d_p,)`` float32.
    """
    W, b = fit_linear(H, G, ridge=ridge, bias=True)
    assert b is not None
    return W.astype(np.float32), b.astype(np.float32)


LABEL_CV_TWO_FOLDS = 512 * 512
"""Label cross-validation uses 2 folds when ``d_h * d_p`` exceeds this (a 1280-d fit: each fold
and strength costs a 1280 x 1280 eigendecomposition)."""

RIDGE_GRID = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0)
"""Relative ridge strengths :func:`select_ridge` cross-validates (times the mean eigenvalue of
``H^T H``, as in :func:`fit_linear`)."""


def _fold_mrr(P: np.ndarray, G: np.ndarray, score: str) -> float:
    """Identity-retrieval MRR of predictions ``P`` against their own rows of ``G``."""
    return _fold_scores(P, G, score)[0]


def _fold_scores(P: np.ndarray, G: np.ndarray, score: str) -> tuple[float, float, float]:
    """``(MRR, mean cosine, -mean squared error)`` of predictions ``P`` against their own rows of ``G``."""
    Pn = P / np.maximum(np.linalg.norm(P, axis=1, keepdims=True), 1e-12)
    Gn = G / np.maximum(np.linalg.norm(G, axis=1, keepdims=True), 1e-12)
    S = Pn @ Gn.T if score == "renorm" else P @ G.T
    own = np.diagonal(S)
    ranks = 1 + (S > own[:, None]).sum(1)
    return (float(np.mean(1.0 / ranks)), float(np.mean(np.sum(Pn * Gn, axis=1))),
            -float(np.mean(np.sum((P - G) ** 2, axis=1))))


def _cv_key(sc: Any, score: str) -> tuple[float, ...]:
    """What cross-validation maximizes: identity-retrieval MRR (to 1e-4), then mean cosine, under
    cosine; the held-out squared error under ip, where the largest-norm items top every ranking
    and identity retrieval says little about the map."""
    return (float(sc[2]),) if score == "pad" else (round(float(sc[0]), 4), float(sc[1]))


def select_ridge(H: Any, G: Any, *, grid: tuple[float, ...] = RIDGE_GRID,
                 spectra: tuple[str, ...] = ("scale", "clip"), folds: int = 3, seed: int = 0,
                 score: str = "renorm", max_eval: int = 500, labels: Any = None, gallery: Any = None,
                 gallery_labels: Any = None, max_gallery: int = 20_000, extra_dims: int | None = None
                 ) -> dict[str, Any]:
    """Ridge strength and spectrum handling by k-fold cross-validation on the pairs given.

    With ``labels``, the task decides: each fold's predictions search the fold's own stored
    vectors (each item's own left out) plus ``gallery`` (other stored items with
    ``gallery_labels``), and label top-1 is maximized first. Identity retrieval rewards a map
    that reproduces item-specific detail, which needs little regularization; label retrieval in
    the whole gallery rewards one that generalizes (measured on a Fashion-MNIST upgrade: the
    identity criterion chose 1e-4 and new/old top-1 0.751, label top-1 in the gallery 0.1 and
    0.826, old/old 0.778).

    Each fold fits the ridge map on the other folds and scores it on its own rows: under
    ``renorm`` (cosine) by identity retrieval (MRR of each held-out ``A h`` among the fold's
    ``g``, then mean cosine), under ``pad`` (inner product) by squared error. One eigendecomposition of
    ``H^T H`` per fold gives every ridge strength of ``grid``; the spectrum (``scale`` or
    ``clip``, :func:`to_contraction`) is then compared at the chosen strength.

    Parameters
    ----------
    H, G:
        ``(n, d_h)`` new and ``(n, d_p)`` parent vectors, paired by row, finite.
    grid, spectra:
        Candidates.
    folds:
        Number of folds (at most ``n // 5``; with fewer than 10 rows the middle of ``grid``
        and the first of ``spectra`` are returned unscored).
    max_eval:
        At most this many rows of a fold are scored (the MRR is over a fold's rows).
    labels, gallery, gallery_labels:
        ``(n,)`` label index per pair (``-1``: unknown), ``(m, d_p)`` other stored parent vectors
        and their ``(m,)`` label indices; at most ``max_gallery`` of them are searched. Ridge and
        spectrum are then chosen together, each fold scoring the prefix map the isometric fit
        will store (:func:`dilate` with ``extra_dims``: where the budget is short, singular
        values are raised to 1, which changes the ranking a lot).
    extra_dims:
        The isometric fit's budget (None: the map is scored as fitted, before dilation).

    Returns
    -------
    dict
        ``ridge``, ``spectrum``, ``cv_mrr`` (``{ridge: mean MRR}`` with ``scale``) and
        ``cv_spectrum`` (``{spectrum: mean MRR}`` at the chosen ridge).

    Examples
    --------
    >>> rng = np.random.default_rng(0); H = rng.normal(size=(300, 8)); G = H[:, :4] + 0.1 * rng.normal(size=(300, 4))
    >>> sorted(select_ridge(H, G))
    ['cv_mrr', 'cv_mse', 'cv_spectrum', 'folds', 'ridge', 'spectrum']
    """
    H, G = _pairs(H, G)
    n, d = H.shape
    k = int(min(folds, n // 5))
    if k < 2:
        return {"ridge": float(grid[len(grid) // 2]), "spectrum": spectra[0], "cv_mrr": {}, "cv_spectrum": {},
                "folds": 0}
    perm = np.random.default_rng(seed + 104729).permutation(n)
    parts = np.array_split(perm, k)
    y = None if labels is None else np.asarray(labels)
    if y is not None and np.sum(y >= 0) >= 10 * k:  # enough labelled rows to score folds by label retrieval
        if k > 2 and d * G.shape[1] > LABEL_CV_TWO_FOLDS:  # each fold costs an eigendecomposition per strength
            parts = np.array_split(perm, 2)
        D = Dl = None
        if gallery is not None and gallery_labels is not None and len(gallery):
            D = np.asarray(gallery[:max_gallery], np.float32)
            Dl = np.asarray(gallery_labels[:max_gallery])
        return _select_ridge_labels(H, G, parts, perm, y, D, Dl, grid=grid, spectra=spectra, score=score,
                                    max_eval=max_eval, extra_dims=extra_dims)
    scores = np.zeros((len(grid), 3))
    cache = []
    for te in parts:
        tr = np.setdiff1d(perm, te, assume_unique=True)
        Ht, Gt = H[tr], G[tr]
        Hv, Gv = H[te[:max_eval]], G[te[:max_eval]]
        if Ht.shape[0] < d:  # fewer rows than dims: the kernel (n_t x n_t) form is cheaper
            # A^T = H^T (H H^T + lam I)^-1 G = H^T W diag(1/(e+lam)) W^T G
            e, W = _eigh(Ht @ Ht.T)
            left, L = Ht.T @ W, Hv @ Ht.T @ W
        else:  # A^T = W diag(1/(e+lam)) W^T H^T G with H^T H = W diag(e) W^T
            e, W = _eigh(Ht.T @ Ht)
            left, L = W, Hv @ W
        R = W.T @ Gt if Ht.shape[0] < d else W.T @ (Ht.T @ Gt)
        base = max(float(e.sum()) / max(d, 1), 1e-12)  # trace(H^T H) / d, as fit_linear scales it
        e = np.clip(e, 0.0, None)
        preds = [(L / (e + lam * base)) @ R for lam in grid]
        scores += np.array([_fold_scores(P, Gv, score) for P in preds])
        cache.append((left, e, R, base, Hv, Gv))
    scores /= k
    # best MRR (to 1e-4, below which fold noise decides), then best mean cosine with the own
    # vector, then the stronger ridge
    best = max(range(len(grid)), key=lambda i: (*_cv_key(scores[i], score), grid[i]))
    lam = float(grid[best])
    spec_scores: dict[str, np.ndarray] = {}
    for sp in spectra:
        if sp == "scale" and score == "renorm":  # a common factor changes no cosine: the score above
            spec_scores[sp] = scores[best]
            continue
        tot = np.zeros(3)
        for left, e, R, base, Hv, Gv in cache:
            A = to_contraction(((left / (e + lam * base)) @ R).T, spectrum=sp)
            tot += np.array(_fold_scores(Hv @ A.T, Gv, score))
        spec_scores[sp] = tot / k
    spectrum = max(spectra, key=lambda s: (*_cv_key(spec_scores[s], score), -spectra.index(s)))
    return {"ridge": lam, "spectrum": spectrum,
            "cv_mrr": {str(g): round(float(s), 6) for g, s in zip(grid, scores[:, 0])},
            "cv_spectrum": {s: round(float(v[0]), 6) for s, v in spec_scores.items()},
            "cv_mse": {str(g): round(float(-s), 6) for g, s in zip(grid, scores[:, 2])}, "folds": k}


def stored_map_predictions(A: np.ndarray, Hv: np.ndarray, *, spectra: tuple[str, ...] = ("scale",),
                           extra_dims: int | None = None) -> dict[str, np.ndarray]:
    """``Hv A'^T``: what the map a fit stores predicts for rows ``Hv``, from the raw ridge map ``A``,
    for each contraction in ``spectra``.

    ``A'`` is :func:`to_contraction` of ``A`` (``spectrum``) and, with ``extra_dims``, the prefix
    of :func:`dilate`'s isometry (singular values whose defect does not fit the budget raised to
    1): the prefix of :func:`fit_isometric`'s ``Q``. The singular values and vectors come from
    the eigendecomposition of ``A``'s smaller Gram matrix in float32 (a ranking needs no more),
    about twice as fast as an SVD at 1280 dims: with ``A = U S V^T``,
    ``Hv A'^T = (Hv A^T) U diag(t / s) U^T`` for the new singular values ``t``.

    Parameters
    ----------
    A:
        ``(d_p, d_h)`` map; ``Hv`` ``(n, d_h)`` rows.

    Returns
    -------
    dict
        ``{spectrum: (n, d_p)}``, float64, or float32 when ``A`` is float32 (every product then
        runs in float32: half the time, and a ranking needs no more).
    """
    d_p, d_h = A.shape
    ft = np.float32 if np.asarray(A).dtype == np.float32 else np.float64
    A = np.asarray(A, ft)
    Hv = np.asarray(Hv, ft)
    A32 = np.asarray(A, np.float32)
    if d_p <= d_h:
        ev, U = _eigh(A32 @ A32.T)
        ev, U = ev[::-1].astype(np.float64), U[:, ::-1].astype(ft)
        sv = np.sqrt(np.clip(ev, 0.0, None))
        Pu = (Hv @ A.T) @ U
    else:  # A^T A = V S^2 V^T: Hv A'^T = Hv V diag(t) U^T with U = A V / s
        ev, V = _eigh(A32.T @ A32)
        ev, V = ev[::-1].astype(np.float64), V[:, ::-1].astype(ft)
        sv = np.sqrt(np.clip(ev, 0.0, None))
        U = (A @ V) / np.maximum(sv, 1e-300).astype(ft)
        Pu = (Hv @ V) * sv.astype(ft)
    m = min(d_p, d_h)
    sv, U, Pu = sv[:m], U[:, :m], Pu[:, :m]
    out = {}
    for sp in spectra:
        t = _contract_spectrum(sv, sp)
        if extra_dims is not None:
            t = _raise_singular_values(t, d_p, d_h, max(int(extra_dims), min_extra_dims(d_p, d_h)))[0][:m]
        ratio = np.divide(t, sv, out=np.zeros_like(t), where=sv > 1e-12)
        out[sp] = np.asarray((Pu * ratio.astype(ft)) @ U.T)
    return out


def _select_ridge_labels(H: np.ndarray, G: np.ndarray, parts: list[np.ndarray], perm: np.ndarray, y: np.ndarray,
                         D: np.ndarray | None, Dl: np.ndarray | None, *, grid: tuple[float, ...],
                         spectra: tuple[str, ...], score: str, max_eval: int, extra_dims: int | None
                         ) -> dict[str, Any]:
    """:func:`select_ridge` with labels: ridge and spectrum chosen together by label top-1 of the
    map the fit stores (then identity MRR, then the stronger ridge).

    Each (fold, strength) needs the singular values of the fitted map: they come from the
    eigendecomposition of its smaller Gram matrix (float32; a ranking needs no more), and the
    grid is searched coarse to fine (every other strength, then the neighbours of the best), so
    a 1280-d fit scores 7 strengths a fold instead of 9 full SVDs.
    """
    d_p, d_h = G.shape[1], H.shape[1]
    budget = None if extra_dims is None else max(int(extra_dims), min_extra_dims(d_p, d_h))
    folds = []
    for te in parts:
        tr = np.setdiff1d(perm, te, assume_unique=True)
        Ht, Gt = H[tr], G[tr]
        te_rows = te[:max_eval]
        e, W = _eigh(Ht.T @ Ht)
        R = W.T @ (Ht.T @ Gt)
        base = max(float(e.sum()) / max(d_h, 1), 1e-12)
        # the maps are only ranked: their products run in float32 (the eigenvalues stay float64)
        folds.append((W.astype(np.float32), np.clip(e, 0.0, None), R.astype(np.float32), base,
                      H[te_rows].astype(np.float32), G[te_rows], te_rows))
    tot: dict[int, np.ndarray] = {}

    def scorer(P: np.ndarray, Gv: np.ndarray, te_rows: np.ndarray) -> tuple[float, ...]:
        """Identity scores of :func:`_fold_scores`, then label top-1 in the gallery."""
        from .. import evaluation as ev

        yv = y[te_rows]
        m = yv >= 0
        t1 = ev.label_retrieval(P[m], Gv[m], yv[m], D, Dl, score=score, ap_max_gallery=0)["top1"]
        return (*_fold_scores(P, Gv, score), float(np.nanmean(t1)) if np.isfinite(t1).any() else 0.0)

    def score_strength(i: int) -> None:
        acc = np.zeros((len(spectra), 4))
        for W, e, R, base, Hv, Gv, te_rows in folds:
            A = ((W / (e + grid[i] * base).astype(np.float32)) @ R).T  # (d_p, d_h) float32
            preds = stored_map_predictions(A, Hv, spectra=spectra, extra_dims=budget)
            for j, sp in enumerate(spectra):
                acc[j] += np.array(scorer(preds[sp], Gv, te_rows))
        tot[i] = acc / len(folds)

    def key(i: int, j: int) -> tuple[float, ...]:
        return (round(float(tot[i][j][3]), 3), round(float(tot[i][j][0]), 4), grid[i], -j)

    for i in range(0, len(grid), 2):
        score_strength(i)
    bi = max(((i, j) for i in tot for j in range(len(spectra))), key=lambda c: key(*c))[0]
    for i in (bi - 1, bi + 1):
        if 0 <= i < len(grid) and i not in tot:
            score_strength(i)
    bi, bj = max(((i, j) for i in tot for j in range(len(spectra))), key=lambda c: key(*c))
    done = sorted(tot)
    return {"ridge": float(grid[bi]), "spectrum": spectra[bj], "criterion": "label top-1 in the stored gallery",
            "cv_top1": {f"{grid[i]}/{sp}": round(float(tot[i][j][3]), 6) for i in done
                        for j, sp in enumerate(spectra)},
            "cv_mrr": {str(grid[i]): round(float(tot[i][bj][0]), 6) for i in done},
            "cv_spectrum": {sp: round(float(tot[bi][j][0]), 6) for j, sp in enumerate(spectra)},
            "cv_mse": {str(grid[i]): round(float(-tot[i][bj][2]), 6) for i in done}, "folds": len(folds)}
