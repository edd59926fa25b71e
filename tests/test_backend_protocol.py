"""The facade over any Backend: a third backend written only against the Protocol searches,
reads and refuses exactly like the embedded index (and like brute force)."""

from __future__ import annotations

import numpy as np
import pytest

import compatindex
from compatindex.backend import Backend
from compatindex.errors import DuplicateIdError, UnknownIdError, UnknownVersionError
from core_testkit import BruteForce
from reference_backend import DictBackend
from test_congruence import assert_same, build_lineage

DIMS = {"v1": 64, "v2": 80, "v3": 96, "b2": 72}


@pytest.fixture()
def trio():
    """(facade over DictBackend, embedded index, brute force) after the same writes."""
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    ref = compatindex.Index(DictBackend())
    emb = compatindex.open(":memory:")
    bf = BruteForce()
    build_lineage(ref, bf, rng_a)
    build_lineage(emb, BruteForce(), rng_b)
    yield ref, emb, bf
    emb.close()


def test_every_backend_satisfies_the_protocol(tmp_path):
    pytest.importorskip("qdrant_client")
    assert isinstance(DictBackend(), Backend)
    with compatindex.open(tmp_path / "e") as emb, compatindex.open("qdrant+local://:memory:") as qd:
        assert isinstance(emb.backend, Backend) and isinstance(qd.backend, Backend)


@pytest.mark.parametrize("score", ["renorm", "pad"])
def test_search_through_the_protocol_equals_the_embedded_index_and_brute_force(trio, score):
    ref, emb, bf = trio
    rng = np.random.default_rng(11)
    for qv, dim in DIMS.items():
        Q = rng.standard_normal((12, dim)).astype(np.float32)
        a, b = ref.search(Q, k=12, version=qv, score=score, raw=False), emb.search(Q, k=12, version=qv, score=score, raw=False)
        assert_same(a, bf.search(Q, 12, qv, score))
        assert_same(b, bf.search(Q, 12, qv, score))
        fin = np.isfinite(a.scores)
        assert (a.ids[fin] == b.ids[fin]).mean() > 0.99 and (a.versions[fin] == b.versions[fin]).mean() > 0.99


def test_reads_and_refusals_through_the_protocol(trio):
    ref, emb, _ = trio
    for ix in (ref, emb):
        assert ix.count == emb.count
        np.testing.assert_allclose(ix.get_vectors(["item1", "item2"], version="v1"),
                                   emb.get_vectors(["item1", "item2"], version="v1"), atol=1e-6)
        assert ix.fetch("v2", limit=5, seed=1).ids == emb.fetch("v2", limit=5, seed=1).ids
        with pytest.raises(DuplicateIdError, match="already in the index"):
            ix.add(["item1"], np.ones((1, 64)), version="v1")
        with pytest.raises(UnknownIdError, match="not in the index"):
            ix.backfill(["nope"], np.ones((1, 80)), version="v2", raw=False)
        with pytest.raises(UnknownVersionError, match="versions: v1, v2, v3, b2"):
            ix.search(np.ones((1, 64)), k=1, version="v9")
        assert ix.stats()["versions"]["v3"]["vectors"] == emb.stats()["versions"]["v3"]["vectors"]
