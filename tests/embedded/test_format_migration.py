"""Format 1 -> 2: an additive migration (docs/on-disk-format.md, "Migrations").

A format-1 store (written before payload indexes and retired versions) reads as it is read-only,
and a writable open migrates it to format 2 without touching its data; a store of a newer format
than this release is still refused.
"""

from __future__ import annotations

import lmdb
import msgpack
import numpy as np
import pytest

import compatindex
from compatindex.embedded.store import FORMAT_VERSION
from compatindex.errors import FormatVersionError


def _format(path) -> int:
    env = lmdb.open(str(path / "store"), max_dbs=16, readonly=True, lock=False)
    with env.begin() as txn:
        v = msgpack.unpackb(txn.get(b"format_version", db=env.open_db(b"meta", txn=txn)))
    env.close()
    return v


def _set_format(path, fmt: int) -> None:
    env = lmdb.open(str(path / "store"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"format_version", msgpack.packb(fmt), db=env.open_db(b"meta", txn=txn))
    env.close()


def test_format_one_store_reads_and_migrates(tmp_path, rng):
    path = tmp_path / "ix"
    x = rng.standard_normal((50, 8)).astype(np.float32)
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=8)
        ix.add(list(range(50)), x, version="v1", metadata=[{"n": i} for i in range(50)])
    assert FORMAT_VERSION == 2 and _format(path) == 2
    _set_format(path, 1)  # what a store written before payload indexes says
    with compatindex.open(path, readonly=True) as ro:
        np.testing.assert_allclose(ro.get_vectors([3], version="v1"), x[3:4] / np.linalg.norm(x[3]), rtol=1e-6)
    assert _format(path) == 1  # a read-only open rewrote nothing
    with compatindex.open(path) as ix:
        assert ix.get([7])[0].metadata == {"n": 7}
        ix.create_payload_index("n", "integer")
        assert [it.id for it in ix.list_items(where={"n": {"$lt": 3}}).items] == [0, 1, 2]
    assert _format(path) == 2
    _set_format(path, 3)
    with pytest.raises(FormatVersionError, match="format version 3"):
        compatindex.open(path)
