"""Metadata and label updates survive SIGKILL, and a reader in another process sees them.

A child process runs random ``set_metadata`` (merge and replace) and ``set_labels`` calls on an
index with a declared payload index, logging each call before it starts and, fsynced, after it
returns; it also checkpoints now and then (which truncates the op log). It is SIGKILLed after a
random delay. The parent replays the acknowledged calls into a model and reopens the index: every
item's payload must equal the model, or the model plus the whole call in flight; ``verify()`` must
be empty; filtered searches must return exactly the items the model says match.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import compatindex

N = 200
CHILD = textwrap.dedent('''
    import json, os, random, sys
    import compatindex
    path, log_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    log = open(log_path, "a")
    def write(rec):
        log.write(json.dumps(rec) + "\\n"); log.flush(); os.fsync(log.fileno())
    rng = random.Random(seed)
    ix = compatindex.open(path, lock_timeout=10.0)
    ix.backend.checkpoint_ops = 5
    write({"t": "ready"})
    for j in range(10 ** 6):
        ids = rng.sample(range(%(n)d), rng.randint(1, 30))
        r = rng.random()
        if r < 0.55:
            op = {"op": "merge", "ids": ids, "meta": [{"b": rng.randrange(10), "w": j, "x": None} for _ in ids]}
        elif r < 0.8:
            op = {"op": "replace", "ids": ids, "meta": [{"b": rng.randrange(10), "x": j} for _ in ids]}
        else:
            op = {"op": "labels", "ids": ids, "labels": [rng.choice([None, 1, 2, "a"]) for _ in ids]}
        write({"t": "intent", **op})
        if op["op"] == "labels":
            ix.set_labels(ids, op["labels"])
        else:
            ix.set_metadata(ids, op["meta"], merge=op["op"] == "merge")
        write({"t": "ack"})
        if rng.random() < 0.1:
            ix.backend.checkpoint()
''') % {"n": N}


def apply(model: dict, op: dict) -> None:
    for pos, iid in enumerate(op["ids"]):
        lab, meta = model[iid]
        if op["op"] == "labels":
            model[iid] = (op["labels"][pos], meta)
        elif op["op"] == "replace":
            model[iid] = (lab, dict(op["meta"][pos]))
        else:
            new = dict(meta or {})
            for k, v in op["meta"][pos].items():
                if v is None:
                    new.pop(k, None)
                else:
                    new[k] = v
            model[iid] = (lab, new)


def read_log(path: Path) -> tuple[list[dict], dict | None]:
    acked, pending = [], None
    if not path.exists():
        return acked, None
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            break  # a torn last line
        if rec["t"] == "intent":
            pending = rec
        elif rec["t"] == "ack":
            acked.append(pending)
            pending = None
    return acked, pending


def check(ix, model: dict) -> None:
    assert ix.verify() == []
    q = np.ones((1, 8), np.float32)
    for v in range(10):
        got = ix.search(q, N, version="v1", raw=False, where={"b": v})
        want = {i for i, (_, m) in model.items() if m and m.get("b") == v}
        assert {x for x in got.ids[0] if x is not None} == want
    got = ix.search(q, N, version="v1", raw=False, where={"$label": "a"})
    assert {x for x in got.ids[0] if x is not None} == {i for i, (lab, _) in model.items() if lab == "a"}


@pytest.mark.parametrize("rounds", [4])
def test_payload_updates_survive_kill_9(tmp_path, rounds):
    path = tmp_path / "ix"
    rng = np.random.default_rng(0)
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=8, metric="ip")
        ix.create_payload_index("b", "integer")
        ix.add(list(range(N)), rng.standard_normal((N, 8)).astype(np.float32), version="v1", raw=False,
               metadata=[{"b": i % 10} for i in range(N)])
    model = {i: (None, {"b": i % 10}) for i in range(N)}
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    done = 0
    pyrng = random.Random(5)
    for rnd in range(rounds):
        log = tmp_path / f"log{rnd}.jsonl"
        child = subprocess.Popen([sys.executable, str(script), str(path), str(log), str(rnd)],
                                 env={**os.environ, "PYTHONPATH": str(Path(compatindex.__file__).parent.parent)})
        end = time.monotonic() + 30
        while time.monotonic() < end and not (log.exists() and '"ready"' in log.read_text()):
            time.sleep(0.02)
        time.sleep(pyrng.uniform(0.1, 0.8))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        acked, pending = read_log(log)
        for op in acked:
            apply(model, op)
        done += len(acked)
        with compatindex.open(path) as ix:
            ids = list(range(N))
            labels, metas = ix.backend.payload(ids)
            state = dict(zip(ids, zip(labels, metas)))
            if pending is not None and state != model:
                apply(model, pending)  # the call in flight committed: whole, never partly
            assert state == model, f"round {rnd}: payload differs from the acknowledged calls"
            check(ix, model)
    assert done > 0


READER = textwrap.dedent('''
    import json, sys
    import numpy as np
    import compatindex
    ix = compatindex.open(sys.argv[1], readonly=True)
    q = np.ones((1, 8), np.float32)
    print("ready", flush=True)
    for line in sys.stdin:
        got = ix.search(q, 1000, version="v1", raw=False, where={"g": "z"})
        print(json.dumps(sorted(int(x) for x in got.ids[0] if x is not None)), flush=True)
''')


def test_reader_process_sees_set_payload(tmp_path):
    path = tmp_path / "ix"
    rng = np.random.default_rng(1)
    w = compatindex.open(path)
    w.create_version("v1", dim=8, metric="ip")
    w.create_payload_index("g", "keyword")
    w.add(list(range(300)), rng.standard_normal((300, 8)).astype(np.float32), version="v1", raw=False,
          metadata=[{"g": "x"} for _ in range(300)])
    w.flush()
    (tmp_path / "reader.py").write_text(READER)
    rd = subprocess.Popen([sys.executable, str(tmp_path / "reader.py"), str(path)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(compatindex.__file__).parent.parent)})
    try:
        assert rd.stdout.readline().strip() == "ready"

        def ask() -> list[int]:
            rd.stdin.write("q\n")
            rd.stdin.flush()
            return json.loads(rd.stdout.readline())

        assert ask() == []
        w.set_metadata([5, 7], [{"g": "z"}, {"g": "z"}])
        assert ask() == [5, 7]
        w.set_metadata([5], [{"g": None}], merge=True)  # a None value removes the key
        w.add([1000], rng.standard_normal((1, 8)).astype(np.float32), version="v1", raw=False, metadata=[{"g": "z"}])
        assert ask() == [7, 1000]
        w.backend.checkpoint_ops = 1
        for j in range(4):  # the op log is truncated past the reader: it rebuilds its columns
            w.set_metadata([20 + j], [{"g": "z"}])
            w.backend.checkpoint()
        assert ask() == [7, 20, 21, 22, 23, 1000]
    finally:
        rd.stdin.close()
        rd.wait(timeout=30)
        w.close()
