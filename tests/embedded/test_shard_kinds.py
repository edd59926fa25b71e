"""Shard kinds (issue 13, item 2): IVF keeps its own id -> vector access (the torch mirror works
after deletes), HNSW replaces vectors without rebuilding its graph, IVF retrains when it grew far
past its training sample, and the torch mirror follows writes in place with the CPU's masks."""

from __future__ import annotations

import numpy as np
import pytest

import compatindex
from compatindex.embedded.shards import FaissShard, ShardSpec

IVF = {"kind": "ivf", "nlist": 4, "nprobe": 4, "train_factor": 39}


def test_ivf_vectors_after_deletes_without_a_direct_map(rng):
    shard = FaissShard(8, ShardSpec.parse(IVF))
    x = rng.standard_normal((400, 8)).astype(np.float32)
    shard.add(np.arange(400), x)
    assert shard.staging is None  # trained
    shard.remove(np.arange(0, 400, 3))
    ids, got = shard.vectors()
    order = np.argsort(ids)
    keep = np.setdiff1d(np.arange(400), np.arange(0, 400, 3))
    assert np.array_equal(ids[order], keep)
    np.testing.assert_array_equal(got[order], x[keep])
    assert shard.index.direct_map.type == 0  # never built: removals stay possible
    shard.remove(np.array([1, 2]))  # and removals still work
    assert shard.ntotal == len(keep) - 2


def test_torch_mirror_of_ivf_after_deletes_matches_the_cpu(tmp_path, rng):
    pytest.importorskip("torch")
    x = rng.standard_normal((400, 8)).astype(np.float32)
    q = rng.standard_normal((5, 8)).astype(np.float32)
    out = {}
    for device in ("cpu", "torch"):
        ix = compatindex.open(tmp_path / device, device=device, shard=IVF)
        ix.create_version("v1", dim=8)
        ix.add(list(range(400)), x)
        ix.delete(list(range(0, 400, 7)))
        out[device] = ix.search(q, k=10, version="v1")
        ix.close()
    assert out["torch"].ids.tolist() == out["cpu"].ids.tolist()  # nprobe = nlist: both exact
    np.testing.assert_allclose(out["torch"].scores, out["cpu"].scores, atol=1e-5)


HNSW = {"kind": "hnsw", "m": 16, "ef_search": 200}


def test_hnsw_replacement_adds_a_fresh_node_without_rebuilding(rng, monkeypatch):
    def unit(a):
        return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)

    shard = FaissShard(8, ShardSpec.parse(HNSW))
    x = unit(rng.standard_normal((2000, 8)))  # unit vectors: inner product finds a vector itself
    shard.add(np.arange(2000), x)
    rebuilt = []
    monkeypatch.setattr(FaissShard, "compact", lambda self: rebuilt.append(1))
    y = unit(rng.standard_normal((3, 8)))
    for _ in range(2):  # replace the same items twice: each time a fresh node, a new tombstone
        shard.remove(np.array([5, 6, 7]))
        shard.add(np.array([5, 6, 7]), y)
    assert rebuilt == []
    assert shard.ntotal == 2000 and len(shard.tombstones) == 6
    ids, got = shard.vectors()
    at = {int(i): j for j, i in enumerate(ids)}
    np.testing.assert_array_equal(got[[at[5], at[6], at[7]]], y)
    D, I = shard.search(y, 1)
    assert I[:, 0].tolist() == [5, 6, 7]  # the new vectors are found under the items' ids ...
    D, I = shard.search(x[[5, 6, 7]], 1)
    assert (D[:, 0] < 0.9999).all()  # ... and the old ones are gone (their nodes are tombstones)


def test_hnsw_tombstones_compact_past_a_fifth_and_survive_reopen(tmp_path, rng):
    path = tmp_path / "ix"
    ix = compatindex.open(path, device="cpu", shard=HNSW)
    ix.create_version("v1", dim=8)
    ix.add(list(range(1000)), rng.standard_normal((1000, 8)).astype(np.float32))
    new = rng.standard_normal((100, 8)).astype(np.float32)
    ix.backfill(list(range(100)), new, version="v1")  # 100 replacements: 10% tombstones, no rebuild
    shard = ix.backend.shards.shards[0]
    assert len(shard.tombstones) == 100 and int(shard.index.ntotal) == 1100
    res = ix.search(new[:20], k=1, version="v1")
    assert [r[0] for r in res.ids.tolist()] == list(range(20))
    ix.close()
    with compatindex.open(path, device="cpu", shard=HNSW) as again:
        s2 = again.backend.shards.shards[0]
        assert again.backend.shards.events == [] and len(s2.tombstones) == 100
        assert [r[0] for r in again.search(new[:20], k=1, version="v1").ids.tolist()] == list(range(20))
        again.backfill(list(range(100, 250)), rng.standard_normal((150, 8)).astype(np.float32), version="v1")
        s3 = again.backend.shards.shards[0]
        assert len(s3.tombstones) == 0 and int(s3.index.ntotal) == 1000  # past 20%: rebuilt once
        assert again.verify() == []


def test_ivf_retrains_after_growing_tenfold_and_says_so(tmp_path, rng):
    path = tmp_path / "ix"
    ix = compatindex.open(path, device="cpu", shard=IVF)
    ix.create_version("v1", dim=8)
    x = rng.standard_normal((2000, 8)).astype(np.float32)
    ix.add(list(range(200)), x[:200])  # trained on the first 156 (39 x 4 lists)
    info = ix.stats()["versions"]["v1"]["shard"]
    assert info["trained"] and info["trained_on"] == 200 and info["retrains"] == 0
    for s in range(200, 2000, 100):
        ix.add(list(range(s, s + 100)), x[s : s + 100])
    info = ix.stats()["versions"]["v1"]["shard"]
    assert info["retrains"] == 1 and info["trained_on"] == 2000 and info["retrain_at"] == 20000
    q = rng.standard_normal((5, 8)).astype(np.float32)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    want = np.argsort(-(qn @ xn.T), axis=1)[:, :5]
    assert ix.search(q, k=5, version="v1").ids.tolist() == want.tolist()  # nprobe = nlist: exact
    ix.close()
    with compatindex.open(path, device="cpu", shard=IVF) as again:
        assert again.stats()["versions"]["v1"]["shard"]["trained_on"] == 2000  # recorded in the manifest


def test_torch_mirror_follows_writes_in_place_with_the_cpus_masks(tmp_path, rng):
    pytest.importorskip("torch")
    from compatindex.embedded.shards.accel import TorchMirror

    ixs = {d: compatindex.open(tmp_path / d, device=d) for d in ("cpu", "torch")}
    for ix in ixs.values():
        ix.create_version("v1", dim=8)
        ix.register_version("v2", "v1", 8)
    x = rng.standard_normal((600, 8)).astype(np.float32)
    q = rng.standard_normal((6, 8)).astype(np.float32)
    for ix in ixs.values():
        ix.add(list(range(600)), x, version="v1")
        ix.search(q, k=5, version="v2", raw=False)  # builds the mirror
    mirror = ixs["torch"].backend.shards._mirrors[0]
    assert isinstance(mirror, TorchMirror)
    for step in range(6):
        y = rng.standard_normal((20, 8)).astype(np.float32)
        ids = list(range(step * 20, step * 20 + 20))
        new = rng.standard_normal((5, 8)).astype(np.float32)
        for ix in ixs.values():
            ix.backfill(ids, y, version="v2", raw=False)  # v1 rows of these items become shadowed
            ix.delete([599 - step])
            ix.add([1000 + step * 5 + j for j in range(5)], new, version="v1")
        a, b = (ixs[d].search(q, k=10, version="v2") for d in ("cpu", "torch"))
        assert a.ids.tolist() == b.ids.tolist()
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    assert ixs["torch"].backend.shards._mirrors[0] is mirror  # refreshed in place, never rebuilt
    assert int((~mirror.alive).sum()) == 6
    for ix in ixs.values():
        ix.close()
