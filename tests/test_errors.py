"""Bad input: a clear error naming the parameter and the value, and the index exactly as it was."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import compatindex
from compatindex import errors as E
from core_testkit import random_orthogonal


@pytest.fixture
def ix(tmp_path, rng):
    ix = compatindex.open(tmp_path / "ix")
    ix.create_version("v1", dim=8)
    ix.register_version("v2", "v1", 12, extension=random_orthogonal(12, rng))
    ix.add(list(range(20)), rng.standard_normal((20, 8)), version="v1", labels=list(range(20)))
    ix.backfill([0, 1], rng.standard_normal((2, 12)), version="v2", raw=False)
    yield ix
    ix.close()


def state(ix):
    q = np.ones((1, 12), np.float32)
    r = ix.search(q, k=30, version="v2", raw=False)
    st = ix.stats()
    return (st["seq"], st["items"], {k: v["vectors"] for k, v in st["versions"].items()},
            [v.name for v in ix.versions()], r.ids.tolist(), r.scores.tolist())


good = np.ones((2, 8), np.float32)
nan = good.copy()
nan[1, 3] = np.nan
inf = good.copy()
inf[0, 0] = np.inf

CASES = [
    ("wrong dim", lambda ix: ix.add([100, 101], np.ones((2, 9)), version="v1"), E.DimensionMismatchError, "dim 8 for version 'v1'; got 9"),
    ("NaN", lambda ix: ix.add([100, 101], nan, version="v1"), E.InvalidInputError, "NaN or inf"),
    ("inf", lambda ix: ix.add([100, 101], inf, version="v1"), E.InvalidInputError, "row 0"),
    ("zero vector", lambda ix: ix.add([100, 101], np.zeros((2, 8)), version="v1"), E.InvalidInputError, "zero vector"),
    ("empty batch", lambda ix: ix.add([], np.zeros((0, 8)), version="v1"), E.InvalidInputError, "empty"),
    ("length mismatch", lambda ix: ix.add([100], good, version="v1"), E.InvalidInputError, "1 entries but `vectors` has 2"),
    ("duplicate in batch", lambda ix: ix.add([100, 100], good, version="v1"), E.DuplicateIdError, "repeats id 100"),
    ("existing id", lambda ix: ix.add([5, 100], good, version="v1"), E.DuplicateIdError, "`ids` 5 is already"),
    ("unknown version", lambda ix: ix.add([100, 101], good, version="v9"), E.UnknownVersionError, "'v9'"),
    ("wrong dtype int", lambda ix: ix.add([100, 101], np.ones((2, 8), dtype=np.int64), version="v1"), E.InvalidInputError, "dtype int64"),
    ("mixed ids", lambda ix: ix.add([100, "a"], good, version="v1"), E.InvalidInputError, "mixes int and str"),
    ("str ids into int index", lambda ix: ix.add(["a", "b"], good, version="v1"), E.InvalidInputError, "holds int ids"),
    ("labels length", lambda ix: ix.add([100, 101], good, labels=[1], version="v1"), E.InvalidInputError, "`labels` has 1"),
    ("k zero", lambda ix: ix.search(good, k=0, version="v1"), E.InvalidInputError, "`k` must be between 1"),
    ("k negative", lambda ix: ix.search(good, k=-3, version="v1"), E.InvalidInputError, "got -3"),
    ("k float", lambda ix: ix.search(good, k=2.5, version="v1"), E.InvalidInputError, "`k`"),
    ("bad score", lambda ix: ix.search(good, k=2, version="v1", score="max"), E.InvalidInputError, "'max'"),
    ("query dim", lambda ix: ix.search(good, k=2, version="v2", raw=False), E.DimensionMismatchError, "dim 12 for version 'v2'; got 8"),
    ("backfill unknown ids", lambda ix: ix.backfill([3, 999], np.ones((2, 12)), version="v2", raw=False), E.UnknownIdError, "999"),
    ("backfill wrong dim", lambda ix: ix.backfill([3, 4], good, version="v2", raw=False), E.DimensionMismatchError, "dim 12"),
    ("delete unknown", lambda ix: ix.delete([3, 12345]), E.UnknownIdError, "12345"),
    ("non-orthogonal Q", lambda ix: ix.register_version("v3", "v2", 12, extension=np.ones((12, 12))), E.NotOrthogonalError, "not orthogonal"),
    ("mis-shaped Q", lambda ix: ix.register_version("v3", "v2", 12, extension=np.eye(11)), E.NotOrthogonalError, "(11, 11)"),
    ("non-square Q", lambda ix: ix.register_version("v3", "v2", 12, extension=np.eye(12)[:10]), E.NotOrthogonalError, "square"),
    ("missing parent", lambda ix: ix.register_version("v3", "nope", 12), E.UnknownVersionError, "`parent` 'nope'"),
    ("dim below parent", lambda ix: ix.register_version("v3", "v2", 10), E.DimensionMismatchError, ">= the parent's dim 12"),
    ("existing version", lambda ix: ix.register_version("v2", "v1", 12), E.VersionExistsError, "'v2'"),
    ("second root", lambda ix: ix.create_version("r2", dim=4), E.VersionExistsError, "root version 'v1'"),
    ("bad metric", lambda ix: ix.create_version("r2", dim=4, metric="l3"), E.InvalidInputError, "'l3'"),
    ("bad head", lambda ix: ix.register_version("v3", "v2", 12, head={"kind": "linear", "W": np.ones(3)}), E.InvalidInputError, "2-D"),
    ("raw dim", lambda ix: ix.add([100, 101], np.ones((2, 3)), version="v2", raw=True), E.DimensionMismatchError, "dim 12 (raw encoder output"),
]


@pytest.mark.parametrize("name,call,exc,text", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(ix, name, call, exc, text):
    before = state(ix)
    with pytest.raises(exc) as info:
        call(ix)
    assert text in str(info.value)
    assert state(ix) == before
    assert ix.verify() == []


def test_errors_pickle_and_keep_hints():
    err = E.IndexLockedError("locked")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is E.IndexLockedError and back.hint == err.hint and "hint" in str(back)
    assert isinstance(E.DimensionMismatchError("x"), ValueError)
    assert isinstance(E.UnknownVersionError("x"), KeyError)


def test_failed_write_inside_a_transaction_leaves_the_store_unchanged(ix, rng):
    """An error raised mid-transaction (after some puts) aborts everything."""
    before = state(ix)

    def boom(w):
        w.new_items([777], None, None)
        raise RuntimeError("crash in the middle")

    with pytest.raises(RuntimeError):
        ix.backend.store.write(boom)
    assert state(ix) == before
    assert not ix.has([777])[0]
