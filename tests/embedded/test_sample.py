"""Sampling (issue 13, item 5): ``fetch(limit=, seed=)`` draws the same rows as before (items
holding the version in insertion order, ``sample_rows`` positions) while reading only the drawn
rows: its memory follows ``limit``, not the gallery."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import compatindex
from compatindex.core.validate import sample_rows


def reference_draw(ix, version: str, limit: int, seed: int):
    """The rule both backends share, applied to a full fetch."""
    full = ix.fetch(version)
    with ix.backend.store.read() as r:
        internal = r.lookup(full.ids)
    order = np.argsort(internal, kind="stable")
    ids = [full.ids[i] for i in order]
    x = full.vectors[order]
    pick = sample_rows(len(ids), limit, np.random.default_rng(seed))
    return [ids[i] for i in pick], x[pick]


@pytest.fixture
def mixed(tmp_path):
    rng = np.random.default_rng(3)
    ix = compatindex.open(tmp_path / "ix")
    ix.create_version("v1", dim=8)
    ix.register_version("v2", "v1", 8)
    ix.add(list(range(3000)), rng.standard_normal((3000, 8)).astype(np.float32), version="v1",
           labels=[i % 7 for i in range(3000)])
    ix.add(list(range(3000, 3500)), rng.standard_normal((500, 8)).astype(np.float32), version="v2", raw=False)
    # backfills put old items into later chunks; replacements and deletes leave dead rows behind
    ix.backfill(list(range(2500, 0, -5)), rng.standard_normal((500, 8)).astype(np.float32), version="v2", raw=False)
    ix.backfill(list(range(0, 600, 3)), rng.standard_normal((200, 8)).astype(np.float32), version="v1")
    ix.backfill(list(range(10, 900, 9)), rng.standard_normal((99, 8)).astype(np.float32), version="v2",
                drop_old=True, raw=False)
    ix.delete(list(range(1, 3500, 13)))
    yield ix
    ix.close()


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("limit,seed", [(1, 0), (37, 1), (500, 2), (990, 9)])
def test_draw_equals_the_shared_rule(mixed, version, limit, seed):
    want_ids, want_x = reference_draw(mixed, version, limit, seed)
    got = mixed.fetch(version, limit=limit, seed=seed)
    assert got.ids == want_ids
    np.testing.assert_array_equal(got.vectors, want_x)
    full = mixed.fetch(version)
    lab = dict(zip(full.ids, full.labels))
    assert got.labels == [lab[i] for i in got.ids]


def test_limit_at_or_past_the_count_returns_everything(mixed):
    full = mixed.fetch("v2")
    assert mixed.fetch("v2", limit=len(full.ids), seed=4).ids == full.ids
    assert mixed.fetch("v2", limit=10 ** 9, seed=4).ids == full.ids


def test_sample_memory_follows_the_limit(tmp_path):
    rng = np.random.default_rng(0)
    n, d = 60_000, 64  # 15 MB of vectors
    with compatindex.open(tmp_path / "ix") as ix:
        ix.create_version("v1", dim=d)
        ix.add(np.arange(n), rng.standard_normal((n, d)).astype(np.float32))
    with compatindex.open(tmp_path / "ix", readonly=True) as ro:
        ro.fetch("v1", limit=10, seed=0)  # warm imports and caches
        tracemalloc.start()
        got = ro.fetch("v1", limit=200, seed=5)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert len(got.ids) == 200
    assert peak < 2_000_000, f"a 200-row draw from {n} x {d} peaked at {peak} bytes"
