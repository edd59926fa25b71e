"""Consistency check of an index: store records against each other and against the shards."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import CompatIndexError
from .shards import FaissShard

if TYPE_CHECKING:
    from .index import Index


def verify_index(index: "Index") -> list[str]:
    """Return a plain description of each problem found (empty when the index is sound)."""
    problems: list[str] = []
    store = index.store
    assert store is not None
    try:
        with store.read() as r:
            n_items = int(r.meta("n_items", 0))
            n_rev = r.count_entries("rev")
            n_ids = r.count_entries("ids")
            if not (n_items == n_rev == n_ids):
                problems.append(f"item counts disagree: meta says {n_items}, id map {n_ids}, reverse map {n_rev}")
            for v in index._versions.values():
                ids_parts = [ids for ids, _ in store.iter_live(v.code, v.dim, reader=r)]
                live = np.sort(np.concatenate(ids_parts)) if ids_parts else np.zeros(0, np.int64)
                counted = int(r.meta(f"count:{v.code}", 0))
                if len(live) != counted:
                    problems.append(f"version {v.name!r}: {len(live)} live vectors in chunks, counter says {counted}")
                if len(np.unique(live)) != len(live):
                    problems.append(f"version {v.name!r}: an item holds two live vectors")
                chunks, _ = r.locate(v.code, live.tolist())
                if (chunks < 0).any():
                    problems.append(f"version {v.name!r}: {(chunks < 0).sum()} live vectors have no locator")
                shard = index.shards.shards.get(v.code)
                if shard is None:
                    problems.append(f"version {v.name!r} has no shard")
                else:
                    sid = np.sort(shard.ids())
                    if not np.array_equal(sid, live):
                        problems.append(
                            f"shard of version {v.name!r} holds {len(sid)} vectors, the store {len(live)}; "
                            f"{len(np.setdiff1d(live, sid))} missing, {len(np.setdiff1d(sid, live))} extra"
                        )
                folder = index.path / "shards"
                name = f"v{v.code:03d}"
                if (folder / f"{name}.json").exists() or (folder / f"{name}.faiss").exists():
                    try:
                        FaissShard.load(folder, name, dim=v.dim, spec=index.shards.spec)
                    except ValueError as exc:
                        problems.append(f"shard file {folder / name}.faiss is damaged ({exc}); it will be rebuilt on open")
            for iid, _ext in r.iter_items():
                if not any(r.txn.get(int(v.code).to_bytes(2, "big") + int(iid).to_bytes(8, "big", signed=True),
                                     db=store.db["loc"]) is not None for v in index._versions.values()):
                    problems.append(f"item with internal id {iid} holds no vector")
                    break
    except CompatIndexError as exc:
        problems.append(str(exc))
    return problems
