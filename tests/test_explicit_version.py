"""Versions and transforms are explicit (docs/api.md, "Explicit versions and transforms").

An index of several versions never guesses the version of a call that leaves out ``version=``:
after an upgrade that keeps the dim (384 -> 384), an old client's vectors fit the newest space,
so a default to the newest version would write into (or query) the wrong space silently. And a
version whose raw transform is not the identity (a head, a non-identity ``Q``) needs ``raw=``
said: raw encoder outputs and version-space vectors of the same dim are indistinguishable.
Every test runs on the embedded backend and on Qdrant's local mode.
"""

from __future__ import annotations

import numpy as np
import pytest

import compatindex
from compatindex import errors as E
from core_testkit import random_orthogonal

DIM = 8
BACKENDS = ["embedded", "qdrant"]


def location(kind: str, tmp_path) -> str:
    if kind == "qdrant":
        pytest.importorskip("qdrant_client")
        return f"qdrant+local://{tmp_path}/q"
    return str(tmp_path / "ix")


def snapshot(ix) -> dict:
    """Count and every stored vector of every version (what a refused call must leave as it was)."""
    out: dict = {"count": ix.count, "versions": [v.name for v in ix.versions()]}
    for v in ix.versions():
        batch = ix.fetch(v.name)
        order = np.argsort(np.array([str(i) for i in batch.ids]))
        out[v.name] = ([batch.ids[i] for i in order], np.asarray(batch.vectors)[order].tolist())
    return out


@pytest.fixture(params=BACKENDS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def loc(kind, tmp_path) -> str:
    return location(kind, tmp_path)


@pytest.fixture(params=["identity Q", "orthogonal Q"])
def same_dim(request, loc):
    """A 384 -> 384-style upgrade at dim 8: v1 and v2 (same dim) with items of both versions."""
    rng = np.random.default_rng(5)
    Q = None if request.param == "identity Q" else random_orthogonal(DIM, rng)
    with compatindex.open(loc) as ix:
        ix.create_version("v1", dim=DIM)
        ix.add(list(range(10)), rng.standard_normal((10, DIM)), version="v1")
        ix.register_version("v2", "v1", DIM, extension=Q)
        ix.backfill([0, 1, 2], rng.standard_normal((3, DIM)), version="v2", raw=False)
        ix.add([100, 101], rng.standard_normal((2, DIM)), version="v2", raw=False)
    return loc


def test_same_dim_upgrade_refuses_calls_without_version(same_dim):
    x = np.random.default_rng(0).standard_normal((2, DIM)).astype(np.float32)
    with compatindex.open(same_dim) as ix:
        before = snapshot(ix)
        calls = {
            "add": lambda: ix.add([500, 501], x, raw=False),
            "search": lambda: ix.search(x, k=3, raw=False),
            "fetch": lambda: ix.fetch(),
            "fetch ids": lambda: ix.fetch(ids=[0]),
            "to_version_space": lambda: ix.to_version_space(x),
            "composed_queries": lambda: ix.composed_queries(x, raw=False),
        }
        for name, call in calls.items():
            with pytest.raises(E.VersionRequiredError) as info:
                call()
            msg = str(info.value)
            assert isinstance(info.value, E.InvalidInputError), name
            assert "`version`" in msg and "'v1', 'v2'" in msg and "version='v2'" in msg, (name, msg)
            assert "compatindex.open(path, version=...)" in msg, msg
            assert snapshot(ix) == before, name
        with pytest.raises(E.VersionRequiredError, match="'v1', 'v2'"):
            ix.backfill([3], x[:1], raw=False)
        assert snapshot(ix) == before
        assert not ix.has([500, 501]).any()
        # said explicitly, every call works
        assert ix.add([500], x[:1], version="v1").version == "v1"
        assert ix.search(x, k=3, version="v1").ids.shape == (2, 3)
        assert ix.fetch("v2").version == "v2"


def test_one_version_index_still_defaults(loc):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((5, DIM)).astype(np.float32)
    with compatindex.open(loc) as ix:
        ix.create_version("v1", dim=DIM)
        assert ix.pinned_version is None
        assert ix.add(list(range(5)), X).version == "v1"
        assert ix.search(X[:2], k=1).ids[:, 0].tolist() == [0, 1]
        assert ix.fetch().version == "v1" and len(ix.fetch().ids) == 5
        np.testing.assert_allclose(ix.to_version_space(X[:1]), X[:1], atol=0)
        assert list(ix.composed_queries(X[:1])) == ["v1"]
        assert ix.backfill([0], X[:1]).version == "v1"


def test_open_with_version_pins_adds_and_searches(same_dim, kind, tmp_path):
    x = np.random.default_rng(2).standard_normal((2, DIM)).astype(np.float32)
    with compatindex.open(same_dim, readonly=kind == "embedded") as ro:
        ref = ro.search(x, k=4, version="v1", raw=False)
    with compatindex.open(same_dim, version="v1") as ix:
        assert ix.pinned_version == "v1"
        got = ix.search(x, k=4)  # v1 is the identity: raw may be left out
        assert got.ids.tolist() == ref.ids.tolist()
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-6)
        res = ix.add([700, 701], x)
        assert res.version == "v1"
        assert sorted(ix.fetch().ids) == sorted(ix.fetch("v1").ids)
        assert {700, 701} <= set(ix.fetch("v1").ids)
        assert not {700, 701} & set(ix.fetch("v2").ids)
        np.testing.assert_allclose(ix.fetch(ids=[700]).vectors[0], x[0] / np.linalg.norm(x[0]), atol=1e-6)
        assert ix.backfill([700], x[1:], raw=False).version == "v1"
        np.testing.assert_allclose(ix.fetch(ids=[700]).vectors[0], x[1] / np.linalg.norm(x[1]), atol=1e-6)
        # an explicit version still wins over the pin
        assert ix.add([702], x[:1], version="v2", raw=False).version == "v2"
    # the facade takes the pin too
    with compatindex.open(same_dim) as plain:
        pinned = compatindex.Index(plain.backend, version="v2")
        assert pinned.pinned_version == "v2"
        assert pinned.fetch().version == "v2"


def test_unknown_pin_is_refused_at_open(same_dim):
    with pytest.raises(E.UnknownVersionError) as info:
        compatindex.open(same_dim, version="v9")
    assert "'v9'" in str(info.value) and "v1" in str(info.value) and "v2" in str(info.value)
    with pytest.raises(E.InvalidInputError):
        compatindex.open(same_dim, version=3)  # type: ignore[arg-type]
    with compatindex.open(same_dim) as ix:  # the refused open released the index (writer lock, client)
        assert ix.count == 12


@pytest.fixture
def transformed(loc):
    """v1 (identity), v2 (same dim, orthogonal Q), v3 (a linear head from raw dim 6)."""
    rng = np.random.default_rng(3)
    with compatindex.open(loc) as ix:
        ix.create_version("v1", dim=DIM)
        ix.add(list(range(6)), rng.standard_normal((6, DIM)), version="v1")
        ix.register_version("v2", "v1", DIM, extension=random_orthogonal(DIM, rng))
        head = {"kind": "linear", "in_dim": 6, "out_dim": DIM, "W": rng.standard_normal((DIM, 6)),
                "b": np.zeros(DIM)}
        ix.register_version("v3", "v1", DIM, head=head)
        ix.register_version("v4", "v1", DIM, extension=np.eye(DIM))
    return loc


@pytest.mark.parametrize("version,what", [("v2", "non-identity Q"), ("v3", "head")])
def test_raw_must_be_said_for_a_transformed_version(transformed, version, what):
    rng = np.random.default_rng(4)
    raw_dim = 6 if version == "v3" else DIM
    x = rng.standard_normal((2, raw_dim)).astype(np.float32)
    with compatindex.open(transformed) as ix:
        before = snapshot(ix)
        calls = {
            "add": lambda: ix.add([50, 51], x, version=version),
            "backfill": lambda: ix.backfill([0, 1], x, version=version),
            "search": lambda: ix.search(x, k=2, version=version),
            "composed_queries": lambda: ix.composed_queries(x, version=version),
            "mapping search": lambda: ix.search({version: x, "v1": np.ones((2, DIM))}, k=2),
        }
        for name, call in calls.items():
            with pytest.raises(E.RawRequiredError) as info:
                call()
            msg = str(info.value)
            assert isinstance(info.value, E.InvalidInputError)
            assert "`raw`" in msg and f"'{version}'" in msg and what in msg, (name, msg)
            assert "raw=True (encoder outputs" in msg and "raw=False (vectors already in version space)" in msg
            assert snapshot(ix) == before, name
        # said, both choices work
        ix.add([50, 51], x, version=version, raw=True)
        if version == "v2":
            ix.add([52], x[:1], version=version, raw=False)
            np.testing.assert_allclose(ix.fetch(ids=[50], version=version).vectors,
                                       ix.to_version_space(x[:1], version=version)
                                       / np.linalg.norm(ix.to_version_space(x[:1], version=version)), atol=1e-5)
        assert ix.search({version: x, "v1": np.ones((2, DIM))}, k=2, raw=True).ids.shape == (2, 2)


def test_mapping_search_checks_raw_per_version(transformed):
    x = np.random.default_rng(6).standard_normal((2, DIM)).astype(np.float32)
    with compatindex.open(transformed) as ix:
        ix.search({"v1": x, "v4": x}, k=2)  # both identity: raw may be left out
        with pytest.raises(E.RawRequiredError, match=r"queries\['v2'\]"):
            ix.search({"v1": x, "v2": x}, k=2)


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_raw_may_be_left_out_for_an_identity_version(transformed, version):
    x = np.random.default_rng(7).standard_normal((2, DIM)).astype(np.float32)
    with compatindex.open(transformed) as ix:
        assert ix.add([60, 61], x, version=version).version == version
        ix.backfill([0], x[:1], version=version)
        assert ix.search(x, k=1, version=version).ids[:, 0].tolist() == [60, 61]
        ix.composed_queries(x, version=version)
        with pytest.raises(E.RawRequiredError):  # the same call on v2 (same dim, orthogonal Q) is refused
            ix.add([62], x[:1], version="v2")


def test_raw_rule_applies_to_fit_serving(transformed):
    x = np.random.default_rng(8).standard_normal((6, DIM)).astype(np.float32)
    with compatindex.open(transformed) as ix:
        with pytest.raises(E.RawRequiredError, match="'v2'"):
            ix.fit_serving("v2", x, old_vectors=x)
