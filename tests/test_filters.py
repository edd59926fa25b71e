"""The filter language (compatindex.core.filters) and the facade's item API over the reference backend.

Parsing is checked on its own (errors name the filter path; nothing in the index changes);
semantics are checked against hand-written expectations; filtered search over the Protocol-only
reference backend is checked against brute force (filter every item, then exact scores).
"""

from __future__ import annotations

import numpy as np
import pytest

from compatindex import Index
from compatindex.core.filters import (
    LABEL_FIELD,
    MAX_DEPTH,
    And,
    Cond,
    Not,
    Or,
    check_payload,
    fields,
    matches,
    parse_filter,
)
from compatindex.errors import InvalidInputError, UnknownIdError
from reference_backend import DictBackend

ITEMS = [
    ("a", 1, {"lang": "en", "year": 2020, "tags": ["x", "y"], "draft": False}),
    ("b", 2, {"lang": "de", "year": 2018.0, "tags": []}),
    ("c", None, None),
    ("d", "cat", {"lang": "en", "year": "2021", "draft": True}),
    ("e", 1, {"lang": None, "year": 1, "score": 0.5}),
]


def ids_matching(where, schema=None):
    f = parse_filter(where, schema=schema)
    return [i for i, lab, meta in ITEMS if matches(f, lab, meta)]


@pytest.mark.parametrize("where, expected", [
    ({"lang": "en"}, ["a", "d"]),
    ({"lang": {"$eq": "en"}}, ["a", "d"]),
    ({"lang": {"$ne": "en"}}, ["b", "c", "e"]),  # negation matches items lacking the field
    ({"lang": {"$in": ["de", "fr"]}}, ["b"]),
    ({"lang": {"$nin": ["de", "en"]}}, ["c", "e"]),
    ({"year": {"$gte": 2018, "$lt": 2021}}, ["a", "b"]),  # "2021" is a string: never in a range
    ({"year": 2018}, ["b"]),  # 2018 == 2018.0
    ({"year": {"$gt": 2020}}, []),
    ({"tags": "y"}, ["a"]),  # a list matches when any element does
    ({"tags": {"$exists": True}}, ["a"]),  # an empty list does not exist
    ({"lang": {"$exists": False}}, ["c", "e"]),  # neither does null
    ({"draft": False}, ["a"]),
    ({"year": True}, []),  # True is not 1
    ({"year": 1}, ["e"]),
    ({LABEL_FIELD: 1}, ["a", "e"]),
    ({LABEL_FIELD: {"$in": ["cat", 2]}}, ["b", "d"]),
    ({"$or": [{"lang": "de"}, {LABEL_FIELD: "cat"}]}, ["b", "d"]),
    ({"$and": [{"lang": "en"}, {"draft": {"$ne": True}}]}, ["a"]),
    ({"$not": {"lang": "en"}}, ["b", "c", "e"]),
    ({"lang": "en", "year": {"$lte": 2020}}, ["a"]),
    ({}, ["a", "b", "c", "d", "e"]),
    ({"$or": [{}, {"lang": "de"}]}, ["a", "b", "c", "d", "e"]),
])
def test_semantics(where, expected):
    assert ids_matching(where) == expected


def test_parse_tree_and_fields():
    f = parse_filter({"lang": "en", "$or": [{"year": {"$gte": 1, "$lt": 3}}, {"$not": {LABEL_FIELD: 2}}]})
    assert f == And((Cond("lang", "eq", "en", "where['lang']"),
                     Or((Cond("year", "range", (None, 1.0, 3.0, None), "where['$or'][0]['year']"),
                         Not(Cond(LABEL_FIELD, "eq", 2, "where['$or'][1]['$not']['$label']"))))))
    assert fields(f) == {"lang", "year", LABEL_FIELD}
    assert parse_filter(None) is None and parse_filter({}) is None


def _nest(depth):
    f = {"a": 1}
    for _ in range(depth):
        f = {"$not": f}
    return f


@pytest.mark.parametrize("where, path, words", [
    ({"year": {"$foo": 1}}, "where['year']['$foo']", "unknown operator"),
    ({"$nor": [{"a": 1}]}, "where['$nor']", "unknown operator"),
    ({"year": {"$gte": "2020"}}, "where['year']['$gte']", "range on str"),
    ({"year": {"$lt": True}}, "where['year']['$lt']", "range on bool"),
    ({"year": {"$gt": float("nan")}}, "where['year']['$gt']", "finite"),
    ({"lang": {"$in": "en"}}, "where['lang']['$in']", "non-empty list"),
    ({"lang": {"$in": []}}, "where['lang']['$in']", "non-empty list"),
    ({"lang": ["en"]}, "where['lang']", "$in"),
    ({"lang": None}, "where['lang']", "$exists"),
    ({"lang": {"$exists": 1}}, "where['lang']['$exists']", "true or false"),
    ({"$and": {"a": 1}}, "where['$and']", "non-empty list"),
    ({"$or": [{"a": 1}, 3]}, "where['$or'][1]", "a filter is a dict"),
    ({"lang": {}}, "where['lang']", "empty operator"),
    ({"$not": {}}, "where['$not']", "matches nothing"),
    ({"a": {"$eq": {"b": 1}}}, "where['a']['$eq']", "expected a string"),
    (_nest(MAX_DEPTH + 1), "where" + "['$not']" * (MAX_DEPTH + 1), f"deeper than {MAX_DEPTH}"),
    ("lang = en", "where", "a filter is a dict"),
])
def test_malformed_filters_name_the_path(where, path, words):
    with pytest.raises(InvalidInputError) as exc:
        parse_filter(where)
    assert f"`{path}`" in str(exc.value) and words in str(exc.value)


def test_nesting_limit_is_inclusive():
    assert parse_filter(_nest(MAX_DEPTH)) is not None


@pytest.mark.parametrize("where, words", [
    ({"lang": {"$gt": 3}}, "range on keyword field 'lang'"),
    ({"lang": 3}, "indexed as 'keyword'"),
    ({"year": "2020"}, "indexed as 'integer'"),
    ({"year": {"$in": [2020, "x"]}}, "indexed as 'integer'"),
    ({"draft": {"$gte": 0}}, "range on bool field"),
])
def test_schema_mismatch_is_refused(where, words):
    schema = {"lang": "keyword", "year": "integer", "draft": "bool"}
    with pytest.raises(InvalidInputError, match="where") as exc:
        parse_filter(where, schema=schema)
    assert words in str(exc.value)


def test_check_payload_names_item_and_field():
    check_payload([{"year": 3, "tags": ["a"]}, None, {"year": None}], {"year": "integer", "tags": "keyword"})
    with pytest.raises(InvalidInputError, match=r"`metadata\[1\]\['year'\]` is str"):
        check_payload([{"year": 3}, {"year": "3"}], {"year": "integer"})
    with pytest.raises(InvalidInputError, match="indexed as 'keyword'"):
        check_payload([{"tags": ["a", 1]}], {"tags": "keyword"})


# -- the facade over the reference backend --------------------------------------------------

def make_index(n=60, seed=0):
    rng = np.random.default_rng(seed)
    ix = Index(DictBackend())
    ix.create_version("v1", dim=8)
    ix.register_version("v2", "v1", 12)
    meta = [{"lang": ["en", "de", "fr"][i % 3], "year": 2000 + i % 25} if i % 7 else None for i in range(n)]
    labels = [i % 4 if i % 5 else None for i in range(n)]
    ids = [f"i{i}" for i in range(n)]
    ix.add(ids, rng.standard_normal((n, 8)).astype(np.float32), version="v1", labels=labels, metadata=meta)
    ix.backfill(ids[::2], rng.standard_normal((len(ids[::2]), 12)).astype(np.float32), version="v2", raw=False)
    return ix, ids, labels, meta


def brute(ix, q, k, where, version):
    """Filter every item, then its representative vector's exact score (v2 before v1 for v2 queries)."""
    f = parse_filter(where)
    items = ix.get([x.id for x in ix.list_items(limit=10_000).items])
    out = []
    for row in q:
        scored = []
        for it in items:
            if not matches(f, it.label, it.metadata):
                continue
            if version == "v2" and "v2" in it.vectors:
                s = float(row @ it.vectors["v2"])
            else:
                s = float(row[:8] @ it.vectors["v1"]) if version == "v2" else float(row @ it.vectors["v1"])
            scored.append((s, it.id))
        scored.sort(key=lambda t: -t[0])
        out.append([i for _, i in scored[:k]])
    return out


@pytest.mark.parametrize("where", [{"lang": "en"}, {"year": {"$gte": 2010, "$lt": 2015}},
                                   {"$or": [{"$label": 1}, {"lang": {"$exists": False}}]}, {"$not": {"lang": "fr"}}])
def test_filtered_search_equals_brute_force(where):
    ix, *_ = make_index()
    rng = np.random.default_rng(5)
    q = rng.standard_normal((4, 12)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    res = ix.search(q, 7, version="v2", raw=False, score="pad", where=where)
    want = brute(ix, q, 7, where, "v2")
    got = [[x for x in row if x is not None] for row in res.ids.tolist()]
    assert got == want and all(len(w) for w in want)


def test_filter_matching_nothing_gives_empty_rows():
    ix, *_ = make_index()
    res = ix.search(np.ones((3, 8), np.float32), 5, version="v1", raw=False, where={"lang": "xx"})
    assert res.ids.shape == (3, 5) and all(x is None for x in res.ids.ravel())
    assert np.isneginf(res.scores).all() and res.found.tolist() == [0, 0, 0]


def test_with_payload_and_get():
    ix, ids, labels, meta = make_index()
    res = ix.search(np.ones((2, 8), np.float32), 4, version="v1", raw=False, with_payload=True)
    for i in range(2):
        for h in res[i]:
            j = ids.index(h.id)
            assert h.label == labels[j] and h.metadata == meta[j]
    items = ix.get(["i3", "i0"])
    assert [it.versions for it in items] == [("v1",), ("v1", "v2")]
    assert set(items[1].vectors) == {"v1", "v2"}
    np.testing.assert_array_equal(items[1].vectors["v2"], ix.get_vectors(["i0"], version="v2")[0])
    assert ix.get(["i0"], versions=["v1"])[0].vectors.keys() == {"v1"}
    assert ix.get(["i0"], with_vectors=False)[0].vectors == {}
    with pytest.raises(UnknownIdError):
        ix.get(["i0", "nope"])


def test_set_metadata_merge_replace_and_labels():
    ix, ids, *_ = make_index()
    assert ix.set_metadata(["i1", "i2"], {"lang": "it", "new": 1}) == 2
    assert ix.get(["i1"])[0].metadata == {"lang": "it", "year": 2001, "new": 1}
    ix.set_metadata(["i1"], {"new": None})  # None removes a key when merging
    assert ix.get(["i1"])[0].metadata == {"lang": "it", "year": 2001}
    ix.set_metadata(["i1"], [{"only": True}], merge=False)
    assert ix.get(["i1"])[0].metadata == {"only": True}
    ix.set_labels(["i1", "i2"], ["x", None])
    assert [it.label for it in ix.get(["i1", "i2"])] == ["x", None]
    assert [it.id for it in ix.list_items(where={"$label": "x"}).items] == ["i1"]


def test_bad_payload_updates_leave_index_unchanged():
    ix, ids, *_ = make_index()
    before = [(it.label, it.metadata) for it in ix.list_items(limit=1000).items]
    ix.create_payload_index("year", "integer")
    for call in (lambda: ix.set_metadata(["i1", "nope"], {"lang": "x"}),
                 lambda: ix.set_metadata(["i1"], {"year": "1999"}),
                 lambda: ix.set_metadata(["i1"], [1]),
                 lambda: ix.set_metadata(["i1", "i2"], [{"a": 1}]),
                 lambda: ix.set_labels(["i1"], [1.5])):
        with pytest.raises((InvalidInputError, UnknownIdError)):
            call()
    assert [(it.label, it.metadata) for it in ix.list_items(limit=1000).items] == before
    with pytest.raises(InvalidInputError, match="range on integer|indexed as 'integer'"):
        ix.search(np.ones((1, 8), np.float32), 3, version="v1", raw=False, where={"year": "x"})


def test_list_items_pages():
    ix, ids, *_ = make_index(n=25)
    seen, off = [], 0
    while off is not None:
        page = ix.list_items(offset=off, limit=7)
        seen += [it.id for it in page.items]
        off = page.next_offset
    assert seen == ids
    en = ix.list_items(where={"lang": "en"}, limit=1000)
    assert [it.id for it in en.items] == [f"i{i}" for i in range(25) if i % 7 and i % 3 == 0]
    with pytest.raises(InvalidInputError, match="`limit`"):
        ix.list_items(limit=0)


def test_retire_version():
    ix, ids, *_ = make_index()
    with pytest.raises(InvalidInputError, match="30 items"):
        ix.retire_version("v1")  # half the items hold v1 alone
    assert ix.get(["i1"])[0].versions == ("v1",)
    ix.backfill(ids[1::2], np.ones((30, 12), np.float32), version="v2", raw=False)
    assert ix.retire_version("v1") == 60
    assert ix.version("v1").retired
    with pytest.raises(InvalidInputError, match="retired"):
        ix.add(["z"], np.ones((1, 8), np.float32), version="v1", raw=False)
    with pytest.raises(InvalidInputError, match="already retired"):
        ix.retire_version("v1")
    # old clients' v1 queries still search the (now v2-only) gallery through the version algebra
    res = ix.search(np.ones((1, 8), np.float32), 3, version="v1", raw=False)
    assert set(res.versions.ravel()) == {"v2"}


def test_fetch_has_metadata():
    ix, ids, labels, meta = make_index()
    b = ix.fetch("v1", ids=["i1", "i7"])
    assert b.metadata == [meta[1], meta[7]]
    s = ix.fetch("v2", limit=5, seed=1)
    assert s.metadata == [meta[ids.index(i)] for i in s.ids]
