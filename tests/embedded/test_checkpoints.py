"""Storage lifecycle (issue 13, item 1): a flush saves only the shards that changed, shards are
checkpointed automatically (by op count and by time), and the op log is truncated up to the
oldest checkpoint any shard needs."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import compatindex
from core_testkit import BruteForce


def two_versions(path, rng, n=300):
    ix = compatindex.open(path, device="cpu")
    ix.create_version("v1", dim=8)
    ix.register_version("v2", "v1", 8)
    ix.add(list(range(n)), rng.standard_normal((n, 8)).astype(np.float32), version="v1")
    ix.add(list(range(n, n + 50)), rng.standard_normal((50, 8)).astype(np.float32), version="v2", raw=False)
    return ix


def stat_of(p):
    st = os.stat(p)
    return st.st_ino, st.st_mtime_ns, st.st_size


def test_a_one_version_write_rewrites_only_that_shard(tmp_path, rng):
    path = tmp_path / "ix"
    two_versions(path, rng).close()
    v1_file, v2_file = path / "shards" / "v000.faiss", path / "shards" / "v001.faiss"
    before_v1, before_v2 = stat_of(v1_file), stat_of(v2_file)
    time.sleep(0.01)
    with compatindex.open(path, device="cpu") as ix:
        ix.add([1000, 1001], rng.standard_normal((2, 8)).astype(np.float32), version="v2", raw=False)
        ix.backfill([0, 1], rng.standard_normal((2, 8)).astype(np.float32), version="v2", raw=False)  # keeps v1's vectors
        seq = ix.backend.store.seq()
    assert stat_of(v1_file) == before_v1  # v1's shard file untouched ...
    assert stat_of(v2_file) != before_v2  # ... v2's rewritten
    import json

    assert json.loads((path / "shards" / "v000.json").read_text())["seq"] == seq  # manifest moved on
    with compatindex.open(path, device="cpu", readonly=True) as ro:
        assert ro.backend.shards.events == []  # loaded as saved: no rebuild, no replay
        assert ro.verify() == []
    with compatindex.open(path, device="cpu") as ix:  # a write that removes v1 vectors does rewrite it
        ix.backfill([2], rng.standard_normal((1, 8)).astype(np.float32), version="v2", drop_old=True, raw=False)
    assert stat_of(v1_file) != before_v1


def wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def oplog_keys(ix):
    with ix.backend.store.read() as r:
        with r.txn.cursor(db=ix.backend.store.db["oplog"]) as cur:
            return [int.from_bytes(k, "big", signed=True) for k in cur.iternext(keys=True, values=False)]


def test_shards_are_checkpointed_by_op_count_and_the_op_log_is_truncated(tmp_path, rng):
    path = tmp_path / "ix"
    ix = two_versions(path, rng)
    ix.backend.checkpoint_ops = 10
    bf_ids = []
    for step in range(60):
        ix.add([5000 + step], rng.standard_normal((1, 8)).astype(np.float32), version="v1")
        bf_ids.append(5000 + step)
    seq = ix.backend.store.seq()
    be = ix.backend
    assert wait_for(lambda: be.shards.saved_seq(0) >= seq - 10)  # saved without flush() or close()
    assert be.shards.saved_seq(1) >= seq - 10  # the untouched v2 shard's manifest moved on too
    keys = oplog_keys(ix)
    assert keys and keys[0] > seq - 30  # truncated: about two checkpoint intervals are left
    with be.store.read() as r:
        assert be.store.oplog_from(r) == keys[0]
    # a reader opened now loads the checkpoint and replays fewer than 2 intervals of writes
    with compatindex.open(path, readonly=True, device="cpu") as ro:
        replays = [e for e in ro.backend.shards.events if "replayed" in e or "rebuilt" in e]
        assert all("rebuilt" not in e for e in replays)
        assert all(int(e.split()[1]) <= 20 for e in replays), replays
        assert ro.has(bf_ids).all()
        assert ro.verify() == []
    ix.close()


def test_shards_are_checkpointed_by_age(tmp_path, rng):
    ix = two_versions(tmp_path / "ix", rng)
    ix.backend.checkpoint_seconds = 0.2
    ix.add([9999], rng.standard_normal((1, 8)).astype(np.float32), version="v2", raw=False)
    seq = ix.backend.store.seq()
    assert wait_for(lambda: ix.backend.shards.saved_seq(1) == seq, timeout=5)
    ix.close()


def test_a_reader_left_behind_by_truncation_reloads_and_stays_exact(tmp_path, rng):
    path = tmp_path / "ix"
    ix = two_versions(path, rng)  # (the writer opens first: LMDB opens a store once per process)
    ix.backend.checkpoint_ops = 5
    ro = compatindex.open(path, readonly=True, device="cpu")
    Q = rng.standard_normal((5, 8)).astype(np.float32)
    ro.search(Q, k=5, version="v2", raw=False)
    for step in range(40):  # the reader does not look meanwhile
        ix.add([7000 + step], rng.standard_normal((1, 8)).astype(np.float32), version="v2", raw=False)
        ix.delete([step])
        if step % 10 == 9:
            ix.backend.checkpoint()
    with ix.backend.store.read() as r:
        assert ix.backend.store.oplog_from(r) > ro.backend.shards.seq + 1  # the reader's tail is gone
    res = ro.search(Q, k=5, version="v2", raw=False)
    assert any("reloaded" in e for e in ro.backend.shards.events)
    ref = ix.search(Q, k=5, version="v2", raw=False)
    np.testing.assert_allclose(res.scores, ref.scores, atol=1e-5)
    assert res.ids.tolist() == ref.ids.tolist()
    assert ro.verify() == []
    ro.close()
    ix.close()


def test_a_replayed_tail_is_applied_once_per_shard_and_equals_the_writer(tmp_path, rng, monkeypatch):
    from compatindex.embedded.shards import faiss_shard

    path = tmp_path / "ix"
    ix = two_versions(path, rng)
    ix.flush()
    for step in range(30):  # adds, replacements in both versions, deletes, a new version midway
        ix.add([2000 + step], rng.standard_normal((1, 8)).astype(np.float32), version="v1")
        ix.backfill([step, 2000 + step], rng.standard_normal((2, 8)).astype(np.float32), version="v2", raw=False)
        ix.backfill([step], rng.standard_normal((1, 8)).astype(np.float32), version="v1")
        ix.delete([100 + step])
        if step == 15:
            ix.register_version("v3", "v2", 8)
            ix.add([3000], np.ones((1, 8), np.float32), version="v3", raw=False)
    calls = []
    real = faiss_shard.FaissShard.remove

    def spy(self, iids):
        calls.append(len(iids))
        return real(self, iids)

    monkeypatch.setattr(faiss_shard.FaissShard, "remove", spy)
    q = rng.standard_normal((6, 8)).astype(np.float32)
    with compatindex.open(path, readonly=True, device="cpu") as ro:  # the shards replay 150 writes
        assert any("replayed" in e for e in ro.backend.shards.events)
        assert len(calls) <= 3  # one removal per shard, not one per write
        for qv in ("v1", "v2", "v3"):
            a, b = ro.search(q, k=10, version=qv, raw=False), ix.search(q, k=10, version=qv, raw=False)
            assert a.ids.tolist() == b.ids.tolist()
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
        assert ro.verify() == []
    ix.close()
