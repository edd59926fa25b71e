"""Forward query maps (core/query_maps.py): a learned map from an ancestor's query space into a
version's, fitted with the serving parameters, gated on held-out pairs, and served by ``compose``.
Checked against a brute force of the mapped score on a mixed gallery with a branch, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import compatindex
from compatindex.core.query_maps import fit_query_map, unpack_map
from compatindex.errors import DimensionMismatchError, InvalidInputError, UnknownVersionError
from core_testkit import BruteForce
from reference_backend import DictBackend
from test_congruence import build_lineage
from test_fusion import CALIB, DIMS, assert_fused_same


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _planted(rng, n=800, d_old=16, d_new=24, noise=0.05):
    """New vectors a known linear function of the old ones, plus noise."""
    A = rng.standard_normal((d_new, d_old))
    X = rng.standard_normal((n, d_old))
    Y = X @ A.T + noise * rng.standard_normal((n, d_new))
    return A, X.astype(np.float32), Y.astype(np.float32)


def _two_versions(ix, metric="cosine", d_old=16, d_new=24):
    ix.create_version("v1", dim=d_old, metric=metric)
    ix.register_version("v2", "v1", d_new)


def test_planted_map_is_recovered_and_reported(mem_index):
    rng = np.random.default_rng(0)
    A, X, Y = _planted(rng)
    _two_versions(mem_index, metric="ip")
    rep = mem_index.fit_serving("v2", Y, old_vectors=X, raw=False, fusion=False)
    fit = rep["query_map"]
    assert fit["stored"] and "W" not in fit
    assert fit["held_out"] == 160 and fit["pairs"] == 800
    assert fit["mapped"]["MRR"] > fit["projection"]["MRR"] and fit["mapped"]["R@1"] >= fit["projection"]["R@1"]
    W = unpack_map(mem_index.version("v2").serving["query_maps"]["v1"])
    assert W.shape == (24, 16)
    assert np.linalg.norm(W - A) / np.linalg.norm(A) < 0.01
    # the core fit, directly: same figures from the same split
    direct = fit_query_map({v.name: v for v in mem_index.versions()}, "v1", "v2", X, Y)
    assert direct["mapped"] == fit["mapped"] and direct["projection"] == fit["projection"]


def test_old_clients_get_mapped_queries_after_drop_old(mem_index):
    rng = np.random.default_rng(1)
    _, X, Y = _planted(rng, n=1200, noise=0.3)
    _two_versions(mem_index)
    ids = list(range(400))
    mem_index.add(ids, X[:400], version="v1")
    q = X[:400]
    mem_index.backfill(ids, Y[:400], version="v2", raw=False, drop_old=True)
    unmapped = mem_index.search(q, k=1, version="v1", raw=False)
    mem_index.fit_serving("v2", Y[400:], old_vectors=X[400:], raw=False)
    mapped = mem_index.search(q, k=1, version="v1", raw=False)
    own = np.arange(400)
    assert np.mean(mapped.ids[:, 0] == own) > np.mean(unmapped.ids[:, 0] == own) + 0.3
    W = unpack_map(mem_index.version("v2").serving["query_maps"]["v1"])
    composed, off = mem_index.composed_queries(q, version="v1", raw=False)["v2"]
    np.testing.assert_allclose(composed, _unit(_unit(q) @ W.T.astype(np.float64)), atol=1e-5)
    assert off == 0.0


def brute_mapped(bf: BruteForce, Qs: dict, weights: dict, calib: dict, maps: dict, k: int, score: str):
    """The fused score with query maps, written from docs/concepts.md: for (query version n,
    representative u) with a map W, the term is <normalize(W q_n), g_u>; else the projection."""
    names = list(Qs)
    primary = names[0]
    Qn = {n: bf._norm(Qs[n]) for n in names}
    out_ids, out_scores, out_vers = [], [], []
    for r in range(len(Qn[primary])):
        cands = []
        for item_id, item in bf.items.items():
            u = bf.rep(item, primary)
            total = 0.0
            for n in names:
                q = Qn[n][r]
                if (n, u) in maps:
                    m = maps[(n, u)].astype(np.float64) @ q
                    s = float((m / np.linalg.norm(m)) @ item[u])
                else:
                    d = bf.dim[bf.lca(n, u)]
                    s = float(q[:d] @ item[u][:d])
                    if score == "renorm" and d < len(q):
                        s *= np.linalg.norm(q) / np.linalg.norm(q[:d])
                a, b = calib.get((n, u), (1.0, 0.0)) if score == "calibrated" else (1.0, 0.0)
                total += weights[n] * (a * s + b)
            cands.append((total, item_id, u))
        cands.sort(key=lambda t: -t[0])
        top = cands[:k]
        out_ids.append([t[1] for t in top])
        out_scores.append([t[0] for t in top])
        out_vers.append([t[2] for t in top])
    return out_ids, out_scores, out_vers


def _backends(tmp_path):
    yield "embedded", compatindex.open(tmp_path / "e")
    yield "dict", compatindex.Index(DictBackend())
    pytest.importorskip("qdrant_client")
    yield "qdrant", compatindex.open("qdrant+local://:memory:")


@pytest.mark.parametrize("score", ["renorm", "calibrated"])
def test_mapped_search_equals_brute_force_on_every_backend(tmp_path, score):
    rng = np.random.default_rng(3)
    W = {("v1", "v3"): rng.standard_normal((96, 64)), ("v2", "v3"): rng.standard_normal((96, 80)),
         ("v1", "b2"): rng.standard_normal((72, 64))}
    maps = {k: w.astype(np.float32) for k, w in W.items()}
    cal = {(i, u): (a, b) for i, u, a, b in CALIB}
    for _, ix in _backends(tmp_path / score):
        with ix:
            bf = BruteForce()
            build_lineage(ix, bf, np.random.default_rng(5))
            ix.set_serving("v3", calibration=CALIB, query_maps={"v1": W[("v1", "v3")], "v2": W[("v2", "v3")]})
            ix.set_serving("b2", query_maps={"v1": W[("v1", "b2")]})
            qr = np.random.default_rng(9)
            # an old client alone: v1 queries meet v3 and b2 vectors through the maps
            Q = qr.standard_normal((8, 64)).astype(np.float32)
            assert_fused_same(ix.search(Q, k=12, version="v1", score=score, raw=False),
                              brute_mapped(bf, {"v1": Q}, {"v1": 1.0}, cal, maps, 12, score))
            composed = ix.composed_queries(Q, version="v1", score=score, raw=False)
            a = cal[("v1", "v3")][0] if score == "calibrated" else 1.0
            np.testing.assert_allclose(composed["v3"][0], a * _unit(_unit(Q) @ maps[("v1", "v3")].T.astype(np.float64)),
                                       atol=1e-5)
            for names, w in ((("v2", "v1"), {"v2": 0.6, "v1": 0.4}), (("b2", "v2", "v1"), {"b2": 0.5, "v2": 0.2, "v1": 0.3})):
                Qs = {n: qr.standard_normal((6, DIMS[n])).astype(np.float32) for n in names}
                res = ix.search(Qs, k=12, score=score, fusion=w, raw=False)
                assert_fused_same(res, brute_mapped(bf, Qs, w, cal, maps, 12, score))


def test_gate_refuses_a_useless_map_and_stores_nothing(mem_index):
    rng = np.random.default_rng(4)
    _two_versions(mem_index)
    X = rng.standard_normal((600, 16)).astype(np.float32)
    Y = rng.standard_normal((600, 24)).astype(np.float32)  # unrelated: no map can help
    Y[:, :16] += 3 * X  # ... except the algebra's own prefix, which the projection already uses
    rep = mem_index.fit_serving("v2", Y, old_vectors=X, raw=False)
    fit = rep["query_map"]
    assert not fit["stored"] and "gate failed" in fit["reason"]
    assert fit["mapped"] is not None and fit["projection"] is not None
    assert "query_maps" not in mem_index.version("v2").serving
    # fully random pairs too
    rep = mem_index.fit_serving("v2", rng.standard_normal((600, 24)), old_vectors=X, raw=False)
    assert not rep["query_map"]["stored"]
    assert "query_maps" not in mem_index.version("v2").serving


def test_too_few_pairs_skip_the_map_with_a_reason(mem_index):
    rng = np.random.default_rng(5)
    _, X, Y = _planted(rng, n=31)
    _two_versions(mem_index)
    fit = mem_index.fit_serving("v2", Y, old_vectors=X, raw=False, fusion=False)["query_map"]
    assert not fit["stored"] and "too few pairs: 31 < 32" in fit["reason"]
    assert "query_maps" not in mem_index.version("v2").serving
    # query_map=False skips the fit
    _, X, Y = _planted(rng, n=400)
    assert mem_index.fit_serving("v2", Y, old_vectors=X, raw=False, query_map=False)["query_map"] is None
    assert "query_maps" not in mem_index.version("v2").serving


def test_set_serving_removes_maps(mem_index):
    rng = np.random.default_rng(6)
    _, X, Y = _planted(rng)
    _two_versions(mem_index)
    mem_index.fit_serving("v2", Y, old_vectors=X, raw=False)
    assert "v1" in mem_index.version("v2").serving["query_maps"]
    cal = mem_index.version("v2").serving["calibration"]
    mem_index.set_serving("v2", fusion={"v2": 0.5, "v1": 0.5})  # None keeps the maps
    assert "v1" in mem_index.version("v2").serving["query_maps"]
    mem_index.set_serving("v2", query_maps={})
    s = mem_index.version("v2").serving
    assert "query_maps" not in s and s["calibration"] == cal
    mem_index.set_serving("v2", query_maps={"v1": np.eye(24, 16)})
    assert "v1" in mem_index.version("v2").serving["query_maps"]
    mem_index.set_serving("v2", query_maps={"v1": None})
    assert "query_maps" not in mem_index.version("v2").serving


@pytest.mark.parametrize("maps, err, match", [
    ({"v1": np.ones((16, 24))}, InvalidInputError, r"`query_maps\['v1'\]` must be a \(24, 16\) matrix"),
    ({"v1": np.full((24, 16), np.nan)}, InvalidInputError, r"`query_maps\['v1'\]` holds NaN or inf"),
    ({"v1": np.zeros((24, 16))}, InvalidInputError, r"`query_maps\['v1'\]` is all zeros"),
    ({"v1": "x"}, InvalidInputError, r"`query_maps\['v1'\]` must be a numeric"),
    ({"b2": np.ones((24, 20))}, InvalidInputError, r"'b2' is not an ancestor of 'v2'"),
    ({"v2": np.ones((24, 24))}, InvalidInputError, r"'v2' is not an ancestor of 'v2'"),
    ({"v9": np.ones((24, 16))}, UnknownVersionError, r"`query_maps` 'v9'"),
    ([np.ones((24, 16))], InvalidInputError, r"`query_maps` must be a mapping"),
])
def test_bad_query_maps_are_refused_and_change_nothing(mem_index, maps, err, match):
    _two_versions(mem_index)
    mem_index.register_version("b2", "v1", 20)
    mem_index.set_serving("v2", query_maps={"v1": np.eye(24, 16)}, fusion={"v1": 0.5, "v2": 0.5})
    before = (mem_index.stats()["seq"], mem_index.version("v2").serving)
    with pytest.raises(err, match=match):
        mem_index.set_serving("v2", query_maps=maps, fusion={"v1": 1.0, "v2": 0.0})
    assert (mem_index.stats()["seq"], mem_index.version("v2").serving) == before


def test_bad_pairs_are_refused_and_change_nothing(mem_index):
    rng = np.random.default_rng(7)
    _, X, Y = _planted(rng, n=200)
    _two_versions(mem_index)
    before = (mem_index.stats()["seq"], mem_index.version("v2").serving)
    Xn = X.copy()
    Xn[3, 2] = np.nan
    with pytest.raises(InvalidInputError, match=r"`old_vectors` holds NaN or inf"):
        mem_index.fit_serving("v2", Y, old_vectors=Xn, raw=False)
    with pytest.raises(DimensionMismatchError, match=r"`old_vectors` must have dim 16"):
        mem_index.fit_serving("v2", Y, old_vectors=X[:, :12], raw=False)
    with pytest.raises(InvalidInputError, match=r"`old_vectors` holds 100 rows, `vectors` 200"):
        mem_index.fit_serving("v2", Y, old_vectors=X[:100], raw=False)
    assert (mem_index.stats()["seq"], mem_index.version("v2").serving) == before
    vs = {v.name: v for v in mem_index.versions()}
    with pytest.raises(InvalidInputError, match=r"query map pairs must be \(n, 16\) and \(n, 24\)"):
        fit_query_map(vs, "v1", "v2", X, Y[:, :20])
    with pytest.raises(InvalidInputError, match="NaN or inf"):
        fit_query_map(vs, "v1", "v2", Xn, Y)
    with pytest.raises(InvalidInputError, match="not an ancestor"):
        fit_query_map(vs, "v2", "v1", Y, X)


def test_calibrate_refits_the_map_from_backfilled_items(mem_index):
    rng = np.random.default_rng(8)
    _, X, Y = _planted(rng, n=600, noise=0.3)
    _two_versions(mem_index)
    ids = list(range(600))
    mem_index.add(ids, X, version="v1")
    mem_index.backfill(ids[:400], Y[:400], version="v2", raw=False)
    rep = mem_index.calibrate("v2")
    fit = rep["query_map"]
    assert fit["stored"] and fit["pairs"] == 400 and fit["mapped"]["MRR"] > fit["projection"]["MRR"]
    W1 = unpack_map(mem_index.version("v2").serving["query_maps"]["v1"])
    # a second calibrate on the same pairs does not beat the stored map: it is kept
    fit2 = mem_index.calibrate("v2")["query_map"]
    assert not fit2["stored"] and "stored map is kept" in fit2["reason"]
    np.testing.assert_array_equal(unpack_map(mem_index.version("v2").serving["query_maps"]["v1"]), W1)
    # the (v1, v2) calibration is fit on the mapped scores, onto the (v1, v1) scale: the old scores
    # the mapped ones predict, through the (v1, v1) calibration
    cal = rep["calibration"]
    m, base = cal["v1->v2"], cal["v1->v1"]
    assert m["method"] == "score-match" and m["alpha"] > 0 and m["r"] > 0.5
    np.testing.assert_allclose([m["a"], m["b"]], [base["a"] * m["alpha"], base["a"] * m["beta"] + base["b"]])
    row = next(r for r in mem_index.version("v2").serving["calibration"] if r[0] == "v1" and r[1] == "v2")
    np.testing.assert_allclose(row[2:], [m["a"], m["b"]])
    # without a map, the (v1, v2) calibration is the logistic fit of the padded scores
    mem_index.set_serving("v2", query_maps={})
    plain = mem_index.calibrate("v2", query_map=False)
    assert plain["query_map"] is None and "method" not in plain["calibration"]["v1->v2"]


def test_stored_map_survives_reopen(tmp_path):
    rng = np.random.default_rng(9)
    _, X, Y = _planted(rng, noise=0.3)
    path = tmp_path / "ix"
    q = X[:50]
    with compatindex.open(path) as ix:
        _two_versions(ix)
        ix.add(list(range(200)), X[:200], version="v1")
        ix.backfill(list(range(200)), Y[:200], version="v2", raw=False, drop_old=True)
        ix.fit_serving("v2", Y[200:], old_vectors=X[200:], raw=False)
        W = unpack_map(ix.version("v2").serving["query_maps"]["v1"])
        before = ix.search(q, k=5, version="v1", raw=False)
    with compatindex.open(path, readonly=True) as ro:
        np.testing.assert_array_equal(unpack_map(ro.version("v2").serving["query_maps"]["v1"]), W)
        after = ro.search(q, k=5, version="v1", raw=False)
        assert (after.ids == before.ids).all()
        np.testing.assert_allclose(after.scores, before.scores, atol=1e-6)
        assert ro.verify() == []


def test_fit_serving_stores_the_map_on_qdrant(tmp_path):
    pytest.importorskip("qdrant_client")
    rng = np.random.default_rng(10)
    _, X, Y = _planted(rng, noise=0.3)
    ref = compatindex.open(tmp_path / "e")
    with compatindex.open("qdrant+local://:memory:") as qd, ref:
        for ix in (qd, ref):
            _two_versions(ix)
            ix.add(list(range(100)), X[:100], version="v1")
            ix.backfill(list(range(50)), Y[:50], version="v2", raw=False, drop_old=True)
            assert ix.fit_serving("v2", Y[200:], old_vectors=X[200:], raw=False)["query_map"]["stored"]
        np.testing.assert_array_equal(unpack_map(qd.version("v2").serving["query_maps"]["v1"]),
                                      unpack_map(ref.version("v2").serving["query_maps"]["v1"]))
        a = qd.search(X[:20], k=5, version="v1", raw=False, score="calibrated")
        b = ref.search(X[:20], k=5, version="v1", raw=False, score="calibrated")
        assert (a.ids == b.ids).all()
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
