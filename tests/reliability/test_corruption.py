"""Corrupt and missing files: damaged LMDB pages and msgpack records give a CorruptIndexError that
names the file, ``verify()`` reports them, newer formats are refused. (Damaged shard files are in
tests/test_persistence.py; the cases here add what that file does not cover.)"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys

import lmdb
import msgpack
import numpy as np
import pytest

import compatindex
from compatindex.errors import CompatIndexError, CorruptIndexError, FormatVersionError


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("corrupt") / "base"
    rng = np.random.default_rng(0)
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=16)
        for b in range(10):
            ids = [f"id{b}_{i}" for i in range(100)]
            ix.add(ids, rng.standard_normal((100, 16)), labels=list(range(100)), metadata=[{"b": b}] * 100)
        ix.register_version("v2", "v1", 20)
        ix.backfill([f"id0_{i}" for i in range(50)], rng.standard_normal((50, 20)), version="v2", raw=False)
    return path


@pytest.fixture
def ix_path(base, tmp_path):
    path = tmp_path / "ix"
    shutil.copytree(base, path)
    return path


def poke(path, db: str, key: bytes, value: bytes | None) -> None:
    """Write one raw record into a named sub-database, bypassing the library."""
    env = lmdb.open(str(path / "store"), max_dbs=16)
    with env.begin(write=True) as txn:
        d = env.open_db(db.encode(), txn=txn)
        if value is None:
            txn.delete(key, db=d)
        else:
            txn.put(key, value, db=d)
    env.close()


def first_key(path, db: str) -> bytes:
    env = lmdb.open(str(path / "store"), max_dbs=16, readonly=True, lock=False)
    with env.begin() as txn:
        k = next(iter(txn.cursor(db=env.open_db(db.encode(), txn=txn))))[0]
    env.close()
    return bytes(k)


@pytest.mark.parametrize("damage", ["empty", "truncated", "meta pages"])
def test_damaged_data_mdb_is_refused_naming_the_file(ix_path, damage):
    f = ix_path / "store" / "data.mdb"
    data = f.read_bytes()
    if damage == "empty":
        f.write_bytes(b"")
    elif damage == "truncated":
        f.write_bytes(data[:5000])
    else:
        f.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(8192)) + data[8192:])
    # an empty file is what a first open killed before LMDB wrote its meta pages leaves: a writer
    # initializes it; every other damage is refused by both
    for readonly in (True,) if damage == "empty" else (True, False):
        with pytest.raises(CorruptIndexError, match="data.mdb") as ei:
            compatindex.open(ix_path, readonly=readonly)
        assert "verify" in ei.value.hint


def test_missing_store_is_named(ix_path):
    (ix_path / "store" / "data.mdb").unlink()
    with pytest.raises(CorruptIndexError, match="data.mdb is missing"):
        compatindex.open(ix_path, readonly=True)


_PAGE_READER = r"""
import sys, numpy as np, compatindex
from compatindex.errors import CompatIndexError
try:
    with compatindex.open(sys.argv[1]) as ix:
        problems = ix.verify()
        ix.fetch("v1"); ix.fetch("v2")
        ix.search(np.ones((2, 16), np.float32), k=5, version="v1")
        ix.search(np.ones((2, 20), np.float32), k=5, version="v2", raw=False)
    print("OK", len(problems), "|".join(problems)[:300])
except CompatIndexError as e:
    print("ERR", type(e).__name__, str(e)[:300])
"""


def test_damaged_lmdb_pages_give_clean_errors_or_a_report(ix_path, tmp_path):
    """Random bytes over random pages of data.mdb (in a subprocess each: a crash would show):
    every outcome is a clean CompatIndexError naming data.mdb, or a verify() report, or (where the
    bytes hit vector data or unused space, which LMDB does not checksum) a working index."""
    data = (ix_path / "store" / "data.mdb").read_bytes()
    n_pages = len(data) // 4096
    rnd = random.Random(5)
    outcomes = {"error": 0, "reported": 0, "unnoticed": 0}
    for trial in range(12):
        path = tmp_path / f"t{trial}"
        shutil.copytree(ix_path, path)
        buf = bytearray(data)
        page = rnd.randrange(2, n_pages)
        for _ in range(rnd.choice([16, 4096])):
            buf[page * 4096 + rnd.randrange(4096)] = rnd.randrange(256)
        (path / "store" / "data.mdb").write_bytes(bytes(buf))
        p = subprocess.run([sys.executable, "-c", _PAGE_READER, str(path)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, f"page {page}: the process died ({p.returncode}): {p.stderr[-2000:]}"
        out = p.stdout.strip()
        assert out.startswith(("OK", "ERR")), out + p.stderr[-2000:]
        if out.startswith("ERR"):
            assert "data.mdb" in out or "internal id" in out, out
            outcomes["error"] += 1
        elif not out.startswith("OK 0"):
            outcomes["reported"] += 1
        else:
            outcomes["unnoticed"] += 1
    assert outcomes["error"] + outcomes["reported"] > 0, outcomes


@pytest.mark.parametrize("db,which,label", [
    ("meta", b"format_version", "format record"),
    ("meta", b"n_items", "meta record 'n_items'"),
    ("versions", b"v2", "version record"),
])
def test_damaged_record_needed_on_open_is_named(ix_path, db, which, label):
    poke(ix_path, db, which, b"\xc1\xc1 not msgpack")
    with pytest.raises(CorruptIndexError, match="data.mdb") as ei:
        with compatindex.open(ix_path) as ix:  # n_items is read lazily: count raises
            ix.count
    assert "damaged" in str(ei.value)


@pytest.mark.parametrize("db", ["labels", "attrs", "chunks", "oplog", "rev", "loc"])
def test_damaged_record_is_reported_by_verify(ix_path, db):
    key = first_key(ix_path, db)
    poke(ix_path, db, key, b"\xc1\xff")
    with compatindex.open(ix_path) as ix:
        problems = ix.verify()
        assert problems, db
        assert any("data.mdb" in p or "internal id" in p or "locator" in p for p in problems), problems
        # reads that touch the record fail cleanly, naming the file
        if db in ("labels", "chunks", "rev", "loc"):
            with pytest.raises(CompatIndexError):
                ix.fetch("v1")
                ix.get_vectors(["id0_0", "id0_1"], version="v1")
                raise CorruptIndexError("record not reached")


def test_well_formed_msgpack_with_the_wrong_shape_is_corrupt(ix_path):
    """A chunk record that decodes but lacks its fields: CorruptIndexError, not KeyError."""
    key = first_key(ix_path, "chunks")
    poke(ix_path, "chunks", key, msgpack.packb({"unexpected": 1}))
    with compatindex.open(ix_path) as ix:
        with pytest.raises(CorruptIndexError, match="data.mdb"):
            ix.fetch("v1")
        assert any("data.mdb" in p for p in ix.verify())


def test_newer_store_format_is_refused(ix_path):
    poke(ix_path, "meta", b"format_version", msgpack.packb(99))
    for readonly in (False, True):
        with pytest.raises(FormatVersionError, match="format version 99") as ei:
            compatindex.open(ix_path, readonly=readonly)
        assert "upgrade compatindex" in ei.value.hint


def test_damaged_marker_file(ix_path):
    (ix_path / "compatindex.json").write_bytes(b"\x80\x04garbage")
    with pytest.raises(compatindex.errors.NotAnIndexError, match="compatindex.json is damaged"):
        compatindex.open(ix_path)


def test_missing_lock_file_and_shard_folder_are_recreated(ix_path):
    (ix_path / "store" / "lock.mdb").unlink()
    shutil.rmtree(ix_path / "shards")
    with compatindex.open(ix_path) as ix:
        assert ix.count == 1000 and ix.verify() == []
