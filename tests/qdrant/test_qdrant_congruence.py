"""Congruence: the Qdrant backend (local mode) answers exactly like the embedded index."""

from __future__ import annotations

import numpy as np
import pytest

qdrant_client = pytest.importorskip("qdrant_client")

import compatindex  # noqa: E402
from compatindex.qdrant import QdrantBackend  # noqa: E402
from qdrant_testkit import DIMS, assert_same_results, queries  # noqa: E402


@pytest.mark.parametrize("score", ["renorm", "pad"])
@pytest.mark.parametrize("qv", ["v1", "v2", "v3", "b2"])
def test_search_identical(pair, qv, score):
    emb, qd, _ = pair
    assert isinstance(qd, compatindex.Index) and isinstance(qd.backend, QdrantBackend)
    q = queries(DIMS[qv])
    for k in (1, 10):
        assert_same_results(qd.search(q, k, version=qv, score=score, raw=False), emb.search(q, k, version=qv, score=score, raw=False))


def test_search_k_beyond_count_pads_like_embedded(pair):
    emb, qd, _ = pair
    q = queries(32, n=2)
    k = emb.count + 5
    got, ref = qd.search(q, k, version="v3", raw=False), emb.search(q, k, version="v3", raw=False)
    assert_same_results(got, ref)
    assert (got.ids[:, -5:] == None).all() and np.isneginf(got.scores[:, -5:]).all()  # noqa: E711


def test_versions_registry_identical(pair):
    emb, qd, _ = pair
    ev, qv = emb.versions(), qd.versions()
    assert [v.name for v in qv] == [v.name for v in ev]
    for a, b in zip(ev, qv):
        assert (a.dim, a.parent, a.metric, a.raw_dim, a.code) == (b.dim, b.parent, b.metric, b.raw_dim, b.code)
        assert a.report == b.report and a.config == b.config
        if a.extension is None:
            assert b.extension is None
        else:
            np.testing.assert_array_equal(a.extension, b.extension)
    assert qd.latest.name == emb.latest.name == "b2"
    assert qd.lineage("v3") == emb.lineage("v3") == ["v1", "v2", "v3"]
    assert qd.lca("v3", "b2") == emb.lca("v3", "b2") == "v1"
    raw = queries(24, n=3)
    np.testing.assert_allclose(qd.to_version_space(raw, version="v2"), emb.to_version_space(raw, version="v2"))


def test_items_identical(pair):
    emb, qd, _ = pair
    assert qd.count == emb.count
    probe = ["item0", "item1", "item13", "item205", "item241", "nope"]
    probe = probe if emb.stats()["id_kind"] == "str" else [0, 1, 13, 205, 241, 999]
    np.testing.assert_array_equal(qd.has(probe), emb.has(probe))
    for v in ("v1", "v2", "v3", "b2"):
        a, b = emb.fetch(v), qd.fetch(v)
        assert a.ids == b.ids and a.labels == b.labels
        np.testing.assert_allclose(b.vectors, a.vectors, atol=1e-6)
        a, b = emb.fetch(v, limit=7, seed=3), qd.fetch(v, limit=7, seed=3)
        assert a.ids == b.ids
        some = a.ids[:4]
        np.testing.assert_allclose(qd.get_vectors(some, version=v), emb.get_vectors(some, version=v), atol=1e-6)
        assert qd.fetch(v, ids=some).labels == emb.fetch(v, ids=some).labels
    es, qs = emb.stats(), qd.stats()
    assert qs["items"] == es["items"] and qs["id_kind"] == es["id_kind"]
    for name, e in es["versions"].items():
        assert qs["versions"][name]["vectors"] == e["vectors"]
        assert qs["versions"][name]["coverage"] == pytest.approx(e["coverage"])
    assert qd.verify() == [] and emb.verify() == []


def test_int_ids_and_reopen(tmp_path):
    url = f"qdrant+local://{tmp_path}/q#ints"
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((40, 8)).astype(np.float32), rng.standard_normal((10, 12)).astype(np.float32)
    Q = rng.standard_normal((4, 12)).astype(np.float32)
    refs = []
    for path in (tmp_path / "e", url):
        with compatindex.open(path) as ix:
            ix.create_version("a", dim=8, metric="ip")
            ix.add(np.arange(40), X, version="a", raw=False)
            ix.register_version("b", "a", 12)
            ix.backfill(list(range(10)), Y, version="b", raw=False)
            ix.delete([3, 39])
            refs.append(ix.search(Q, 8, version="b", score="pad", raw=False))
    assert_same_results(refs[1], refs[0])
    with compatindex.open(url, readonly=True) as again:  # everything lives in Qdrant
        assert_same_results(again.search(Q, 8, version="b", score="pad", raw=False), refs[0])
        assert again.stats()["id_kind"] == "int" and again.count == 38
        assert isinstance(again.search(Q, 1, version="b", raw=False).ids[0, 0], int)
        assert again.verify() == []


def test_raw_queries_through_a_head(tmp_path):
    head = {"kind": "linear", "in_dim": 12, "out_dim": 12,
            "W": np.random.default_rng(0).standard_normal((12, 12)).astype(np.float32), "b": None}
    out = []
    for path in (tmp_path / "e", f"qdrant+local://{tmp_path}/q"):
        with compatindex.open(path) as ix:
            ix.create_version("a", dim=8)
            ix.register_version("b", "a", 16, head=head)
            rng = np.random.default_rng(5)
            ix.add(list(range(40)), rng.standard_normal((40, 8)).astype(np.float32), version="a", raw=False)
            ix.add(list(range(40, 60)), rng.standard_normal((20, 12)).astype(np.float32), version="b", raw=True)
            out.append(ix.search(rng.standard_normal((3, 12)).astype(np.float32), 6, version="b", raw=True))
    assert_same_results(out[1], out[0])
