"""The typed shapes of results and ``stats()`` (docs/api.md) hold on every backend.

``IndexStats``/``VersionStats``/``StorageStats`` are TypedDicts: a key a backend returns that the
type does not declare, or a declared common key a backend leaves out, fails here.
"""

from __future__ import annotations

import typing

import numpy as np
import pytest

import compatindex
from compatindex import Index
from compatindex.core.datatypes import IndexStats, StorageStats, VersionStats
from reference_backend import DictBackend

COMMON = {"path", "backend", "items", "seq", "id_kind", "disk_bytes", "device", "shard_spec", "versions",
          "payload_indexes"}


def _fill(ix):
    ix.create_version("v1", dim=4)
    ix.register_version("v2", "v1", 6)
    ix.add([1, 2, 3], np.eye(3, 4, dtype=np.float32), version="v1", labels=[0, 1, 0], metadata=[{"a": 1}, None, {"a": 2}])
    ix.backfill([1], np.ones((1, 6), np.float32), version="v2", raw=False)
    ix.create_payload_index("a", "integer")


def _check(stats):
    top = set(typing.get_type_hints(IndexStats))
    assert COMMON <= set(stats) <= top, set(stats) ^ top
    vkeys = set(typing.get_type_hints(VersionStats))
    for name, entry in stats["versions"].items():
        assert {"dim", "parent", "metric", "vectors", "coverage", "retired", "shard"} <= set(entry) <= vkeys, name
    if "storage" in stats:
        assert set(stats["storage"]) == set(typing.get_type_hints(StorageStats))
    assert stats["payload_indexes"] == {"a": "integer"}
    assert stats["items"] == 3 and stats["versions"]["v2"]["vectors"] == 1


@pytest.mark.parametrize("where", ["embedded", "reference", "qdrant-local"])
def test_stats_shape(where, tmp_path):
    if where == "embedded":
        ix = compatindex.open(tmp_path / "ix")
    elif where == "reference":
        ix = Index(DictBackend())
    else:
        pytest.importorskip("qdrant_client")
        ix = compatindex.open(f"qdrant+local://{tmp_path / 'q'}")
    with ix:
        _fill(ix)
        _check(ix.stats())


def test_item_and_page_types():
    ix = Index(DictBackend())
    _fill(ix)
    page = ix.list_items(limit=2)
    assert isinstance(page, compatindex.ItemPage) and len(page) == 2 and page.next_offset == 2
    item = ix.get([1])[0]
    assert isinstance(item, compatindex.Item) and item.versions == ("v1", "v2")
    assert item.vectors["v2"].shape == (6,) and item.vectors["v2"].dtype == np.float32


@pytest.mark.parametrize("where", ["embedded", "reference", "qdrant-local"])
def test_add_of_a_wrong_payload_type_is_refused_by_every_backend(where, tmp_path):
    """The facade leaves the declared-type check to the backend's write: each one must refuse."""
    from compatindex.errors import InvalidInputError

    if where == "embedded":
        ix = compatindex.open(tmp_path / "ix")
    elif where == "reference":
        ix = Index(DictBackend())
    else:
        pytest.importorskip("qdrant_client")
        ix = compatindex.open(f"qdrant+local://{tmp_path / 'q'}")
    with ix:
        _fill(ix)
        with pytest.raises(InvalidInputError, match=r"`metadata\[1\]\['a'\]` is str"):
            ix.add([8, 9], np.ones((2, 4), np.float32), version="v1", metadata=[{"a": 5}, {"a": "5"}])
        assert ix.count == 3 and not ix.has([8, 9]).any()
