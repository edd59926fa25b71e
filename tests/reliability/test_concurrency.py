"""Concurrency across processes: one writer, three readers, and second writers that are refused
or wait (the roles are in ``concurkit.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import compatindex
import concurkit
import crashkit
from compatindex.errors import IndexLockedError

KIT = str(Path(concurkit.__file__).resolve())

_WAITER = r"""
import sys, time, numpy as np, compatindex
sys.path.insert(0, sys.argv[3])
import crashkit
t0 = time.monotonic()
with compatindex.open(sys.argv[1], lock_timeout=float(sys.argv[2])) as ix:   # blocks on the writer
    waited = time.monotonic() - t0
    ix.add(list(range(10**6, 10**6 + 16)), crashkit.gen_vectors(99, 16, 16), version="v1")
print(f"{waited:.2f}", flush=True)
"""


def run_session(tmp_path, seconds: float, deletes: bool, n_readers: int = 3) -> dict:
    path = tmp_path / "ix"
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=concurkit.DIM)
    log = tmp_path / "writer.log"
    done = tmp_path / "writer.done"
    flag = "1" if deletes else "0"
    writer = subprocess.Popen([sys.executable, KIT, "writer", str(path), str(log), str(seconds), flag, "5"],
                              stderr=subprocess.PIPE)
    readers = [subprocess.Popen([sys.executable, KIT, "reader", str(path), str(done), str(tmp_path / f"r{i}.json"),
                                 flag, str(i)], stderr=subprocess.PIPE) for i in range(n_readers)]
    # the writer holds the lock as soon as it has opened: wait for its first logged call
    deadline = time.monotonic() + 60
    while not (log.exists() and log.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.02)
    # a second writer fails at once, with a message that says who holds the index
    with pytest.raises(IndexLockedError, match=rf"open for writing by another process \(pid {writer.pid}\)") as ei:
        compatindex.open(path)
    assert "readonly=True" in ei.value.hint
    t0 = time.monotonic()
    with pytest.raises(IndexLockedError, match="waited 0.5 s"):
        compatindex.open(path, lock_timeout=0.5)
    assert time.monotonic() - t0 >= 0.45
    # ... or waits for the writer with lock_timeout, then writes
    waiter = subprocess.Popen([sys.executable, "-c", _WAITER, str(path), "300", str(Path(KIT).parent)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, werr = writer.communicate(timeout=seconds + 120)
    assert writer.returncode == 0, werr.decode()[-3000:]
    wout, werr = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, werr.decode()[-3000:]
    done.write_text("done")
    results = []
    for i, r in enumerate(readers):
        _, rerr = r.communicate(timeout=120)
        assert r.returncode == 0, rerr.decode()[-3000:]
        results.append(json.loads((tmp_path / f"r{i}.json").read_text()))
    for res in results:
        assert res["errors"] == [], res["errors"][0]
        assert res["violations"] == [], res["violations"][:5]
        assert res["searches"] > 0, res
    assert sum(res["stable_snapshots_checked"] for res in results) > 0, results
    # nothing the writer (or the waiter) acknowledged is missing; nothing else is there
    acked, pending, finished = crashkit.read_log(log)
    assert finished and pending is None
    model = crashkit.Model()
    model.apply({"op": "create", "name": "v1", "dim": concurkit.DIM})
    for op in acked:
        model.apply(op)
    model.apply({"op": "add", "ids": list(range(10**6, 10**6 + 16)), "version": "v1", "vseed": 99})
    with compatindex.open(path) as ix:
        assert ix.verify() == []
        versions, items = crashkit.observed_state(ix)
        assert crashkit.diff_state(model, versions, items) is None
        assert crashkit.check_search(ix, model.versions, model.order, model.items, np.random.default_rng(0)) is None
    return {"readers": results, "writes": len(acked), "waited_s": float(wout.decode().strip())}


def test_one_writer_three_readers_quick(tmp_path):
    """~8 s with deletes: readers never fail, never see a partial batch or a deleted id return,
    and their searches equal brute force on the snapshot they saw."""
    out = run_session(tmp_path, seconds=8.0, deletes=True)
    assert out["writes"] > 20


@pytest.mark.slow
def test_one_writer_three_readers_30s(tmp_path):
    """30 s of adds and backfills (plus a version registration): as above, and the item count a
    reader sees never goes backwards."""
    out = run_session(tmp_path, seconds=30.0, deletes=False)
    assert out["writes"] > 100
    assert out["waited_s"] > 5  # the waiting writer really waited for the first one to close


def test_writer_lock_is_released_by_a_killed_writer(tmp_path):
    """flock dies with its process: after a SIGKILLed writer the next writer opens at once."""
    path = tmp_path / "ix"
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=4)
    p = subprocess.Popen([sys.executable, "-c", "import sys, time, compatindex\n"
                          "ix = compatindex.open(sys.argv[1]); print('open', flush=True); time.sleep(600)", str(path)],
                         stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"open"
    with pytest.raises(IndexLockedError):
        compatindex.open(path)
    p.kill()
    p.wait()
    with compatindex.open(path) as ix:
        assert ix.verify() == []
