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
