"""The gate without an index: pass on good pairs, refuse shuffled pairs and another modality;
the permutation test, the absolute floor, the same-space control and the label interval."""

from __future__ import annotations

import numpy as np
import pytest
from trainer_testkit import make_synthetic

from compatindex.trainer import TrainConfig, fit_upgrade, pairs_from_arrays
from compatindex.trainer.gate import label_gate, pairs_gate, permutation_test, sign_test


@pytest.fixture(scope="module")
def pairs():
    s = make_synthetic(n=1500)
    return s, pairs_from_arrays(s.H[:1000], s.G[:1000], s.y[:1000], gallery=s.G[1000:], gallery_labels=s.y[1000:])


@pytest.mark.parametrize("method", ["isometric", "procrustes", "affine"])
def test_gate_passes_good_pairs(pairs, method):
    _, data = pairs
    fit, rep = fit_upgrade(data, d_parent=16, config=TrainConfig(method=method))
    g = rep["gate"]
    assert g["passed"], g["reasons"]
    assert g["pairs"]["fit"]["mrr"] > g["pairs"]["shuffled"]["mrr"] + 0.3
    assert g["pairs"]["p_permutation"] <= 1e-3 and g["pairs"]["heldout_mrr"] > g["pairs"]["heldout_mrr_permuted"] + 0.3
    assert not g["pairs"]["same_space"]  # another model's coordinates: no untransformed control
    assert g["labels"]["new_old"]["top1"] > g["labels"]["old_old"]["top1"]


def test_gate_refuses_pairs_joined_to_wrong_ids(pairs):
    s, _ = pairs
    perm = np.random.default_rng(0).permutation(1000)
    bad = pairs_from_arrays(s.H[:1000][perm], s.G[:1000], s.y[:1000], gallery=s.G[1000:], gallery_labels=s.y[1000:])
    _, rep = fit_upgrade(bad, d_parent=16, config=TrainConfig(method="isometric"))
    assert not rep["gate"]["passed"]
    assert any("shuffled" in r for r in rep["gate"]["reasons"])


def test_gate_refuses_another_modality_without_labels():
    s = make_synthetic(n=800)
    other = np.random.default_rng(9).normal(size=s.H.shape).astype(np.float32)  # unrelated encoder
    _, rep = fit_upgrade(pairs_from_arrays(other, s.G), d_parent=16, config=TrainConfig(method="procrustes"))
    assert not rep["gate"]["passed"] and "labels" not in rep["gate"]


def test_label_gate_criterion():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    G = np.eye(4)[y] + 0.6 * rng.normal(size=(40, 4))
    good = np.hstack([np.eye(4)[y] + 0.1 * rng.normal(size=(40, 4)), np.zeros((40, 2))])
    bad = rng.normal(size=(40, 6))
    assert label_gate(good, G, y)["passed"]
    out = label_gate(bad, G, y)
    assert not out["passed"] and "M(new, old)" in out["reasons"][0]


def test_sign_test():
    assert sign_test(np.ones(20), np.full(20, 5)) == pytest.approx(np.sqrt(20))
    assert sign_test(np.ones(5), np.ones(5)) == 0.0


def test_auto_reports_every_candidate_and_keeps_the_best(pairs):
    _, data = pairs
    _, rep = fit_upgrade(data, d_parent=16, config=TrainConfig(steps=30))
    names = [c["method"] for c in rep["candidates"]]
    assert names == ["isometric", "procrustes", "oca"]
    best = max(rep["candidates"], key=lambda c: (c["heldout"]["new_old"]["top1"], c["heldout"]["pairs"]["mrr"]))
    assert rep["chosen"] == best["method"]


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_pairs_gate_refuses_a_small_win_in_a_crowded_gallery():
    """Among 20,000 distractors a barely aligned map has a tiny absolute MRR and a tiny lift over
    the shuffled control: the absolute margin refuses it (a relative win is not enough), and the
    same data with shuffled pairs stays refused."""
    rng = np.random.default_rng(0)
    d, n = 32, 300
    G = _unit(rng.standard_normal((n, d)))
    D = _unit(rng.standard_normal((20000, d)))
    Z = _unit(G + 1.5 * 3 * rng.standard_normal((n, d)) / np.sqrt(d))
    Zs = _unit(G[rng.permutation(n)] + 1.5 * 3 * rng.standard_normal((n, d)) / np.sqrt(d))
    ok = pairs_gate(Z, Zs, None, G, D)
    assert ok["fit"]["mrr"] < ok["shuffled"]["mrr"] + 0.01  # the absolute margin alone refuses it
    assert ok["fit"]["mrr"] > 2.0 * ok["shuffled"]["mrr"]  # the loosened "twice the MRR" rule admitted it
    assert not ok["passed"], ok
    bad = pairs_gate(Zs, Z, None, G, D)
    assert not bad["passed"]


def test_pairs_gate_admits_class_collapsed_features_in_a_crowded_gallery():
    """Class-trained models (Fashion-MNIST): items of a class nearly coincide, so among 20k stored
    distractors the own item's MRR is tiny even for a right map, and the absolute margin refuses
    it. With the stored labels, same-label competitors are ties: the map is then clearly right
    (admitted), while the same data with shuffled pairs stays refused."""
    rng = np.random.default_rng(1)
    d, n, m, C = 32, 300, 20_000, 10
    cent = _unit(rng.standard_normal((C, d)))
    y, yd = rng.integers(0, C, n), rng.integers(0, C, m)
    G = _unit(cent[y] + 0.3 * rng.standard_normal((n, d)) / np.sqrt(d))
    D = _unit(cent[yd] + 0.3 * rng.standard_normal((m, d)) / np.sqrt(d))
    Z = _unit(cent[y] + 0.3 * rng.standard_normal((n, d)) / np.sqrt(d))  # right class, not the item
    Zs = Z[rng.permutation(n)]
    blind = pairs_gate(Z, Zs, None, G, D)
    assert blind["mrr"] < blind["mrr_shuffled"] + 0.01 and not blind["passed"]
    ok = pairs_gate(Z, Zs, None, G, D, labels=y, gallery_labels=yd)
    assert ok["label_ties"] and ok["passed"], ok["reasons"]
    assert not pairs_gate(Zs, Z, None, G, D, labels=y, gallery_labels=yd)["passed"]


def test_same_space_control_fires_only_for_the_same_model():
    rng = np.random.default_rng(2)
    G = _unit(rng.standard_normal((300, 16)))
    R, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    rotated = G @ R  # a map that moved everything away from the parent's coordinates
    shuf = G[rng.permutation(300)]
    # the raw vectors are the parent's own space (a fine-tune): the rotated fit aligns worse
    out = pairs_gate(rotated + 0.5 * G, shuf, G, G)
    assert out["same_space"] and not out["passed"]
    assert any("already live in the parent's space" in r for r in out["reasons"])
    # raw vectors of another model: no untransformed control, the fit is judged on its own
    other = _unit(rng.standard_normal((300, 16)))
    out = pairs_gate(G + 0.05 * rng.standard_normal((300, 16)), shuf, other, G)
    assert not out["same_space"] and out["passed"], out["reasons"]


def test_permutation_test():
    rng = np.random.default_rng(3)
    assert permutation_test(np.eye(100))["p"] == pytest.approx(1e-3)
    junk = permutation_test(rng.standard_normal((100, 100)))
    assert junk["p"] > 0.01 and abs(junk["mrr"] - junk["null_mrr"]) < 0.03


def test_label_gate_needs_an_interval_not_only_a_point_estimate():
    """A small positive difference on 20 items passes BCT's point criterion but not the interval."""
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(4), 5)
    G = np.eye(4)[y] + 0.9 * rng.normal(size=(20, 4))
    Z = G.copy()
    Z[:, :] += 0.3 * rng.normal(size=(20, 4))  # about as good as the old vectors
    out = label_gate(Z, G, y)
    lo, hi = out["interval"]
    assert lo < -0.05 < hi
    if out["new_old"]["top1"] > out["old_old"]["top1"]:
        assert not out["passed"] and "not established" in out["reasons"][0]
    else:
        assert not out["passed"] and "M(new, old) <= M(old, old)" in out["reasons"][0]
    # with many items and a clear win the interval is tight and above the bound
    y = np.repeat(np.arange(4), 100)
    G = np.eye(4)[y] + 0.9 * rng.normal(size=(400, 4))
    Z = np.eye(4)[y] + 0.2 * rng.normal(size=(400, 4))
    out = label_gate(Z, G, y)
    assert out["passed"] and out["interval"][0] > 0
