"""The ``simplex`` recipe (fixed d-simplex classifier + InfoNCE to every stored ancestor) and
OCA's training-time pieces: loss terms against plain loops, the fixed classifier, the orthogonal
layer dropped at inference, and a small planted chain that stays compatible across versions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from compatindex import evaluation as ev
from compatindex.errors import InvalidInputError
from compatindex.trainer import BackboneConfig
from compatindex.trainer.backbone import CompatModel, RECIPE_VERSION, load_checkpoint, train_backbone
from compatindex.trainer.losses import AncestorNCE, OCALoss, SimplexCE, SimplexLoss, dsimplex


def _lse(v: list[float]) -> float:
    m = max(v)
    return m + math.log(sum(math.exp(x - m) for x in v))


def _ce_ls(logits: list[float], t: int, eps: float) -> float:
    lse = _lse(logits)
    logp = [x - lse for x in logits]
    return (1 - eps) * -logp[t] + eps * -sum(logp) / len(logp)


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def mlp(d_out: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, d_out))


@pytest.mark.parametrize("K", [2, 3, 10, 17])
def test_dsimplex_is_a_regular_simplex(K):
    W = dsimplex(K).double()
    assert W.shape == (K, K - 1)
    G = W @ W.T
    assert torch.allclose(torch.diagonal(G), torch.ones(K, dtype=G.dtype), atol=1e-6)
    off = G[~torch.eye(K, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1.0 / (K - 1)), atol=1e-6)
    assert torch.allclose(W.sum(0), torch.zeros(K - 1, dtype=W.dtype), atol=1e-6)


def test_simplex_ce_matches_loop():
    g = torch.Generator().manual_seed(0)
    h = torch.nn.functional.normalize(torch.randn(6, 12, generator=g, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    ce = SimplexCE(5, scale=7.0, label_smoothing=0.1).double()
    W = dsimplex(5).double()
    ref = sum(_ce_ls([7.0 * float(h[i, :4] @ W[c]) for c in range(5)], int(y[i]), 0.1) for i in range(6)) / 6
    assert float(ce(h, y)) == pytest.approx(ref, rel=1e-9)


def test_ancestor_nce_matches_loop_and_skips_same_label_negatives():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(5, 10, generator=g, dtype=torch.float64)
    G1 = torch.randn(5, 4, generator=g, dtype=torch.float64)
    G2 = torch.randn(5, 7, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 2, 1])
    got = AncestorNCE(mu=10.0)(h, [G1, G2], y)
    ref = []
    for G in (G1, G2):
        d = G.shape[1]
        tot = 0.0
        for i in range(5):
            z = _unit(h[i, :d].tolist())
            s = [10.0 * sum(a * b for a, b in zip(z, _unit(G[j].tolist()))) for j in range(5)]
            keep = [s[j] for j in range(5) if j == i or int(y[j]) != int(y[i])]
            tot += _lse(keep) - s[i]
        ref.append(tot / 5)
    assert float(got) == pytest.approx(sum(ref) / 2, rel=1e-9)
    # a same-label item's old vector is no negative: with only same-label items there is none left
    only0 = AncestorNCE(mu=10.0).one(h[[0, 1]], G1[[0, 1]], y[[0, 1]])
    assert float(only0) == pytest.approx(0.0, abs=1e-12)  # no negative left: log(1) = 0


def test_simplex_loss_weights_and_first_version():
    g = torch.Generator().manual_seed(2)
    h = torch.nn.functional.normalize(torch.randn(8, 12, generator=g), dim=1)
    y = torch.randint(0, 10, (8,), generator=g)
    G = torch.randn(8, 9, generator=g)
    loss_fn = SimplexLoss(10, lam=0.1, mu=10.0, scale=10.0)
    first, parts = loss_fn(h, [], y)
    assert set(parts) == {"simplex_ce"} and float(first) == pytest.approx(parts["simplex_ce"])
    tot, parts = loss_fn(h, [G], y)
    assert float(tot) == pytest.approx(0.1 * parts["simplex_ce"] + 0.9 * parts["ancestor_nce"], rel=1e-6)


def test_oca_loss_reads_the_renormalized_prefix_with_a_temperature():
    g = torch.Generator().manual_seed(3)
    h = torch.nn.functional.normalize(torch.randn(6, 9, generator=g, dtype=torch.float64), dim=1)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    P = torch.randn(4, 5, generator=g, dtype=torch.float64) * 0.4
    _, parts = OCALoss(P, temperature=0.5).double()(logits, h, y)
    ref = sum(_ce_ls([float(torch.tensor(_unit(h[i, :5].tolist()), dtype=P.dtype) @ P[c]) / 0.5 for c in range(4)],
                     int(y[i]), 0.1) for i in range(6)) / 6
    assert parts["bct"] == pytest.approx(ref, rel=1e-9)
    h2 = h.clone()
    h2[:, 5:] *= 7.0  # the extra dims do not enter the prototype terms
    _, p2 = OCALoss(P, temperature=0.5).double()(logits, h2, y)
    assert p2["bct"] == pytest.approx(parts["bct"], rel=1e-9) and p2["cos"] == pytest.approx(parts["cos"], rel=1e-9)


def test_orthogonal_layer_is_training_time_only():
    model = CompatModel(mlp(12), 12, 5, "oca")
    x = torch.randn(4, 64)
    h0 = model.embed(x).detach()
    logits0, h = model(x)
    assert torch.allclose(h, h0)
    assert torch.allclose(h0, torch.nn.functional.normalize(model.backbone(x), dim=1))
    with torch.no_grad():
        model.orth.lin.bias.add_(1.0)  # move T⊥: the logits change, the stored vector does not
    logits1, h1 = model(x)
    assert torch.allclose(h1, h0) and not torch.allclose(logits1, logits0)
    assert sum(p.numel() for p in model.orth.parameters()) > 0
    assert model.method == "oca" and CompatModel(mlp(12), 12, 5, "bct").orth is None


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(X))
    return X, y, perm[:1300], perm[1300:]


def test_simplex_classifier_is_fixed_and_shared(digits, tmp_path):
    X, y, tr, _ = digits
    cfg = BackboneConfig(method="simplex", num_classes=10, max_steps=5, device="cpu", quiet=True)
    a = train_backbone(mlp(12), X[tr], y[tr], config=cfg, checkpoint=tmp_path / "s.pt")
    b = train_backbone(mlp(20, 1), X[tr], y[tr], config=cfg, ancestor_vectors=[a.embed(X[tr])])
    assert not any(n.startswith("fc") for n, _ in a.model.named_parameters())
    assert torch.equal(a.model.fc.W, dsimplex(10)) and torch.equal(b.model.fc.W, dsimplex(10))
    assert {"simplex_ce", "ancestor_nce"} <= set(b.history[-1]) and "ancestor_nce" not in a.history[-1]
    m, ck = load_checkpoint(tmp_path / "s.pt", mlp(12, 7))
    assert ck["model_args"]["method"] == "simplex" and ck["model_args"]["recipe_version"] == RECIPE_VERSION["simplex"]
    np.testing.assert_allclose(a.embed(X[:5]), m.embed(torch.as_tensor(X[:5])).detach().numpy(), atol=1e-6)
    with pytest.raises(InvalidInputError, match="num_classes - 1"):
        train_backbone(mlp(6), X[tr], y[tr], config=cfg)
    with pytest.raises(InvalidInputError, match="ancestor_vectors"):
        train_backbone(mlp(12), X[tr], y[tr], config=cfg, ancestor_vectors=[np.zeros((3, 8), np.float32)])


def _chain_on_digits(X, y, tr, te, *, ancestors: bool, seed0: int = 0):
    from compatindex.trainer.backbone import grow_output

    kw = {"epochs": 30, "device": "cpu", "quiet": True, "batch_size": 64, "lr": 3e-4, "w_ancestor_cos": 1.0,
          "hoc_mu": 20.0}
    plan = [(3, 16), (6, 20), (10, 24)]
    gal, qry, nets = [], [], []
    for v, (c, d) in enumerate(plan):
        sel = y[tr] < c
        m = tr[sel]
        anc = [g[sel] for g in gal] if ancestors else []  # stored vectors of the same training items
        net = mlp(d, seed0 + v) if v == 0 else grow_output(nets[-1], d, seed=v)
        res = train_backbone(net, X[m], y[m], ancestor_vectors=anc,
                             config=BackboneConfig(method="simplex", num_classes=10, **kw))
        nets.append(res.model.backbone)
        gal.append(res.embed(X[tr]))
        qry.append(res.embed(X[te]))
    ytr, yte = y[tr], y[te]
    M = np.full((3, 3), np.nan)
    for j in range(3):
        for i in range(j, 3):
            M[i, j] = ev.cmc_map(qry[i], gal[j], yte, ytr, topk=(1,))["mAP"]
    return M


def test_simplex_chain_stays_compatible_on_digits(digits):
    """A planted 3-version chain on digits (classes 0-2, 0-5, 0-9; 16, 20, 24 dims), each version
    started from its parent: with the InfoNCE to every stored ancestor, every later version's
    queries beat the earlier version's own retrieval (mAP) in that version's gallery; without
    it (the same simplex and fine-tuning, no ancestor term) v2 queries in the v1 gallery do not."""
    X, y, tr, te = digits
    M = _chain_on_digits(X, y, tr, te, ancestors=True)
    assert M[1, 0] > M[0, 0] and M[2, 0] > M[0, 0] and M[2, 1] > M[1, 1], M
    assert ev.average_compatibility(M) == 1.0, M
    M0 = _chain_on_digits(X, y, tr, te, ancestors=False)
    assert ev.average_compatibility(M0) < 1.0, M0


def test_simplex_optional_terms_and_unlabelled_items(digits):
    X, y, tr, _ = digits
    rng = np.random.default_rng(0)
    G = rng.normal(size=(len(tr), 12)).astype(np.float32)
    P = rng.normal(size=(10, 12)).astype(np.float32)
    P[7] = np.nan  # a class without a prototype
    yl = np.where(y[tr] < 5, y[tr], -1)  # label -1: pair terms only
    cfg = BackboneConfig(method="simplex", num_classes=10, max_steps=3, device="cpu", quiet=True,
                         w_ancestor_cos=1.0, w_ancestor_proto=0.5)
    res = train_backbone(mlp(16), X[tr], yl, config=cfg, ancestor_vectors=[G], ancestor_prototypes=[P])
    last = res.history[-1]
    assert {"simplex_ce", "ancestor_nce", "ancestor_cos", "ancestor_proto"} <= set(last)
    assert all(np.isfinite(v) for v in last.values())
    with pytest.raises(InvalidInputError, match="ancestor_prototypes"):
        train_backbone(mlp(16), X[tr], yl, config=cfg, ancestor_vectors=[G])


def test_ancestor_classes_reach_the_ancestor_term_and_bad_values_are_refused(digits):
    """``ancestor_classes`` changes the ancestor InfoNCE only for classes an ancestor lacks:
    every class listed is the plain loss; a narrower list is another loss. Bad entries are
    refused with the parameter named."""
    X, y, tr, _ = digits
    G = np.random.default_rng(1).normal(size=(len(tr), 12)).astype(np.float32)
    cfg = BackboneConfig(method="simplex", num_classes=10, max_steps=1, device="cpu", quiet=True,
                         pair_negatives="same_labels")

    def first(**kw):
        return train_backbone(mlp(16), X[tr], y[tr], config=cfg, ancestor_vectors=[G], **kw).history[0]["ancestor_nce"]

    plain = first()
    assert first(ancestor_classes=[range(10)]) == pytest.approx(plain, rel=1e-6)
    assert first(ancestor_classes=[None]) == pytest.approx(plain, rel=1e-6)
    assert first(ancestor_classes=[[0, 1, 2]]) != pytest.approx(plain, rel=1e-3)
    for bad, msg in [([[0, 1], [2]], "one entry per ancestor"), ([[0, 10]], r"ancestor_classes\[0\].*10"),
                     ([[-1]], r"ancestor_classes\[0\]"), ([[0.5]], r"ancestor_classes\[0\]")]:
        with pytest.raises(InvalidInputError, match=msg):
            train_backbone(mlp(16), X[tr], y[tr], config=cfg, ancestor_vectors=[G], ancestor_classes=bad)
    with pytest.raises(InvalidInputError, match="ancestor_classes"):
        train_backbone(mlp(16), X[tr], y[tr], config=BackboneConfig(method="bct", num_classes=10, max_steps=1,
                                                                   quiet=True),
                       prototypes=np.zeros((10, 16), np.float32), ancestor_classes=[[0]])
