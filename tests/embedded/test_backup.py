"""Backups (issue 13, item 8): ``EmbeddedBackend.backup(dest)`` makes a consistent, compacted copy
while a writer thread and search threads keep working."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import compatindex
from compatindex.errors import InvalidInputError


def test_backup_while_writing_and_searching_is_a_whole_snapshot(tmp_path):
    rng = np.random.default_rng(5)
    ix = compatindex.open(tmp_path / "ix", device="cpu")
    ix.create_version("v1", dim=16)
    ix.add(list(range(2000)), rng.standard_normal((2000, 16)).astype(np.float32))
    for _ in range(3):  # dead rows for the compacting copy to leave out
        ix.backfill(list(range(0, 2000, 2)), rng.standard_normal((1000, 16)).astype(np.float32), version="v1")
    ix.flush()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer():
        i = 10_000
        try:
            while not stop.is_set():
                ix.add(list(range(i, i + 16)), rng.standard_normal((16, 16)).astype(np.float32))
                i += 16
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def searcher():
        q = np.ones((2, 16), np.float32)
        try:
            while not stop.is_set():
                ix.search(q, k=5, version="v1")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        info = ix.backend.backup(tmp_path / "bk")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[0]
    assert info["shards_copied"] == [0]
    with compatindex.open(tmp_path / "bk", device="cpu", readonly=True) as bk:
        assert bk.backend.shards.events == []  # saved at the copy's snapshot: loaded as is
    src_disk = ix.stats()["disk_bytes"]
    ix.close()
    with compatindex.open(tmp_path / "bk", device="cpu", readonly=True) as bk:
        assert bk.verify() == []
        assert not any("rebuilt" in e for e in bk.backend.shards.events)
        batch = bk.fetch("v1")
        extra = sorted(i for i in batch.ids if i >= 10_000)
        assert len(extra) % 16 == 0 and extra == list(range(10_000, 10_000 + len(extra)))  # whole batches
        assert set(range(2000)) <= set(batch.ids)
        x = batch.vectors
        q = rng.standard_normal((4, 16)).astype(np.float32)
        res = bk.search(q, k=5, version="v1")
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        np.testing.assert_allclose(res.scores, np.sort(qn @ x.T, axis=1)[:, ::-1][:, :5], atol=1e-5)
        storage = bk.stats()["storage"]
        assert storage["dead_vector_bytes"] == 0 and storage["oplog_records"] == 0  # compacted
    assert not (tmp_path / "bk.tmp").exists()
    assert sum(f.stat().st_size for f in (tmp_path / "bk").rglob("*") if f.is_file()) < src_disk


def test_backup_refuses_an_existing_destination(tmp_path):
    with compatindex.open(tmp_path / "ix") as ix:
        ix.create_version("v1", dim=4)
        (tmp_path / "taken").mkdir()
        with pytest.raises(InvalidInputError, match="already exists"):
            ix.backend.backup(tmp_path / "taken")
