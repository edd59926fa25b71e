"""Search overhead (issue 13, item 7): exact shards never use a FAISS selector (it turns off the
BLAS path), shadowed hits are over-fetched and dropped, and the masks follow writes in place."""

from __future__ import annotations

import numpy as np
import pytest

import compatindex
from compatindex.embedded.shards import faiss_shard, shard_set
from compatindex.embedded.shards.shard_set import PrefView, _rep_of
from core_testkit import BruteForce, random_orthogonal

CHAIN = ("v1", "v2", "v3", "v4", "v5", "v6")


def chain_index(ix, bf, rng, n=600, dim=16):
    """A 6-version chain (same dim) with half the gallery backfilled along it (old vectors kept)."""
    ix.create_version("v1", dim=dim)
    bf.version("v1", dim)
    for a, b in zip(CHAIN, CHAIN[1:]):
        ix.register_version(b, a, dim, extension=random_orthogonal(dim, rng))
        bf.version(b, dim, a)
    X = rng.standard_normal((n, dim)).astype(np.float32)
    ix.add(list(range(n)), X, version="v1")
    bf.add(list(range(n)), X, "v1")
    half = list(range(0, n, 2))
    for name in CHAIN[1:]:
        Y = rng.standard_normal((len(half), dim)).astype(np.float32)
        ix.backfill(half, Y, version=name, raw=False)
        bf.backfill(half, Y, name)


def assert_exact(res, ref, atol=1e-4):
    ref_ids, ref_scores, _ = ref
    for i in range(len(res)):
        got = res.scores[i][np.isfinite(res.scores[i])]
        np.testing.assert_allclose(got, ref_scores[i], atol=atol)
        for j, (a, b) in enumerate(zip(res.ids[i], ref_ids[i])):
            if a != b:
                assert abs(ref_scores[i][j] - got[j]) < atol


@pytest.fixture
def count_selectors(monkeypatch):
    calls = []
    real = faiss_shard._bitmap_selector

    def spy(allowed):
        if allowed is not None:
            calls.append(len(allowed))
        return real(allowed)

    monkeypatch.setattr(faiss_shard, "_bitmap_selector", spy)
    return calls


@pytest.mark.parametrize("k", [1, 10, 100])
def test_flat_chain_search_is_exact_without_selectors(tmp_path, rng, count_selectors, k):
    ix, bf = compatindex.open(tmp_path / "ix", device="cpu"), BruteForce()
    chain_index(ix, bf, rng)
    Q = rng.standard_normal((50, 16)).astype(np.float32)
    count_selectors.clear()
    for qv in ("v6", "v3", "v1"):
        assert_exact(ix.search(Q, k=k, version=qv, raw=False), bf.search(Q, k, qv))
    assert count_selectors == []  # the flat path stayed on BLAS: no IDSelectorBitmap
    ix.close()


def test_queries_left_short_fall_back_to_a_selector_and_stay_exact(tmp_path, rng, count_selectors, monkeypatch):
    # Items whose v1 vectors are shadowed are made the best v1 matches, so an over-fetch of
    # k / represented-fraction candidates finds fewer than k represented ones: those queries are
    # searched again (wider, then with a selector) and the answer is still exact.
    monkeypatch.setattr(shard_set, "OVERFETCH_MAX", 40)
    ix, bf = compatindex.open(tmp_path / "ix", device="cpu"), BruteForce()
    ix.create_version("v1", dim=8)
    bf.version("v1", 8)
    ix.register_version("v2", "v1", 8)
    bf.version("v2", 8, "v1")
    q = np.ones(8, np.float32)
    X = rng.standard_normal((400, 8)).astype(np.float32)
    X[:100] = q + 0.01 * rng.standard_normal((100, 8))  # ids 0..99 are nearest to q ...
    ix.add(list(range(400)), X, version="v1")
    bf.add(list(range(400)), X, "v1")
    Y = -np.ones((100, 8), np.float32) + 0.01 * rng.standard_normal((100, 8)).astype(np.float32)
    ix.backfill(list(range(100)), Y, version="v2", raw=False)  # ... and all of them are shadowed for v2 queries
    bf.backfill(list(range(100)), Y, "v2")
    Q = np.stack([q, -q, rng.standard_normal(8).astype(np.float32)])
    for k in (5, 30):
        assert_exact(ix.search(Q, k=k, version="v2", raw=False), bf.search(Q, k, "v2"))
    assert count_selectors, "the query left short never reached the selector fallback"
    ix.close()


def test_fully_shadowed_shards_are_not_searched(tmp_path, rng, monkeypatch):
    ix, bf = compatindex.open(tmp_path / "ix", device="cpu"), BruteForce()
    chain_index(ix, bf, rng, n=200)
    searched = []
    real = faiss_shard.FaissShard.search

    def spy(self, q, k, allowed=None):
        searched.append(self)
        return real(self, q, k, allowed)

    monkeypatch.setattr(faiss_shard.FaissShard, "search", spy)
    Q = rng.standard_normal((5, 16)).astype(np.float32)
    assert_exact(ix.search(Q, k=10, version="v6", raw=False), bf.search(Q, 10, "v6"))
    shards = ix.backend.shards.shards
    # v2..v5 hold only items that also hold v6: nothing of theirs can be returned for a v6 query
    assert {id(s) for s in searched} == {id(shards[0]), id(shards[5])}
    ix.close()


def test_views_follow_writes_in_place(tmp_path, rng, monkeypatch):
    ix, bf = compatindex.open(tmp_path / "ix", device="cpu"), BruteForce()
    chain_index(ix, bf, rng, n=300)
    Q = rng.standard_normal((20, 16)).astype(np.float32)
    ix.search(Q, k=10, version="v6", raw=False)
    ix.search(Q, k=10, version="v2", raw=False)
    built = []
    real_init = PrefView.__init__

    def spy(self, pref, held):
        built.append(pref)
        real_init(self, pref, held)

    monkeypatch.setattr(PrefView, "__init__", spy)
    for step in range(12):  # adds, backfills with and without drop_old, deletes
        lo = 1000 + 10 * step
        X = rng.standard_normal((10, 16)).astype(np.float32)
        ix.add(list(range(lo, lo + 10)), X, version=CHAIN[step % 6], raw=False)
        bf.add(list(range(lo, lo + 10)), X, CHAIN[step % 6])
        some = [int(i) for i in rng.choice(300, 15, replace=False)]
        some = [i for i in some if i in bf.items]
        Y = rng.standard_normal((len(some), 16)).astype(np.float32)
        ix.backfill(some, Y, version=CHAIN[(step + 3) % 6], drop_old=step % 3 == 0, raw=False)
        bf.backfill(some, Y, CHAIN[(step + 3) % 6], drop_old=step % 3 == 0)
        gone = [i for i in list(bf.items)[:3]]
        ix.delete(gone)
        bf.delete(gone)
        for qv in ("v6", "v2"):
            assert_exact(ix.search(Q, k=10, version=qv, raw=False), bf.search(Q, 10, qv))
    assert built == []  # no view was recomputed over the gallery after a write
    sset = ix.backend.shards
    for pref, view in sset._views.items():  # the in-place state equals a fresh computation
        fresh = _rep_of(sset.held, pref)
        assert np.array_equal(view.rep[: len(fresh)], fresh)
        for vc in pref:
            has = ((sset.held >> np.uint64(vc)) & np.uint64(1)).astype(bool)
            assert view.shadowed[vc] == int((has & (fresh != vc)).sum())
            bm = view.bitmap(vc)
            if bm is not None:
                want = np.packbits(fresh == vc, bitorder="little")
                assert np.array_equal(bm[: len(want)], want)
                assert not bm[len(want):].any()
    ix.close()


@pytest.mark.parametrize("spec", ["ivf", "hnsw"])
def test_approximate_kinds_keep_their_masks(tmp_path, rng, spec):
    # IVF with nprobe = nlist is exact, HNSW with a wide ef nearly so: both still honour the masks
    shard = {"kind": "ivf", "nlist": 4, "nprobe": 4, "train_factor": 39} if spec == "ivf" else \
        {"kind": "hnsw", "m": 16, "ef_search": 256}
    ix, bf = compatindex.open(tmp_path / "ix", device="cpu", shard=shard), BruteForce()
    chain_index(ix, bf, rng, n=400)
    Q = rng.standard_normal((10, 16)).astype(np.float32)
    res = ix.search(Q, k=10, version="v6", raw=False)
    ref = bf.search(Q, 10, "v6")
    got = sum(len(set(a) & set(b)) for a, b in zip(res.ids.tolist(), ref[0]))
    assert got >= 0.95 * 100
    for row, vers in zip(res.ids.tolist(), res.versions.tolist()):
        assert len(set(row)) == len(row)
        for i, v in zip(row, vers):  # an item is returned by its representing version only
            assert v == ("v6" if i % 2 == 0 else "v1")
    ix.close()


def test_search_of_an_index_with_no_hits_resolves_nothing(tmp_path):
    ix = compatindex.open(tmp_path / "ix", device="cpu")
    ix.create_version("v1", dim=4)
    res = ix.search(np.ones((2, 4), np.float32), k=3, version="v1")  # nothing stored: no keys to resolve
    assert (res.ids == None).all()  # noqa: E711
    ix.add([1], np.ones((1, 4), np.float32))
    ix.delete([1])
    res = ix.search(np.ones((2, 4), np.float32), k=3, version="v1")
    assert (res.ids == None).all()  # noqa: E711
    ix.close()
