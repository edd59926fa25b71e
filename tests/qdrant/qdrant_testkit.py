"""Fixtures of the Qdrant backend tests: one sequence of operations run on both backends.

The sequence (``build``): v1 (16) -> v2 (24, orthogonal Q) -> v3 (32, orthogonal Q), and a
branch v1 -> b2 (20); adds in every version, labels and metadata, a partial backfill, a
backfill with ``drop_old``, another on the branch, and deletes. Run on the embedded index
(``compatindex.open(tmp/'e')``) and on the Qdrant backend in local mode
(``qdrant+local://tmp/q``), every read must agree.
"""

from __future__ import annotations

import numpy as np
import pytest

import compatindex


def random_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def build(ix, *, metric: str = "cosine", seed: int = 7, ids: str = "str") -> None:
    """The shared sequence of writes (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    name = (lambda i: f"item{i}") if ids == "str" else (lambda i: i)
    ix.create_version("v1", dim=16, metric=metric)
    ix.register_version("v2", "v1", 24, extension=random_orthogonal(24, rng), report={"gate": "passed", "mAP": 0.5})
    base = [name(i) for i in range(160)]
    X1 = rng.standard_normal((160, 16)).astype(np.float32)
    ix.add(base, X1, version="v1", labels=[i % 7 if i % 5 else None for i in range(160)],
           metadata=[{"n": i, "tag": "x"} if i % 3 == 0 else None for i in range(160)])
    ix.register_version("v3", "v2", 32, extension=random_orthogonal(32, rng), config={"method": "isometric"})
    ix.register_version("b2", "v1", 20)
    for ver, dim, lo in (("v2", 24, 200), ("v3", 32, 240), ("b2", 20, 280)):
        new = [name(i) for i in range(lo, lo + 25)]
        ix.add(new, rng.standard_normal((25, dim)).astype(np.float32), version=ver, labels=[f"c{i % 3}" for i in range(25)], raw=False)
    ix.backfill(base[:60], rng.standard_normal((60, 24)).astype(np.float32), version="v2", raw=False)
    ix.backfill(base[40:70], rng.standard_normal((30, 32)).astype(np.float32), version="v3", drop_old=True, raw=False)
    ix.backfill(base[100:115], rng.standard_normal((15, 20)).astype(np.float32), version="b2", raw=False)
    ix.delete(base[::13] + [name(205), name(250)])


def queries(dim: int, seed: int = 99, n: int = 6) -> np.ndarray:
    return np.random.default_rng(seed + dim).standard_normal((n, dim)).astype(np.float32)


DIMS = {"v1": 16, "v2": 24, "v3": 32, "b2": 20}


@pytest.fixture(scope="module", params=["cosine", "ip"])
def pair(request, tmp_path_factory):
    """(embedded Index, QdrantIndex in local mode, their folder) after the same writes.

    The cosine run keeps Qdrant's local mode on disk (as users run it); the ip run keeps it in
    memory, because local mode commits every point to SQLite one by one (~5-20 ms each here).
    """
    pytest.importorskip("qdrant_client")
    root = tmp_path_factory.mktemp(f"pair-{request.param}")
    emb = compatindex.open(root / "e")
    qd = compatindex.open(f"qdrant+local://{root}/q" if request.param == "cosine" else "qdrant+local://:memory:")
    build(emb, metric=request.param)
    build(qd, metric=request.param)
    yield emb, qd, root
    emb.close()
    qd.close()


def assert_same_results(got, ref, atol: float = 1e-4) -> None:
    """Same ids, versions and scores (ids may swap only where scores tie within ``atol``)."""
    assert got.ids.shape == ref.ids.shape
    np.testing.assert_array_equal(np.isfinite(got.scores), np.isfinite(ref.scores))
    fin = np.isfinite(ref.scores)
    np.testing.assert_allclose(got.scores[fin], ref.scores[fin], atol=atol, rtol=0)
    for i in range(len(ref)):
        for j in range(ref.k):
            if got.ids[i, j] != ref.ids[i, j]:
                assert abs(float(ref.scores[i, j]) - float(got.scores[i, j])) < atol  # a tie
                continue
            assert got.versions[i, j] == ref.versions[i, j]
