"""Threads (issue 13, item 4): 8 search threads beside one writer thread in one process. Every
result row holds distinct ids of items that existed; a search that ran on a stable snapshot
(the store's sequence number unchanged around it) equals brute force over that snapshot."""

from __future__ import annotations

import threading
import time

import numpy as np

import compatindex
from compatindex.embedded.rwlock import RWLock
from core_testkit import BruteForce, random_orthogonal

DIM = 12


def test_eight_search_threads_and_a_writer_match_brute_force(tmp_path):
    rng = np.random.default_rng(7)
    ix = compatindex.open(tmp_path / "ix", device="cpu")
    bf = BruteForce()
    ix.create_version("v1", dim=DIM)
    bf.version("v1", DIM)
    ix.register_version("v2", "v1", DIM, extension=random_orthogonal(DIM, rng))
    bf.version("v2", DIM, "v1")
    X = rng.standard_normal((400, DIM)).astype(np.float32)
    ix.add(list(range(400)), X, version="v1")
    bf.add(list(range(400)), X, "v1")
    snapshots = {ix.backend.store.seq(): {i: dict(v) for i, v in bf.items.items()}}
    Q = rng.standard_normal((4, DIM)).astype(np.float32)
    stop = threading.Event()
    errors: list[BaseException] = []
    stable: list[tuple[int, np.ndarray, np.ndarray]] = []
    ever = set(range(400))
    n_searches = [0]
    per_seq: dict[int, int] = {}

    def writer():
        wrng = np.random.default_rng(1)
        nxt = 400
        try:
            for step in range(150):
                kind = step % 3
                if kind == 0:  # add 8 new items in v1 or v2
                    ids = list(range(nxt, nxt + 8))
                    nxt += 8
                    ever.update(ids)
                    Y = wrng.standard_normal((8, DIM)).astype(np.float32)
                    ver = "v1" if step % 2 else "v2"
                    ix.add(ids, Y, version=ver, raw=False)
                    bf.add(ids, Y, ver)
                elif kind == 1:  # backfill (replacing some v2 vectors), sometimes dropping old ones
                    live = list(bf.items)
                    ids = [live[int(i)] for i in wrng.choice(len(live), 10, replace=False)]
                    Y = wrng.standard_normal((10, DIM)).astype(np.float32)
                    ix.backfill(ids, Y, version="v2", drop_old=step % 4 == 1, raw=False)
                    bf.backfill(ids, Y, "v2", drop_old=step % 4 == 1)
                else:
                    live = list(bf.items)
                    ids = [live[int(i)] for i in wrng.choice(len(live), 3, replace=False)]
                    ix.delete(ids)
                    bf.delete(ids)
                snapshots[ix.backend.store.seq()] = {i: dict(v) for i, v in bf.items.items()}
                time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
        finally:
            stop.set()

    def searcher(qv: str):
        try:
            while not stop.is_set():
                before = ix.backend.store.seq()
                res = ix.search(Q, k=10, version=qv, raw=False)
                after = ix.backend.store.seq()
                n_searches[0] += 1
                for row in res.ids.tolist():
                    real = [x for x in row if x is not None]
                    assert len(set(real)) == len(real), f"an id twice in one row: {row}"
                    assert set(real) <= ever
                if before == after and qv == "v2" and per_seq.get(before, 0) < 2:
                    per_seq[before] = per_seq.get(before, 0) + 1
                    stable.append((before, res.ids.copy(), res.scores.copy()))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=searcher, args=("v2" if i % 2 == 0 else "v1",)) for i in range(8)]
    w = threading.Thread(target=writer)
    for t in threads:
        t.start()
    w.start()
    w.join(120)
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    assert n_searches[0] > 100
    checked = set()
    for seq, ids, scores in stable:
        model = BruteForce()
        model.parent, model.dim, model.order = bf.parent, bf.dim, bf.order
        model.items = snapshots[seq]
        ref_ids, ref_scores, _ = model.search(Q, 10, "v2")
        for i in range(len(Q)):
            np.testing.assert_allclose(scores[i][np.isfinite(scores[i])], ref_scores[i], atol=1e-4)
            for j, (a, b) in enumerate(zip(ids[i], ref_ids[i])):
                assert a == b or abs(ref_scores[i][j] - scores[i][j]) < 1e-4
        checked.add(seq)
    assert len(checked) >= 20, f"only {len(checked)} distinct snapshots were checked against brute force"
    assert ix.verify() == []
    ix.close()


def test_rwlock_excludes_writers_from_readers_and_prefers_writers():
    lock = RWLock()
    log: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def reader(name):
        with lock.read():
            log.append(f"{name}+")
            inside.set()
            release.wait(5)
            log.append(f"{name}-")

    def writer():
        with lock.write():
            log.append("w")

    r1 = threading.Thread(target=reader, args=("r1",))
    r1.start()
    inside.wait(5)
    w = threading.Thread(target=writer)
    w.start()
    time.sleep(0.1)
    late = threading.Thread(target=reader, args=("r2",))  # arrives while the writer waits
    late.start()
    time.sleep(0.1)
    assert log == ["r1+"]  # the writer waits for r1, and r2 waits behind the writer
    release.set()
    for t in (r1, w, late):
        t.join(5)
    assert log.index("r1-") < log.index("w") < log.index("r2+")
