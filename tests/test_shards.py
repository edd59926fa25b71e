"""Shard kinds and search backends: IVF and HNSW stay correct through deletes, backfills and
reopen; the torch backend (the CUDA path, run here on the CPU) equals the faiss CPU path."""

from __future__ import annotations

import numpy as np
import pytest

import compatindex
from compatindex.errors import InvalidInputError
from compatindex.embedded.shards import ShardSpec
from core_testkit import BruteForce, random_orthogonal


def fill(ix, bf, rng, n=1500):
    ix.create_version("v1", dim=16)
    bf.version("v1", 16)
    ix.register_version("v2", "v1", 24, extension=random_orthogonal(24, rng))
    bf.version("v2", 24, "v1")
    X = rng.standard_normal((n, 16)).astype(np.float32)
    ix.add(list(range(n)), X, version="v1")
    bf.add(list(range(n)), X, "v1")
    Y = rng.standard_normal((n // 3, 24)).astype(np.float32)
    ix.backfill(list(range(n // 3)), Y, version="v2", raw=False)
    bf.backfill(list(range(n // 3)), Y, "v2")
    gone = list(range(0, n, 11))
    ix.delete(gone)
    bf.delete(gone)


def recall(res, ref_ids):
    hits = sum(len(set(a) & set(b)) for a, b in zip(res.ids.tolist(), ref_ids))
    return hits / sum(len(b) for b in ref_ids)


@pytest.mark.parametrize("spec,min_recall", [
    ({"kind": "ivf", "nlist": 8, "nprobe": 8, "train_factor": 39}, 0.999),   # nprobe = nlist: exact
    ({"kind": "ivf", "nlist": 16, "nprobe": 4, "train_factor": 39}, 0.6),
    ({"kind": "hnsw", "m": 16, "ef_search": 128}, 0.95),
])
def test_approximate_shards(tmp_path, rng, spec, min_recall):
    bf = BruteForce()
    path = tmp_path / "ix"
    ix = compatindex.open(path, shard=spec)
    fill(ix, bf, rng)
    Q = rng.standard_normal((40, 24)).astype(np.float32)
    ref = bf.search(Q, 10, "v2")
    res = ix.search(Q, k=10, version="v2", raw=False)
    assert recall(res, ref[0]) >= min_recall
    for row in res.ids:  # one hit per item, deleted items never come back
        real = [x for x in row if x is not None]
        assert len(set(real)) == len(real)
        assert not any(x % 11 == 0 for x in real)
    assert ix.verify() == []
    ix.close()
    with compatindex.open(path) as again:  # persisted with its spec, loaded not rebuilt
        assert again.backend.shards.spec == ShardSpec.parse(spec)
        assert again.backend.shards.events == []
        assert recall(again.search(Q, k=10, version="v2", raw=False), ref[0]) >= min_recall


def test_ivf_stays_exact_before_training(mem_index, rng):
    ix = compatindex.open(":memory:", shard={"kind": "ivf", "nlist": 64, "nprobe": 1})
    ix.create_version("v1", dim=8)
    X = rng.standard_normal((100, 8)).astype(np.float32)  # < 39 * 64: not trained yet
    ix.add(list(range(100)), X)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    res = ix.search(Xn[:5], k=3)
    assert [r[0] for r in res.ids.tolist()] == [0, 1, 2, 3, 4]
    ix.close()


def test_changing_the_shard_spec_rebuilds(tmp_path, rng):
    path = tmp_path / "ix"
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=8)
        ix.add(list(range(50)), rng.standard_normal((50, 8)))
    with compatindex.open(path, shard={"kind": "hnsw"}) as ix:
        assert any("rebuilt" in e for e in ix.backend.shards.events)
        assert ix.backend.shards.shards[0].ntotal == 50
    with compatindex.open(path) as ix:  # the new spec was recorded
        assert ix.backend.shards.spec.kind == "hnsw"


@pytest.mark.parametrize("device", ["torch", "torch-fp16"])
def test_torch_backend_matches_faiss(rng, device):
    pytest.importorskip("torch")
    bf = BruteForce()
    cpu = compatindex.open(":memory:", device="cpu")
    tor = compatindex.open(":memory:", device=device)
    for ix in (cpu, tor):
        fill(ix, BruteForce(), np.random.default_rng(5), n=600)
    Q = rng.standard_normal((20, 24)).astype(np.float32)
    for score in ("pad", "renorm"):
        a = cpu.search(Q, k=10, version="v2", score=score, raw=False)
        b = tor.search(Q, k=10, version="v2", score=score, raw=False)
        atol = 1e-5 if device == "torch" else 5e-3
        np.testing.assert_allclose(a.scores, b.scores, atol=atol)
        if device == "torch":
            assert a.ids.tolist() == b.ids.tolist()
    assert tor.backend.shards.device == device
    cpu.close()
    tor.close()


def test_bad_shard_spec_and_device():
    with pytest.raises(InvalidInputError, match="shard.kind"):
        compatindex.open(":memory:", shard={"kind": "lsh"})
    with pytest.raises(InvalidInputError, match="shard.nlist"):
        compatindex.open(":memory:", shard={"kind": "ivf", "nlist": 0})
    with pytest.raises(InvalidInputError, match="`device`"):
        compatindex.open(":memory:", device="tpu")


@pytest.mark.gpu
def test_gpu_backend_matches_cpu(rng):
    from compatindex.embedded.faiss_import import num_gpus

    torch = pytest.importorskip("torch")
    if num_gpus() == 0 and not torch.cuda.is_available():
        pytest.skip("no GPU on this machine")
    cpu = compatindex.open(":memory:", device="cpu")
    gpu = compatindex.open(":memory:", device="gpu")
    for ix in (cpu, gpu):
        fill(ix, BruteForce(), np.random.default_rng(5), n=3000)
    Q = rng.standard_normal((50, 24)).astype(np.float32)
    a, b = cpu.search(Q, k=10, version="v2", raw=False), gpu.search(Q, k=10, version="v2", raw=False)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_hnsw_replaced_vector_never_returns_the_old_one(rng):
    ix = compatindex.open(":memory:", shard={"kind": "hnsw", "m": 8})
    ix.create_version("v1", dim=8)
    X = rng.standard_normal((200, 8)).astype(np.float32)
    ix.add(list(range(200)), X)
    new = -X[:1]  # the opposite direction: the old vector would score +1 against X[0]
    ix.backfill([0], new, version="v1")
    res = ix.search(X[:1], k=200)
    row = res.ids[0].tolist()
    assert row.count(0) == 1
    score_of_0 = res.scores[0][row.index(0)]
    assert score_of_0 == pytest.approx(-1.0, abs=1e-5)
    ix.close()
