"""Filters, payload and item reads on the Qdrant backend (local mode): equal to brute force and to the embedded index.

Brute force: the unfiltered search with ``k = count`` ranks every item by its representative
vector; keeping the rows whose item ``core.filters.matches`` the filter, then the first ``k``,
is the exact filtered top-k (filtering never changes which vector represents an item).
"""

from __future__ import annotations

import numpy as np
import pytest

qdrant_client = pytest.importorskip("qdrant_client")

import compatindex  # noqa: E402
from compatindex.core.datatypes import SearchResult  # noqa: E402
from compatindex.core.filters import matches, parse_filter  # noqa: E402
from compatindex.errors import InvalidInputError, UnknownIdError  # noqa: E402
from compatindex.qdrant.filters import condition, filter_view, is_filter_exact  # noqa: E402
from qdrant_testkit import DIMS, assert_same_results, build, queries  # noqa: E402

LANGS = ["en", "de", "fr", None]


def rich_meta(j: int) -> dict | None:
    """Metadata covering the typing corners: ints vs floats vs bools vs strings, lists with
    nulls, empty lists, missing and null fields, odd keys and values Qdrant cannot hold as JSON."""
    if j % 11 == 0:
        return None
    m: dict = {"n": j}
    lang = LANGS[j % 4]
    if lang is not None:
        m["lang"] = lang
    m["year"] = [2018 + j % 8, float(2018 + j % 8), str(2018 + j % 8), True, None][j % 5]
    m["score"] = (j * 37 % 100) / 10.0
    m["tags"] = [["a"], ["a", "b"], [], ["b", None], [None], ["c", "a"], None][j % 7]
    m["flag"] = [True, False, 1, 0, None, "true"][j % 6]
    m["nums"] = [[1, 2.5], [2], [True], [3.0, "3"]][j % 4]
    if j % 9 == 0:
        m["a.b"] = "dotted"
    if j % 10 == 3:
        m["with space"] = j % 2
    odd = j % 17
    if odd == 1:
        m["odd"] = float("inf")
    elif odd == 2:
        m["odd"] = b"bytes"
    elif odd == 3:
        m["odd"] = {"inner": 1}
    elif odd == 4:
        m["odd"] = [[1], 2]
    elif odd == 5:
        m["odd"] = 2 ** 64 - 1
    return m


FILTERS = [
    {"lang": "en"},
    {"lang": {"$eq": "de"}},
    {"lang": {"$ne": "en"}},
    {"lang": {"$in": ["en", "fr"]}},
    {"lang": {"$nin": ["en", "fr"]}},
    {"lang": {"$exists": True}},
    {"lang": {"$exists": False}},
    {"year": 2020},            # int matches 2020 and 2020.0, not "2020"
    {"year": 2021.0},
    {"year": "2020"},
    {"year": True},            # bool never equals 1
    {"flag": 1},
    {"flag": True},
    {"flag": {"$in": [True, 0]}},
    {"flag": {"$in": [1, "true", False]}},
    {"flag": {"$nin": [True, False]}},
    {"year": {"$gte": 2020, "$lt": 2023}},
    {"year": {"$gt": 2019.5}},
    {"year": {"$lte": 2019}},
    {"score": {"$gt": 2.5, "$lte": 7.0}},
    {"score": {"$lt": 0.5}},
    {"tags": "a"},
    {"tags": {"$in": ["b", "c"]}},
    {"tags": {"$nin": ["a"]}},
    {"tags": {"$exists": True}},
    {"tags": {"$exists": False}},
    {"tags": {"$ne": "a"}},
    {"nums": 2.5},
    {"nums": 3},
    {"nums": True},
    {"nums": {"$gte": 2, "$lt": 3}},
    {"nums": {"$in": [2, "3"]}},
    {"odd": {"$exists": True}},
    {"odd": {"$gte": 0}},
    {"odd": 1},
    {"odd": float(2 ** 64 - 1)},
    {"a.b": "dotted"},
    {"with space": 1},
    {"n": {"$in": list(range(0, 400, 9))}},
    {"$label": 3},
    {"$label": {"$in": ["c1", 2]}},
    {"$label": {"$exists": False}},
    {"$label": {"$ne": "c0"}},
    {"$and": [{"lang": "en"}, {"year": {"$gte": 2021}}]},
    {"$or": [{"lang": "fr"}, {"tags": "b"}, {"$label": "c2"}]},
    {"$not": {"lang": "en"}},
    {"$not": {"$or": [{"flag": True}, {"year": {"$lt": 2021}}]}},
    {"$and": [{"$or": [{"lang": "en"}, {"lang": "de"}]}, {"$not": {"tags": {"$exists": True}}}]},
    {"lang": "en", "score": {"$gte": 5}, "$or": [{"flag": False}, {"flag": {"$exists": False}}]},
    {"$or": [{"$and": [{"n": {"$lt": 50}}, {"$not": {"year": "2020"}}]}, {"$label": {"$in": [1, 4]}}]},
    {"lang": "xx"},                                  # matches nothing
    {"$and": [{"year": {"$gt": 3000}}, {"lang": "en"}]},  # matches nothing
]


def build_order() -> list:
    """The testkit's items in insertion order (adds of v1, v2, v3, b2; minus the deletes)."""
    gone = {f"item{i}" for i in list(range(0, 160, 13)) + [205, 250]}
    made = [f"item{i}" for i in [*range(160), *range(200, 225), *range(240, 265), *range(280, 305)]]
    return [i for i in made if i not in gone]


def _ids(ix) -> list:
    return build_order()


def enrich(ix) -> None:
    """Rich metadata on every item: replace, or (where ``rich_meta`` is None) merge build's keys away."""
    ids = build_order()
    metas = [rich_meta(j) for j in range(len(ids))]
    keep = [(i, m) for i, m in zip(ids, metas) if m is not None]
    ix.set_metadata([i for i, _ in keep], [m for _, m in keep], merge=False)
    drop = [i for i, m in zip(ids, metas) if m is None]
    ix.set_metadata(drop, [{"n": None, "tag": None}] * len(drop), merge=True)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """(Qdrant index, embedded index or None, {id: (label, metadata)}) after the testkit sequence
    and :func:`enrich`; the embedded index is None while its backend lacks payload updates."""
    root = tmp_path_factory.mktemp("filters")
    qd = compatindex.open("qdrant+local://:memory:")
    build(qd, metric="cosine")
    enrich(qd)
    emb = compatindex.open(root / "e")
    try:
        build(emb, metric="cosine")
        enrich(emb)
    except (AttributeError, NotImplementedError, TypeError):
        emb.close()
        emb = None
    ids = build_order()
    truth = {i: (lab, rich_meta(j)) for j, (i, lab) in enumerate(zip(ids, qd.backend.labels(ids)))}
    yield qd, emb, truth
    qd.close()
    if emb is not None:
        emb.close()


def _embedded_filters_ready(emb) -> bool:
    if emb is None:
        return False
    try:
        emb.search(queries(16, n=1), 1, version="v1", raw=False, where={"lang": "en"})
    except TypeError:
        return False
    return True


_FULL: dict = {}


def brute(ix, truth, q, k, version, where):
    key = (id(ix), version, q.tobytes())
    if key not in _FULL:
        _FULL[key] = ix.search(q, ix.count, version=version, raw=False)
    full = _FULL[key]
    f = parse_filter(where)
    ids = np.full((len(q), k), None, dtype=object)
    scores = np.full((len(q), k), -np.inf, dtype=np.float32)
    vers = np.full((len(q), k), None, dtype=object)
    for r in range(len(q)):
        keep = [c for c in range(full.k) if full.ids[r, c] is not None and matches(f, *truth[full.ids[r, c]])][:k]
        ids[r, :len(keep)] = full.ids[r, keep]
        scores[r, :len(keep)] = full.scores[r, keep]
        vers[r, :len(keep)] = full.versions[r, keep]
    return SearchResult(ids, scores, vers)


def test_insertion_order_and_read_back(gallery):
    qd, _, truth = gallery
    ids = build_order()
    assert qd.backend.list_items(0, 10_000, None) == (ids, -1)
    assert qd.backend.list_items(200, 100, None) == (ids[200:], -1)
    assert qd.backend.list_items(0, 219, None) == (ids[:219], 219)
    assert qd.backend.list_items(500, 5, None) == ([], -1)
    pages, offset = [], 0
    while offset is not None:  # the facade's paging: next_offset None at the end
        page = qd.list_items(offset=offset, limit=64, where={"lang": {"$ne": "de"}})
        pages.append(page)
        offset = page.next_offset
    assert [len(p) for p in pages][:-1] == [64] * (len(pages) - 1)
    assert [it.id for p in pages for it in p.items] == [i for i in ids if (truth[i][1] or {}).get("lang") != "de"]
    labels, meta = qd.backend.payload(ids)
    assert list(zip(labels, meta)) == [truth[i] for i in ids]
    for i, m in zip(ids, meta):  # typed: True stays True, 2020.0 stays a float (True == 1 in Python)
        for key, v in (m or {}).items():
            assert type(v) is type(truth[i][1][key])


@pytest.mark.parametrize("where", FILTERS, ids=[str(i) for i in range(len(FILTERS))])
def test_filters_equal_brute_force(gallery, where):
    qd, _, truth = gallery
    f = parse_filter(where)
    n_match = sum(matches(f, *lm) for lm in truth.values())
    for version in ("v1", "v3", "b2"):
        q = queries(DIMS[version], n=3)
        for k in (1, 7, 250):
            got = qd.search(q, k, version=version, raw=False, where=where)
            assert_same_results(got, brute(qd, truth, q, k, version, where))
            assert (got.found <= n_match).all()
    if n_match == 0:
        got = qd.search(queries(24, n=2), 5, version="v2", raw=False, where=where)
        assert (got.ids == None).all() and np.isneginf(got.scores).all()  # noqa: E711
    # list_items: the matching items in insertion order, paged
    want = [i for i in _ids(qd) if matches(f, *truth[i])]
    page, got_ids, offset = None, [], 0
    while offset >= 0:
        page, offset = qd.backend.list_items(offset, 17, f)
        got_ids.extend(page)
    assert got_ids == want


@pytest.mark.parametrize("where", FILTERS, ids=[str(i) for i in range(len(FILTERS))])
def test_filters_equal_embedded(gallery, where):
    qd, emb, _ = gallery
    if not _embedded_filters_ready(emb):
        pytest.skip("the embedded backend does not take `where` yet")
    for version in ("v2", "b2"):
        q = queries(DIMS[version], n=3)
        assert_same_results(qd.search(q, 9, version=version, raw=False, where=where),
                            emb.search(q, 9, version=version, raw=False, where=where))
    assert [it.id for it in qd.list_items(limit=1000, where=where).items] == \
           [it.id for it in emb.list_items(limit=1000, where=where).items]


def test_translation_is_native(gallery):
    from qdrant_client import models as m

    c = condition(parse_filter({"year": 2020, "lang": {"$in": ["en", "de", True, 3]}, "$label": "c1"}))
    assert isinstance(c, m.Filter) and len(c.must) == 3
    year, lang, label = c.must
    assert year.key == "meta.year" and year.range == m.Range(gte=2020, lte=2020)
    assert label.key == "label" and label.match == m.MatchValue(value="c1")
    assert [type(s.match or s.range).__name__ for s in lang.should] == ["MatchAny", "MatchValue", "Range"]
    assert condition(parse_filter({"a.b": 1})).key == 'meta."a.b"'
    with pytest.raises(InvalidInputError, match="double quote"):
        condition(parse_filter({'x"y': 1}))
    ne = condition(parse_filter({"lang": {"$ne": "en"}}))
    assert isinstance(ne, m.Filter) and ne.must_not[0].match == m.MatchValue(value="en")
    ex = condition(parse_filter({"lang": {"$exists": True}}))
    assert isinstance(ex.must_not[0], m.IsEmptyCondition)


def test_payload_layout(gallery):
    qd, _, _ = gallery
    assert is_filter_exact({"a": 1, "b": [1, "x"], "c": None, "d": {"e": [None]}, "f": []})
    for odd in ({"a": [None]}, {"a": float("inf")}, {"a": b"x"}, {"a": [[1]]}, {1: "x"}, {"a": 2 ** 64 - 1}):
        assert not is_filter_exact(odd)
    assert filter_view({"a": [None, 1], "b": None, "c": float("nan"), 3: "x", "d": [None]}) == {"a": [1], "c": {}}
    recs = qd.backend.client.scroll(qd.backend.collection, limit=1000, with_payload=True)[0]
    keys = set().union(*(r.payload.keys() for r in recs))
    assert keys <= {"ext", "t", "label", "meta", "meta_mp"}
    by_ext = {r.payload["ext"]: r.payload for r in recs}
    ids = _ids(qd)
    assert "meta_mp" not in by_ext[ids[6]] and by_ext[ids[6]]["meta"] == rich_meta(6)
    assert "meta_mp" in by_ext[ids[3]]  # tags ["b", None]


def test_payload_and_held_read_back(gallery):
    qd, emb, truth = gallery
    ids = _ids(qd)
    items = qd.get(ids, with_vectors=False)
    assert [(it.label, it.metadata) for it in items] == [truth[i] for i in ids]
    if emb is not None:
        ref = {it.id: it for it in emb.get(ids, with_vectors=False)}
        assert [it.versions for it in items] == [ref[i].versions for i in ids]
        assert [(it.label, it.metadata) for it in items] == [(ref[i].label, ref[i].metadata) for i in ids]
    else:  # the testkit's versions: base items hold v1 (+v2 for the first 60, +b2 for 100..114)
        assert items[ids.index("item1")].versions == ("v1", "v2")
        assert items[ids.index("item41")].versions == ("v3",)
        assert items[ids.index("item101")].versions == ("v1", "b2")
        assert items[ids.index("item241")].versions == ("v3",)
    both = qd.get(ids[:5], versions=["v1", "v3"])
    for it in both:
        assert set(it.vectors) == set(it.versions) & {"v1", "v3"}
    batch = qd.backend.sample(qd.versions()[0], None, np.random.default_rng(0))
    assert batch.metadata == [truth[i][1] for i in batch.ids]
    res = qd.search(queries(16, n=2), 4, version="v1", raw=False, where={"lang": "en"}, with_payload=True)
    for r in range(2):
        for c in range(4):
            i = res.ids[r, c]
            assert (res.labels[r, c], res.metadata[r, c]) == truth[i] and truth[i][1]["lang"] == "en"


def _small(url):
    ix = compatindex.open(url)
    rng = np.random.default_rng(1)
    ix.create_version("a", dim=8, metric="ip")
    ix.add([f"i{j}" for j in range(12)], rng.standard_normal((12, 8)).astype(np.float32), version="a", raw=False,
           labels=[j % 3 for j in range(12)], metadata=[{"k": j, "keep": "x"} if j % 2 else None for j in range(12)])
    ix.register_version("b", "a", 12)
    return ix, rng


BACKENDS = ["qdrant", "embedded"]


def _url(kind, tmp_path):
    return f"qdrant+local://{tmp_path}/q" if kind == "qdrant" else tmp_path / "e"


@pytest.mark.parametrize("kind", BACKENDS)
def test_set_payload_merge_replace_and_unknown(tmp_path, kind):
    ix, _ = _small(_url(kind, tmp_path))
    b = ix.backend
    ids = ["i0", "i1", "i2"]
    b.set_payload(ids, "str", labels=None, metadata=[{"new": 1}, {"k": None, "z": [1, None]}, None], merge=True)
    assert b.payload(ids) == ([0, 1, 2], [{"new": 1}, {"keep": "x", "z": [1, None]}, None])
    assert ix.list_items(where={"z": {"$exists": True}}).items[0].id == "i1"
    assert [it.id for it in ix.list_items(where={"k": {"$exists": True}}).items] == ["i3", "i5", "i7", "i9", "i11"]
    b.set_payload(["i1", "i3"], "str", labels=None, metadata=[{"only": True}, {"k": None, "keep": None}], merge=True)
    assert b.payload(["i1", "i3"])[1] == [{"keep": "x", "z": [1, None], "only": True}, None]  # i3 merged to nothing
    b.set_payload(["i5"], "str", labels=None, metadata=[{"r": "x"}], merge=False)
    assert b.payload(["i5"])[1] == [{"r": "x"}]
    ix.set_labels(["i0", "i5"], ["L", None])
    assert b.payload(["i0", "i5"])[0] == ["L", None]
    assert ix.list_items(where={"$label": "L"}).items[0].id == "i0"
    before = b.payload([f"i{j}" for j in range(12)])
    with pytest.raises(UnknownIdError):
        b.set_payload(["i0", "nope"], "str", labels=["X", "Y"], metadata=[{"a": 1}, {"a": 2}], merge=False)
    with pytest.raises(UnknownIdError):
        ix.set_metadata(["i0", "nope"], {"a": 1})
    assert b.payload([f"i{j}" for j in range(12)]) == before  # nothing written
    ix.close()


@pytest.mark.parametrize("kind", BACKENDS)
def test_payload_index_declared_checked_and_reopened(tmp_path, kind):
    url = _url(kind, tmp_path)
    ix, _ = _small(url)
    with pytest.raises(InvalidInputError, match="i1"):
        ix.create_payload_index("keep", "integer")  # item i1 holds a string
    assert ix.payload_indexes == {}
    ix.create_payload_index("keep", "keyword")
    ix.create_payload_index("k", "integer")
    with pytest.raises(InvalidInputError):
        ix.set_metadata(["i0"], {"k": "text"})
    with pytest.raises(InvalidInputError):
        ix.search(np.ones((1, 8), np.float32), 3, version="a", raw=False, where={"k": {"$gte": "a"}})
    ix.close()
    with compatindex.open(url, readonly=True) as again:
        assert again.payload_indexes == {"keep": "keyword", "k": "integer"}
        got = again.search(np.ones((1, 8), np.float32), 12, version="a", raw=False, where={"k": {"$gte": 5}})
        assert sorted(x for x in got.ids[0] if x is not None) == ["i11", "i5", "i7", "i9"]


@pytest.mark.parametrize("kind", BACKENDS)
def test_retire_refused_then_accepted(tmp_path, kind):
    url = _url(kind, tmp_path)
    ix, rng = _small(url)
    with pytest.raises(InvalidInputError, match="12 items"):
        ix.retire_version("a")
    ix.backfill([f"i{j}" for j in range(10)], rng.standard_normal((10, 12)).astype(np.float32), version="b", raw=False)
    with pytest.raises(InvalidInputError, match="2 items"):
        ix.retire_version("a")
    assert ix.stats()["versions"]["a"]["vectors"] == 12  # nothing changed
    ix.backfill(["i10", "i11"], rng.standard_normal((2, 12)).astype(np.float32), version="b", raw=False)
    assert ix.retire_version("a") == 12
    assert ix.stats()["versions"]["a"]["vectors"] == 0
    assert all(it.versions == ("b",) for it in ix.get([f"i{j}" for j in range(12)], with_vectors=False))
    got = ix.search(np.ones((1, 8), np.float32), 12, version="a", raw=False, where={"$label": 1})
    assert sorted(x for x in got.ids[0] if x is not None) == ["i1", "i10", "i4", "i7"]
    assert set(got.versions[0][:4]) == {"b"}
    ix.close()
    with compatindex.open(url) as again:
        assert again.backend.versions()["a"].retired and not again.backend.versions()["b"].retired
        assert again.verify() == []


def test_a_filtered_search_is_one_query_batch(gallery):
    from qdrant_client import models as m

    qd = gallery[0]
    client = qd.backend.client
    sent: list = []
    real = client.query_batch_points

    def spy(collection, requests, **kw):
        sent.append(requests)
        return real(collection, requests=requests, **kw)

    client.query_batch_points = spy
    try:
        qd.search(queries(DIMS["v3"], n=5), 3, version="v3", raw=False, where={"lang": "en", "$label": {"$ne": 2}})
    finally:
        client.query_batch_points = real
    assert len(sent) == 1 and len(sent[0]) == 5 * len(DIMS)
    for req in sent[0]:  # the version conditions and the translated filter, in one native Filter
        assert isinstance(req.filter.must[0], m.HasVectorCondition) and req.filter.must[0].has_vector == req.using
        assert req.filter.must[1] == condition(parse_filter({"lang": "en", "$label": {"$ne": 2}}))
    shadowed = [r for r in sent[0] if r.using == "v1"]
    assert shadowed and {c.has_vector for c in shadowed[0].filter.must_not} == {"v2", "v3"}


def test_fetch_fills_metadata(gallery):
    qd, _, truth = gallery
    batch = qd.fetch("v2", limit=9, seed=4)
    assert batch.metadata == [truth[i][1] for i in batch.ids]
    assert qd.fetch("b2").metadata == [truth[i][1] for i in qd.fetch("b2").ids]
