"""Crash safety: writer processes SIGKILLed at random moments lose nothing they acknowledged.

The protocol (child, acknowledgement log, model, checks) is in ``crashkit.py``; the bench script
``bench/stress_kill.py`` runs the same campaign with hundreds of kill points.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import compatindex
import crashkit


def _assert_clean(summary, points):
    assert summary["failures"] == [], json.dumps(summary, indent=1)
    assert summary["kill_points"] == points
    assert summary["acknowledged_writes"] > 0


def test_kill_points_quick(tmp_path):
    """A handful of kill points for the normal suite."""
    s = crashkit.run_campaign(tmp_path, points=5, seed=11, max_delay=0.6)
    _assert_clean(s, 5)


@pytest.mark.slow
def test_kill_points_ci(tmp_path):
    """>= 20 random kill points across add, backfill, delete, flush, close and open, then a
    register-focused campaign on a second index (version registration killed mid-way)."""
    mixed = crashkit.run_campaign(tmp_path / "mixed", points=22, seed=2024, max_delay=0.8)
    _assert_clean(mixed, 22)
    reg = crashkit.run_campaign(tmp_path / "register", points=8, seed=7, max_delay=0.4,
                                focus="register", max_versions=64)
    _assert_clean(reg, 8)
    assert mixed["final_versions"] >= 2 and reg["final_versions"] > mixed["final_versions"]
    kinds = set(mixed["kills_during"]) | set(reg["kills_during"])
    assert len(kinds) >= 4, kinds  # the kills landed in several kinds of call


def test_model_sees_partial_batches():
    """The checker itself: a state holding half of an in-flight batch matches neither candidate."""
    m = crashkit.Model()
    m.apply({"op": "create", "name": "v1", "dim": 4})
    op = {"op": "add", "ids": [1, 2], "version": "v1", "vseed": 5}
    full = m.copy()
    full.apply(op)
    half = {1: full.items[1]}
    assert crashkit.diff_state(m, m.versions, half) is not None
    assert crashkit.diff_state(full, full.versions, half) is not None
    assert crashkit.diff_state(full, full.versions, full.items) is None


_FLUSH_CHILD = r"""
import sys, numpy as np, compatindex
ix = compatindex.open(sys.argv[1])
rng = np.random.default_rng(0)
i = 100000
print("ready", flush=True)
while True:   # every add is followed by a flush of a ~2 MB shard: kills land inside shard saves
    ix.add(list(range(i, i + 8)), rng.standard_normal((8, 64)).astype(np.float32), version="v1")
    i += 8
    ix.flush()
"""


def test_kill_during_shard_flush_leaves_detectable_files(tmp_path):
    """Kill a process that flushes big shards in a loop: whatever half-written shard files it
    leaves (a .tmp, a new .faiss beside an old manifest) are detected and rebuilt on open, and the
    rebuilt shard is saved by the recovering writer."""
    path = tmp_path / "ix"
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=64)
        ix.add(list(range(8000)), np.random.default_rng(1).standard_normal((8000, 64)).astype(np.float32))
    rng = np.random.default_rng(3)
    seen_rebuild = 0
    for _ in range(4):
        p = subprocess.Popen([sys.executable, "-c", _FLUSH_CHILD, str(path)], stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(float(rng.uniform(0.05, 0.4)))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        with compatindex.open(path) as ix:
            seen_rebuild += any("rebuilt" in e for e in ix.backend.shards.events)
            assert ix.verify() == []
            n = ix.count
            assert n % 8 == 0
            b = ix.fetch("v1")
            Q = rng.standard_normal((4, 64)).astype(np.float32)
            ref = crashkit.brute_search({"v1": (None, 64)}, ["v1"], {int(i): {"v1": x} for i, x in zip(b.ids, b.vectors)},
                                        Q, 10, "v1")
            assert crashkit.compare_search(ix.search(Q, k=10), ref) is None
        with compatindex.open(path, readonly=True) as ro:
            assert ro.backend.shards.events == []  # the recovering writer saved sound shard files
            assert ro.verify() == []


def test_manifest_pointing_at_a_newer_shard_file_is_rebuilt(tmp_path):
    """The one torn state a kill between the two renames of a shard save can leave: the new
    ``.faiss`` beside the old ``.json``. The checksum catches it; nothing is lost."""
    path = tmp_path / "ix"
    rng = np.random.default_rng(0)
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=16)
        ix.add(list(range(100)), rng.standard_normal((100, 16)))
    old_manifest = (path / "shards" / "v000.json").read_bytes()
    with compatindex.open(path) as ix:
        ix.add(list(range(100, 200)), rng.standard_normal((100, 16)))
    (path / "shards" / "v000.json").write_bytes(old_manifest)  # new index file, old manifest
    (path / "shards" / "v000.faiss.tmp").write_bytes(b"half a file")  # a save cut short
    with compatindex.open(path) as ix:
        assert any("checksum" in e for e in ix.backend.shards.events)
        assert ix.count == 200 and ix.verify() == []
        assert sorted(ix.fetch("v1").ids) == list(range(200))
