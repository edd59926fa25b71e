"""Torch heads: orthogonality, exact isometry, export to head specs that numpy applies identically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from trainer_testkit import unit

from compatindex.core.heads import apply_head, validate_head
from compatindex.trainer.adapters import (HeadModel, OrthogonalLayer, embed_numpy, export_head, fit_head,
                                         project_all, retract_all)
from compatindex.trainer.closed_form import fit_isometric
from compatindex.trainer.config import TrainConfig
from compatindex.trainer.data import pairs_from_arrays
from compatindex.trainer.upgrade import to_space


@pytest.mark.parametrize("impl", ["param", "retract"])
def test_orthogonal_layer_weight_is_orthogonal_and_keeps_geometry(impl):
    torch.manual_seed(0)
    layer = OrthogonalLayer(6, impl=impl)
    W = layer.lin.weight.detach().double()
    assert torch.allclose(W.T @ W, torch.eye(6, dtype=torch.float64), atol=1e-5)
    a, c = torch.randn(3, 6), torch.randn(3, 6)
    b = layer.lin.bias
    lhs = ((layer(a) - b) * (layer(c) - b)).sum(1)
    assert torch.allclose(lhs, (a * c).sum(1), atol=1e-5)


def test_retraction_keeps_weight_orthonormal_through_updates():
    torch.manual_seed(0)
    head = HeadModel("isometry", 40, 48, orth_impl="retract")
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    x = torch.randn(64, 40)
    for _ in range(50):
        loss = -head.embed(x)[:, :8].sum()  # pulls the map away from orthonormal
        opt.zero_grad()
        loss.backward()
        opt.step()
        retract_all(head)
    W = head.head.matrix()
    assert np.abs(W.T @ W - np.eye(40)).max() < 1e-2  # near: one Newton-Schulz step per update
    project_all(head)
    W = head.head.matrix()
    assert np.abs(W.T @ W - np.eye(40)).max() < 1e-5


@pytest.mark.parametrize("impl", ["param", "retract"])
def test_isometry_head_preserves_new_new_after_training(synth, impl):
    H = unit(synth.H)
    y = synth.y.astype(np.int64)
    data = pairs_from_arrays(synth.H, synth.G, y)
    Q0, info = fit_isometric(H, synth.G, extra_dims=8)
    cfg = TrainConfig(steps=20, batch_size=128, quiet=True, orth_impl=impl)
    model, hist = fit_head("isometry", H, synth.G, d_v=info["dim"], cfg=cfg, labels=data.labels,
                           prototypes=data.prototypes, init=Q0[:, : H.shape[1]])
    assert {"ce", "bct", "cos", "pair_cos", "loss"} <= set(hist)
    Z = embed_numpy(model, H)
    np.testing.assert_allclose(Z @ Z.T, H @ H.T, atol=2e-5)
    out = export_head(model)
    Q = out["extension"]
    assert np.abs(Q.T.astype(np.float64) @ Q - np.eye(Q.shape[0])).max() < 1e-5
    np.testing.assert_allclose(to_space(out, synth.H), Z, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_exported_heads_match_torch(synth, kind):
    H = unit(synth.H)
    torch.manual_seed(0)
    model = HeadModel(kind, H.shape[1], 20, hidden=16)
    with torch.no_grad():  # move the zero-initialized last layer so the MLP branch matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = export_head(model)
    validate_head(out["head"])
    assert out["extension"] is None and out["dim"] == 20 and out["raw_dim"] == H.shape[1]
    np.testing.assert_allclose(apply_head(out["head"], synth.H), embed_numpy(model, H), atol=1e-5)


def test_sum_head_kind():
    x = np.ones((2, 3), np.float32)
    spec = {"kind": "sum", "branches": [{"kind": "linear", "W": np.eye(3), "b": None},
                                        {"kind": "linear", "W": 2 * np.eye(3), "b": np.ones(3)}]}
    assert validate_head(spec) == (3, 3)
    np.testing.assert_allclose(apply_head(spec, x), 4 * x)
    with pytest.raises(ValueError):
        validate_head({"kind": "sum", "branches": [{"kind": "linear", "W": np.eye(3)},
                                                   {"kind": "linear", "W": np.ones((2, 3))}]})


def _val_split(synth):
    H = unit(synth.H)
    y = synth.y.astype(np.int64)
    data = pairs_from_arrays(synth.H, synth.G, y)
    tr, va = slice(0, 1100), slice(1100, None)
    return H, y, data, tr, va


def test_head_falls_back_to_its_closed_form_start_when_training_only_hurts(synth):
    """An absurd learning rate wrecks the head; keep-best on the selection split returns the start."""
    H, y, data, tr, va = _val_split(synth)
    Q0, info = fit_isometric(H[tr], synth.G[tr], extra_dims=8)
    cfg = TrainConfig(steps=40, lr=5.0, eval_every=10, quiet=True, max_seconds=None)
    model, hist = fit_head("isometry", H[tr], synth.G[tr], d_v=info["dim"], cfg=cfg, labels=y[tr],
                           prototypes=data.prototypes, init=Q0[:, : H.shape[1]],
                           val=(H[va], synth.G[va], y[va]))
    assert hist["best_step"] == 0 and hist["val_best"] == hist["val_start"]
    np.testing.assert_allclose(embed_numpy(model, H[va]), H[va] @ Q0[:, : H.shape[1]].T, atol=1e-5)


def test_head_keeps_its_best_state_and_never_ends_below_the_start(synth):
    H, y, data, tr, va = _val_split(synth)
    Q0, info = fit_isometric(H[tr], synth.G[tr], extra_dims=8)
    cfg = TrainConfig(steps=60, eval_every=10, quiet=True, max_seconds=None, patience=None)
    model, hist = fit_head("isometry", H[tr], synth.G[tr], d_v=info["dim"], cfg=cfg, labels=y[tr],
                           prototypes=data.prototypes, init=Q0[:, : H.shape[1]],
                           val=(H[va], synth.G[va], y[va]))
    assert tuple(hist["val_best"]) >= tuple(hist["val_start"])
    assert hist["steps_run"] == 60 and not hist["stopped_early"]


def test_head_stops_after_patience_scorings_without_a_gain(synth):
    """An absurd learning rate never beats the start: with patience 2 the head stops at the second
    scoring without a gain (step 20 of 1000), keeps the start, and says it stopped early."""
    H, y, data, tr, va = _val_split(synth)
    Q0, info = fit_isometric(H[tr], synth.G[tr], extra_dims=8)
    cfg = TrainConfig(steps=1000, lr=5.0, eval_every=10, quiet=True, max_seconds=None, patience=2)
    model, hist = fit_head("isometry", H[tr], synth.G[tr], d_v=info["dim"], cfg=cfg, labels=y[tr],
                           prototypes=data.prototypes, init=Q0[:, : H.shape[1]],
                           val=(H[va], synth.G[va], y[va]))
    assert hist["steps_run"] == 20 and hist["stopped_early"] and hist["best_step"] == 0
    np.testing.assert_allclose(embed_numpy(model, H[va]), H[va] @ Q0[:, : H.shape[1]].T, atol=1e-5)


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3"])
def test_patience_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="`patience`"):
        TrainConfig(patience=bad)


def test_retracted_head_trains_and_ends_orthonormal(synth):
    """The retracted orthonormal weight (the large-dims implementation) is pulled back every few
    steps and snapped at the end: the exported head is an isometry however many steps ran."""
    H, y, data, tr, va = _val_split(synth)
    Q0, info = fit_isometric(H[tr], synth.G[tr], extra_dims=8)
    for steps in (7, 23):  # not multiples of the retraction period
        cfg = TrainConfig(steps=steps, eval_every=5, quiet=True, max_seconds=None, orth_impl="retract")
        model, hist = fit_head("isometry", H[tr], synth.G[tr], d_v=info["dim"], cfg=cfg, labels=y[tr],
                               prototypes=data.prototypes, init=Q0[:, : H.shape[1]], val=(H[va], synth.G[va], y[va]))
        assert np.isfinite(hist["loss"])
        Z = embed_numpy(model, H[va])
        np.testing.assert_allclose(np.linalg.norm(Z, axis=1), np.linalg.norm(H[va], axis=1), rtol=1e-4)


def test_head_has_no_orthogonal_layer_in_front_of_its_classifier():
    """An orthogonal layer followed by an unconstrained Linear constrains nothing."""
    model = HeadModel("isometry", 8, 10, n_classes=3)
    assert not any(isinstance(m, OrthogonalLayer) for m in model.modules())
    logits, z = model(torch.randn(4, 8))
    assert logits.shape == (4, 3) and z.shape == (4, 10)


def test_head_training_stops_at_its_time_budget(synth):
    H, y, data, tr, va = _val_split(synth)
    Q0, info = fit_isometric(H[tr], synth.G[tr], extra_dims=8)
    cfg = TrainConfig(steps=1_000_000, quiet=True, max_seconds=1.0, patience=None)
    _, hist = fit_head("isometry", H[tr], synth.G[tr], d_v=info["dim"], cfg=cfg, init=Q0[:, : H.shape[1]],
                       val=(H[va], synth.G[va], None))
    assert hist["stopped_early"] and hist["steps_run"] < 1_000_000


def test_gallery_rank_term_teaches_the_head_the_old_ranking_of_held_out_queries():
    """With ``w_rank`` and the stored gallery, a head ranks that gallery more like the old queries do
    on pairs it never trained on than the same head trained on the pair terms alone; keep-best
    then scores the ranking term on the selection split (a negated KL: never below its start).
    (The old vectors are less noisy than the fixture's here: an old ranking that is mostly noise
    cannot be learned from the new vectors by any head.)"""
    from compatindex.trainer.closed_form import fit_affine
    from compatindex.trainer.losses import GalleryRankLoss
    from trainer_testkit import make_synthetic

    synth = make_synthetic(old_noise=0.3)  # an old ranking the new vectors can predict
    H = unit(synth.H)
    tr, va, gal = slice(0, 800), slice(800, 1100), slice(1100, None)
    W, b = fit_affine(H[tr], synth.G[tr], ridge=1e-3)
    rank = GalleryRankLoss(torch.as_tensor(synth.G[gal]), tau=0.05)
    kl = {}
    for w in (0.0, 5.0):
        cfg = TrainConfig(steps=150, eval_every=25, quiet=True, max_seconds=None, patience=None, w_rank=w)
        model, hist = fit_head("linear", H[tr], synth.G[tr], d_v=synth.G.shape[1], cfg=cfg, init=(W, b),
                               val=(H[va], synth.G[va], None), gallery=synth.G[gal])
        kl[w] = float(rank(torch.as_tensor(embed_numpy(model, H[va])), torch.as_tensor(synth.G[va])))
        if w:
            assert hist["val_start"][0] < 0 and hist["val_best"][0] > hist["val_start"][0]
            assert hist["val_best"][0] == pytest.approx(-kl[w], abs=1e-5)
            assert "gallery_rank" in hist and hist["gallery_rank_rows"] == len(synth.G[gal])
    assert kl[5.0] < kl[0.0]


@pytest.mark.parametrize("field,bad", [("w_rank", -1.0), ("w_rank", float("nan")), ("rank_temperature", 0.0),
                                       ("rank_gallery", 1), ("rank_gallery", 2.5)])
def test_gallery_rank_settings_are_validated(field, bad):
    from compatindex.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=f"`{field}`.*{bad!r}".replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**{field: bad})
