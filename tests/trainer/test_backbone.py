"""Whole-model training: 2-step smoke, exact resume, seeds, and the OCA protocol on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from compatindex import evaluation as ev
from compatindex.errors import InvalidInputError
from compatindex.trainer import BackboneConfig
from compatindex.trainer.backbone import (load_checkpoint, prototypes_from_model, train_backbone)


def mlp(d_out: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, d_out))


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(X))
    return X, y, perm[:1200], perm[1200:]


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_two_step_cpu_smoke(digits, tmp_path):
    X, y, tr, _ = digits
    P = np.random.default_rng(0).normal(size=(10, 16)).astype(np.float32)
    cfg = BackboneConfig(method="oca", d_parent=16, num_classes=10, max_steps=2, device="cpu", quiet=True)
    res = train_backbone(mlp(24), X[tr], y[tr], prototypes=P, config=cfg, checkpoint=tmp_path / "ck.pt")
    assert res.step == 2 and len(res.history) == 2 and np.isfinite(res.history[-1]["loss"])
    ck = torch.load(tmp_path / "ck.pt", weights_only=False)
    assert set(ck) >= {"model", "optimizer", "model_args", "config", "step"}
    assert ck["config"]["method"] == "oca" and ck["model_args"]["d_out"] == 24
    model, _ = load_checkpoint(tmp_path / "ck.pt", mlp(24, seed=9))
    np.testing.assert_allclose(res.embed(X[:5]), np.asarray(model.embed(torch.as_tensor(X[:5])).detach()),
                               atol=1e-6)


def test_pair_term_with_old_vectors(digits):
    X, y, tr, _ = digits
    rng = np.random.default_rng(0)
    P = rng.normal(size=(10, 16)).astype(np.float32)
    G = rng.normal(size=(len(tr), 16)).astype(np.float32)
    cfg = BackboneConfig(method="oca", d_parent=16, num_classes=10, max_steps=2, device="cpu", quiet=True)
    res = train_backbone(mlp(24), X[tr], y[tr], prototypes=P, old_vectors=G, config=cfg)
    assert {"pair_cos", "pair_nce", "bct", "ce"} <= set(res.history[-1])
    with pytest.raises(InvalidInputError, match="old_vectors"):
        train_backbone(mlp(24), X[tr], y[tr], prototypes=P, old_vectors=G[:5], config=cfg)


def test_resume_repeats_the_run_exactly(digits, tmp_path):
    X, y, tr, _ = digits
    P = np.random.default_rng(0).normal(size=(10, 16)).astype(np.float32)
    cfg = BackboneConfig(method="oca", d_parent=16, num_classes=10, epochs=1, batch_size=128, device="cpu",
                         quiet=True)
    full = train_backbone(mlp(24), X[tr], y[tr], prototypes=P, config=cfg)
    part = train_backbone(mlp(24), X[tr], y[tr], prototypes=P, config=cfg, checkpoint=tmp_path / "c.pt",
                          stop_at=4)
    assert part.step == 4
    resumed = train_backbone(mlp(24, seed=5), X[tr], y[tr], prototypes=P, config=cfg,
                             checkpoint=tmp_path / "c.pt")
    assert resumed.step == full.step == 10
    for a, b in zip(_params(full.model), _params(resumed.model)):
        assert torch.equal(a, b)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


def test_seed_changes_and_repeats(digits):
    X, y, tr, _ = digits
    cfg = BackboneConfig(method="independent", num_classes=10, max_steps=3, device="cpu", quiet=True)
    a = train_backbone(mlp(8), X[tr], y[tr], config=cfg)
    b = train_backbone(mlp(8), X[tr], y[tr], config=cfg)
    c = train_backbone(mlp(8), X[tr], y[tr], config=BackboneConfig(**{**cfg.to_dict(), "seed": 1}))
    assert all(torch.equal(p, q) for p, q in zip(_params(a.model), _params(b.model)))
    assert not all(torch.equal(p, q) for p, q in zip(_params(a.model), _params(c.model)))


def test_oca_needs_prototypes(digits):
    X, y, tr, _ = digits
    with pytest.raises(InvalidInputError, match="prototypes"):
        train_backbone(mlp(24), X[tr], y[tr], config=BackboneConfig(method="oca", d_parent=16, num_classes=10))


def test_oca_on_digits_is_compatible_and_keeps_new_quality(digits):
    """OCA's class-incremental protocol on digits: old model on classes 0-4, new on all 10."""
    X, y, tr, te = digits
    old_tr = tr[y[tr] < 5]
    kw = {"epochs": 30, "device": "cpu", "quiet": True}
    old = train_backbone(mlp(16, 0), X[old_tr], y[old_tr], config=BackboneConfig(method="independent",
                                                                                 num_classes=5, **kw))
    P = prototypes_from_model(old.model.embed, X[tr], y[tr], 10)
    oca = train_backbone(mlp(24, 1), X[tr], y[tr], prototypes=P,
                         config=BackboneConfig(method="oca", d_parent=16, num_classes=10, **kw))
    ind = train_backbone(mlp(24, 1), X[tr], y[tr], config=BackboneConfig(method="independent", num_classes=10, **kw))
    yt = y[te]
    G_old = old.embed(X[te])
    Z, Zi = oca.embed(X[te]), ind.embed(X[te])
    oo = ev.cmc_map(G_old, G_old, yt, yt, leave_one_out=True)["top1"]
    no = ev.cmc_map(Z, G_old, yt, yt, leave_one_out=True)["top1"]
    nn_ = ev.cmc_map(Z, Z, yt, yt, leave_one_out=True)["top1"]
    ind_nn = ev.cmc_map(Zi, Zi, yt, yt, leave_one_out=True)["top1"]
    ind_no = ev.cmc_map(Zi, G_old, yt, yt, leave_one_out=True)["top1"]
    assert no > oo, (no, oo)
    assert nn_ >= 0.97 * ind_nn, (nn_, ind_nn)
    assert ind_no < oo  # why compatibility training is needed
