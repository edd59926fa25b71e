"""Rebuilds and ``verify`` read live rows only (issue: disk that only grows, rebuilds that read dead data).

``verify`` needs the live ids, not the vectors: it must not read one vector record. A shard
rebuild copies only the live rows of each chunk (a view of the memory map, then the live rows),
and what it builds equals the stored live vectors.
"""

from __future__ import annotations

import numpy as np

import compatindex
from compatindex.embedded import store as store_mod


def _gallery(path, rng):
    ix = compatindex.open(path)
    ix.create_version("v1", dim=8)
    x = rng.standard_normal((3000, 8)).astype(np.float32)
    ix.add(list(range(3000)), x, version="v1")
    ix.delete(list(range(0, 3000, 3)))  # every chunk keeps two live rows in three
    return ix


def test_verify_reads_no_vector_record(tmp_path, rng, monkeypatch):
    ix = _gallery(tmp_path / "ix", rng)

    def boom(*a, **k):
        raise AssertionError("verify read a vector record")

    monkeypatch.setattr(store_mod.Reader, "chunk_vectors", boom)
    assert ix.verify() == []
    ix.close()


def test_rebuild_copies_only_live_rows(tmp_path, rng, monkeypatch):
    ix = _gallery(tmp_path / "ix", rng)
    want = ix.get_vectors([1, 2, 4, 2999], version="v1")
    ix.close()
    copied = []
    real = store_mod.Reader.chunk_vectors

    def spy(self, vcode, chunk, n, dim, rows=None):
        out = real(self, vcode, chunk, n, dim, rows=rows)
        copied.append((n, len(out), isinstance(self.txn.get(b"seq", db=self.s.db["meta"]), memoryview)))
        return out

    monkeypatch.setattr(store_mod.Reader, "chunk_vectors", spy)
    for f in (tmp_path / "ix").rglob("*.faiss"):  # force a rebuild from the store
        f.unlink()
    with compatindex.open(tmp_path / "ix", readonly=True) as ro:
        res = ro.search(want, 1, version="v1")
        assert [r[0] for r in res.ids.tolist()] == [1, 2, 4, 2999]
    assert copied and all(got < n for n, got, _ in copied)  # only the live rows were copied
    assert all(view for *_, view in copied)  # out of a view of the memory map, not a copy of the chunk
