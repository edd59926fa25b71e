"""Consistency check of an index: store records against each other and against the shards."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..core.datatypes import Version
from ..errors import CompatIndexError
from .shards import FaissShard, ShardSet
from .store import LmdbStore, check_op, unpack


def verify_index(store: LmdbStore, shards: ShardSet, versions: Sequence[Version], *, check_file: bool) -> list[str]:
    """Return a plain description of each problem found (empty when the index is sound).

    Parameters
    ----------
    store, shards:
        The index's store and the shards derived from it.
    versions:
        Every version of the index.
    check_file:
        Also walk the LMDB file's structure (only where this process holds the writer lock).
    """
    problems: list[str] = []
    if check_file:
        # Structure of the LMDB file itself (every page reachable once, keys ordered, free and live
        # pages disjoint), by py-lmdb's pure-Python walker: it never hands pages to the engine.
        # Only where this process holds the writer lock: nobody else changes the file meanwhile.
        try:
            import lmdb.verify as lmdb_verify

            found = lmdb_verify.verify(str(store.path))
        except Exception as exc:  # noqa: BLE001 - VerifyError (not an LMDB file) or a walker failure
            found = [f"the structural check could not run: {exc}"]
        problems.extend(f"LMDB store {store.file}: {f}" for f in found[:20])
    try:
        with store.read() as r:
            n_items = int(r.meta("n_items", 0))
            n_rev = r.count_entries("rev")
            n_ids = r.count_entries("ids")
            if not (n_items == n_rev == n_ids):
                problems.append(f"item counts disagree: meta says {n_items}, id map {n_ids}, reverse map {n_rev}")
            for v in versions:
                if v.retired:  # its vectors and shard were dropped (retire)
                    if int(r.meta(f"count:{v.code}", 0)) or r.chunk_list(v.code):
                        problems.append(f"retired version {v.name!r} still holds vectors in the store")
                    if v.code in shards.shards:
                        problems.append(f"retired version {v.name!r} still has a shard in memory")
                    files = shards.files(v.code)
                    if files is not None and (files[0].exists() or files[1].exists()):
                        problems.append(f"retired version {v.name!r} still has a shard file {files[1]}")
                    continue
                ids_parts = [ids for ids, _ in store.iter_live(v.code, v.dim, reader=r, vectors=False)]
                live = np.sort(np.concatenate(ids_parts)) if ids_parts else np.zeros(0, np.int64)
                counted = int(r.meta(f"count:{v.code}", 0))
                if len(live) != counted:
                    problems.append(f"version {v.name!r}: {len(live)} live vectors in chunks, counter says {counted}")
                if len(np.unique(live)) != len(live):
                    problems.append(f"version {v.name!r}: an item holds two live vectors")
                chunks, _ = r.locate(v.code, live.tolist())
                if (chunks < 0).any():
                    problems.append(f"version {v.name!r}: {(chunks < 0).sum()} live vectors have no locator")
                shard = shards.shards.get(v.code)
                if shard is None:
                    problems.append(f"version {v.name!r} has no shard")
                else:
                    sid = np.sort(shard.ids())
                    if not np.array_equal(sid, live):
                        problems.append(
                            f"shard of version {v.name!r} holds {len(sid)} vectors, the store {len(live)}; "
                            f"{len(np.setdiff1d(live, sid))} missing, {len(np.setdiff1d(sid, live))} extra"
                        )
                files = shards.files(v.code)
                if files is not None and (files[0].exists() or files[1].exists()):
                    try:
                        FaissShard.load(files[1].parent, files[1].stem, dim=v.dim, spec=shards.spec)
                    except ValueError as exc:
                        problems.append(f"shard file {files[1]} is damaged ({exc}); it will be rebuilt on open")
            # every msgpack record decodes (labels, metadata, op log; versions were decoded on open)
            for name, what in (("labels", "label"), ("attrs", "metadata"), ("oplog", "op log record")):
                with r.txn.cursor(db=store.db[name]) as cur:
                    for k, rec in cur:
                        obj = unpack(rec, what=f"{what} {bytes(k).hex()}", where=store.file)
                        if name == "oplog":
                            check_op(obj, what=f"{what} {bytes(k).hex()}", where=store.file)
            # the id map and the reverse map are each other's inverse
            with r.txn.cursor(db=store.db["rev"]) as cur:
                for k, ext in cur:
                    if r.txn.get(bytes(ext), db=store.db["ids"]) != bytes(k):
                        problems.append(f"the id maps in {store.file} disagree at internal id "
                                        f"{int.from_bytes(k, 'big', signed=True)}")
                        break
            for iid, _ext in r.iter_items():
                if not any(r.txn.get(int(v.code).to_bytes(2, "big") + int(iid).to_bytes(8, "big", signed=True),
                                     db=store.db["loc"]) is not None for v in versions):
                    problems.append(f"item with internal id {iid} holds no vector")
                    break
    except CompatIndexError as exc:
        problems.append(str(exc))
    return problems
