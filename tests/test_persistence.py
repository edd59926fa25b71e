"""Persistence: reopen, shard rebuild from the store, replay of a lagging shard, readers, locks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import compatindex
from compatindex.errors import IndexLockedError, NotAnIndexError, ReadOnlyError
from core_testkit import random_orthogonal


def fill(path, rng, n=500):
    ix = compatindex.open(path)
    ix.create_version("v1", dim=32)
    ix.register_version("v2", "v1", 40, extension=random_orthogonal(40, rng))
    ix.add(list(range(n)), rng.standard_normal((n, 32)), version="v1", labels=[i % 7 for i in range(n)])
    ix.backfill(list(range(0, n, 3)), rng.standard_normal((len(range(0, n, 3)), 40)), version="v2", raw=False)
    ix.delete([1, 2, 4])
    return ix


def snapshot(ix, Q):
    r = ix.search(Q, k=20, version="v2", raw=False)
    return r.ids.tolist(), r.scores.copy(), r.versions.tolist()


def same(a, b):
    assert a[0] == b[0] and a[2] == b[2]
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_reopen_keeps_everything_and_loads_shards(tmp_path, rng):
    path = tmp_path / "ix"
    Q = rng.standard_normal((10, 40)).astype(np.float32)
    ix = fill(path, rng)
    before = snapshot(ix, Q)
    ix.close()
    with compatindex.open(path) as ix2:
        assert ix2.backend.shards.events == []  # loaded, not rebuilt
        same(before, snapshot(ix2, Q))
        assert ix2.count == 497
        assert [v.name for v in ix2.versions()] == ["v1", "v2"]
        np.testing.assert_allclose(ix2.version("v2").extension.T @ ix2.version("v2").extension, np.eye(40), atol=1e-12)
        assert ix2.fetch("v1", ids=[7]).labels == [0]
        assert ix2.verify() == []


def test_deleted_shard_files_are_rebuilt(tmp_path, rng):
    path = tmp_path / "ix"
    Q = rng.standard_normal((10, 40)).astype(np.float32)
    ix = fill(path, rng)
    before = snapshot(ix, Q)
    ix.close()
    shutil.rmtree(path / "shards")
    with compatindex.open(path) as ix2:
        assert any("rebuilt" in e for e in ix2.backend.shards.events)
        same(before, snapshot(ix2, Q))
        assert ix2.verify() == []


@pytest.mark.parametrize("damage", ["truncate", "garbage", "manifest"])
def test_damaged_shard_is_detected_and_rebuilt(tmp_path, rng, damage, caplog):
    path = tmp_path / "ix"
    Q = rng.standard_normal((10, 40)).astype(np.float32)
    ix = fill(path, rng)
    before = snapshot(ix, Q)
    ix.close()
    f = path / "shards" / "v001.faiss"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:100])
    elif damage == "garbage":
        data = bytearray(f.read_bytes())
        data[50:90] = b"\xff" * 40
        f.write_bytes(bytes(data))
    else:
        (path / "shards" / "v001.json").write_text("{not json")
    with compatindex.open(path, readonly=True) as ro:
        assert any("damaged" in p for p in ro.verify())
    with caplog.at_level("WARNING", logger="compatindex"):
        ix2 = compatindex.open(path)
    assert any("rebuilt" in r.message for r in caplog.records)
    same(before, snapshot(ix2, Q))
    ix2.close()
    with compatindex.open(path, readonly=True) as ro:
        assert ro.verify() == []


def test_lagging_shard_replays_the_store_tail(tmp_path, rng):
    path = tmp_path / "ix"
    ix = fill(path, rng)
    ix.flush()
    saved = tmp_path / "old_shards"
    shutil.copytree(path / "shards", saved)
    ix.add([1000, 1001], rng.standard_normal((2, 40)), version="v2", raw=False)
    ix.delete([0, 3])
    ix.backfill([5], rng.standard_normal((1, 40)), version="v2", drop_old=True, raw=False)
    Q = rng.standard_normal((10, 40)).astype(np.float32)
    before = snapshot(ix, Q)
    ix.close()
    shutil.rmtree(path / "shards")
    shutil.copytree(saved, path / "shards")  # shards now lag the store by three writes
    with compatindex.open(path) as ix2:
        assert any("replayed 3" in e for e in ix2.backend.shards.events)
        assert not any("rebuilt" in e for e in ix2.backend.shards.events)
        same(before, snapshot(ix2, Q))
        assert ix2.verify() == []


def test_reader_sees_later_writes(tmp_path, rng):
    path = tmp_path / "ix"
    w = compatindex.open(path)
    w.create_version("v1", dim=8)
    w.add([1], rng.standard_normal((1, 8)))
    r = compatindex.open(path, readonly=True)
    assert r.count == 1
    x = rng.standard_normal((1, 8)).astype(np.float32)
    w.add([2], x)
    w.register_version("v2", "v1", 8)
    assert r.search(x, k=1, version="v1").ids[0, 0] == 2
    assert [v.name for v in r.versions()] == ["v1", "v2"]
    with pytest.raises(ReadOnlyError):
        r.add([3], x)
    r.close()
    w.close()


def test_second_writer_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "ix"
    w = compatindex.open(path)
    with pytest.raises(IndexLockedError, match="open for writing by another process"):
        compatindex.open(path, lock_timeout=0.2)
    w.close()
    compatindex.open(path).close()  # the lock is released on close


def test_not_an_index(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(NotAnIndexError, match="not a compatindex index"):
        compatindex.open(tmp_path / "junk")
    with pytest.raises(NotAnIndexError, match="no index"):
        compatindex.open(tmp_path / "absent", create=False)


def test_newer_format_is_refused(tmp_path):
    path = tmp_path / "ix"
    compatindex.open(path).close()
    (path / "compatindex.json").write_text('{"format": "compatindex", "format_version": 99}')
    with pytest.raises(compatindex.errors.FormatVersionError, match="format version 99"):
        compatindex.open(path)


def test_map_grows_when_full(tmp_path, rng):
    from compatindex.embedded.store import LmdbStore

    store = LmdbStore(tmp_path / "s", map_size=1 << 20)
    big = b"x" * (600 << 10)
    for i in range(8):  # 4.8 MB through a 1 MB map
        store.write(lambda w, i=i: w.put_meta(f"blob{i}", big))
    assert store.env.info()["map_size"] > 4 << 20
    with store.read() as r:
        assert r.meta("blob7") == big
    store.close()
