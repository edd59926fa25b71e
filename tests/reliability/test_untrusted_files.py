"""Nothing in an index folder is unpickled or executed: pickles (whose loading would create a
marker file) planted in every file of the folder, and in a store record, give clean errors or
rebuilds, and the marker never appears."""

from __future__ import annotations

import os
import pickle
import shutil

import lmdb
import numpy as np
import pytest

import compatindex
from compatindex.errors import CompatIndexError


class _Boom:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # loading this pickle would create the marker file
        return (open, (self.marker, "w"))


def _payload(marker) -> bytes:
    return pickle.dumps(_Boom(str(marker)), protocol=2)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("untrusted") / "base"
    rng = np.random.default_rng(0)
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=8)
        ix.register_version("v2", "v1", 8, head={"kind": "normalize"}, report={"k": np.ones(2)})
        ix.add(list(range(30)), rng.standard_normal((30, 8)), version="v2", raw=False, labels=list(range(30)),
               metadata=[{"m": 1}] * 30)
    return path


def _files(path):
    return sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file())


def _exercise(path):
    """Open (read-only, then writable) and use the index; returns what happened."""
    outcomes = []
    for readonly in (True, False):
        try:
            with compatindex.open(path, readonly=readonly) as ix:
                ix.verify()
                ix.search(np.ones((1, 8), np.float32), k=3, version="v2", raw=False)
                ix.fetch("v1")
                [v.head for v in ix.versions()]
            outcomes.append("ok")
        except CompatIndexError as exc:
            outcomes.append(type(exc).__name__)
    return outcomes


def test_pickles_planted_in_every_file_never_run(base, tmp_path):
    marker = tmp_path / "PWNED"
    payload = _payload(marker)
    assert pickle.loads(payload) and marker.exists()  # the payload does what it says...
    marker.unlink()
    files = _files(base)
    assert {"compatindex.json", "store/data.mdb", "shards/v000.faiss", "shards/v000.json"} <= {str(f) for f in files}
    for rel in files + ["ALL"]:
        path = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        shutil.copytree(base, path)
        targets = _files(path) if rel == "ALL" else [rel]
        for t in targets:
            (path / t).write_bytes(payload)
        outcomes = _exercise(path)
        assert not marker.exists(), f"a pickle planted in {rel} was executed"
        assert all(o in ("ok", "CorruptIndexError", "NotAnIndexError") for o in outcomes), (rel, outcomes)


def test_pickle_inside_store_records_is_not_loaded(base, tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "ix"
    shutil.copytree(base, path)
    env = lmdb.open(str(path / "store"), max_dbs=16)
    with env.begin(write=True) as txn:
        for db in ("labels", "attrs", "versions", "chunks"):
            d = env.open_db(db.encode(), txn=txn)
            k = next(iter(txn.cursor(db=d)))[0]
            txn.put(k, _payload(marker), db=d)
    env.close()
    outcomes = _exercise(path)
    assert not marker.exists()
    assert outcomes == ["CorruptIndexError", "CorruptIndexError"]  # the version record is read on open


def test_no_pickle_or_eval_in_the_library():
    """Static guard: the library never calls pickle/marshal loads, eval/exec, or numpy loads with
    allow_pickle=True."""
    import compatindex as pkg

    import re

    root = os.path.dirname(pkg.__file__)
    pattern = re.compile(r"pickle\.loads?\(|marshal\.loads?\(|allow_pickle=True|(?<![\w.])(eval|exec)\(|"
                         r"torch\.load\(|joblib\.load\(|dill\.")
    bad = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.endswith(".py"):
                text = open(os.path.join(dirpath, n), encoding="utf-8").read()
                for m in pattern.finditer(text):
                    bad.append(f"{os.path.relpath(os.path.join(dirpath, n), root)}: {m.group(0)}")
    allowed = {"trainer"}  # the trainer may read user-provided model files; never the index folder
    assert [b for b in bad if b.split(os.sep)[0] not in allowed] == [], bad
