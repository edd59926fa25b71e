"""Cross-version search equals brute force over representative vectors (docs/concepts.md)."""

from __future__ import annotations

import numpy as np
import pytest

import compatindex
from core_testkit import BruteForce, random_orthogonal


def build_lineage(ix, bf, rng, *, metric="cosine"):
    """v1 (64) -> v2 (80) -> v3 (96), and a branch v1 -> b2 (72); a mixed gallery with deletes."""
    ix.create_version("v1", dim=64, metric=metric)
    bf.version("v1", 64)
    ix.register_version("v2", "v1", 80, extension=random_orthogonal(80, rng))
    bf.version("v2", 80, "v1")
    ix.register_version("v3", "v2", 96, extension=random_orthogonal(96, rng))
    bf.version("v3", 96, "v2")
    ix.register_version("b2", "v1", 72)
    bf.version("b2", 72, "v1")
    ids = [f"item{i}" for i in range(400)]
    X1 = rng.standard_normal((400, 64)).astype(np.float32)
    ix.add(ids, X1, version="v1")
    bf.add(ids, X1, "v1")
    # add some items natively in later versions
    for name, dim, lo in (("v2", 80, 400), ("v3", 96, 500), ("b2", 72, 560)):
        new = [f"item{i}" for i in range(lo, lo + 50)]
        X = rng.standard_normal((50, dim)).astype(np.float32)
        ix.add(new, X, version=name, raw=False)
        bf.add(new, X, name)
    # partial backfills, one dropping old vectors
    bf_ids = ids[:120]
    X2 = rng.standard_normal((120, 80)).astype(np.float32)
    ix.backfill(bf_ids, X2, version="v2", raw=False)
    bf.backfill(bf_ids, X2, "v2")
    X3 = rng.standard_normal((40, 96)).astype(np.float32)
    ix.backfill(ids[60:100], X3, version="v3", drop_old=True, raw=False)
    bf.backfill(ids[60:100], X3, "v3", drop_old=True)
    Xb = rng.standard_normal((30, 72)).astype(np.float32)
    ix.backfill(ids[200:230], Xb, version="b2", raw=False)
    bf.backfill(ids[200:230], Xb, "b2")
    gone = ids[::17] + ["item410", "item520"]
    ix.delete(gone)
    bf.delete(gone)


def assert_same(res, ref, atol=1e-4):
    ref_ids, ref_scores, ref_vers = ref
    for i in range(len(res)):
        got_scores = res.scores[i][np.isfinite(res.scores[i])]
        np.testing.assert_allclose(got_scores, ref_scores[i], atol=atol)
        # ids equal except where scores tie within tolerance
        for j, (a, b) in enumerate(zip(res.ids[i], ref_ids[i])):
            if a != b:
                assert abs(ref_scores[i][j] - got_scores[j]) < atol


@pytest.mark.parametrize("score", ["renorm", "pad"])
@pytest.mark.parametrize("qv", ["v1", "v2", "v3", "b2"])
def test_search_matches_brute_force(score, qv, rng):
    bf = BruteForce()
    with compatindex.open(":memory:") as ix:
        build_lineage(ix, bf, rng)
        dim = {"v1": 64, "v2": 80, "v3": 96, "b2": 72}[qv]
        Q = rng.standard_normal((25, dim)).astype(np.float32)
        res = ix.search(Q, k=15, version=qv, score=score, raw=False)
        ref = bf.search(Q, 15, qv, score)
        assert_same(res, ref)
        # the version each hit matched through is the representative one
        for i in range(len(res)):
            for hid, hv, rid, rv in zip(res.ids[i], res.versions[i], ref[0][i], ref[2][i]):
                if hid == rid:
                    assert hv == rv
        # one hit per item
        for row in res.ids:
            assert len(set(row)) == len(row)


def test_ip_metric_keeps_norms(rng):
    bf = BruteForce(metric="ip")
    with compatindex.open(":memory:") as ix:
        build_lineage(ix, bf, rng, metric="ip")
        Q = rng.standard_normal((10, 80)).astype(np.float32)
        for score in ("pad", "renorm"):
            assert_same(ix.search(Q, k=10, version="v2", score=score, raw=False), bf.search(Q, 10, "v2", score))


def test_pad_and_renorm_rank_an_all_old_gallery_identically(rng):
    with compatindex.open(":memory:") as ix:
        ix.create_version("v1", dim=32)
        ix.register_version("v2", "v1", 48, extension=random_orthogonal(48, rng))
        ix.add(list(range(300)), rng.standard_normal((300, 32)), version="v1")
        Q = rng.standard_normal((20, 48))
        a = ix.search(Q, k=10, version="v2", score="pad", raw=False)
        b = ix.search(Q, k=10, version="v2", score="renorm", raw=False)
        assert (a.ids == b.ids).all()
        assert not np.allclose(a.scores, b.scores)  # renorm rescales the cut query


def test_k_larger_than_index_returns_what_exists(mem_index, rng):
    mem_index.create_version("v1", dim=8)
    mem_index.add([1, 2, 3], rng.standard_normal((3, 8)))
    res = mem_index.search(rng.standard_normal((2, 8)), k=10)
    assert res.ids.shape == (2, 10)
    assert (res.found == 3).all()
    assert all(x is None for x in res.ids[:, 3:].ravel())
    assert np.isneginf(res.scores[:, 3:]).all()
    assert len(res[0]) == 3


def test_raw_path_maps_through_Q_and_head(mem_index, rng):
    mem_index.create_version("v1", dim=16)
    Q = random_orthogonal(24, rng)
    W = rng.standard_normal((20, 12)).astype(np.float32)
    head = {"kind": "linear", "W": W, "b": None}
    v2 = mem_index.register_version("v2", "v1", 24, extension=Q, head=head)
    assert v2.raw_dim == 12
    H = rng.standard_normal((5, 12)).astype(np.float32)
    z = mem_index.to_version_space(H, version="v2")
    expected = (np.hstack([H @ W.T, np.zeros((5, 4))]) @ Q.T)
    np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-4)
    mem_index.add(["a", "b", "c", "d", "e"], H, version="v2", raw=True)
    got = mem_index.get_vectors(["a"], version="v2")
    np.testing.assert_allclose(got[0], expected[0] / np.linalg.norm(expected[0]), atol=1e-5)
    res = mem_index.search(H[:1], k=1, version="v2", raw=True)
    assert res.ids[0, 0] == "a"


def test_orthogonal_extension_preserves_new_to_new_scores(mem_index, rng):
    mem_index.create_version("v1", dim=16)
    Q = random_orthogonal(20, rng)
    mem_index.register_version("v2", "v1", 20, extension=Q, raw_dim=20)
    H = rng.standard_normal((50, 20)).astype(np.float32)
    mem_index.add(list(range(50)), H, version="v2", raw=True)
    res = mem_index.search(H[:5], k=50, version="v2", raw=True)
    Hn = H / np.linalg.norm(H, axis=1, keepdims=True)
    for i in range(5):
        ref = np.sort(Hn[i] @ Hn.T)[::-1]
        np.testing.assert_allclose(res.scores[i], ref, atol=1e-5)
