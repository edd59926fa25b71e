"""Closed forms: orthogonality, isometry (new/new preserved), recovery of planted maps."""

from __future__ import annotations

import numpy as np
import pytest
from trainer_testkit import random_orthogonal, unit

from compatindex.errors import InvalidInputError
from compatindex.trainer import closed_form as cf
from compatindex.trainer.config import TrainConfig
from compatindex.trainer.data import pairs_from_arrays
from compatindex.trainer.upgrade import fit_method, to_space


def test_isometric_q_is_orthogonal_and_preserves_new_new(synth):
    H = unit(synth.H)
    Q, info = cf.fit_isometric(H, synth.G, extra_dims=12)
    d_v = Q.shape[0]
    assert info["dim"] == d_v >= H.shape[1]
    assert np.abs(Q.T.astype(np.float64) @ Q - np.eye(d_v)).max() < 1e-5
    Z = H @ Q[:, : H.shape[1]].T
    np.testing.assert_allclose(Z @ Z.T, H @ H.T, atol=1e-5)


@pytest.mark.parametrize("spectrum", ["scale", "clip"])
def test_isometric_recovers_planted_contraction(spectrum):
    rng = np.random.default_rng(1)
    d_p, d_h = 10, 14
    U = random_orthogonal(d_p, rng)[:, :d_p]
    V = random_orthogonal(d_h, rng)[:, :d_p]
    s = np.linspace(1.0, 0.4, d_p)  # top singular value 1: both spectra keep it
    A = (U * s) @ V.T  # (d_p, d_h) contraction
    H = rng.normal(size=(4000, d_h))
    G = H @ A.T
    Q, info = cf.fit_isometric(H, G, extra_dims=d_h, ridge=0.0, spectrum=spectrum)
    np.testing.assert_allclose(Q[:d_p, :d_h], A, atol=1e-5)
    assert info["rank_defect"] == d_h - 1  # 4 null directions + 9 singular values below 1
    # the prefix of z reproduces g exactly
    np.testing.assert_allclose(H @ Q[:d_p, :d_h].T, G, atol=1e-4)


def test_dilate_respects_budget_and_is_isometry():
    rng = np.random.default_rng(2)
    A = cf.to_contraction(rng.normal(size=(8, 8)))
    for e in (0, 3, 8):
        M, r = cf.dilate(A, e)
        assert r <= e and M.shape == (8 + r, 8)
        np.testing.assert_allclose(M.T @ M, np.eye(8), atol=1e-10)
    M, r = cf.dilate(A, 3)
    # the kept part of A is unchanged outside the 8 - 3 - 1 directions raised to 1
    s_new = np.linalg.svd(M[:8], compute_uv=False)
    assert np.sum(s_new > 1 - 1e-9) >= 8 - 3


def test_dilate_needs_room_for_extra_raw_dims():
    with pytest.raises(InvalidInputError, match="extra_dims"):
        cf.dilate(np.zeros((4, 6)), 1)
    with pytest.raises(InvalidInputError, match="contraction"):
        cf.dilate(2 * np.eye(3), 3)


def test_procrustes_recovers_planted_rotation(synth):
    rng = np.random.default_rng(3)
    R = random_orthogonal(16, rng)
    H = synth.G @ R.T  # new = rotated old, h = R g
    Q, info = cf.fit_procrustes(H, synth.G)
    assert info["dim"] == 16
    np.testing.assert_allclose(Q, R.T, atol=1e-4)


def test_procrustes_smaller_raw_dim_is_padded():
    rng = np.random.default_rng(4)
    G = unit(rng.normal(size=(500, 12)))
    R = random_orthogonal(12, rng)
    H = (G @ R)[:, :8]  # raw new space of 8 dims
    Q, info = cf.fit_procrustes(H, G)
    assert Q.shape == (12, 12)
    assert np.abs(Q.T.astype(np.float64) @ Q - np.eye(12)).max() < 1e-5


def test_affine_recovers_planted_affine_map():
    rng = np.random.default_rng(5)
    H = rng.normal(size=(800, 6))
    W0, b0 = rng.normal(size=(4, 6)), rng.normal(size=4)
    W, b = cf.fit_affine(H, H @ W0.T + b0, ridge=0.0)
    np.testing.assert_allclose(W, W0, atol=1e-4)
    np.testing.assert_allclose(b, b0, atol=1e-4)


def test_complete_orthogonal_keeps_first_columns():
    rng = np.random.default_rng(6)
    M = random_orthogonal(9, rng)[:, :4]
    Q = cf.complete_orthogonal(M)
    np.testing.assert_allclose(Q[:, :4], M, atol=1e-10)
    np.testing.assert_allclose(Q.T @ Q, np.eye(9), atol=1e-10)


@pytest.mark.parametrize("method", ["isometric", "procrustes"])
def test_fit_method_versions_preserve_raw_cosines(synth, method):
    data = pairs_from_arrays(synth.H, synth.G)
    fit = fit_method(method, data, TrainConfig(method=method, extra_dims=8), d_parent=16)
    Z = to_space(fit, synth.H)
    Hn = unit(synth.H)
    np.testing.assert_allclose(Z @ Z.T, Hn @ Hn.T, atol=1e-5)


def test_oca_head_starts_from_the_given_closed_form_fits(synth):
    """``starts`` (closed forms already fitted and scored by upgrade) are reused, not refitted:
    the head starts from the better-scored one, and with no training it returns that start."""
    data = pairs_from_arrays(synth.H, synth.G)
    val = data.subset(np.arange(1000, len(data)))
    train = data.subset(np.arange(1000))
    cfg = TrainConfig(method="oca", extra_dims=8, ridge=1e-3, spectrum="scale", normalize_input=True, steps=0)
    iso = fit_method("isometric", train, cfg, d_parent=16)
    pro = fit_method("procrustes", train, cfg, d_parent=16)
    good, bad = {"pairs": {"mrr": 0.9, "recall@10": 1.0}}, {"pairs": {"mrr": 0.1, "recall@10": 0.2}}
    for scores, want in (((good, bad), "isometric"), ((bad, good), "procrustes")):
        fit = fit_method("oca", train, cfg, d_parent=16, val=val,
                         starts={"isometric": (iso, scores[0]), "procrustes": (pro, scores[1])})
        assert fit["info"]["start"] == want
        ref = iso if want == "isometric" else pro
        np.testing.assert_allclose(to_space(fit, synth.H[:50]), to_space(ref, synth.H[:50]), atol=1e-5)


# --- inputs are checked before LAPACK sees them; decompositions are scipy.linalg's ----------------

_FITS = {
    "isometric": lambda H, G: cf.fit_isometric(H, G, extra_dims=4),
    "procrustes": cf.fit_procrustes,
    "affine": cf.fit_affine,
    "linear": cf.fit_linear,
}


@pytest.mark.parametrize("fit", sorted(_FITS))
@pytest.mark.parametrize("side", ["H", "G"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pairs_are_refused_naming_the_parameter(fit, side, bad):
    rng = np.random.default_rng(7)
    H, G = rng.normal(size=(40, 6)), rng.normal(size=(40, 5))
    X = H if side == "H" else G
    X[[3, 11, 29], [0, 2, 4]] = bad
    with pytest.raises(InvalidInputError, match=rf"`{side}` .*NaN or inf in 3 of 40 rows \(first: row 3\)"):
        _FITS[fit](H, G)


@pytest.mark.parametrize("call", [
    lambda X: cf.to_contraction(X), lambda X: cf.dilate(X, 6), lambda X: cf.complete_orthogonal(X)],
    ids=["to_contraction", "dilate", "complete_orthogonal"])
def test_non_finite_maps_are_refused_naming_the_parameter(call):
    X = np.zeros((6, 4))
    X[2, 1] = np.nan
    with pytest.raises(InvalidInputError, match=r"`(A|M)` .*NaN or inf in 1 of 6 rows"):
        call(X)


def test_unpaired_rows_are_refused():
    with pytest.raises(InvalidInputError, match="one row per pair; got 10 and 9 rows"):
        cf.fit_procrustes(np.ones((10, 3)), np.ones((9, 3)))


def test_singular_ridge_free_fit_is_an_input_error():
    H = np.ones((20, 3))  # collinear columns: H^T H is singular without a ridge
    with pytest.raises(InvalidInputError, match="`H` .*singular"):
        cf.fit_linear(H, np.ones((20, 2)), ridge=0.0)


def test_svd_that_does_not_converge_is_an_input_error(monkeypatch):
    import scipy.linalg as sla

    def no_convergence(*a, **k):
        raise sla.LinAlgError("SVD did not converge")

    for name in ("svd", "polar", "orthogonal_procrustes"):  # the last two hold their own svd
        monkeypatch.setattr(sla, name, no_convergence)
    rng = np.random.default_rng(8)
    with pytest.raises(InvalidInputError, match="did not converge"):
        cf.to_contraction(rng.normal(size=(4, 4)))
    with pytest.raises(InvalidInputError, match="did not converge"):
        cf.fit_procrustes(rng.normal(size=(30, 4)), rng.normal(size=(30, 4)))


def test_gesdd_failure_falls_back_to_gesvd(monkeypatch):
    import scipy.linalg as sla

    real = sla.svd
    drivers = []

    def gesdd_fails(a, *args, lapack_driver="gesdd", **kw):
        drivers.append(lapack_driver)
        if lapack_driver == "gesdd":
            raise sla.LinAlgError("SVD did not converge")
        return real(a, *args, lapack_driver=lapack_driver, **kw)

    rng = np.random.default_rng(9)
    H, G = rng.normal(size=(200, 6)), rng.normal(size=(200, 6))
    want_Q, want_info = cf.fit_isometric(H, G, extra_dims=6)
    want_R, _ = cf.fit_procrustes(H, G)
    def gesdd_only(*a, **k):  # polar, orthogonal_procrustes, null_space (< 1.15): gesdd only
        raise sla.LinAlgError("SVD did not converge")

    monkeypatch.setattr(sla, "svd", gesdd_fails)
    monkeypatch.setattr(sla, "polar", gesdd_only)
    monkeypatch.setattr(sla, "orthogonal_procrustes", gesdd_only)
    monkeypatch.setattr(sla, "null_space", gesdd_only)
    Q, info = cf.fit_isometric(H, G, extra_dims=6)
    R, _ = cf.fit_procrustes(H, G)
    assert "gesvd" in drivers
    assert info == pytest.approx(want_info)
    np.testing.assert_allclose(Q[:, :6], want_Q[:, :6], atol=1e-6)
    np.testing.assert_allclose(Q.T.astype(np.float64) @ Q, np.eye(Q.shape[0]), atol=1e-6)
    np.testing.assert_allclose(R, want_R, atol=1e-6)


@pytest.mark.parametrize("d_h, d_p", [(9, 9), (6, 9), (9, 6)])
def test_procrustes_equals_the_svd_formula_and_uses_scipy(monkeypatch, d_h, d_p):
    import scipy.linalg as sla

    calls = []
    real = sla.orthogonal_procrustes
    monkeypatch.setattr(sla, "orthogonal_procrustes", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(10)
    H, G = rng.normal(size=(300, d_h)), rng.normal(size=(300, d_p))
    Q, info = cf.fit_procrustes(H.astype(np.float32), G.astype(np.float32))
    assert calls, "fit_procrustes must go through scipy.linalg.orthogonal_procrustes"
    # brute force, in float64: zero-pad both sides to d, R = U V^T from the SVD of Hp^T Gp
    d = max(d_h, d_p)
    Hp = np.hstack([H.astype(np.float32).astype(np.float64), np.zeros((300, d - d_h))])
    Gp = np.hstack([G.astype(np.float32).astype(np.float64), np.zeros((300, d - d_p))])
    U, _, Vt = np.linalg.svd(Hp.T @ Gp)
    R = U @ Vt
    assert Q.shape == (d, d) and info == {"dim": d, "rank_defect": d - d_p}
    # the residual is what the fit minimizes: equal to the reference's (the padded block of R is
    # free when a side is padded, so compare the residual and the block that multiplies data)
    np.testing.assert_allclose(np.linalg.norm(Gp - Hp @ Q.T.astype(np.float64)),
                               np.linalg.norm(Gp - Hp @ R), rtol=1e-6)
    np.testing.assert_allclose(Q.T[:d_h, :d_p], R[:d_h, :d_p], atol=1e-6)
    np.testing.assert_allclose(Q.T.astype(np.float64) @ Q, np.eye(d), atol=1e-6)


def test_procrustes_recovers_a_planted_rotation_exactly():
    rng = np.random.default_rng(11)
    R0 = random_orthogonal(12, rng)
    G = rng.normal(size=(400, 12))
    H = G @ R0  # h = R0^T g, so g = R0 h: the map is R0
    Q, _ = cf.fit_procrustes(H, G)
    np.testing.assert_allclose(Q, R0, atol=1e-6)
    np.testing.assert_allclose(H @ Q.T, G, atol=1e-5)


@pytest.mark.parametrize("d_p, d_h", [(10, 14), (14, 10), (12, 12)])
def test_completed_q_is_orthogonal_and_holds_the_fitted_contraction(monkeypatch, d_p, d_h):
    import scipy.linalg as sla

    calls = []
    for name in ("polar", "null_space"):
        real = getattr(sla, name)
        monkeypatch.setattr(sla, name, lambda *a, _f=real, _n=name, **k: calls.append(_n) or _f(*a, **k))
    rng = np.random.default_rng(12)
    H = rng.normal(size=(500, d_h))
    G = H @ rng.normal(size=(d_h, d_p)) + 0.1 * rng.normal(size=(500, d_p))
    A = cf.to_contraction(cf.fit_linear(H, G)[0])
    M, r = cf.dilate(A, d_h)  # the budget covers the whole defect: A is kept exactly
    Q = cf.complete_orthogonal(M)
    # a dilation is orthonormal to round-off: a QR completes it without polar/null_space SVDs
    assert not calls, calls
    # a merely near-orthonormal M goes through scipy.linalg's polar snap and null_space
    Q_f32 = cf.complete_orthogonal(M.astype(np.float32))  # float32 round-off: Newton-Schulz, then QR
    assert not calls, calls
    np.testing.assert_allclose(Q_f32.T @ Q_f32, np.eye(d_p + r), atol=1e-9)
    Q_noisy = cf.complete_orthogonal(M + 1e-2 * rng.normal(size=M.shape))
    assert set(calls) == {"polar", "null_space"}, "a non-orthonormal M must use scipy.linalg's polar and null_space"
    np.testing.assert_allclose(Q_noisy.T @ Q_noisy, np.eye(d_p + r), atol=1e-8)
    assert Q.dtype == np.float64 and Q.shape == (d_p + r, d_p + r)
    np.testing.assert_allclose(Q.T @ Q, np.eye(d_p + r), atol=1e-8)
    np.testing.assert_allclose(Q @ Q.T, np.eye(d_p + r), atol=1e-8)
    np.testing.assert_allclose(Q[:d_p, :d_h], A, atol=1e-8)
    # and fit_isometric stores the same block (in float32)
    Q32, info = cf.fit_isometric(H, G, extra_dims=d_h)
    assert info["dim"] == d_p + r
    np.testing.assert_allclose(Q32[:d_p, :d_h], A, atol=1e-6)


def test_cross_validated_ridge_beats_the_old_fixed_default_on_few_pairs_in_many_dims():
    """400 pairs of noisy post-ReLU features in 512 dims: a fixed 1e-3 overfits, the strength
    picked by cross-validation on the training split generalizes better on pairs it never saw."""
    rng = np.random.default_rng(20)
    n, d = 1400, 512
    X = rng.normal(size=(n, 96)) + rng.normal(size=(20, 96))[rng.integers(0, 20, n)]
    H = unit(np.maximum(X @ rng.normal(size=(96, d)) / np.sqrt(96) + 1.5 * rng.normal(size=(n, d)), 0))
    G = unit(np.maximum(X @ rng.normal(size=(96, d)) / np.sqrt(96) + 3.0 * rng.normal(size=(n, d)), 0))
    tr, te = slice(0, 400), slice(400, None)
    sel = cf.select_ridge(H[tr], G[tr])
    assert sel["ridge"] > 1e-3 and sel["folds"] == 3 and set(sel["cv_spectrum"]) == {"scale", "clip"}

    def heldout_mrr(ridge, spectrum):
        Q, _ = cf.fit_isometric(H[tr], G[tr], extra_dims=8, ridge=ridge, spectrum=spectrum)
        return cf._fold_mrr(H[te] @ Q[:d, :d].T.astype(np.float64), G[te].astype(np.float64), "renorm")

    assert heldout_mrr(sel["ridge"], sel["spectrum"]) > heldout_mrr(1e-3, "scale") + 0.02


def test_cv_spectrum_is_the_better_scoring_one_on_the_folds():
    rng = np.random.default_rng(21)
    n, d = 1500, 64
    H = unit(np.maximum(rng.normal(size=(n, d)) @ rng.normal(size=(d, d)), 0) + 0.3)
    G = unit(H @ rng.normal(size=(d, d)) + 0.5 * rng.normal(size=(n, d)))
    sel = cf.select_ridge(H, G)
    cv = sel["cv_spectrum"]
    assert sel["spectrum"] == max(cv, key=lambda k: (cv[k], k == "scale"))
    assert cf.select_ridge(H, G, spectra=("clip",))["spectrum"] == "clip"


def test_fit_upgrade_resolves_ridge_spectrum_and_normalization_on_the_training_split(synth):
    from compatindex.trainer import fit_upgrade

    data = pairs_from_arrays(synth.H, synth.G)
    _, rep = fit_upgrade(data, d_parent=16, config=TrainConfig(method="isometric"))
    res = rep["resolved"]
    assert res["ridge"] in cf.RIDGE_GRID and res["spectrum"] in ("scale", "clip") and res["normalize_input"] is True
    assert rep["selection"]["folds"] == 3
    ip = pairs_from_arrays(synth.H, synth.G, metric="ip")
    _, rep = fit_upgrade(ip, d_parent=16, config=TrainConfig(method="isometric", ridge=1e-2, spectrum="clip"))
    assert rep["resolved"] == {"ridge": 1e-2, "spectrum": "clip", "normalize_input": False}


def test_isometric_fit_at_1280_dims_is_fast_and_finite():
    """The 1280-d upgrade that crashed (EfficientNet-Lite features): one SVD per fit, QR completion."""
    import time

    rng = np.random.default_rng(22)
    n, d = 800, 1280
    X = rng.normal(size=(n, 64))
    G = unit(np.maximum(X @ rng.normal(size=(64, d)) + rng.normal(size=(n, d)), 0))
    H = unit(np.maximum(X @ rng.normal(size=(64, d)) + rng.normal(size=(n, d)), 0))
    t = time.perf_counter()
    Q, info = cf.fit_isometric(H, G, extra_dims=160, ridge=1e-2, spectrum="clip")
    assert time.perf_counter() - t < 30
    assert np.isfinite(Q).all() and info["dim"] == Q.shape[0] <= 1280 + 160
    assert np.abs(Q.T.astype(np.float64) @ Q - np.eye(Q.shape[0])).max() < 1e-4
