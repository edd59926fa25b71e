"""Retrieval metrics against sklearn and hand-computed references."""

from __future__ import annotations

import numpy as np
import pytest
from trainer_testkit import unit
from sklearn.metrics import average_precision_score

from compatindex import evaluation as ev


def _naive_cmc_map(Q, G, yq, yg, loo):
    top1 = top5 = aps = n = 0
    for i in range(len(Q)):
        s = unit(Q[i:i + 1, : G.shape[1]]) @ unit(G[:, : Q.shape[1]]).T
        s = s[0].astype(np.float64)
        idx = [j for j in range(len(G)) if not (loo and j == i)]
        rel = np.array([yg[j] == yq[i] for j in idx])
        if not rel.any():
            continue
        order = sorted(range(len(idx)), key=lambda k: (-s[idx[k]], k))
        first = next(r for r, k in enumerate(order) if rel[k])
        top1 += first < 1
        top5 += first < 5
        aps += average_precision_score(rel, s[idx])
        n += 1
    return top1 / n, top5 / n, aps / n


@pytest.mark.parametrize("loo", [True, False])
def test_cmc_map_matches_naive_reference(loo):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)
    Q = rng.normal(size=(60, 10)) + np.eye(10)[y] * 2
    G = Q[:, :8] + 0.5 * rng.normal(size=(60, 8))  # different dims: prefix comparison
    got = ev.cmc_map(Q, G, y, y, leave_one_out=loo)
    t1, t5, ap = _naive_cmc_map(Q, G, y, y, loo)
    assert got["top1"] == pytest.approx(t1) and got["top5"] == pytest.approx(t5)
    assert got["mAP"] == pytest.approx(ap, abs=1e-6)


def test_pair_alignment_and_ranks():
    rng = np.random.default_rng(1)
    G = unit(rng.normal(size=(50, 8)))
    out = ev.pair_alignment(G, G)
    assert out["recall@1"] == 1.0 and out["mrr"] == 1.0 and out["mean_cos"] == pytest.approx(1.0, abs=1e-6)
    shuffled = ev.pair_alignment(G[::-1], G)
    assert shuffled["recall@1"] < 0.1


def test_recall_mrr_nfr_ac_am():
    assert ev.recall_at_k([[1, 2, 3]], [{2, 3, 9}], 2) == pytest.approx(0.5)
    assert ev.mrr([[5, 6, 7]], [7]) == pytest.approx(1 / 3)
    assert ev.negative_flip_rate([1, 1, 0], [0, 1, 1]) == pytest.approx(1 / 3)
    M = np.array([[0.5, np.nan, np.nan], [0.6, 0.7, np.nan], [0.4, 0.8, 0.9]])
    assert ev.average_compatibility(M) == pytest.approx(2 / 3)  # M[2][0] = 0.4 <= M[0][0]
    assert ev.average_accuracy(M) == pytest.approx(np.mean([0.5, 0.6, 0.7, 0.4, 0.8, 0.9]))


def test_compatibility_matrix_shape_and_diagonal():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 40)
    f1 = unit(np.eye(3)[y] + 0.3 * rng.normal(size=(40, 3)))
    f2 = np.hstack([f1, 0.1 * rng.normal(size=(40, 2))])
    M = ev.compatibility_matrix([f1, f2], y)
    assert np.isnan(M[0, 1]) and M[1, 0] > 0.5
    assert M[0, 0] == pytest.approx(ev.cmc_map(f1, f1, y, y, leave_one_out=True)["top1"])
    correct = ev.top1_correct(f1, f1, y, y, leave_one_out=True)
    assert correct.mean() == pytest.approx(M[0, 0])


@pytest.mark.parametrize("score", ["renorm", "pad"])
@pytest.mark.parametrize("dq,dg", [(6, 6), (4, 9), (9, 4)])
def test_prepared_gallery_gives_the_same_similarities(score, dq, dg):
    """The loops normalize the gallery once (``gallery_prefix``); the values are ``similarity``'s."""
    rng = np.random.default_rng(dq * 10 + dg)
    q, g = rng.normal(size=(7, dq)), rng.normal(size=(11, dg))
    got = ev.prefix_similarity(q, ev.gallery_prefix(g, dq, score), score)
    np.testing.assert_allclose(got, ev.similarity(q, g, score=score), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="score"):
        ev.gallery_prefix(g, dq, "cosine")
