"""Kill-point campaigns: a writer child process is SIGKILLed at random moments, then the index is
reopened and checked against what the child acknowledged.

Used by ``tests/reliability/test_crash_safety.py`` (a few dozen kill points) and by
``bench/stress_kill.py`` (hundreds). No pytest import here: the bench script runs it alone.

Protocol (one round):

1. The parent starts ``python crashkit.py child PATH LOG SEED NEXT_ID``. The child writes
   ``ready`` to LOG, then loops over random operations on the index: ``open``, ``add``,
   ``backfill``, ``delete``, ``register`` (a version), ``flush`` and ``close``. Before each call it
   appends an *intent* line (what it is about to do, with the seed its vectors come from); after
   the call returns it appends an *ack* line (with the returned sequence number). Every line is
   flushed and fsynced before the child goes on.
2. After a random delay the parent sends SIGKILL and reaps the child.
3. The parent replays the acknowledged operations into a plain-Python model. At most one
   operation was in flight (an intent without ack): the index must equal the model either
   without it or with all of it (no partial batch).
4. The parent reopens the index as a writer (recovery: shard load, rebuild or replay), checks
   ``verify() == []``, compares every stored vector (``Index.fetch``) with the model, compares
   ``search`` with a brute-force search over the fetched vectors, and closes it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT_DIM = 16
BATCH = 32  # every add/backfill/delete moves exactly BATCH items
MAX_VERSIONS = 8
MAX_ITEMS = 1500  # past this the child stops adding
# A round may focus on one operation (the child does it 70% of the time) so that every kind of
# call gets killed mid-way, the short ones (register, open) included.
FOCUS = ("mixed", "mixed", "add", "backfill", "delete", "register", "flush")


# -- deterministic data ----------------------------------------------------------------------
def gen_vectors(seed: int, n: int, dim: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def gen_orthogonal(seed: int, dim: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def unit(x: np.ndarray) -> np.ndarray:
    """Rows unit-normalized the way the library does it (cosine metric)."""
    n = np.linalg.norm(x.astype(np.float64), axis=1)
    return np.ascontiguousarray(x / n[:, None], dtype=np.float32)


# -- the child -------------------------------------------------------------------------------
class _Log:
    def __init__(self, path: str) -> None:
        self.f = open(path, "a", encoding="utf-8")

    def write(self, rec: dict[str, Any]) -> None:
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())


def child_main(path: str, log_path: str, seed: int, next_id: int, focus: str = "mixed",
               max_versions: int = MAX_VERSIONS, max_ops: int = 10**9) -> None:
    import compatindex

    log = _Log(log_path)
    rng = random.Random(seed)
    log.write({"t": "ready", "pid": os.getpid()})

    def call(intent: dict[str, Any], fn) -> Any:
        log.write({"t": "intent", **intent})
        out = fn()
        log.write({"t": "ack", "op": intent["op"], "seq": getattr(out, "seq", None)})
        return out

    def do_open():
        return compatindex.open(path, lock_timeout=10.0)

    ix = call({"op": "open"}, do_open)
    versions: dict[str, tuple[str | None, int]] = {v.name: (v.parent, v.dim) for v in ix.versions()}
    items: dict[int, set[str]] = {}
    for name in versions:
        for i in ix.fetch(name).ids:
            items.setdefault(int(i), set()).add(name)
    if not versions:
        call({"op": "create", "name": "v1", "dim": ROOT_DIM}, lambda: ix.create_version("v1", dim=ROOT_DIM))
        versions["v1"] = (None, ROOT_DIM)

    # thresholds of r for register, add, backfill, delete, flush (close takes the rest)
    cuts = {"mixed": (0.06, 0.45, 0.70, 0.86, 0.94), "add": (0.02, 0.75, 0.85, 0.93, 0.97),
            "backfill": (0.02, 0.15, 0.85, 0.92, 0.97), "delete": (0.02, 0.30, 0.38, 0.90, 0.96),
            "register": (0.70, 0.80, 0.88, 0.94, 0.97), "flush": (0.02, 0.25, 0.35, 0.40, 0.85)}[focus]
    for _ in range(max_ops):
        r = rng.random()
        names = sorted(versions)
        if r < cuts[0] and len(versions) < max_versions:
            name = f"v{len(versions) + 1}"
            parent = rng.choice(names)
            dim = versions[parent][1] + rng.randint(0, 8)
            qseed = rng.randrange(2**31)
            ext = gen_orthogonal(qseed, dim) if rng.random() < 0.7 else None
            head = None
            if rng.random() < 0.3:
                W = gen_vectors(qseed + 1, dim, dim)
                head = {"kind": "chain", "steps": [{"kind": "linear", "W": W, "b": None}, {"kind": "normalize"}]}
            intent = {"op": "register", "name": name, "parent": parent, "dim": dim}
            call(intent, lambda: ix.register_version(name, parent, dim, extension=ext, head=head,
                                                     report={"qseed": qseed}))
            versions[name] = (parent, dim)
        elif r < cuts[1] and len(items) < MAX_ITEMS or len(items) < BATCH:
            v = rng.choice(names)
            ids = list(range(next_id, next_id + BATCH))
            next_id += BATCH
            vseed = rng.randrange(2**31)
            x = gen_vectors(vseed, BATCH, versions[v][1])
            call({"op": "add", "ids": ids, "version": v, "vseed": vseed},
                 lambda: ix.add(ids, x, version=v, labels=[i % 5 for i in ids], raw=False))
            for i in ids:
                items[i] = {v}
        elif r < cuts[2]:
            v = rng.choice(names)
            ids = rng.sample(sorted(items), BATCH)
            vseed = rng.randrange(2**31)
            drop = rng.random() < 0.3
            x = gen_vectors(vseed, BATCH, versions[v][1])
            call({"op": "backfill", "ids": ids, "version": v, "vseed": vseed, "drop_old": drop},
                 lambda: ix.backfill(ids, x, version=v, drop_old=drop, raw=False))
            for i in ids:
                items[i] = {v} if drop else items[i] | {v}
        elif r < cuts[3]:
            ids = rng.sample(sorted(items), BATCH)
            call({"op": "delete", "ids": ids}, lambda: ix.delete(ids))
            for i in ids:
                del items[i]
        elif r < cuts[4]:
            call({"op": "flush"}, ix.flush)
        else:
            call({"op": "close"}, ix.close)
            ix = call({"op": "open"}, do_open)
    ix.close()
    log.write({"t": "done"})


# -- the model -------------------------------------------------------------------------------
class Model:
    """What the index must hold: versions and, per item, its vector of each version it holds."""

    def __init__(self) -> None:
        self.versions: dict[str, tuple[str | None, int]] = {}
        self.order: list[str] = []
        self.items: dict[int, dict[str, np.ndarray]] = {}
        self.last_seq = 0
        self.next_id = 0

    def copy(self) -> "Model":
        m = Model()
        m.versions = dict(self.versions)
        m.order = list(self.order)
        m.items = {i: dict(d) for i, d in self.items.items()}
        m.last_seq = self.last_seq
        m.next_id = self.next_id
        return m

    def apply(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind == "create":
            self.versions[op["name"]] = (None, op["dim"])
            self.order.append(op["name"])
        elif kind == "register":
            self.versions[op["name"]] = (op["parent"], op["dim"])
            self.order.append(op["name"])
        elif kind == "add":
            x = unit(gen_vectors(op["vseed"], len(op["ids"]), self.versions[op["version"]][1]))
            for i, row in zip(op["ids"], x):
                self.items[i] = {op["version"]: row}
            self.next_id = max(self.next_id, max(op["ids"]) + 1)
        elif kind == "backfill":
            x = unit(gen_vectors(op["vseed"], len(op["ids"]), self.versions[op["version"]][1]))
            for i, row in zip(op["ids"], x):
                if op["drop_old"]:
                    self.items[i] = {}
                self.items[i][op["version"]] = row
        elif kind == "delete":
            for i in op["ids"]:
                del self.items[i]
        # open / flush / close change nothing

    def mutates(self, op: dict[str, Any]) -> bool:
        return op["op"] in ("create", "register", "add", "backfill", "delete")


def read_log(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None, bool]:
    """``(acknowledged intents in order, the intent in flight or None, child reached 'done')``."""
    acked: list[dict[str, Any]] = []
    pending: dict[str, Any] | None = None
    done = False
    if not path.exists():
        return acked, None, False
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:  # a line torn by the kill: the call it announces did not start/finish
            break
        t = rec.get("t")
        if t == "intent":
            assert pending is None, f"two intents without an ack in {path}"
            pending = rec
        elif t == "ack":
            assert pending is not None and pending["op"] == rec["op"], f"ack without intent in {path}"
            pending["seq"] = rec.get("seq")
            acked.append(pending)
            pending = None
        elif t == "done":
            done = True
    return acked, pending, done


# -- the checks ------------------------------------------------------------------------------
def observed_state(ix) -> tuple[dict[str, tuple[str | None, int]], dict[int, dict[str, np.ndarray]]]:
    versions = {v.name: (v.parent, v.dim) for v in ix.versions()}
    items: dict[int, dict[str, np.ndarray]] = {}
    for name in versions:
        b = ix.fetch(name)
        for i, row in zip(b.ids, b.vectors):
            items.setdefault(int(i), {})[name] = row
    return versions, items


def diff_state(model: Model, versions, items, atol: float = 1e-6) -> str | None:
    """None when the observed state equals the model, else the first difference."""
    if versions != model.versions:
        return f"versions differ: index {versions}, model {model.versions}"
    if set(items) != set(model.items):
        miss = sorted(set(model.items) - set(items))[:5]
        extra = sorted(set(items) - set(model.items))[:5]
        return f"items differ: {len(items)} in the index, {len(model.items)} in the model; missing {miss}, extra {extra}"
    for i, want in model.items.items():
        got = items[i]
        if set(got) != set(want):
            return f"item {i} holds versions {sorted(got)}, the model {sorted(want)}"
        for v, row in want.items():
            if not np.allclose(got[v], row, atol=atol):
                return f"item {i} version {v}: stored vector differs from the acknowledged one"
    return None


def _chain(versions, v):
    out = []
    while v is not None:
        out.append(v)
        v = versions[v][0]
    return out[::-1]


def brute_search(versions, order, items, Q: np.ndarray, k: int, qv: str):
    """Cross-version search by the rules of docs/concepts.md, vectorized: each item is represented by
    its held version nearest the query's (largest shared dim, then tree distance, then age); the
    score is the renormalized inner product over the shared prefix."""
    Q = unit(Q)
    qchain = _chain(versions, qv)

    def key(u):
        uc = _chain(versions, u)
        common = [a for a, b in zip(qchain, uc) if a == b]
        lca = common[-1]
        return (-versions[lca][1], len(qchain) + len(uc) - 2 * len(common), order.index(u)), versions[lca][1]

    ranked = sorted(versions, key=lambda u: key(u)[0])
    ids_all, scores_all = [], []
    for u in ranked:
        d = key(u)[1]
        ids = [i for i, held in items.items() if u in held and min(held, key=lambda w: key(w)[0]) == u]
        if not ids:
            continue
        X = np.stack([items[i][u] for i in ids]).astype(np.float64)
        q = Q.astype(np.float64)
        s = q[:, :d] @ X[:, :d].T
        if d < Q.shape[1]:
            s *= 1.0 / np.linalg.norm(q[:, :d], axis=1, keepdims=True)
        ids_all.extend(ids)
        scores_all.append(s)
    if not ids_all:
        return [[] for _ in Q], [[] for _ in Q]
    S = np.concatenate(scores_all, axis=1)
    order_ = np.argsort(-S, axis=1, kind="stable")[:, :k]
    ids_arr = np.asarray(ids_all)
    return [ids_arr[o].tolist() for o in order_], [S[r, o].tolist() for r, o in enumerate(order_)]


def compare_search(res, ref, atol: float = 1e-4) -> str | None:
    ref_ids, ref_scores = ref
    for r in range(len(ref_ids)):
        got = res.scores[r][np.isfinite(res.scores[r])]
        if len(got) != len(ref_scores[r]) or not np.allclose(got, ref_scores[r], atol=atol):
            return f"query {r}: scores {got[:5]} differ from brute force {ref_scores[r][:5]}"
        for j, (a, b) in enumerate(zip(res.ids[r], ref_ids[r])):
            if a != b and abs(ref_scores[r][j] - got[j]) >= atol:
                return f"query {r} rank {j}: id {a} where brute force has {b}"
    return None


def check_search(ix, versions, order, items, rng: np.random.Generator, k: int = 10) -> str | None:
    names = sorted(versions)
    for qv in rng.choice(names, size=min(len(names), 6), replace=False).tolist():
        Q = rng.standard_normal((3, versions[qv][1])).astype(np.float32)
        res = ix.search(Q, k=k, version=qv, raw=False)
        problem = compare_search(res, brute_search(versions, order, items, Q, k, qv))
        if problem:
            return f"search with {qv} queries: {problem}"
    return None


# -- the campaign ----------------------------------------------------------------------------
def run_campaign(workdir: Path, *, points: int, seed: int = 0, max_delay: float = 0.8,
                 focus: str | None = None, max_versions: int = MAX_VERSIONS,
                 time_budget: float | None = None, progress=None) -> dict[str, Any]:
    """Run ``points`` kill rounds on one index in ``workdir``; returns a summary (``failures``
    lists every broken promise; empty when all held)."""
    import compatindex

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "ix"
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    model = Model()
    me = Path(__file__).resolve()
    summary: dict[str, Any] = {
        "kill_points": 0, "kills_during": {}, "acknowledged_writes": 0, "acknowledged_items": 0,
        "in_flight_committed": 0, "in_flight_not_committed": 0, "shard_rebuilds": 0, "oplog_replays": 0,
        "child_exits_before_kill": 0, "failures": [], "final_items": 0, "final_versions": 0,
        "final_seq": 0,
    }
    t0 = time.monotonic()
    for point in range(points):
        if time_budget is not None and time.monotonic() - t0 > time_budget:
            break
        log_path = workdir / f"round{point:04d}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        child = subprocess.Popen(
            [sys.executable, str(me), "child", str(path), str(log_path), str(rng.randrange(2**31)),
             str(model.next_id), focus or rng.choice(FOCUS), str(max_versions)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        )
        # wait for the child to be past its imports, then let it run a random while
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            if log_path.exists() and log_path.stat().st_size > 0:
                break
            time.sleep(0.005)
        # one round in five dies young (during open and recovery, or the first calls)
        time.sleep(rng.uniform(0.0, 0.06) if rng.random() < 0.2 else rng.uniform(0.0, max_delay))
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        else:
            summary["child_exits_before_kill"] += 1
        _, err = child.communicate()
        if child.returncode not in (-signal.SIGKILL, 0):
            summary["failures"].append(f"round {point}: child failed (rc {child.returncode}): {err.decode()[-2000:]}")
            break
        acked, pending, _ = read_log(log_path)
        where = pending["op"] if pending else "between calls"
        summary["kills_during"][where] = summary["kills_during"].get(where, 0) + 1
        summary["kill_points"] += 1
        for op in acked:
            if model.mutates(op):
                summary["acknowledged_writes"] += 1
                summary["acknowledged_items"] += len(op.get("ids", ()))
            model.apply(op)
            if op.get("seq") is not None:
                if op["seq"] <= model.last_seq:
                    summary["failures"].append(f"round {point}: acknowledged seq {op['seq']} not increasing")
                model.last_seq = op["seq"]
        if pending and pending["op"] == "add":  # ids of an add in flight are never reused
            model.next_id = max(model.next_id, max(pending["ids"]) + 1)
        problem = _check_round(compatindex, path, model, pending, nrng, summary)
        if problem:
            summary["failures"].append(f"round {point} (killed during {where}): {problem}")
            break
        if progress:
            progress(point, summary)
    summary["final_items"] = len(model.items)
    summary["final_versions"] = len(model.versions)
    summary["wall_s"] = round(time.monotonic() - t0, 1)
    return summary


def _check_round(compatindex, path: Path, model: Model, pending, nrng, summary) -> str | None:
    if not (path / "compatindex.json").exists():
        return None if not model.versions and not model.items else "index folder vanished"
    if not (path / "store" / "data.mdb").exists():
        return None if not model.versions else "store vanished"
    try:
        ix = compatindex.open(path, lock_timeout=10.0)
    except Exception as exc:  # noqa: BLE001 - any failure to reopen is a broken promise
        return f"reopen failed: {type(exc).__name__}: {exc}"
    try:
        events = list(ix.backend.shards.events)
        summary["shard_rebuilds"] += sum("rebuilt" in e for e in events)
        summary["oplog_replays"] += sum("replayed" in e for e in events)
        seq = ix.stats()["seq"]
        if seq < model.last_seq:
            return f"store seq {seq} is behind the last acknowledged seq {model.last_seq}"
        versions, items = observed_state(ix)
        candidates = [model]
        if pending is not None and model.mutates(pending):
            with_pending = model.copy()
            with_pending.apply(pending)
            candidates.append(with_pending)
        diffs = [diff_state(m, versions, items) for m in candidates]
        if all(diffs):
            return "index matches neither the acknowledged state nor it plus the write in flight: " + " / ".join(diffs)
        if len(candidates) == 2:
            if diffs[1] is None and diffs[0] is not None:
                summary["in_flight_committed"] += 1
                model.__dict__.update(candidates[1].__dict__)
                model.last_seq = seq
            else:
                summary["in_flight_not_committed"] += 1
        problems = ix.verify()
        if problems:
            return f"verify() found problems: {problems}"
        if ix.count != len(model.items):
            return f"count {ix.count} != {len(model.items)} items"
        problem = check_search(ix, model.versions, model.order, model.items, nrng)
        if problem:
            return problem
        summary["final_seq"] = seq
    finally:
        ix.close()
    return None


if __name__ == "__main__":
    if sys.argv[1] == "child":
        child_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], int(sys.argv[7]))
