"""The gate without an index: pass on good pairs, refuse shuffled pairs and another modality."""

from __future__ import annotations

import numpy as np
import pytest
from trainer_testkit import make_synthetic

from compatindex.trainer import TrainConfig, fit_upgrade, pairs_from_arrays
from compatindex.trainer.gate import label_gate, sign_test


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
    assert g["pairs"]["fit"]["recall@10"] > g["pairs"]["untransformed"]["recall@10"]
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


def test_pairs_gate_admits_a_small_but_clear_win_in_a_crowded_gallery():
    """Among 20,000 distractors an aligned map has a tiny absolute MRR; the relative win and the
    sign test still admit it, and the same data with shuffled pairs stays refused."""
    import numpy as np

    from compatindex.trainer.gate import pairs_gate

    rng = np.random.default_rng(0)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    d, n = 32, 300
    G = unit(rng.standard_normal((n, d)))
    D = unit(rng.standard_normal((20000, d)))
    Z = unit(G + 1.5 * 3 * rng.standard_normal((n, d)) / np.sqrt(d))
    Zs = unit(G[rng.permutation(n)] + 1.5 * 3 * rng.standard_normal((n, d)) / np.sqrt(d))
    ok = pairs_gate(Z, Zs, unit(rng.standard_normal((n, d))), G, D)
    assert ok["fit"]["mrr"] < ok["shuffled"]["mrr"] + 0.01  # the absolute margin alone would refuse it
    assert ok["passed"], ok["reasons"]
    bad = pairs_gate(Zs, Z, unit(rng.standard_normal((n, d))), G, D)
    assert not bad["passed"]
