"""One writer and several reader processes on one index folder (see ``test_concurrency.py``).

The writer adds batches of ``BATCH`` consecutive ids, backfills batches, registers one child
version, and (``--deletes``) deletes whole batches (never the newest one); it logs each call
before and after (fsynced, the format of ``crashkit``) so the parent can rebuild what the index
must hold. Readers open the folder with ``readonly=True`` and loop until the writer is done:

- every call succeeds (an exception is a failure, recorded with its traceback);
- the store's seq never goes backwards; the item count is a multiple of ``BATCH``; the visible
  ids are whole batches; the newest visible batch never goes backwards; a deleted id never comes
  back; without deletes the count never goes backwards;
- when nothing was committed between the first and the last read of an iteration (a stable
  snapshot), ``search`` equals brute force over the vectors ``fetch`` returned, and the counts
  in ``stats()`` equal what ``fetch`` returned.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np

import crashkit

BATCH = 16
DIM = 16


def writer_main(path: str, log_path: str, seconds: float, deletes: bool, seed: int) -> None:
    import compatindex

    log = crashkit._Log(log_path)
    rng = random.Random(seed)
    ix = compatindex.open(path, lock_timeout=30.0)
    versions = {v.name: v.dim for v in ix.versions()}
    batches: list[int] = []  # first ids of live batches
    next_id = 0
    t_end = time.monotonic() + seconds
    registered = "v2" in versions
    while time.monotonic() < t_end:
        r = rng.random()
        if not registered and time.monotonic() > t_end - seconds * 0.6:
            Q = crashkit.gen_orthogonal(seed, DIM + 4)
            log.write({"t": "intent", "op": "register", "name": "v2", "parent": "v1", "dim": DIM + 4})
            v = ix.register_version("v2", "v1", DIM + 4, extension=Q)
            log.write({"t": "ack", "op": "register", "seq": v.created_seq})
            versions["v2"] = DIM + 4
            registered = True
        elif r < 0.5 or len(batches) < 3:
            v = rng.choice(sorted(versions))
            ids = list(range(next_id, next_id + BATCH))
            vseed = rng.randrange(2**31)
            log.write({"t": "intent", "op": "add", "ids": ids, "version": v, "vseed": vseed})
            res = ix.add(ids, crashkit.gen_vectors(vseed, BATCH, versions[v]), version=v, raw=False)
            log.write({"t": "ack", "op": "add", "seq": res.seq})
            batches.append(next_id)
            next_id += BATCH
        elif r < 0.8 or not deletes:
            v = rng.choice(sorted(versions))
            live = [b + j for b in batches for j in range(BATCH)]
            ids = rng.sample(live, BATCH)
            vseed = rng.randrange(2**31)
            log.write({"t": "intent", "op": "backfill", "ids": ids, "version": v, "vseed": vseed, "drop_old": False})
            res = ix.backfill(ids, crashkit.gen_vectors(vseed, BATCH, versions[v]), version=v, raw=False)
            log.write({"t": "ack", "op": "backfill", "seq": res.seq})
        else:
            b = rng.choice(batches[:-1])  # never the newest batch: the newest visible id only grows
            ids = list(range(b, b + BATCH))
            log.write({"t": "intent", "op": "delete", "ids": ids})
            ix.delete(ids)
            log.write({"t": "ack", "op": "delete", "seq": None})
            batches.remove(b)
        n_calls = getattr(writer_main, "_calls", 0) + 1
        writer_main._calls = n_calls  # type: ignore[attr-defined]
        # Mostly back-to-back writes, with a quiet second now and then, so that readers on a
        # loaded machine also get stable snapshots to check against brute force.
        time.sleep(1.0 if n_calls % 15 == 0 else rng.uniform(0.0, 0.02))
    ix.close()
    log.write({"t": "done"})


def reader_main(path: str, done_flag: str, out_path: str, deletes: bool, seed: int) -> None:
    import compatindex

    rng = np.random.default_rng(seed)
    stats: dict = {"iterations": 0, "stable_snapshots_checked": 0, "searches": 0, "errors": [], "violations": []}
    last_seq, last_count, last_top = -1, -1, -1
    gone: set[int] = set()
    seen: set[int] = set()
    try:
        ix = compatindex.open(path, readonly=True)
    except Exception:  # noqa: BLE001
        stats["errors"].append(traceback.format_exc())
        Path(out_path).write_text(json.dumps(stats))
        return
    while not os.path.exists(done_flag) or stats["iterations"] < 3:
        stats["iterations"] += 1
        try:
            s0 = ix.stats()
            vs = {v.name: (v.parent, v.dim) for v in ix.versions()}
            qv = rng.choice(sorted(vs))
            Q = rng.standard_normal((2, vs[qv][1])).astype(np.float32)
            res = ix.search(Q, k=8, version=qv, raw=False)
            stats["searches"] += 1
            fetched = {v: ix.fetch(v) for v in vs}
            s1 = ix.stats()
        except Exception:  # noqa: BLE001 - readers must never fail
            stats["errors"].append(traceback.format_exc())
            if len(stats["errors"]) > 5:
                break
            continue
        bad = stats["violations"]
        if s0["seq"] < last_seq or s1["seq"] < s0["seq"]:
            bad.append(f"seq went backwards: {last_seq} -> {s0['seq']} -> {s1['seq']}")
        for s in (s0, s1):
            if s["items"] % BATCH:
                bad.append(f"item count {s['items']} is not a multiple of {BATCH} (a partial batch)")
        if not deletes and s0["items"] < last_count:
            bad.append(f"item count went backwards: {last_count} -> {s0['items']}")
        last_seq, last_count = s1["seq"], s1["items"]
        items: dict[int, dict[str, np.ndarray]] = {}
        for v, b in fetched.items():
            for i, x in zip(b.ids, b.vectors):
                items.setdefault(int(i), {})[v] = x
        if s0["seq"] == s1["seq"]:  # one stable snapshot: everything read belongs to it
            stats["stable_snapshots_checked"] += 1
            ids = np.asarray(sorted(items), dtype=np.int64)
            starts = np.unique(ids // BATCH)
            if len(ids) != len(starts) * BATCH:
                bad.append(f"visible ids are not whole batches ({len(ids)} ids in {len(starts)} batches)")
            if len(ids) != s0["items"]:
                bad.append(f"stats() says {s0['items']} items, fetch() returned {len(ids)}")
            for v, b in fetched.items():
                if len(b.ids) != s0["versions"][v]["vectors"]:
                    bad.append(f"version {v}: stats() says {s0['versions'][v]['vectors']} vectors, fetch() {len(b.ids)}")
            order = sorted(vs, key=lambda n: ix.version(n).code)
            problem = crashkit.compare_search(res, crashkit.brute_search(vs, order, items, Q, 8, qv))
            if problem:
                bad.append(f"search differs from brute force on snapshot seq {s0['seq']}: {problem}")
            top = int(ids.max()) if len(ids) else -1
            if top < last_top:
                bad.append(f"newest visible id went backwards: {last_top} -> {top}")
            last_top = max(last_top, top)
            now = set(ids.tolist())
            back = now & gone
            if back:
                bad.append(f"deleted ids came back: {sorted(back)[:5]}")
            gone |= seen - now
            seen = now
        if len(bad) > 5:
            break
    ix.close()
    Path(out_path).write_text(json.dumps(stats))


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "writer":
        writer_main(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5] == "1", int(sys.argv[6]))
    else:
        reader_main(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1", int(sys.argv[6]))
