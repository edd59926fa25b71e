"""A full disk: the write that does not fit fails with StoreFullError and leaves the index exactly
as it was. Simulated with RLIMIT_FSIZE in a subprocess (SIGXFSZ ignored, so writes past the limit
return EFBIG, which is what a full filesystem's ENOSPC looks like to LMDB and to shard saves), and
with a small tmpfs where the machine lets us mount one. (Map growth: test_persistence.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import compatindex

_CHILD = r"""
import json, os, resource, signal, sys
import numpy as np, compatindex
from compatindex.errors import StoreFullError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
path, margin, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(1)
Q = rng.standard_normal((4, 32)).astype(np.float32)

def state(ix):
    r = ix.search(Q, k=10, version="v1")
    return [ix.count, ix.stats()["seq"], r.ids.tolist(), r.scores.round(5).tolist(),
            sorted(ix.fetch("v1").ids)[:50], [v.name for v in ix.versions()]]

out = {"errors": []}
ix = compatindex.open(path)
before = state(ix)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(os.path.join(path, "store", "data.mdb")) + margin, hard))
n = 10000
try:
    if what == "add":
        ix.add(list(range(10**6, 10**6 + n)), rng.standard_normal((n, 32)), version="v1")
    elif what == "backfill":
        ix.backfill(list(range(2000)), rng.standard_normal((2000, 40)), version="v2", raw=False)
    elif what == "register":
        ix.register_version("v3", "v1", 1024, extension=np.eye(1024), report={"blob": "x" * 2_000_000})
    out["outcome"] = "fitted"
except StoreFullError as exc:
    out["outcome"] = "StoreFullError"
    out["message"] = str(exc)
except Exception as exc:
    out["outcome"] = f"{type(exc).__name__}: {exc}"
out["unchanged"] = state(ix) == before
out["verify"] = ix.verify()
ix.close()   # shard saves may fail here too: they are derived, close only warns
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
with compatindex.open(path) as ix:
    out["after_reopen_unchanged"] = state(ix) == before
    out["verify_after_reopen"] = ix.verify()
    ix.add([-1], rng.standard_normal((1, 32)), version="v1")   # room again: writes work
    out["count_after_room"] = ix.count
print(json.dumps(out))
"""


def _make(path):
    rng = np.random.default_rng(0)
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=32)
        ix.register_version("v2", "v1", 40)
        ix.add(list(range(2000)), rng.standard_normal((2000, 32)), version="v1")


@pytest.mark.parametrize("what,margin", [("add", 0), ("add", 8192), ("add", 200_000), ("backfill", 4096),
                                         ("register", 4096)])
def test_file_size_limit_gives_store_full_and_changes_nothing(tmp_path, what, margin):
    path = tmp_path / "ix"
    _make(path)
    p = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(margin), what],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["outcome"] == "StoreFullError", out
    assert "data.mdb" in out["message"] or "store" in out["message"]
    assert "free disk space" in out["message"]  # the hint says what to do
    assert out["unchanged"] and out["after_reopen_unchanged"], out
    assert out["verify"] == [] and out["verify_after_reopen"] == [], out
    assert out["count_after_room"] == 2001


_TMPFS_CHILD = r"""
import sys, numpy as np, compatindex
from compatindex.errors import StoreFullError
path = sys.argv[1]
rng = np.random.default_rng(0)
ix = compatindex.open(path)
ix.create_version("v1", dim=64)
added = 0
try:
    while True:
        ix.add(list(range(added, added + 1000)), rng.standard_normal((1000, 64)))
        added += 1000
except StoreFullError as exc:
    print("FULL", added, ix.count, ix.verify() == [], flush=True)
ix.close()
"""


def test_small_tmpfs_fills_up_cleanly(tmp_path):
    """A real ENOSPC on a 4 MiB tmpfs (needs root and mount rights; skipped elsewhere)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        p = subprocess.run([sys.executable, "-c", _TMPFS_CHILD, str(mnt / "ix")], capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        tag, added, count, ok = p.stdout.split()
        assert tag == "FULL" and int(added) == int(count) and ok == "True", p.stdout
        with compatindex.open(mnt / "ix", readonly=True) as ix:
            assert ix.count == int(added)
            assert sorted(ix.fetch("v1").ids) == list(range(int(added)))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
