"""The benchmark suite in CI: a reduced Fashion-MNIST scenario end to end (train old / independent /
BCT / OCA CNNs, post-hoc heads through ``upgrade()``, retrieval through ``Index.search``), plus
the benchmark's fast mAP against ``compatindex.evaluation``. Skips when Debian's
``dataset-fashion-mnist`` is not installed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.datasets import FASHION_MNIST_DIR

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

needs_fmnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST is absent: install Debian's `dataset-fashion-mnist` "
           "(apt-get install dataset-fashion-mnist)")


def test_fast_map_matches_eval() -> None:
    from bench.common import label_map
    from compatindex.evaluation import cmc_map

    rng = np.random.default_rng(0)
    g = rng.standard_normal((3000, 16)).astype(np.float32)
    q = rng.standard_normal((200, 20)).astype(np.float32)
    gl, ql = rng.integers(0, 5, 3000), rng.integers(0, 5, 200)
    g[:, :5] += 2 * np.eye(5)[gl]
    q[:, :5] += 2 * np.eye(5)[ql]
    for score in ("renorm", "pad"):
        assert label_map(q, g, ql, gl, score=score) == pytest.approx(cmc_map(q, g, ql, gl, score=score)["mAP"], abs=1e-6)


@pytest.mark.data
@needs_fmnist
def test_fmnist_reduced(tmp_path, monkeypatch) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small CNNs: one thread is faster on a shared 2-core machine
    try:
        _run_reduced(tmp_path, monkeypatch)
    finally:
        torch.set_num_threads(threads)


def _run_reduced(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COMPATINDEX_BENCH_WORK", str(tmp_path / "work"))
    import bench.common as common

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    import bench.fmnist as fm

    monkeypatch.setattr(fm, "RESULTS", tmp_path / "results")
    s = fm.Setup(quick=True, n_gallery=2000, n_query=400, epochs_old=2, epochs_new=2)
    r = fm.run(quick=True, s=s)
    out = json.loads((tmp_path / "results" / "fmnist-quick.json").read_text())
    assert (tmp_path / "results" / "fmnist-quick.md").exists()
    assert (tmp_path / "results" / "fmnist-quick.png").exists()
    assert set(out["methods"]) == {"independent", "bct", "oca", "oca+pairs", "oca+pairs-hoc", "oca+gallery", "oca-e12",
                                   "posthoc-isometric", "posthoc-oca", "posthoc-procrustes"}
    assert set(out["goals"]["issue12_targets"]) == {"oca", "oca-e12", "oca+pairs", "oca+pairs-hoc", "oca+gallery", "bct"}
    oo = r["old_old"]
    assert oo["top1"] > 0.5  # the old model retrieves its own gallery
    m = out["methods"]
    # an independently trained model is not compatible; compatible training and the heads are
    assert m["independent"]["new_old"]["top1"] < 0.4
    for name in ("bct", "oca", "oca+gallery", "posthoc-isometric", "posthoc-procrustes"):
        assert m[name]["new_old"]["top1"] > m["independent"]["new_old"]["top1"] + 0.2, name
    # isometric heads keep the new model's new/new exactly (same neighbours as the raw model)
    assert m["posthoc-isometric"]["new_new"]["top1"] == pytest.approx(m["independent"]["new_new"]["top1"], abs=0.01)
    # Index.search agrees with brute force on the OCA new/old top-1
    assert out["crosscheck_top1_agreement_oca_new_old"] > 0.99
    assert out["crosscheck_new_new_hit_versions"] == ["oca"]
