"""Errors (issue 13, item 6): only real damage is reported as corruption. A caller's bug inside a
read surfaces as itself; a second open in one process is a lock conflict, not damage; damaged
records are still named as damage in data.mdb."""

from __future__ import annotations

import lmdb
import msgpack
import numpy as np
import pytest

import compatindex
from compatindex.errors import CorruptIndexError, IndexLockedError


def poke_raw(path, db: str, key: bytes, value: bytes) -> None:
    env = lmdb.open(str(path / "store"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(key, value, db=env.open_db(db.encode(), txn=txn))
    env.close()


def first_key_of(path, db: str) -> bytes:
    env = lmdb.open(str(path / "store"), max_dbs=16, readonly=True, lock=False)
    with env.begin() as txn:
        k = next(iter(txn.cursor(db=env.open_db(db.encode(), txn=txn))))[0]
    env.close()
    return bytes(k)


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "ix"
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=4)
        ix.add([1, 2, 3], np.eye(3, 4, dtype=np.float32))
    return path


@pytest.mark.parametrize("bug", [KeyError("x"), TypeError("t"), ValueError("v"), IndexError("i")])
def test_a_callers_exception_inside_a_read_is_not_corruption(small, bug):
    with compatindex.open(small) as ix:
        with pytest.raises(type(bug)) as ei:
            with ix.backend.store.read() as r:
                r.seq()
                raise bug
        assert not isinstance(ei.value, CorruptIndexError)
        assert ix.count == 3  # and the index is fine


def test_read_only_twice_in_one_process(small):
    a = compatindex.open(small, readonly=True)
    b = compatindex.open(small, readonly=True)
    assert a.count == b.count == 3
    a.close()
    assert b.search(np.eye(1, 4, dtype=np.float32), k=1, version="v1").ids[0, 0] == 1
    assert b.verify() == []
    b.close()


def test_writer_beside_a_read_only_handle_is_a_lock_conflict_not_damage(small):
    ro = compatindex.open(small, readonly=True)
    with pytest.raises(IndexLockedError, match="read-only") as ei:
        compatindex.open(small)
    assert not isinstance(ei.value, CorruptIndexError)
    ro.close()
    with compatindex.open(small) as w:  # once it is closed, the writer opens
        assert w.count == 3


@pytest.mark.parametrize("db,key,value,call", [
    ("meta", b"n_items", msgpack.packb({"not": "an int"}), "count"),
    ("meta", b"n_items", msgpack.packb("7"), "count"),
    ("loc", None, b"\x00" * 5, "vectors"),
    ("rev", None, b"\x07garbage", "search"),
    ("chunks", None, msgpack.packb({"n": 2, "ids": b"\x00" * 3, "dead": None}), "fetch"),
])
def test_damaged_records_are_still_corruption_naming_data_mdb(small, db, key, value, call):
    poke_raw(small, db, key or first_key_of(small, db), value)
    with compatindex.open(small) as ix:
        with pytest.raises(CorruptIndexError, match="data.mdb"):
            if call == "count":
                ix.count
            elif call == "vectors":
                ix.get_vectors([1, 2, 3], version="v1")
            elif call == "search":
                ix.search(np.eye(3, 4, dtype=np.float32), k=3, version="v1")
            else:
                ix.fetch("v1")


def test_damaged_op_log_record_is_corruption_on_replay(small):
    with compatindex.open(small) as ix:
        ix.add([9], np.ones((1, 4), np.float32))
        seq = ix.backend.store.seq()
    (small / "shards" / "v000.json").unlink()  # force a rebuild + replay from an older checkpoint
    poke_raw(small, "oplog", seq.to_bytes(8, "big", signed=True), msgpack.packb({"a": [[0, "x"]], "r": []}))
    with compatindex.open(small) as ix:
        assert any("op log" in p and "data.mdb" in p for p in ix.verify())
