"""`compatindex add --skip-existing`: resuming an interrupted add skips what was stored, refuses what differs,
and never removes items it did not add."""

from __future__ import annotations

import json

import numpy as np

import compatindex
from cli_testutil import Cli, snapshot


def _setup(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "ids.txt").write_text("\n".join(f"s{i}" for i in range(100)) + "\n")
    path = tmp_path / "ix"
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=8)
        ix.add([f"s{i}" for i in range(30)], X[:30], version="v1")  # an earlier add cut short
    return path, X


def test_resume_adds_only_the_rest(tmp_path):
    path, X = _setup(tmp_path)
    cli = Cli()
    cli.fails("add", path, tmp_path / "x.npy", "--ids", tmp_path / "ids.txt", match="already in INDEX")
    out = json.loads(cli("add", path, tmp_path / "x.npy", "--ids", tmp_path / "ids.txt", "--skip-existing",
                         "--json", "-q").stdout)
    assert out["added"] == 70 and out["skipped"] == 30 and out["count"] == 100
    with compatindex.open(path, readonly=True) as ix:
        got = ix.get_vectors([f"s{i}" for i in range(100)], version="v1")
    np.testing.assert_allclose(got, X / np.linalg.norm(X, axis=1, keepdims=True), atol=1e-6)


def test_a_different_stored_vector_is_refused_and_changes_nothing(tmp_path):
    path, X = _setup(tmp_path)
    X2 = X.copy()
    X2[5] += 1.0  # s5 is stored with another vector
    np.save(tmp_path / "x.npy", X2)
    before = snapshot(path)
    Cli().fails("add", path, tmp_path / "x.npy", "--ids", tmp_path / "ids.txt", "--skip-existing",
                match="1 ids are already in the index with a different vector")
    assert snapshot(path) == before


def test_a_failure_after_skipping_rolls_back_only_what_it_added(tmp_path, monkeypatch):
    path, X = _setup(tmp_path)
    real = compatindex.Index.add
    calls = {"n": 0}

    def flaky(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise compatindex.errors.StoreFullError("disk full (simulated)")
        return real(self, *a, **kw)

    monkeypatch.setattr(compatindex.Index, "add", flaky)
    Cli().fails("add", path, tmp_path / "x.npy", "--ids", tmp_path / "ids.txt", "--skip-existing",
                "--batch-size", 40, match="were removed again")
    with compatindex.open(path, readonly=True) as ix:
        assert ix.count == 30  # the 30 stored before this run are still there, the new ones are gone
        assert ix.has([f"s{i}" for i in range(30)]).all() and not ix.has([f"s{i}" for i in range(30, 100)]).any()
