"""What the Qdrant backend sends: no lost update between concurrent backfills, one query batch
per search, and a sample that downloads only the vectors it returns."""

from __future__ import annotations

import threading

import numpy as np
import pytest

qdrant_client = pytest.importorskip("qdrant_client")

import compatindex  # noqa: E402
from qdrant_testkit import DIMS, build, queries  # noqa: E402


def test_concurrent_backfills_of_the_same_items_lose_nothing():
    """Two writers backfill the same items into two versions at once. Every lookup both of them
    make rendezvous at a barrier, so each reads the items' state before the other writes (the
    interleaving that made a read-modify-write of a `versions` payload drop one writer's update)."""
    rng = np.random.default_rng(0)
    ids = [f"i{n}" for n in range(60)]
    with compatindex.open("qdrant+local://:memory:") as ix:
        ix.create_version("v1", dim=8)
        ix.register_version("v2", "v1", 8)
        ix.register_version("v3", "v1", 8)
        ix.add(ids, rng.standard_normal((60, 8)), version="v1")
        points = ix.backend.points
        real = points.retrieve
        barrier = threading.Barrier(2, timeout=20)

        def retrieve(*a, **kw):
            out = real(*a, **kw)
            barrier.wait()
            return out

        points.retrieve = retrieve  # type: ignore[method-assign]
        X = {v: rng.standard_normal((60, 8)).astype(np.float32) for v in ("v2", "v3")}
        errors: list[BaseException] = []

        def writer(version: str) -> None:
            try:
                for lo in range(0, 60, 10):
                    ix.backfill(ids[lo:lo + 10], X[version][lo:lo + 10], version=version, raw=False)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=writer, args=(v,)) for v in ("v2", "v3")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        points.retrieve = real  # type: ignore[method-assign]
        assert errors == []
        for v in ("v2", "v3"):
            got = ix.get_vectors(ids, version=v)
            np.testing.assert_allclose(got, X[v] / np.linalg.norm(X[v], axis=1, keepdims=True), atol=1e-5)
            # and search sees every item through its own version's vector
            res = ix.search(X[v], k=1, version=v, raw=False)
            assert list(res.ids[:, 0]) == ids and set(res.versions[:, 0]) == {v}
        assert ix.verify() == []


def test_one_query_batch_per_search(pair):
    _, qd, _ = pair
    client = qd.backend.client
    calls: list[int] = []
    real = client.query_batch_points

    def counting(collection, requests, **kw):
        calls.append(len(requests))
        return real(collection, requests=requests, **kw)

    client.query_batch_points = counting
    try:
        q = queries(DIMS["v3"], n=40)
        qd.search(q, 5, version="v3", raw=False)
    finally:
        client.query_batch_points = real
    assert calls == [40 * len(DIMS)]  # every (query, version) request in one round trip


def test_sample_downloads_only_the_vectors_it_returns(pair):
    emb, qd, _ = pair
    client = qd.backend.client
    downloaded = {"vectors": 0}
    real_scroll, real_retrieve = client.scroll, client.retrieve

    def count(recs):
        for r in recs:
            downloaded["vectors"] += len(r.vector or {}) if isinstance(r.vector, dict) else 0
        return recs

    client.scroll = lambda *a, **kw: (lambda out: (count(out[0]), out[1]))(real_scroll(*a, **kw))
    client.retrieve = lambda *a, **kw: count(real_retrieve(*a, **kw))
    try:
        got = qd.fetch("v1", limit=7, seed=5)
    finally:
        client.scroll, client.retrieve = real_scroll, real_retrieve
    assert downloaded["vectors"] == 7 == len(got)
    ref = emb.fetch("v1", limit=7, seed=5)  # the same draw as the embedded index
    assert got.ids == ref.ids and got.labels == ref.labels
    np.testing.assert_allclose(got.vectors, ref.vectors, atol=1e-6)


def test_an_unseeded_sample_is_drawn_by_the_server(pair):
    _, qd, _ = pair
    client = qd.backend.client
    calls: list[str] = []
    real_scroll, real_query = client.scroll, client.query_points
    client.scroll = lambda *a, **kw: (calls.append("scroll"), real_scroll(*a, **kw))[1]
    client.query_points = lambda *a, **kw: (calls.append("query_points"), real_query(*a, **kw))[1]
    try:
        got = qd.fetch("v1", limit=9)
    finally:
        client.scroll, client.query_points = real_scroll, real_query
    assert calls == ["query_points"] and len(got) == 9 and len(set(got.ids)) == 9
    assert qd.has(got.ids).all() and got.vectors.shape == (9, DIMS["v1"])
    np.testing.assert_allclose(got.vectors, qd.get_vectors(got.ids, version="v1"), atol=1e-6)
