"""`compatindex add` interrupted (issue 13, item 8): the message says exactly what was committed
and what was rolled back; an interrupt after the last commit is not reported as a failed add."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import compatindex
from compatindex_cli.main import app


@pytest.fixture
def setup(tmp_path, rng):
    path = tmp_path / "ix"
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=8)
    vec = tmp_path / "x.npy"
    np.save(vec, rng.standard_normal((100, 8)).astype(np.float32))
    return path, vec


def interrupt_at(monkeypatch, batch: int, *, after_commit: bool):
    real = compatindex.Index.add
    calls = [0]

    def add(self, *a, **kw):
        calls[0] += 1
        if calls[0] == batch and not after_commit:
            raise KeyboardInterrupt
        out = real(self, *a, **kw)
        if calls[0] == batch and after_commit:
            raise KeyboardInterrupt  # landed after the batch committed, before the call returned
        return out

    monkeypatch.setattr(compatindex.Index, "add", add)


def run(path, vec):
    return CliRunner().invoke(app, ["add", str(path), str(vec), "--batch-size", "25", "--quiet"])


def test_interrupt_midway_reports_and_rolls_back(setup, monkeypatch):
    path, vec = setup
    interrupt_at(monkeypatch, 3, after_commit=False)
    r = run(path, vec)
    assert r.exit_code == 130
    assert "interrupted: 50 of 100 items were committed; rolling back those 50 items" in r.stderr
    assert "the 50 items committed before the interrupt were removed again" in r.stderr
    with compatindex.open(path, readonly=True) as ro:
        assert ro.count == 0


def test_interrupt_after_a_batch_committed_counts_that_batch(setup, monkeypatch):
    path, vec = setup
    interrupt_at(monkeypatch, 2, after_commit=True)
    r = run(path, vec)
    assert r.exit_code == 130
    assert "interrupted: 50 of 100 items were committed" in r.stderr  # the batch in flight had committed
    with compatindex.open(path, readonly=True) as ro:
        assert ro.count == 0  # and it was rolled back with the first


def test_interrupt_after_the_last_commit_says_the_add_is_complete(setup, monkeypatch):
    path, vec = setup
    interrupt_at(monkeypatch, 4, after_commit=True)
    r = run(path, vec)
    assert r.exit_code == 130
    assert "interrupted after all 100 items were committed" in r.stderr and "nothing was rolled back" in r.stderr
    with compatindex.open(path, readonly=True) as ro:
        assert ro.count == 100


def test_interrupt_before_any_commit(setup, monkeypatch):
    path, vec = setup
    interrupt_at(monkeypatch, 1, after_commit=False)
    r = run(path, vec)
    assert r.exit_code == 130 and "nothing was added" in r.stderr


def test_rerun_after_a_kill_hints_at_the_leftovers_not_backfill(setup):
    path, vec = setup
    x = np.load(vec)
    with compatindex.open(path) as ix:  # what a kill -9 after the first batch leaves
        ix.add(np.arange(25), x[:25], version="v1")
    r = CliRunner().invoke(app, ["add", str(path), str(vec), "--ids", str(_ids(vec))])
    assert r.exit_code == 1
    assert "interrupted or killed" in r.stderr


def _ids(vec):
    p = vec.with_name("ids.npy")
    np.save(p, np.arange(100))
    return p


def test_existing_to_skip_matches_identical_vectors_and_refuses_different_ones(setup):
    from compatindex_cli._common import CliError
    from compatindex_cli._io import open_vectors
    from compatindex_cli.add import existing_to_skip

    path, vec = setup
    x = np.load(vec)
    with compatindex.open(path) as ix:
        ix.add(np.arange(40), x[:40], version="v1")  # what an interrupted add left
        source = open_vectors(vec, param="VECTORS")
        skip = existing_to_skip(ix, "v1", np.arange(100), source, raw=False, batch_size=25)
        assert skip.tolist() == [True] * 40 + [False] * 60
        ix.backfill([3], np.ones((1, 8), np.float32), version="v1")  # now item 3 differs
        with pytest.raises(CliError, match="different vector.*3"):
            existing_to_skip(ix, "v1", np.arange(100), source, raw=False, batch_size=25)
