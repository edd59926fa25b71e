"""Filtered search, payload updates, payload indexes and retire on the embedded backend.

Brute force: the unfiltered search with ``k = count`` ranks every item by its representative
vector (exact on flat shards, checked elsewhere against a naive model); keeping the rows whose
item ``core.filters.matches`` the filter, then the first ``k``, is the exact filtered top-k
(filtering never changes which vector represents an item).
"""

from __future__ import annotations

import numpy as np
import pytest

import compatindex
from compatindex.core.datatypes import SearchResult
from compatindex.core.filters import matches, parse_filter
from compatindex.errors import InvalidInputError, UnknownIdError
from core_testkit import random_orthogonal

DIMS = {"v1": 16, "v2": 24, "v3": 32, "b2": 20}
LANGS = ["en", "de", "fr", None]


def rich_meta(j: int) -> dict | None:
    """Metadata covering the typing corners: ints vs floats vs bools vs strings, lists with nulls,
    empty lists, missing fields, odd values."""
    if j % 11 == 0:
        return None
    m: dict = {"n": j, "score": (j * 37 % 100) / 10.0}
    if LANGS[j % 4] is not None:
        m["lang"] = LANGS[j % 4]
    m["year"] = [2018 + j % 8, float(2018 + j % 8), str(2018 + j % 8), True, None][j % 5]
    m["tags"] = [["a"], ["a", "b"], [], ["b", None], [None], ["c", "a"], None][j % 7]
    m["flag"] = [True, False, 1, 0, None, "true"][j % 6]
    m["nums"] = [[1, 2.5], [2], [True], [3.0, "3"]][j % 4]
    odd = j % 17
    if odd == 1:
        m["odd"] = float("inf")
    elif odd == 3:
        m["odd"] = {"inner": 1}
    elif odd == 4:
        m["odd"] = [[1], 2]
    elif odd == 5:
        m["odd"] = 2 ** 64 - 1
    return m


FILTERS = [
    {"lang": "en"}, {"lang": {"$ne": "en"}}, {"lang": {"$in": ["en", "fr"]}}, {"lang": {"$nin": ["en", "fr"]}},
    {"lang": {"$exists": True}}, {"lang": {"$exists": False}},
    {"year": 2020}, {"year": 2021.0}, {"year": "2020"}, {"year": True},
    {"flag": 1}, {"flag": True}, {"flag": {"$in": [True, 0]}}, {"flag": {"$nin": [True, False]}},
    {"year": {"$gte": 2020, "$lt": 2023}}, {"score": {"$gt": 2.5, "$lte": 7.0}}, {"score": {"$lt": 0.5}},
    {"tags": "a"}, {"tags": {"$in": ["b", "c"]}}, {"tags": {"$nin": ["a"]}}, {"tags": {"$exists": False}},
    {"nums": 2.5}, {"nums": 3}, {"nums": True}, {"nums": {"$gte": 2, "$lt": 3}},
    {"odd": {"$exists": True}}, {"odd": {"$gte": 0}}, {"odd": float(2 ** 64 - 1)},
    {"n": {"$in": list(range(0, 400, 3))}}, {"n": {"$lt": 20}},
    {"$label": 3}, {"$label": {"$in": ["c1", 2]}}, {"$label": {"$exists": False}}, {"$label": {"$ne": "c0"}},
    {"$and": [{"lang": "en"}, {"year": {"$gte": 2021}}]},
    {"$or": [{"lang": "fr"}, {"tags": "b"}, {"$label": "c2"}]},
    {"$not": {"lang": "en"}},
    {"$not": {"$or": [{"flag": True}, {"year": {"$lt": 2021}}]}},
    {"lang": "en", "score": {"$gte": 5}, "$or": [{"flag": False}, {"flag": {"$exists": False}}]},
    {"lang": "xx"},
]
INDEXED = {"lang": "keyword", "score": "float", "n": "integer", "tags": "keyword"}


def build(ix, seed: int = 7) -> list:
    """A lineage with a branch and dim changes, a mixed gallery (partial backfills, drop_old,
    deletes), rich metadata set afterwards; returns the ids in insertion order."""
    rng = np.random.default_rng(seed)
    ix.create_version("v1", dim=16, metric="cosine")
    ix.register_version("v2", "v1", 24, extension=random_orthogonal(24, rng))
    base = [f"item{i}" for i in range(160)]
    ix.add(base, rng.standard_normal((160, 16)).astype(np.float32), version="v1", raw=False,
           labels=[i % 7 if i % 5 else None for i in range(160)],
           metadata=[{"n": i, "tag": "x"} if i % 3 == 0 else None for i in range(160)])
    ix.register_version("v3", "v2", 32, extension=random_orthogonal(32, rng))
    ix.register_version("b2", "v1", 20)
    made = list(base)
    for ver, lo in (("v2", 200), ("v3", 240), ("b2", 280)):
        new = [f"item{i}" for i in range(lo, lo + 25)]
        made += new
        ix.add(new, rng.standard_normal((25, DIMS[ver])).astype(np.float32), version=ver, raw=False,
               labels=[f"c{i % 3}" for i in range(25)])
    ix.backfill(base[:60], rng.standard_normal((60, 24)).astype(np.float32), version="v2", raw=False)
    ix.backfill(base[40:70], rng.standard_normal((30, 32)).astype(np.float32), version="v3", raw=False,
                drop_old=True)
    ix.backfill(base[100:115], rng.standard_normal((15, 20)).astype(np.float32), version="b2", raw=False)
    gone = base[::13] + ["item205", "item250"]
    ix.delete(gone)
    ids = [i for i in made if i not in set(gone)]
    metas = [rich_meta(j) for j in range(len(ids))]
    ix.set_metadata(ids, metas, merge=False)
    return ids


def queries(dim: int, n: int = 4, seed: int = 99) -> np.ndarray:
    return np.random.default_rng(seed + dim).standard_normal((n, dim)).astype(np.float32)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(index with payload indexes declared, the same index without, ids, {id: (label, metadata)})."""
    root = tmp_path_factory.mktemp("filters")
    a = compatindex.open(root / "indexed")
    b = compatindex.open(root / "plain")
    ids = build(a)
    build(b)
    for f, s in INDEXED.items():
        a.create_payload_index(f, s)
    labels, metas = a.backend.payload(ids)
    truth = dict(zip(ids, zip(labels, metas)))
    yield a, b, ids, truth
    a.close()
    b.close()


def brute(ix, truth, q, k, version, where) -> SearchResult:
    full = ix.search(q, ix.count, version=version, raw=False)
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


def assert_same(got: SearchResult, ref: SearchResult, atol: float = 1e-4) -> None:
    assert got.ids.shape == ref.ids.shape
    np.testing.assert_array_equal(np.isfinite(got.scores), np.isfinite(ref.scores))
    fin = np.isfinite(ref.scores)
    np.testing.assert_allclose(got.scores[fin], ref.scores[fin], atol=atol, rtol=0)
    for i in range(len(ref)):
        for j in range(ref.k):
            if got.ids[i, j] != ref.ids[i, j]:
                assert abs(float(ref.scores[i, j]) - float(got.scores[i, j])) < atol  # a tie
            else:
                assert got.versions[i, j] == ref.versions[i, j]


@pytest.mark.parametrize("where", FILTERS, ids=[str(i) for i in range(len(FILTERS))])
def test_filtered_search_equals_brute_force(pair, where):
    a, b, _, truth = pair
    for qv in DIMS:
        for nq in (1, 25):  # single queries and a batch take different paths (filtered.py)
            q = queries(DIMS[qv], n=nq)
            ref = brute(b, truth, q, 7, qv, where)
            got_plain = b.search(q, 7, version=qv, raw=False, where=where)
            got_indexed = a.search(q, 7, version=qv, raw=False, where=where)
            assert_same(got_plain, ref)
            assert_same(got_indexed, ref)
            np.testing.assert_array_equal(got_plain.ids, got_indexed.ids)


def test_nothing_matches_gives_empty_rows(pair):
    a, _, _, _ = pair
    res = a.search(queries(16, n=3), 5, version="v1", raw=False, where={"lang": "nowhere"})
    assert res.ids.shape == (3, 5)
    assert all(x is None for x in res.ids.ravel())
    assert np.isneginf(res.scores).all()
    assert [len(res[i]) for i in range(3)] == [0, 0, 0]


def test_list_items_and_payload(pair):
    a, b, ids, truth = pair
    for where in (None, {"lang": "en"}, {"$not": {"tags": "a"}}, {"$label": {"$exists": True}}):
        f = parse_filter(where)
        want = [i for i in ids if matches(f, *truth[i])]
        for ix in (a, b):
            assert ix.backend.list_items(0, 10_000, f) == (want, -1)
            first, nxt = ix.backend.list_items(0, 7, f)
            assert first == want[:7] and nxt == (7 if len(want) > 7 else -1)
            assert ix.backend.list_items(7, 5, f)[0] == want[7:12]
    labels, metas = a.backend.payload(ids[:20])
    assert list(zip(labels, metas)) == [truth[i] for i in ids[:20]]
    held = a.backend.held(["item0", "item1", "item45", "item200"])
    assert held[1] == ("v1", "v2") and held[2] == ("v3",) and held[3] == ("v2",)


def test_stats_and_verify_cover_the_payload_index(pair):
    a, _, _, _ = pair
    a.search(queries(16, n=1), 3, version="v1", raw=False, where={"lang": "en", "n": {"$gt": 3}})
    assert a.stats()["payload_indexes"] == INDEXED
    state = a.backend.payload_state()
    assert state["schema"] == INDEXED and set(INDEXED) <= set(state["columns"])
    assert a.verify() == []


def _small(path, spec=None, n=300, dim=8, seed=0):
    ix = compatindex.open(path, shard=spec) if spec else compatindex.open(path)
    ix.create_version("v1", dim=dim, metric="ip")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dim)).astype(np.float32)
    ix.add(list(range(n)), X, version="v1", raw=False, labels=[i % 4 for i in range(n)],
           metadata=[{"b": i % 10, "g": ["x", "y"][i % 2]} for i in range(n)])
    return ix, X


def test_payload_updates_semantics_and_reopen(tmp_path):
    ix, X = _small(tmp_path / "ix")
    ix.create_payload_index("b", "integer")
    q = X[:2] + 0.01
    before = ix.search(q, 5, version="v1", raw=False, where={"b": 3})
    ix.set_metadata([3, 4], [{"b": 100, "new": "z"}, {"g": None}], merge=True)
    assert ix.backend.payload([3, 4])[1] == [{"b": 100, "g": "y", "new": "z"}, {"b": 4}]
    ix.set_metadata([5], [{"only": 1}], merge=False)
    assert ix.backend.payload([5])[1] == [{"only": 1}]
    ix.set_labels([6, 7], [None, "lab"])
    assert ix.backend.payload([6, 7])[0] == [None, "lab"]
    with pytest.raises(UnknownIdError):
        ix.backend.set_payload([8, 10_000], "int", labels=None, metadata=[{"b": 1}, {"b": 2}], merge=True)
    assert ix.backend.payload([8])[1] == [{"b": 8, "g": "x"}]  # nothing written
    with pytest.raises(InvalidInputError, match="indexed as 'integer'"):
        ix.backend.set_payload([8], "int", labels=None, metadata=[{"b": "text"}], merge=True)
    with pytest.raises(InvalidInputError, match="indexed as 'integer'"):
        ix.backend.add(ix.version("v1"), [999], "int", X[:1], None, [{"b": 1.5}])
    assert not ix.has([999])[0]
    with pytest.raises(InvalidInputError, match="item 5"):
        ix.create_payload_index("only", "keyword")
    assert ix.backend.payload_schema() == {"b": "integer"}
    got = ix.search(q, 5, version="v1", raw=False, where={"b": 100})
    assert list(got.ids[:, 0]) == [3, 3] and got.ids[0, 1] is None
    assert ix.search(q, 300, version="v1", raw=False, where={"$label": "lab"}).ids[0, 0] == 7
    assert ix.verify() == []
    ix.close()
    ix = compatindex.open(tmp_path / "ix")
    assert ix.backend.payload_schema() == {"b": "integer"}
    assert ix.backend.payload([3, 4, 5])[1] == [{"b": 100, "g": "y", "new": "z"}, {"b": 4}, {"only": 1}]
    got2 = ix.search(q, 5, version="v1", raw=False, where={"b": 100})
    np.testing.assert_array_equal(got.ids, got2.ids)
    assert before.ids.shape == got2.ids.shape
    assert ix.verify() == []
    ix.close()


def test_reader_sees_writer_payload_changes(tmp_path):
    w, X = _small(tmp_path / "ix")
    w.create_payload_index("g", "keyword")
    w.flush()
    r = compatindex.open(tmp_path / "ix", readonly=True)
    q = X[:1]
    assert r.search(q, 400, version="v1", raw=False, where={"g": "z"}).ids[0, 0] is None
    for rounds in range(3):  # the reader's columns follow the op log
        w.set_metadata([10 + rounds], [{"g": "z"}])
        got = r.search(q, 400, version="v1", raw=False, where={"g": "z"})
        assert sorted(x for x in got.ids[0] if x is not None) == list(range(10, 11 + rounds))
    w.checkpoint_ops = 1
    for j in range(4):  # checkpoints truncate the op log past the reader: it rebuilds its columns
        w.set_metadata([50 + j], [{"g": "z"}])
        w.backend.checkpoint()
    got = r.search(q, 400, version="v1", raw=False, where={"g": "z"})
    assert sorted(x for x in got.ids[0] if x is not None) == [10, 11, 12, 50, 51, 52, 53]
    assert r.backend.payload_schema() == {"g": "keyword"}
    r.close()
    w.close()


@pytest.mark.parametrize("spec", [{"kind": "ivf", "nlist": 16, "nprobe": 8, "train_factor": 8},
                                  {"kind": "hnsw", "m": 16, "ef_search": 32}], ids=["ivf", "hnsw"])
def test_ivf_hnsw_recall_under_filters(tmp_path, spec):
    n, dim = 6000, 16
    ix, X = _small(tmp_path / "ix", spec=spec, n=n, dim=dim)
    ix.set_metadata(list(range(n)), [{"p": i % 200} for i in range(n)])
    ix.delete([1, 2, 3, 400])
    Q = np.random.default_rng(5).standard_normal((30, dim)).astype(np.float32)
    alive = np.ones(n, bool)
    alive[[1, 2, 3, 400]] = False
    for where, pick in (({"p": {"$lt": 100}}, lambda p: p < 100), ({"p": {"$lt": 10}}, lambda p: p < 10),
                        ({"p": 7}, lambda p: p == 7)):
        ok = pick(np.arange(n) % 200) & alive
        S = Q @ X[ok].T
        truth = np.flatnonzero(ok)[np.argsort(-S, axis=1)[:, :10]]
        for single in (True, False):  # one query at a time, and a batch
            rows = [ix.search(Q[i:i + 1], 10, version="v1", raw=False, where=where).ids[0] for i in range(30)] \
                if single else list(ix.search(Q, 10, version="v1", raw=False, where=where).ids)
            rec = np.mean([len(set(rows[i]) & set(truth[i])) / 10 for i in range(30)])
            assert rec >= 0.9, (where, single, rec)
            assert all(x is None or ok[x] for r in rows for x in r)
    ix.close()


def test_flat_paths_after_deletes_and_replacements(tmp_path):
    """Non-identity row maps (deleted and replaced rows): gather and selector paths stay exact."""
    ix, X = _small(tmp_path / "ix", n=3000, dim=8)
    rng = np.random.default_rng(3)
    ix.delete(list(range(0, 3000, 7)))
    repl = [i for i in range(1, 3000, 11) if i % 7]
    Xr = rng.standard_normal((len(repl), 8)).astype(np.float32)
    ix.backfill(repl, Xr, version="v1", raw=False)
    cur = X.copy()
    cur[repl] = Xr
    alive = np.ones(3000, bool)
    alive[::7] = False
    b = np.arange(3000) % 10
    for where, ok in (({"b": {"$lt": 8}}, b < 8), ({"b": 3}, b == 3), ({"g": "x"}, np.arange(3000) % 2 == 0)):
        ok = ok & alive
        for nq in (1, 3, 40):
            Q = rng.standard_normal((nq, 8)).astype(np.float32)
            got = ix.search(Q, 10, version="v1", raw=False, where=where)
            S = Q @ cur[ok].T
            want = -np.sort(-S, axis=1)[:, :10]
            np.testing.assert_allclose(got.scores, want, atol=1e-4)
            assert all(ok[x] for x in got.ids.ravel())
    ix.close()


def test_retire(tmp_path):
    ix = compatindex.open(tmp_path / "ix")
    rng = np.random.default_rng(0)
    ix.create_version("v1", dim=8, metric="cosine")
    ix.register_version("v2", "v1", 12, extension=random_orthogonal(12, rng))
    X1 = rng.standard_normal((50, 8)).astype(np.float32)
    ix.add(list(range(50)), X1, version="v1", raw=False, metadata=[{"b": i % 5} for i in range(50)])
    ix.backfill(list(range(40)), rng.standard_normal((40, 12)).astype(np.float32), version="v2", raw=False)
    ix.flush()
    v1 = ix.version("v1")
    shard_file = tmp_path / "ix" / "shards" / f"v{v1.code:03d}.faiss"
    assert shard_file.exists()
    q = rng.standard_normal((3, 12)).astype(np.float32)
    before = ix.search(q, 10, version="v2", raw=False)
    with pytest.raises(InvalidInputError, match="10 of its 50 items"):
        ix.backend.retire(v1)
    np.testing.assert_array_equal(ix.search(q, 10, version="v2", raw=False).ids, before.ids)
    assert ix.stats()["versions"]["v1"]["vectors"] == 50 and ix.verify() == []
    ix.backfill(list(range(40, 50)), rng.standard_normal((10, 12)).astype(np.float32), version="v2", raw=False)
    assert ix.backend.retire(v1) == 50
    assert ix.version("v1").retired
    assert not shard_file.exists()
    assert ix.backend.held([0, 49]) == [("v2",), ("v2",)]
    res = ix.search(q, 10, version="v2", raw=False, where={"b": 2})
    assert all(x is None or x % 5 == 2 for x in res.ids.ravel()) and set(res.versions.ravel()) <= {"v2", None}
    with pytest.raises(InvalidInputError, match="retired"):
        ix.backend.add(ix.version("v1"), [100], "int", X1[:1], None, None)
    assert ix.stats()["versions"]["v1"]["retired"] and ix.verify() == []
    ix.close()
    ix = compatindex.open(tmp_path / "ix")
    assert ix.version("v1").retired and not shard_file.exists()
    assert ix.stats()["versions"]["v1"]["vectors"] == 0
    np.testing.assert_array_equal(ix.search(q, 10, version="v2", raw=False, where={"b": 2}).ids, res.ids)
    assert ix.verify() == []
    ix.compact()
    assert ix.verify() == []
    ix.close()


def test_filtered_searches_beside_a_writer_thread(tmp_path):
    """Filtered searches in several threads while another thread updates metadata and adds items:
    no error, and every hit matched the filter in some committed state (an item matches at first
    when ``i % 10 < 2``; the writer only ever sets 0 or 1)."""
    import threading

    ix, X = _small(tmp_path / "ix", n=2000, dim=8)
    ix.create_payload_index("b", "integer")
    errors: list[BaseException] = []
    stop = threading.Event()

    rng0 = np.random.default_rng(1)
    batches = [rng0.choice(2000, 50, replace=False).tolist() for _ in range(40)]
    touched = {i for b in batches for i in b}

    def writer() -> None:
        rng = np.random.default_rng(1)
        try:
            for j in range(40):
                ids = batches[j]
                ix.set_metadata(ids, [{"b": int(j % 2)} for _ in ids], merge=True)
                ix.add([10_000 + j], rng.standard_normal((1, 8)).astype(np.float32), version="v1", raw=False,
                       metadata=[{"b": 0}])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            stop.set()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                nq = int(rng.choice([1, 30]))
                got = ix.search(rng.standard_normal((nq, 8)).astype(np.float32), 10, version="v1", raw=False,
                                where={"b": {"$lt": 2}})
                for x in got.ids.ravel():
                    assert x is None or x >= 10_000 or x % 10 < 2 or x in touched
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    final = ix.search(X[:3], 2040, version="v1", raw=False, where={"b": {"$lt": 2}})
    labels, metas = ix.backend.payload(list(range(2000)) + [10_000 + j for j in range(40)])
    want = {i for i, m in zip(list(range(2000)) + [10_000 + j for j in range(40)], metas) if m["b"] < 2}
    assert {x for x in final.ids[0] if x is not None} == want
    assert ix.verify() == []
    ix.close()


def test_filtered_search_on_the_torch_mirror(tmp_path):
    """The accelerator path (a bitmap over internal ids handed to the mirror), here the torch
    mirror on whatever device torch has: equal to brute force."""
    pytest.importorskip("torch")
    with compatindex.open(tmp_path / "ix") as ix:
        ids = build(ix)
    with compatindex.open(tmp_path / "ix", device="torch") as ix:
        labels, metas = ix.backend.payload(ids)
        truth = dict(zip(ids, zip(labels, metas)))
        for where in FILTERS[::3]:
            for qv in DIMS:
                q = queries(DIMS[qv], n=5)
                assert_same(ix.search(q, 7, version=qv, raw=False, where=where), brute(ix, truth, q, 7, qv, where))


def test_overfetch_path_and_its_fallback_stay_exact(tmp_path, monkeypatch):
    """Batches under a broad filter search bare and drop disallowed hits; queries left short are
    gathered. Forced here for every filter (a 1% filter leaves most queries short)."""
    import compatindex.embedded.shards.filtered as filtered

    calls = []
    orig = filtered.exact_topk
    monkeypatch.setattr(filtered, "OVERFETCH_FRACTION", 0.0)
    monkeypatch.setattr(filtered, "exact_topk", lambda q, *a: calls.append(len(q)) or orig(q, *a))
    ix, X = _small(tmp_path / "ix", n=3000, dim=8)
    ix.set_metadata(list(range(3000)), [{"p": i % 100} for i in range(3000)])
    ix.delete(list(range(0, 3000, 9)))
    alive = np.ones(3000, bool)
    alive[::9] = False
    Q = np.random.default_rng(4).standard_normal((40, 8)).astype(np.float32)
    for where, ok in (({"p": {"$lt": 90}}, np.arange(3000) % 100 < 90), ({"p": 3}, np.arange(3000) % 100 == 3)):
        ok = ok & alive
        calls.clear()
        got = ix.search(Q, 10, version="v1", raw=False, where=where)
        want = -np.sort(-(Q @ X[ok].T), axis=1)[:, :10]
        np.testing.assert_allclose(got.scores, want, atol=1e-4)
        assert all(ok[x] for x in got.ids.ravel())
        if where == {"p": 3}:
            assert calls and 0 < calls[0] < 40  # some queries fell back to the gather, not all
    ix.close()
