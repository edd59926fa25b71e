"""The benchmark's model cache follows the recipe: a changed trainer config or ``RECIPE_VERSION``
retrains, the same settings load from the cache, and a child can start from a cached parent."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")


def _data(n: int = 48) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"xg": rng.standard_normal((n, 1, 28, 28)).astype(np.float32), "yg": rng.integers(0, 4, n),
            "xq": rng.standard_normal((8, 1, 28, 28)).astype(np.float32), "yq": rng.integers(0, 4, 8)}


def test_cache_key_holds_the_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPATINDEX_BENCH_WORK", str(tmp_path))
    import bench.fmnist as fm
    from compatindex.trainer import backbone

    s = fm.Setup(quick=True, n_gallery=48, n_query=8, epochs_old=1, epochs_new=1, batch_size=16)
    d = _data()
    kw = {"method": "independent", "classes": 4, "d_out": 12, "epochs": 1}
    a = fm.train_model("m", s, d, **kw)
    assert not a["cached"] and fm.train_model("m", s, d, **kw)["cached"]
    assert not fm.train_model("m", s, d, **kw, label_smoothing=0.0)["cached"]  # another config: retrained
    fm.train_model("m", s, d, **kw)  # back to the defaults
    # an option added later, given at its neutral default, trains as before: the cache holds
    assert fm.train_model("m", s, d, **kw, unlabelled_targets="own")["cached"]
    assert not fm.train_model("m", s, d, **kw, unlabelled_targets="old_ranking")["cached"]
    fm.train_model("m", s, d, **kw)
    monkeypatch.setitem(backbone.RECIPE_VERSION, "independent", backbone.RECIPE_VERSION["independent"] + 1)
    assert not fm.train_model("m", s, d, **kw)["cached"]  # a new recipe version: retrained
    # simplex child started from the cached parent (output widened), against the parent's vectors
    p = fm.train_model("p", s, d, method="simplex", classes=2, num_classes=4, d_out=12, epochs=1)
    c = fm.train_model("c", s, d, method="simplex", classes=4, num_classes=4, d_out=16, epochs=1,
                       ancestors=[p["gallery"]], init_from="p", lineage=fm._digest(p["gallery"]))
    assert c["gallery"].shape == (48, 16)
    assert c["fingerprint"]["init_from"] == "p" and c["fingerprint"]["ancestors"] == [12]


def test_grow_output_keeps_the_parent_prefix():
    import torch
    from torch import nn

    from compatindex.errors import InvalidInputError
    from compatindex.trainer.backbone import grow_output

    torch.manual_seed(0)
    parent = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4))
    child = grow_output(parent, 6)
    x = torch.randn(3, 5)
    with torch.no_grad():
        out, ref = child(x), parent(x)
    assert out.shape == (3, 6)
    assert torch.allclose(out[:, :4], ref) and float(out[:, 4:].abs().max()) > 0
    assert parent[2].out_features == 4  # the parent is untouched
    with pytest.raises(InvalidInputError):
        grow_output(parent, 3)


def test_cache_key_follows_the_old_model(tmp_path, monkeypatch):
    """A child trained against other prototypes (a retrained old model) is retrained."""
    monkeypatch.setenv("COMPATINDEX_BENCH_WORK", str(tmp_path))
    import bench.fmnist as fm

    s = fm.Setup(quick=True, n_gallery=48, n_query=8, epochs_old=1, epochs_new=1, batch_size=16)
    d = _data()
    P = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    kw = {"method": "oca", "classes": 4, "d_out": 12, "d_parent": 8, "epochs": 1}
    assert not fm.train_model("c", s, d, prototypes=P, **kw)["cached"]
    assert fm.train_model("c", s, d, prototypes=P.copy(), **kw)["cached"]
    assert not fm.train_model("c", s, d, prototypes=P + 0.01, **kw)["cached"]
