"""LMDB store: one environment, named sub-databases, every write in one transaction.

Sub-databases (keys are big-endian so that byte order is numeric order):

========  ==============================  ============================================
name      key                             value
========  ==============================  ============================================
meta      ascii name                      msgpack (format_version, seq, counters, ...)
versions  version name (utf-8)            msgpack version record
ids       external id key                 internal id (int64, 8 bytes)
rev       internal id (8)                 external id key
loc       vcode (2) + internal id (8)     chunk id (8) + row (4)
chunks    vcode (2) + chunk id (8)        msgpack {"n", "ids": int64 bytes, "dead": bitmap | None}
vecs      vcode (2) + chunk id (8)        float32 bytes, n x dim (many vectors per value)
labels    internal id (8)                 msgpack label
attrs     internal id (8)                 msgpack metadata dict
oplog     seq (8)                         msgpack {"a": [[vcode, chunk]], "r": [[vcode, ids]], "v": name,
                                          "p": ids whose label/metadata changed (optional)}
========  ==============================  ============================================

External id keys: ``0x01`` + (id + 2**63) as 8 big-endian bytes for ints, ``0x02`` + utf-8 for str.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import itertools
import os
import struct
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import lmdb
import msgpack
import numpy as np

from ..core.validate import duplicate_ids
from ..errors import CorruptIndexError, FormatVersionError, IndexLockedError, StoreFullError
from .durable import fsync_path

T = TypeVar("T")

FORMAT_VERSION = 2
CHUNK_ROWS = 1024  # vectors per LMDB value: large values avoid the 15-34% overflow-page waste of one-per-value
INITIAL_MAP_SIZE = 1 << 30
_DBS = ("meta", "versions", "ids", "rev", "loc", "chunks", "vecs", "labels", "attrs", "oplog")
_LOC = struct.Struct(">qI")
_MDB_MAGIC = 0xBEEFC0DE
_META_AT = 16  # LMDB 0.9, 64-bit: the page header before the meta record

# Environments open in this process, by real path: [readonly, env, dbs, refcount].
_OPEN_ENVS: dict[str, list[Any]] = {}

# Migrations from format N to N+1, run in one write transaction on open. Idempotent by contract.
MIGRATIONS: dict[int, Callable[[Any, dict[str, Any]], None]] = {
    # 1 -> 2: payload indexes (meta `payload_schema`), retired versions (`retired` in a version
    # record) and payload op-log entries (`p`) appeared. All optional, so a format-1 store is a
    # valid format-2 store; the bump only keeps compatindex releases that predate them (and would
    # ignore a schema or write to a retired version) from opening a format-2 store.
    1: lambda w, ctx: None,
}
#: Formats whose migration to the next only adds optional records: a read-only open reads them as they are.
ADDITIVE = frozenset({1})


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes | memoryview, *, what: str = "record", where: Any = None) -> Any:
    try:
        # msgpack bounds each container by the input size, and ext types are refused by default.
        return msgpack.unpackb(bytes(data), raw=False, strict_map_key=False)
    except Exception as exc:
        place = "the store" if where is None else str(where)
        raise CorruptIndexError(f"damaged {what} in {place}: {exc}") from None


_INT_META = ("format_version", "seq", "next_iid", "next_chunk", "n_items", "oplog_from")


def _damaged(where: Any, what: str, why: str) -> CorruptIndexError:
    return CorruptIndexError(f"damaged {what} in {where}: {why}")


def check_chunk(meta: Any, *, where: Any, what: str = "chunk record") -> dict[str, Any]:
    """A decoded chunk record, checked against its format: ``{"n": int, "ids": 8n bytes,
    "dead": None or a bitmap of at least n bits}`` (``CorruptIndexError`` otherwise)."""
    if not isinstance(meta, dict):
        raise _damaged(where, what, f"a {type(meta).__name__}, not a map")
    n, ids, dead = meta.get("n"), meta.get("ids"), meta.get("dead")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise _damaged(where, what, f"row count {n!r}")
    if not isinstance(ids, bytes) or len(ids) != 8 * n:
        raise _damaged(where, what, f"ids field of {len(ids) if isinstance(ids, bytes) else type(ids).__name__} "
                                    f"bytes for {n} rows")
    if dead is not None and (not isinstance(dead, bytes) or len(dead) * 8 < n):
        raise _damaged(where, what, "dead-row bitmap too short")
    return meta


def check_op(op: Any, *, where: Any, what: str = "op log record") -> dict[str, Any]:
    """A decoded op log record, checked: ``{"a": [[vcode, chunk]...], "r": [[vcode, 8k bytes]...], "v": str|None}``."""
    if not isinstance(op, dict):
        raise _damaged(where, what, f"a {type(op).__name__}, not a map")
    adds, rems, ver = op.get("a", []), op.get("r", []), op.get("v")
    if not isinstance(adds, list) or not all(
            isinstance(a, list) and len(a) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in a)
            for a in adds):
        raise _damaged(where, what, "its added-chunks list is malformed")
    if not isinstance(rems, list) or not all(
            isinstance(r, list) and len(r) == 2 and isinstance(r[0], int) and isinstance(r[1], bytes)
            and len(r[1]) % 8 == 0 for r in rems):
        raise _damaged(where, what, "its removals list is malformed")
    if ver is not None and not isinstance(ver, str):
        raise _damaged(where, what, "its version field is not a name")
    pay = op.get("p")
    if pay is not None and (not isinstance(pay, bytes) or len(pay) % 8):
        raise _damaged(where, what, "its payload-change field is malformed")
    return op


def u64(i: int) -> bytes:
    return int(i).to_bytes(8, "big", signed=True)


def vkey(vcode: int, i: int) -> bytes:
    return int(vcode).to_bytes(2, "big") + u64(i)


def ext_key(value: Any) -> bytes:
    if isinstance(value, str):
        return b"\x02" + value.encode("utf-8")
    return b"\x01" + (int(value) + (1 << 63)).to_bytes(8, "big")


def ext_value(key: bytes, *, where: Any = None) -> Any:
    """The external id of a stored id key (``CorruptIndexError`` when the key is malformed)."""
    if key[:1] == b"\x02":
        try:
            return bytes(key[1:]).decode("utf-8")
        except UnicodeDecodeError:
            raise _damaged(where or "the store", "external id", "a str id that is not utf-8") from None
    if key[:1] != b"\x01" or len(key) != 9:
        raise _damaged(where or "the store", "external id", f"an id key of {len(key)} bytes")
    return int.from_bytes(key[1:9], "big") - (1 << 63)


def iid_keys(iids: np.ndarray, prefix: bytes = b"") -> list[bytes]:
    """8-byte big-endian keys of int64 ids, each after ``prefix`` (vectorized: adds of 1M items
    spend most of their Python time building keys)."""
    ids = np.asarray(iids, dtype=">i8")
    w = len(prefix) + 8
    buf = np.empty((len(ids), w), dtype=np.uint8)
    if prefix:
        buf[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    buf[:, len(prefix):] = ids.view(np.uint8).reshape(-1, 8)
    raw = buf.tobytes()
    return [raw[i : i + w] for i in range(0, len(raw), w)]


def ext_keys(values: Sequence[Any]) -> list[bytes]:
    """External id keys for a batch (ints vectorized)."""
    if values and not isinstance(values[0], str):
        shifted = (np.asarray(values, dtype=np.int64).view(np.uint64) ^ np.uint64(1 << 63))
        return iid_keys(shifted.view(np.int64), prefix=b"\x01")
    return [ext_key(v) for v in values]


def _is_disk_full(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG) or (
        "no space left" in text or "file too large" in text or "enospc" in text
    )


class Reader:
    """Reads inside one snapshot (one LMDB read transaction)."""

    def __init__(self, store: "LmdbStore", txn: lmdb.Transaction) -> None:
        self.s = store
        self.txn = txn

    def meta(self, key: str, default: Any = None) -> Any:
        raw = self.txn.get(key.encode(), db=self.s.db["meta"])
        if raw is None:
            return default
        value = unpack(raw, where=self.s.file, what=f"meta record {key!r}")
        if (key in _INT_META or key.startswith("count:")) and (not isinstance(value, int) or isinstance(value, bool)):
            raise _damaged(self.s.file, f"meta record {key!r}", f"{value!r} is not an integer")
        return value

    def seq(self) -> int:
        return int(self.meta("seq", 0))

    def versions(self) -> list[dict[str, Any]]:
        out = []
        with self.txn.cursor(db=self.s.db["versions"]) as cur:
            for k, v in cur:
                rec = unpack(v, where=self.s.file, what=f"version record {bytes(k)!r}")
                if not isinstance(rec, dict) or not isinstance(rec.get("code"), int):
                    raise _damaged(self.s.file, f"version record {bytes(k)!r}", "no version code")
                out.append(rec)
        return sorted(out, key=lambda r: r["code"])

    def lookup(self, ext_ids: Sequence[Any]) -> np.ndarray:
        """``(n,)`` int64 internal ids, -1 where the external id is unknown."""
        out = np.full(len(ext_ids), -1, dtype=np.int64)
        db = self.s.db["ids"]
        get = self.txn.get
        for i, k in enumerate(ext_keys(ext_ids)):
            raw = get(k, db=db)
            if raw is not None:
                out[i] = int.from_bytes(raw, "big", signed=True)
        return out

    def external(self, iids: Sequence[int]) -> list[Any]:
        db = self.s.db["rev"]
        out = []
        for i in iids:
            raw = self.txn.get(u64(int(i)), db=db)
            if raw is None:
                raise CorruptIndexError(f"internal id {int(i)} has no external id in the store")
            out.append(ext_value(bytes(raw), where=self.s.file))
        return out

    def locate(self, vcode: int, iids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Chunk ids and rows of the version-``vcode`` vectors of ``iids`` (-1 where absent)."""
        chunks = np.full(len(iids), -1, dtype=np.int64)
        rows = np.full(len(iids), -1, dtype=np.int64)
        db = self.s.db["loc"]
        for i, iid in enumerate(iids):
            raw = self.txn.get(vkey(vcode, int(iid)), db=db)
            if raw is not None:
                if len(raw) != _LOC.size:
                    raise _damaged(self.s.file, f"locator of internal id {int(iid)}", f"{len(raw)} bytes")
                chunks[i], rows[i] = _LOC.unpack(raw)
        return chunks, rows

    def locate_nth(self, vcode: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Internal ids, chunks and rows of the version-``vcode`` vectors at sorted ``positions``
        of the version's items in internal-id order (the order of the ``loc`` table's keys).

        Walks the keys without reading values in between (memory in proportion to the positions).
        """
        prefix = int(vcode).to_bytes(2, "big")
        m = len(positions)
        iids = np.empty(m, dtype=np.int64)
        chunks = np.empty(m, dtype=np.int64)
        rows = np.empty(m, dtype=np.int64)
        if m == 0:
            return iids, chunks, rows
        with self.txn.cursor(db=self.s.db["loc"]) as cur:
            if not cur.set_range(prefix):
                raise _damaged(self.s.file, f"locators of version code {vcode}", "none found")
            keys = cur.iternext(keys=True, values=False)
            at = -1
            for j, pos in enumerate(np.asarray(positions, dtype=np.int64).tolist()):
                skip = pos - at - 1
                if skip:
                    collections.deque(itertools.islice(keys, skip), maxlen=0)  # advance in C
                key = next(keys, None)
                at = pos
                if key is None or not bytes(key).startswith(prefix):
                    raise _damaged(self.s.file, f"vector count of version code {vcode}",
                                   f"fewer locators than the position {pos} drawn")
                raw = cur.value()
                if len(raw) != _LOC.size:
                    raise _damaged(self.s.file, "locator", f"{len(raw)} bytes")
                iids[j] = int.from_bytes(bytes(key)[2:], "big", signed=True)
                chunks[j], rows[j] = _LOC.unpack(raw)
        return iids, chunks, rows

    def chunk_meta(self, vcode: int, chunk: int) -> dict[str, Any]:
        raw = self.txn.get(vkey(vcode, chunk), db=self.s.db["chunks"])
        if raw is None:
            raise CorruptIndexError(f"chunk {chunk} of version code {vcode} is missing from the store")
        return check_chunk(unpack(raw, where=self.s.file, what=f"chunk {chunk} record"), where=self.s.file,
                           what=f"chunk {chunk} record")

    def chunk_vectors(self, vcode: int, chunk: int, n: int, dim: int, rows: np.ndarray | None = None) -> np.ndarray:
        """``(n, dim)`` vectors of a chunk, or only ``rows`` (a bool mask or positions) of them.

        In a snapshot opened with ``read(buffers=True)`` the record is a view of the memory map, so
        selecting ``rows`` copies (and pages in) only those rows, not the whole chunk.
        """
        raw = self.txn.get(vkey(vcode, chunk), db=self.s.db["vecs"])
        if raw is None or len(raw) != n * dim * 4:
            got = None if raw is None else len(raw)
            raise CorruptIndexError(
                f"vector chunk {chunk} of version code {vcode} is damaged: expected {n * dim * 4} bytes, got {got}"
            )
        block = np.frombuffer(raw, dtype="<f4").reshape(n, dim)
        return block.copy() if rows is None else np.ascontiguousarray(block[rows])

    def vectors(self, vcode: int, dim: int, iids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(n, dim)`` stored vectors and an ``(n,)`` bool mask of the ones that exist."""
        chunks, rows = self.locate(vcode, iids)
        out = np.zeros((len(iids), dim), dtype=np.float32)
        cache: dict[int, np.ndarray] = {}
        for i, (c, r) in enumerate(zip(chunks.tolist(), rows.tolist())):
            if c < 0:
                continue
            if c not in cache:
                meta = self.chunk_meta(vcode, c)
                cache[c] = self.chunk_vectors(vcode, c, int(meta["n"]), dim)
            if r >= len(cache[c]):
                raise _damaged(self.s.file, f"locator of internal id {int(iids[i])}", f"row {r} past its chunk")
            out[i] = cache[c][r]
        return out, chunks >= 0

    def labels(self, iids: Sequence[int]) -> list[Any]:
        db = self.s.db["labels"]
        out = []
        for i in iids:
            raw = self.txn.get(u64(int(i)), db=db)
            out.append(None if raw is None else unpack(raw, where=self.s.file, what="label"))
        return out

    def attrs(self, iids: Sequence[int]) -> list[Any]:
        db = self.s.db["attrs"]
        out = []
        for i in iids:
            raw = self.txn.get(u64(int(i)), db=db)
            out.append(None if raw is None else unpack(raw, where=self.s.file, what="metadata"))
        return out

    def chunk_list(self, vcode: int) -> list[tuple[int, dict[str, Any]]]:
        prefix = int(vcode).to_bytes(2, "big")
        out = []
        with self.txn.cursor(db=self.s.db["chunks"]) as cur:
            if cur.set_range(prefix):
                for k, v in cur:
                    k = bytes(k)
                    if not k.startswith(prefix):
                        break
                    out.append((int.from_bytes(k[2:], "big", signed=True),
                                check_chunk(unpack(v, where=self.s.file, what="chunk record"), where=self.s.file)))
        return out

    def live_rows(self, meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Internal ids of a chunk and the ``(n,)`` bool mask of its rows still alive."""
        ids = np.frombuffer(meta["ids"], dtype=">i8").astype(np.int64)
        dead = meta.get("dead")
        alive = np.ones(len(ids), dtype=bool)
        if dead:
            alive &= ~np.unpackbits(np.frombuffer(dead, dtype=np.uint8), count=len(ids), bitorder="little").astype(bool)
        return ids, alive

    def iter_items(self) -> Iterator[tuple[int, Any]]:
        with self.txn.cursor(db=self.s.db["rev"]) as cur:
            for k, v in cur:
                yield int.from_bytes(k, "big", signed=True), ext_value(bytes(v), where=self.s.file)

    def count_entries(self, name: str) -> int:
        return int(self.txn.stat(self.s.db[name])["entries"])


class Writer(Reader):
    """Writes inside one transaction; the op log entry for it is built as it goes."""

    def __init__(self, store: "LmdbStore", txn: lmdb.Transaction) -> None:
        super().__init__(store, txn)
        self.op: dict[str, Any] = {"a": [], "r": [], "v": None}

    def put_meta(self, key: str, value: Any) -> None:
        self.txn.put(key.encode(), pack(value), db=self.s.db["meta"])

    def bump(self, key: str, delta: int) -> int:
        value = int(self.meta(key, 0)) + int(delta)
        self.put_meta(key, value)
        return value

    def put_version(self, record: dict[str, Any]) -> None:
        self.txn.put(record["name"].encode("utf-8"), pack(record), db=self.s.db["versions"])
        self.op["v"] = record["name"]

    def new_items(self, ext_ids: Sequence[Any], labels: Sequence[Any] | None, attrs: Sequence[Any] | None) -> np.ndarray:
        """Assign internal ids to new external ids; returns ``(n,)`` int64.

        Raises ``DuplicateIdError`` (before the transaction commits, so nothing is written) when
        an id already exists: the insert itself is the existence check.
        """
        n = len(ext_ids)
        start = int(self.meta("next_iid", 0))
        iids = np.arange(start, start + n, dtype=np.int64)
        keys = iid_keys(iids)
        exts = ext_keys(ext_ids)
        with self.txn.cursor(db=self.s.db["ids"]) as cur:
            _, added = cur.putmulti(list(zip(exts, keys)), overwrite=False)
        if added != n:
            raise duplicate_ids(ext_ids, self.lookup(ext_ids) < start)
        with self.txn.cursor(db=self.s.db["rev"]) as cur:
            cur.putmulti(list(zip(keys, exts)), append=True)
        if labels is not None:
            with self.txn.cursor(db=self.s.db["labels"]) as cur:
                cur.putmulti([(k, pack(l)) for k, l in zip(keys, labels) if l is not None], append=True)
        if attrs is not None:
            with self.txn.cursor(db=self.s.db["attrs"]) as cur:
                cur.putmulti([(k, pack(m)) for k, m in zip(keys, attrs) if m is not None], append=True)
        if labels is not None or attrs is not None:
            self.note_payload(iids)
        self.put_meta("next_iid", start + n)
        self.bump("n_items", n)
        return iids

    def note_payload(self, iids: np.ndarray) -> None:
        """Name ``iids`` in the op log as items whose label or metadata changed (payload indexes
        of other processes re-read them)."""
        prev = self.op.get("p") or b""
        self.op["p"] = prev + np.asarray(iids, dtype=">i8").tobytes()

    def set_payload(self, iids: np.ndarray, labels: Sequence[Any] | None, metadata: Sequence[Any] | None, *,
                    merge: bool) -> list[Any] | None:
        """Replace the labels (None entries remove one) and/or the metadata of existing items.

        ``merge``: each dict updates the stored one key by key (a None value removes the key; a None
        entry leaves the item's metadata as it is; removing every key leaves none, as Qdrant does). Returns the metadata now stored (None when
        ``metadata`` is None)."""
        keys = iid_keys(iids)
        if labels is not None:
            db = self.s.db["labels"]
            for k, lab in zip(keys, labels):
                if lab is None:
                    self.txn.delete(k, db=db)
                else:
                    self.txn.put(k, pack(lab), db=db)
        out: list[Any] | None = None
        if metadata is not None:
            db = self.s.db["attrs"]
            out = []
            for iid, k, m in zip(iids.tolist(), keys, metadata):
                if merge:
                    raw = self.txn.get(k, db=db)
                    old = None if raw is None else unpack(raw, where=self.s.file, what="metadata")
                    if m is None:
                        out.append(old)
                        continue
                    new = dict(old) if isinstance(old, dict) else {}
                    for key, value in m.items():
                        if value is None:
                            new.pop(key, None)
                        else:
                            new[key] = value
                    m = new or None  # every key removed: the item has no metadata
                out.append(m)
                if m is None:
                    self.txn.delete(k, db=db)
                else:
                    self.txn.put(k, pack(m), db=db)
        self.note_payload(iids)
        return out

    def live_ids(self, vcode: int) -> np.ndarray:
        """Sorted internal ids of every live vector of version ``vcode`` (chunk records only)."""
        parts = []
        for _, meta in self.chunk_list(vcode):
            ids, alive = self.live_rows(meta)
            parts.append(ids[alive])
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def drop_version_vectors(self, vcode: int) -> int:
        """Delete every chunk, vector and locator of version ``vcode`` (``retire``); returns how
        many live vectors went."""
        n = int(self.meta(f"count:{vcode}", 0))
        prefix = int(vcode).to_bytes(2, "big")
        for name in ("chunks", "vecs", "loc"):
            with self.txn.cursor(db=self.s.db[name]) as cur:
                if cur.set_range(prefix):
                    while bytes(cur.key()).startswith(prefix):
                        if not cur.delete():
                            break
        self.put_meta(f"count:{vcode}", 0)
        return n

    def put_vectors(self, vcode: int, iids: np.ndarray, vectors: np.ndarray, *, fresh: bool = False) -> None:
        """Store version-``vcode`` vectors of ``iids`` (rows of ``vectors``, ``(n, dim)`` float32).

        Vectors these items already hold for the version are marked dead first (replacement);
        ``fresh`` says the items were just created and hold none.
        """
        if not fresh:
            self.remove_vectors(vcode, iids, missing_ok=True)
        order = np.argsort(iids, kind="stable")
        iids = iids[order]
        vectors = vectors[order]
        loc_items: list[tuple[bytes, bytes]] = []
        next_chunk = int(self.meta("next_chunk", 0))
        for s in range(0, len(iids), CHUNK_ROWS):
            ids_c = iids[s : s + CHUNK_ROWS]
            vec_c = np.ascontiguousarray(vectors[s : s + CHUNK_ROWS], dtype="<f4")
            chunk = next_chunk
            next_chunk += 1
            key = vkey(vcode, chunk)
            self.txn.put(key, vec_c.tobytes(), db=self.s.db["vecs"])
            self.txn.put(key, pack({"n": len(ids_c), "ids": ids_c.astype(">i8").tobytes(), "dead": None}),
                         db=self.s.db["chunks"])
            self.op["a"].append([vcode, chunk])
            locs = np.empty(len(ids_c), dtype=[("c", ">i8"), ("r", ">u4")])
            locs["c"] = chunk
            locs["r"] = np.arange(len(ids_c))
            raw = locs.tobytes()
            loc_items.extend(zip(iid_keys(ids_c, prefix=int(vcode).to_bytes(2, "big")),
                                 [raw[i : i + 12] for i in range(0, len(raw), 12)]))
        with self.txn.cursor(db=self.s.db["loc"]) as cur:
            cur.putmulti(loc_items)
        self.put_meta("next_chunk", next_chunk)
        self.bump(f"count:{vcode}", len(iids))

    def remove_vectors(self, vcode: int, iids: np.ndarray, *, missing_ok: bool = False) -> int:
        """Drop the version-``vcode`` vectors of ``iids``: rows marked dead, locators deleted."""
        chunks, rows = self.locate(vcode, iids.tolist())
        present = chunks >= 0
        if not present.any():
            return 0
        by_chunk: dict[int, list[int]] = {}
        for c, r in zip(chunks[present].tolist(), rows[present].tolist()):
            by_chunk.setdefault(c, []).append(r)
        for c, dead_rows in by_chunk.items():
            meta = self.chunk_meta(vcode, c)
            n = int(meta["n"])
            dead = np.zeros(n, dtype=bool)
            if meta.get("dead"):
                dead |= np.unpackbits(np.frombuffer(meta["dead"], dtype=np.uint8), count=n, bitorder="little").astype(bool)
            dead[dead_rows] = True
            meta["dead"] = np.packbits(dead, bitorder="little").tobytes()
            self.txn.put(vkey(vcode, c), pack(meta), db=self.s.db["chunks"])
        for iid in iids[present].tolist():
            self.txn.delete(vkey(vcode, iid), db=self.s.db["loc"])
        gone = iids[present].astype(np.int64)
        self.op["r"].append([vcode, gone.astype(">i8").tobytes()])
        self.bump(f"count:{vcode}", -int(present.sum()))
        return int(present.sum())

    def write_chunk(self, vcode: int, chunk: int, ids: np.ndarray, x: np.ndarray) -> None:
        """Store live rows as chunk ``chunk`` and point their locators at it (compaction)."""
        key = vkey(vcode, chunk)
        self.txn.put(key, np.ascontiguousarray(x, dtype="<f4").tobytes(), db=self.s.db["vecs"])
        self.txn.put(key, pack({"n": len(ids), "ids": ids.astype(">i8").tobytes(), "dead": None}),
                     db=self.s.db["chunks"])
        locs = np.empty(len(ids), dtype=[("c", ">i8"), ("r", ">u4")])
        locs["c"] = chunk
        locs["r"] = np.arange(len(ids))
        raw = locs.tobytes()
        items = list(zip(iid_keys(ids, prefix=int(vcode).to_bytes(2, "big")),
                         [raw[i : i + 12] for i in range(0, len(raw), 12)]))
        with self.txn.cursor(db=self.s.db["loc"]) as cur:
            cur.putmulti(items)

    def delete_items(self, iids: np.ndarray, vcodes: Sequence[int]) -> None:
        """Remove items entirely: every vector, the id mappings, labels and metadata."""
        for vc in vcodes:
            self.remove_vectors(vc, iids, missing_ok=True)
        for iid in iids.tolist():
            k = u64(iid)
            ext = self.txn.get(k, db=self.s.db["rev"])
            if ext is not None:
                self.txn.delete(bytes(ext), db=self.s.db["ids"])
            self.txn.delete(k, db=self.s.db["rev"])
            self.txn.delete(k, db=self.s.db["labels"])
            self.txn.delete(k, db=self.s.db["attrs"])
        self.bump("n_items", -len(iids))


class LmdbStore:
    """The LMDB environment of one index folder (``<index>/store``).

    Parameters
    ----------
    path:
        The store folder.
    readonly:
        Open without write access (other processes may write meanwhile; each read sees the
        latest commit).
    create:
        Initialize an empty store when the folder holds none.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False, create: bool = True,
                 map_size: int = INITIAL_MAP_SIZE) -> None:
        self.path = Path(path)
        self.file = self.path / "data.mdb"  # named in error messages
        self.readonly = readonly
        exists = (self.path / "data.mdb").exists()
        if not exists and (readonly or not create):
            raise CorruptIndexError(f"store file {self.path / 'data.mdb'} is missing")
        self.path.mkdir(parents=True, exist_ok=True)
        self._key = os.path.realpath(self.path)
        shared = _OPEN_ENVS.get(self._key)
        if shared is not None:
            # py-lmdb refuses to open one environment twice in a process: share the open one.
            if shared[0] and not readonly:
                raise IndexLockedError(
                    f"index store {self.path} is open read-only elsewhere in this process, and LMDB opens "
                    "an environment once per process",
                    hint="close the read-only handle first, or open the writer first (a read-only open then "
                         "shares it)")
            shared[3] += 1
        else:
            env, db = self._open_env(map_size)
            shared = [readonly, env, db, 1, self.identity()]
            _OPEN_ENVS[self._key] = shared
        # Every handle of this store in the process reads env and db through the shared entry, so
        # that a compaction that swaps the store's files (reopen_env) moves all of them at once.
        self._shared = shared
        self._check_format()

    @property
    def env(self) -> lmdb.Environment:
        return self._shared[1]

    @property
    def db(self) -> dict[str, Any]:
        return self._shared[2]

    def reopen_env(self) -> None:
        """Close this process's environment of the store and open the files now at its path (after
        a compaction replaced them). The caller holds every handle's lock: no transaction is open."""
        self._shared[1].close()
        env, db = self._open_env(INITIAL_MAP_SIZE)
        self._shared[1], self._shared[2], self._shared[4] = env, db, self.identity()

    def replaced(self) -> bool:
        """Whether the files at the store's path are no longer the ones this process has open
        (a writer in another process compacted the store)."""
        try:
            return self.identity() != self._shared[4]
        except OSError:
            return False  # mid-swap: the new files are not in place yet

    def identity(self) -> tuple[int, int]:
        """(device, inode) of data.mdb: changes when a compaction replaces the store."""
        st = os.stat(self.file)
        return st.st_dev, st.st_ino

    def compact_copy(self, dest: Path) -> int:
        """LMDB's compacting copy of the current snapshot into the empty folder ``dest`` (free pages
        left out), fsynced; returns its size in bytes."""
        dest.mkdir(parents=True, exist_ok=False)
        self.env.copy(str(dest), compact=True)
        out = dest / "data.mdb"
        fsync_path(out)
        fsync_path(dest)
        return out.stat().st_size

    def repack(self, vcodes_dims: Sequence[tuple[int, int]], *, oplog_upto: int) -> dict[str, int]:
        """Rewrite every chunk holding dead rows into dense chunks of live rows (locators follow)
        and drop the op log up to ``oplog_upto`` (every shard is saved past it: the log's chunk
        references die with the old chunks). Items and the sequence number are unchanged."""

        def fn(w: Writer) -> dict[str, int]:
            stats = {"chunks_dropped": 0, "chunks_written": 0, "rows_moved": 0, "dead_rows": 0}
            next_chunk = int(w.meta("next_chunk", 0))
            for vcode, dim in vcodes_dims:
                pend_ids: list[np.ndarray] = []
                pend_x: list[np.ndarray] = []
                pending = 0

                def emit(final: bool) -> None:
                    nonlocal next_chunk, pending, pend_ids, pend_x
                    while pending >= CHUNK_ROWS or (final and pending):
                        ids = np.concatenate(pend_ids)
                        x = np.concatenate(pend_x)
                        take = min(CHUNK_ROWS, len(ids))
                        w.write_chunk(vcode, next_chunk, ids[:take], x[:take])
                        next_chunk += 1
                        stats["chunks_written"] += 1
                        pend_ids, pend_x = [ids[take:]], [x[take:]]
                        pending = len(ids) - take

                for chunk, meta in w.chunk_list(vcode):
                    ids, alive = w.live_rows(meta)
                    if alive.all():
                        continue
                    stats["dead_rows"] += int((~alive).sum())
                    if alive.any():
                        x = w.chunk_vectors(vcode, chunk, int(meta["n"]), dim)
                        pend_ids.append(ids[alive])
                        pend_x.append(x[alive])
                        pending += int(alive.sum())
                        stats["rows_moved"] += int(alive.sum())
                    key = vkey(vcode, chunk)
                    w.txn.delete(key, db=self.db["vecs"])
                    w.txn.delete(key, db=self.db["chunks"])
                    stats["chunks_dropped"] += 1
                    emit(False)
                emit(True)
            w.put_meta("next_chunk", next_chunk)
            with w.txn.cursor(db=self.db["oplog"]) as cur:
                if cur.first():
                    while int.from_bytes(cur.key(), "big", signed=True) <= oplog_upto:
                        if not cur.delete():
                            break
            w.put_meta("oplog_from", max(int(w.meta("oplog_from", 1)), oplog_upto + 1))
            return stats

        return self.write(fn, log=False, bump=False)[0]

    def _check_data_file(self) -> None:
        """Refuse a data.mdb whose meta pages are damaged or that is shorter than the pages its
        committed meta claims: LMDB maps the file and would die of SIGBUS reading past its end.

        Reads only the two meta pages (the first ``16 + 136`` bytes of pages 0 and 1) and the
        file size, so opening stays O(1) on a store of any size. The layout is LMDB 0.9's on a
        64-bit build, in the host's byte order (as LMDB writes it): a 16-byte page header, then
        ``MDB_meta`` (magic, version, address, mapsize, two 48-byte ``MDB_db``, ``mm_last_pg``,
        ``mm_txnid``); the committed meta is the one with the higher txnid, as LMDB picks it.
        """
        # Why not py-lmdb's own parser: lmdb.verify (py-lmdb 3.0) parses these meta pages in
        # _Verifier.detect_engine()/load_metas(), but its only public entry, verify(path), walks
        # every page of the file, which is O(file) on each open. Using the private _Verifier would
        # need a fallback for when a 3.x release renames it, and that fallback is this reader, so
        # it would add a second code path and delete nothing; load_metas() does not check
        # truncation either (it allows a short free tail), so the size check below would stay.
        # The reader is kept; if py-lmdb makes a meta-only check public, use it here.
        f = self.file
        try:
            size = f.stat().st_size
        except FileNotFoundError:
            return
        if size == 0 and not self.readonly:
            return  # created, never initialized (a first open cut short): LMDB initializes it
        try:
            with open(f, "rb") as fh:
                head = fh.read(_META_AT + 136)
                if len(head) < _META_AT + 136:
                    raise ValueError(f"it holds only {size} bytes")
                magic, version, psize = struct.unpack_from("=II16xI", head, _META_AT)
                if magic != _MDB_MAGIC or version != 1:
                    raise ValueError("its first meta page is not an LMDB 0.9 meta page")
                if psize < 512 or psize & (psize - 1) or psize > 65536:
                    raise ValueError(f"its meta page gives the page size {psize}")
                metas = [head]
                fh.seek(psize)
                metas.append(fh.read(_META_AT + 136))
                size = os.fstat(fh.fileno()).st_size  # after the metas: a live writer only grows the file
            if len(metas[1]) < _META_AT + 136:
                raise ValueError(f"it holds only {size} bytes, less than its two meta pages")
            last_pg, txnid = [], []
            for m in metas:
                magic, version = struct.unpack_from("=II", m, _META_AT)
                if magic != _MDB_MAGIC or version != 1:
                    raise ValueError("a meta page is damaged")
                lp, tx = struct.unpack_from("=QQ", m, _META_AT + 24 + 96)
                last_pg.append(lp)
                txnid.append(tx)
            pages = last_pg[1 if txnid[0] < txnid[1] else 0] + 1  # the committed meta, as LMDB picks it
            if pages * psize > size:
                raise ValueError(f"it is truncated: {size} bytes, its committed meta needs {pages * psize}")
        except ValueError as exc:
            raise CorruptIndexError(f"the LMDB store {f} is damaged: {exc}") from None
        except OSError as exc:
            raise CorruptIndexError(f"cannot read the LMDB store {f}: {exc}") from None

    def _open_env(self, map_size: int) -> tuple[lmdb.Environment, dict[str, Any]]:
        readonly = self.readonly
        self._check_data_file()
        try:
            env = lmdb.open(
                str(self.path), map_size=map_size, max_dbs=len(_DBS) + 2, readonly=readonly,
                lock=True, subdir=True, max_readers=256, meminit=False,
            )
        except lmdb.Error as exc:
            if _is_disk_full(exc):
                raise StoreFullError(f"cannot open store {self.path}: {exc}") from None
            raise CorruptIndexError(f"cannot open the LMDB store {self.path / 'data.mdb'}: {exc}") from None
        try:
            db: dict[str, Any] = {}
            if readonly:
                # Handles opened inside a read transaction die with it: open them on their own.
                for n in _DBS:
                    db[n] = env.open_db(n.encode(), create=False)
            else:
                env.reader_check()  # clear reader slots left by crashed processes
                for n in _DBS:
                    db[n] = env.open_db(n.encode(), create=True)
        except lmdb.Error as exc:
            env.close()
            raise CorruptIndexError(f"the LMDB store {self.path / 'data.mdb'} is damaged or incomplete: {exc}") from None
        return env, db

    # -- format ------------------------------------------------------------------------------
    def _check_format(self) -> None:
        with self.read() as r:
            fmt = r.meta("format_version")
        if fmt is None:
            if self.readonly:
                raise CorruptIndexError(f"store {self.path} has no format record")
            def init(w: Writer) -> None:
                w.put_meta("format_version", FORMAT_VERSION)
                w.put_meta("seq", 0)
                w.put_meta("created_at", time.time())

            self.write(init, log=False)
            return
        if not isinstance(fmt, int):
            raise CorruptIndexError(f"store {self.path} has a damaged format record: {fmt!r}")
        if fmt > FORMAT_VERSION:
            raise FormatVersionError(
                f"index store {self.path} has format version {fmt}; this compatindex reads up to {FORMAT_VERSION}"
            )
        if fmt < FORMAT_VERSION:
            if self.readonly and all(v in ADDITIVE for v in range(fmt, FORMAT_VERSION)):
                return  # nothing to rewrite: read it as it is
            if self.readonly:
                raise FormatVersionError(f"index store {self.path} has the older format {fmt}",
                                         hint="open it once without readonly=True to migrate it")
            for v in range(fmt, FORMAT_VERSION):
                def migrate(w: Writer, step: Callable[[Any, dict[str, Any]], None] = MIGRATIONS[v], v: int = v) -> None:
                    step(w, {})
                    w.put_meta("format_version", v + 1)

                self.write(migrate, log=False)

    # -- transactions ------------------------------------------------------------------------
    @contextlib.contextmanager
    def read(self, *, buffers: bool = False) -> Iterator[Reader]:
        """A read snapshot. ``buffers=True``: records are views of the memory map, valid only
        inside the block (readers that copy what they keep, like :meth:`iter_live`, use it to
        read only the rows they need)."""
        for attempt in range(3):
            try:
                # two calls so that the lmdb stubs' overloads (bytes vs memoryview records) resolve
                txn: Any = self.env.begin(buffers=True) if buffers else self.env.begin(buffers=False)
                break
            except lmdb.MapResizedError:
                # Another process grew the map: adopt its size and retry.
                self.env.set_mapsize(0)
        else:  # pragma: no cover
            raise CorruptIndexError("could not start a read transaction after the map was resized")
        try:
            yield Reader(self, txn)
        except lmdb.Error as exc:  # MDB_CORRUPTED, MDB_PAGE_NOTFOUND, ...: a damaged file, said plainly
            raise CorruptIndexError(f"the LMDB store {self.file} is damaged: {exc}") from None
        # Anything else propagates as itself: records are checked where they are decoded (meta,
        # check_chunk, check_op, ext_value, locators), so a caller's KeyError or TypeError inside
        # the block is the caller's bug, not damage to data.mdb.
        finally:
            txn.abort()

    def seq(self) -> int:
        with self.read() as r:
            return r.seq()

    def write(self, fn: Callable[[Writer], T], *, log: bool = True, bump: bool = True) -> tuple[T, int]:
        """Run ``fn`` in one write transaction; retries with a larger map when the map is full.

        Returns ``(fn's result, new sequence number)``. Any exception aborts the transaction,
        leaving the store exactly as it was. ``bump=False`` (maintenance that changes no item,
        e.g. op-log truncation) keeps the sequence number and logs nothing.
        """
        while True:
            try:
                txn = self.env.begin(write=True)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
                continue
            try:
                w = Writer(self, txn)
                result = fn(w)
                if not bump:
                    seq = w.seq()
                    txn.commit()
                    return result, seq
                seq = w.seq() + 1
                w.put_meta("seq", seq)
                if log:
                    txn.put(u64(seq), pack(w.op), db=self.db["oplog"], append=True)
                txn.commit()
                return result, seq
            except lmdb.MapFullError:
                txn.abort()
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.MapResizedError:
                txn.abort()
                self.env.set_mapsize(0)
            except lmdb.Error as exc:
                txn.abort()
                if _is_disk_full(exc) or ("input/output error" in str(exc).lower() and self._no_room()):
                    raise StoreFullError(f"the disk holding {self.file} is full: {exc}") from None
                raise CorruptIndexError(f"LMDB error in {self.file}: {exc}") from None
            except OSError as exc:
                txn.abort()
                if _is_disk_full(exc):
                    raise StoreFullError(f"the disk holding {self.path} is full: {exc}") from None
                raise
            except BaseException:
                txn.abort()
                raise

    def _no_room(self, probe: int = 8 << 20) -> bool:
        """After an I/O error at commit: is the disk (or the file-size limit) full? LMDB 0.9 turns
        the short write a full disk gives into EIO, so probe: write ``probe`` bytes past the end
        of data.mdb's size into a scratch file (sparse below), then remove it."""
        tmp = self.path / ".space-probe"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            return _is_disk_full(exc)
        try:
            at = self.file.stat().st_size
            os.pwrite(fd, b"\0" * probe, at)
            os.fsync(fd)
            return False
        except OSError as exc:
            return _is_disk_full(exc)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    # -- bulk reads for shards ---------------------------------------------------------------
    def iter_live(self, vcode: int, dim: int, *, batch: int = 65536, reader: Reader | None = None,
                  vectors: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(iids (n,), vectors (n, dim))`` batches of every live vector of one version,
        all from one snapshot (``reader``'s when given).

        Only live rows are read: a chunk with none is skipped, and of the others only the live
        rows are copied (all of a chunk's pages are touched only when the snapshot is not a
        ``buffers=True`` one). ``vectors=False`` yields ids with ``(n, 0)`` arrays and reads no
        vector record at all (``verify``).
        """
        with contextlib.ExitStack() as stack:
            r = reader if reader is not None else stack.enter_context(self.read(buffers=True))
            ids_acc: list[np.ndarray] = []
            vec_acc: list[np.ndarray] = []
            n_acc = 0
            for chunk, meta in r.chunk_list(vcode):
                ids, alive = r.live_rows(meta)
                if not alive.any():
                    continue
                ids_acc.append(ids[alive])
                vec_acc.append(r.chunk_vectors(vcode, chunk, int(meta["n"]), dim, rows=alive) if vectors
                               else np.zeros((int(alive.sum()), 0), np.float32))
                n_acc += int(alive.sum())
                if n_acc >= batch:
                    yield np.concatenate(ids_acc), np.concatenate(vec_acc)
                    ids_acc, vec_acc, n_acc = [], [], 0
            if ids_acc:
                yield np.concatenate(ids_acc), np.concatenate(vec_acc)

    def oplog_since(self, seq: int, *, reader: Reader | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield ``(seq, op)`` for every write committed after ``seq`` (in ``reader``'s snapshot)."""
        with contextlib.ExitStack() as stack:
            r = reader if reader is not None else stack.enter_context(self.read())
            with r.txn.cursor(db=self.db["oplog"]) as cur:
                if cur.set_range(u64(seq + 1)):
                    for k, v in cur:
                        yield int.from_bytes(k, "big", signed=True), check_op(
                            unpack(v, what="op log record", where=self.file), where=self.file)

    def oplog_from(self, reader: Reader) -> int:
        """The first sequence number the op log still holds every write from (1: never truncated)."""
        return int(reader.meta("oplog_from", 1))

    def truncate_oplog(self, upto: int) -> int:
        """Delete the op log's records up to sequence number ``upto`` (every shard is saved past
        it); returns how many went. Readers whose shards are older reload them (ShardSet.sync)."""

        def fn(w: Writer) -> int:
            if int(w.meta("oplog_from", 1)) > upto:
                return 0
            n = 0
            with w.txn.cursor(db=self.db["oplog"]) as cur:
                if cur.first():
                    while int.from_bytes(cur.key(), "big", signed=True) <= upto:
                        n += 1
                        if not cur.delete():
                            break
            w.put_meta("oplog_from", upto + 1)
            return n

        return self.write(fn, log=False, bump=False)[0]

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    def close(self) -> None:
        shared = _OPEN_ENVS.get(self._key)
        if shared is None or shared is not self._shared:
            return
        shared[3] -= 1
        if shared[3] <= 0:
            del _OPEN_ENVS[self._key]
            self.env.close()
