"""The faiss GPU mirror's masks and in-place refreshes, run with a CPU stand-in for the device.

The mirror (compatindex/embedded/shards/accel.py) cannot take FAISS selectors or remove rows, so
it over-fetches in proportion to the rows a query may not return and follows writes in place.
Here the device transfer is the identity, so everything but the GPU copy itself is checked
against the CPU shard: exact equality for flat shards at every mask size (the old mirror fell
back to the CPU past 2,048 excluded items), through adds and removals. The real GPU path runs
in bench/gpu_check.py on a GPU machine.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import compatindex
from compatindex.embedded.shards import accel, shard_set
from compatindex.embedded.shards.faiss_shard import FaissShard, ShardSpec


def identity(index):
    return index


def bitmap(allowed_ids, top):
    bits = np.zeros(top, dtype=bool)
    bits[allowed_ids] = True
    return np.packbits(bits, bitorder="little")


@pytest.fixture
def flat(rng):
    shard = FaissShard(16, ShardSpec.parse("flat"))
    x = rng.standard_normal((6000, 16)).astype(np.float32)
    shard.add(np.arange(6000, dtype=np.int64) * 2, x)  # sparse internal ids, as after deletes
    return shard


@pytest.mark.parametrize("allowed_frac", [1.0, 0.5, 0.3, 0.05, 0.001])
def test_flat_mirror_equals_cpu_shard_at_every_mask_size(flat, rng, allowed_frac):
    mirror = accel.FaissGpuMirror(flat, to_device=identity)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    ids = flat.ids()
    allowed = None if allowed_frac == 1.0 else bitmap(rng.choice(ids, int(len(ids) * allowed_frac), replace=False), 12_000)
    for k in (1, 10, 100):
        D0, I0 = flat.search(q, k, allowed)
        D1, I1 = mirror.search(q, k, allowed)
        np.testing.assert_array_equal(I1, I0)
        real = I0 >= 0  # padding scores differ (faiss: -FLT_MAX, the mirror: -inf); ids say -1 both
        np.testing.assert_allclose(D1[real], D0[real], rtol=1e-5, atol=1e-5)


def test_mirror_follows_writes_in_place(flat, rng):
    mirror = accel.FaissGpuMirror(flat, to_device=identity)
    q = rng.standard_normal((10, 16)).astype(np.float32)
    gone = flat.ids()[::7]
    new_ids = np.arange(20_001, 20_401, 2, dtype=np.int64)
    new_x = rng.standard_normal((len(new_ids), 16)).astype(np.float32)
    flat.remove(gone)
    flat.add(new_ids, new_x)
    assert mirror.refresh(gone, new_ids, new_x)  # followed in place: no rebuild
    allowed = bitmap(np.concatenate([flat.ids()[::3], new_ids]), 21_000)
    for a in (None, allowed):
        D0, I0 = flat.search(q, 25, a)
        D1, I1 = mirror.search(q, 25, a)
        np.testing.assert_array_equal(I1, I0)
    assert not set(gone.tolist()) & set(mirror.search(q, 200, None)[1].ravel().tolist())
    # past 20% dead rows the mirror asks to be rebuilt
    assert not mirror.refresh(flat.ids()[: len(flat.ids()) // 4], np.zeros(0, np.int64), None)


def test_ivf_mirror_matches_cpu_shard(rng):
    spec = ShardSpec.parse({"kind": "ivf", "nlist": 16, "nprobe": 4})
    shard = FaissShard(16, spec)
    shard.add(np.arange(5000, dtype=np.int64), rng.standard_normal((5000, 16)).astype(np.float32))
    assert shard.staging is None  # trained
    mirror = accel.FaissGpuMirror(shard, to_device=identity)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    allowed = bitmap(rng.choice(5000, 2500, replace=False), 5000)
    same = 0
    for a in (None, allowed):
        D0, I0 = shard.search(q, 10, a)
        D1, I1 = mirror.search(q, 10, a)
        same += sum(len(set(r0) & set(r1)) for r0, r1 in zip(I0.tolist(), I1.tolist()))
    assert same >= 0.99 * 2 * 20 * 10  # same probed lists: the same hits


def test_index_on_the_mirror_path_equals_cpu(tmp_path, rng, monkeypatch):
    """A whole index searched through the mirror (device forced to faiss-gpu, CPU stand-in) gives
    the CPU index's results on a half-backfilled gallery, through later writes."""
    monkeypatch.setattr(shard_set, "FaissGpuMirror", functools.partial(accel.FaissGpuMirror, to_device=identity))
    cpu, gpu = compatindex.open(tmp_path / "c"), compatindex.open(tmp_path / "g")
    gpu.backend.shards.device = "faiss-gpu"
    x1 = rng.standard_normal((3000, 8)).astype(np.float32)
    x2 = rng.standard_normal((1500, 12)).astype(np.float32)
    q = rng.standard_normal((15, 12)).astype(np.float32)
    for ix in (cpu, gpu):
        ix.create_version("v1", dim=8)
        ix.register_version("v2", "v1", 12)
        ix.add(list(range(3000)), x1, version="v1", raw=False)
        ix.backfill(list(range(0, 3000, 2)), x2, version="v2", raw=False)  # 1,500 shadowed v1 rows
    for step in range(2):
        a = cpu.search(q, 20, version="v2", raw=False)
        b = gpu.search(q, 20, version="v2", raw=False)
        assert a.ids.tolist() == b.ids.tolist()
        assert gpu.backend.shards._mirrors  # the mirror path ran
        for ix in (cpu, gpu):
            ix.delete(list(range(1, 300, 2)))  if step == 0 else None
            ix.backfill(list(range(1001, 1201, 2)), x2[:100], version="v2", raw=False) if step == 0 else None
    cpu.close(), gpu.close()
