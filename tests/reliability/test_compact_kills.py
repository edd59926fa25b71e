"""compact() is crash-safe (issue 13, item 1): a process that dies at any step of a compaction
leaves the old store or the new one, never a mix; the next open finishes or undoes the swap, and
every acknowledged write is there."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import compatindex

sys.path.insert(0, str(Path(__file__).parent))
from compact_child import vec  # noqa: E402

CHILD = Path(__file__).parent / "compact_child.py"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]))


def with_dead_data(path: Path) -> None:
    rng = np.random.default_rng(0)
    with compatindex.open(path, device="cpu") as ix:
        ix.create_version("v1", dim=16)
        ix.register_version("v2", "v1", 16)
        ix.add(list(range(3000)), rng.standard_normal((3000, 16)).astype(np.float32), version="v1")
        for _ in range(3):
            ix.backfill(list(range(0, 3000, 2)), rng.standard_normal((1500, 16)).astype(np.float32), version="v1")
        ix.backfill(list(range(500)), rng.standard_normal((500, 16)).astype(np.float32), version="v2", raw=False)
        ix.delete(list(range(2900, 3000)))


def snapshot(path: Path):
    q = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    with compatindex.open(path, device="cpu", readonly=True) as ro:
        res = ro.search(q, k=10, version="v2", raw=False)
        return {"count": ro.count, "v1": ro.fetch("v1"), "v2": ro.fetch("v2"), "ids": res.ids.tolist(),
                "scores": res.scores}


def same(a, b) -> None:
    assert a["count"] == b["count"]
    for v in ("v1", "v2"):
        assert a[v].ids == b[v].ids
        np.testing.assert_array_equal(a[v].vectors, b[v].vectors)
    assert a["ids"] == b["ids"]
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-6)


@pytest.mark.parametrize("step", ["before_copy", "mid_copy", "after_pending", "after_first_rename",
                                  "after_second_rename", "after_pending_removed", "done"])
def test_a_compaction_killed_at_each_step_leaves_old_or_new(tmp_path, step):
    path = tmp_path / "ix"
    with_dead_data(path)
    before = snapshot(path)
    size_before = (path / "store" / "data.mdb").stat().st_size
    p = subprocess.run([sys.executable, str(CHILD), step if step != "done" else "none", str(path)], env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == (0 if step == "done" else 9), p.stderr[-2000:]
    with compatindex.open(path, device="cpu") as ix:  # the writer's open finishes or undoes the swap
        assert ix.verify() == []
        left = sorted(f.name for f in path.iterdir())
        assert "store.compact" not in left and "store.old" not in left and "compact.pending" not in left, left
        compacted = ix.stats()["storage"]["dead_vector_bytes"] == 0
    same(snapshot(path), before)
    if step in ("after_pending", "after_first_rename", "after_second_rename", "after_pending_removed", "done"):
        assert compacted  # past the marker: the new store is in place
        assert (path / "store" / "data.mdb").stat().st_size < 0.6 * size_before
    with compatindex.open(path, device="cpu") as ix:  # and it takes writes, and compacts again
        ix.add([10 ** 6], np.ones((1, 16), np.float32), version="v1")
        ix.backend.compact()
        assert ix.verify() == [] and ix.count == before["count"] + 1


def test_kill_9_during_writes_and_compactions_loses_nothing(tmp_path):
    path, ack = tmp_path / "ix", tmp_path / "ack.log"
    with compatindex.open(path, device="cpu") as ix:
        ix.create_version("v1", dim=16)
    rnd = random.Random(3)
    last_of_round: set[int] = set()  # the batch each kill may have caught between commit and ack
    for round_ in range(4):
        p = subprocess.Popen([sys.executable, str(CHILD), "loop", str(path), str(ack), str(round_)], env=ENV,
                             stderr=subprocess.PIPE)
        time.sleep(rnd.uniform(1.5, 3.5))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        lines = ack.read_text().splitlines() if ack.exists() else []
        added = [int(l.split()[1]) for l in lines if l.startswith("add")]
        replaced = {int(l.split()[1]) for l in lines if l.startswith("replace")}
        if added:
            last_of_round.add(added[-1])
        with compatindex.open(path, device="cpu") as ix:
            assert ix.verify() == [], round_
            for start in added:
                ids = list(range(start, start + 50))
                assert ix.has(ids).all(), f"round {round_}: acknowledged batch {start} lost"
                got = ix.get_vectors(ids[:25], version="v1")
                options = [start in replaced]
                if start in last_of_round and start not in replaced:
                    options.append(True)  # the replacement in flight at a kill: committed or not
                ok = False
                for rep in options:
                    want = np.stack([vec(i + 1) if rep else vec(i) for i in ids[:25]])
                    want /= np.linalg.norm(want, axis=1, keepdims=True)
                    ok = ok or bool(np.allclose(got, want, atol=1e-6))
                assert ok, f"round {round_}: batch {start} holds other vectors than acknowledged"
            assert not (path / "store.compact").exists() and not (path / "store.old").exists()
    assert added, "no write was acknowledged"


def test_a_reader_in_another_process_follows_a_compaction(tmp_path):
    path = tmp_path / "ix"
    with_dead_data(path)
    before = snapshot(path)
    q = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    ro = compatindex.open(path, device="cpu", readonly=True)
    assert ro.search(q, k=10, version="v2", raw=False).ids.tolist() == before["ids"]
    p = subprocess.run([sys.executable, str(CHILD), "none", str(path)], env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert ro.backend.store.replaced()
    res = ro.search(q, k=10, version="v2", raw=False)  # reopens the new store and reloads its shards
    assert not ro.backend.store.replaced()
    assert res.ids.tolist() == before["ids"]
    assert ro.stats()["storage"]["dead_vector_bytes"] == 0
    assert ro.verify() == []
    ro.close()
