"""Migration-time serving: queries in several versions at once, fused and calibrated
(docs/concepts.md). Checked against a brute force of the same formula, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import compatindex
from compatindex.core.scoring import Metric, Score
from compatindex.errors import InvalidInputError, UnknownVersionError
from core_testkit import BruteForce
from reference_backend import DictBackend
from test_congruence import build_lineage

DIMS = {"v1": 64, "v2": 80, "v3": 96, "b2": 72}


def brute_fused(bf: BruteForce, Qs: dict, weights: dict, calib: dict, k: int, score: str):
    """s(g) = sum_i w_i (a_iu <pi_iu(q_i), g_u> + b_iu), u the item's representative for the first
    query version; written from the formula in docs/concepts.md, sharing no code with the library."""
    names = list(Qs)
    primary = names[0]
    Qn = {n: bf._norm(Qs[n]) for n in names}
    nq = len(Qn[primary])
    out_ids, out_scores, out_vers = [], [], []
    for r in range(nq):
        cands = []
        for item_id, item in bf.items.items():
            u = bf.rep(item, primary)
            total = 0.0
            for n in names:
                q = Qn[n][r]
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


def assert_fused_same(res, ref, atol=2e-4):
    ref_ids, ref_scores, ref_vers = ref
    for i in range(len(res)):
        got = res.scores[i][np.isfinite(res.scores[i])]
        np.testing.assert_allclose(got, ref_scores[i], atol=atol)
        for j, (a, b) in enumerate(zip(res.ids[i], ref_ids[i])):
            if a != b:
                assert abs(ref_scores[i][j] - got[j]) < atol  # a tie
            else:
                assert res.versions[i][j] == ref_vers[i][j]
        assert len(set(res.ids[i])) == len(res.ids[i])  # one hit per item


CALIB = [("v3", "v1", 1.7, 0.05), ("v1", "v3", 0.8, -0.02), ("v3", "b2", 1.2, 0.1), ("b2", "v2", 0.6, 0.3),
         ("v2", "v3", 1.1, -0.05)]


def _backends(tmp_path):
    yield "embedded", compatindex.open(tmp_path / "e")
    yield "dict", compatindex.Index(DictBackend())
    if pytest.importorskip("qdrant_client"):
        yield "qdrant", compatindex.open("qdrant+local://:memory:")


@pytest.mark.parametrize("score", ["pad", "renorm", "calibrated"])
def test_fused_search_equals_brute_force_on_every_backend(tmp_path, score):
    for _, ix in _backends(tmp_path / score):
        with ix:
            bf = BruteForce()
            build_lineage(ix, bf, np.random.default_rng(5))
            ix.set_serving("v3", calibration=CALIB)
            cal = {(i, u): (a, b) for i, u, a, b in CALIB}
            rng = np.random.default_rng(9)
            for names, w in ((("v3", "v1"), {"v3": 0.7, "v1": 0.3}), (("b2", "v2", "v3"), {"b2": 0.5, "v2": 0.2, "v3": 0.3}),
                             (("v1", "v3"), {"v1": 1.0, "v3": 0.0})):
                Qs = {n: rng.standard_normal((8, DIMS[n])).astype(np.float32) for n in names}
                res = ix.search(Qs, k=12, score=score, fusion=w, raw=False)
                assert_fused_same(res, brute_fused(bf, Qs, w, cal, 12, score))
            # one version alone under `calibrated` is the same formula with weight 1
            Q = rng.standard_normal((6, 96)).astype(np.float32)
            assert_fused_same(ix.search(Q, k=10, version="v3", score=score, raw=False),
                              brute_fused(bf, {"v3": Q}, {"v3": 1.0}, cal, 10, score))


def test_stored_fusion_is_the_default_and_a_call_overrides_it(mem_index):
    rng = np.random.default_rng(1)
    mem_index.create_version("v1", dim=16)
    mem_index.register_version("v2", "v1", 24)
    X = rng.standard_normal((100, 16)).astype(np.float32)
    mem_index.add(list(range(100)), X, version="v1")
    Qs = {"v2": rng.standard_normal((5, 24)).astype(np.float32), "v1": rng.standard_normal((5, 16)).astype(np.float32)}
    equal = mem_index.search(Qs, k=5)
    same = mem_index.search(Qs, k=5, fusion={"v2": 1, "v1": 1})
    assert (equal.ids == same.ids).all()
    mem_index.set_serving("v2", fusion={"v2": 0.0, "v1": 1.0})
    old_only = mem_index.search(Qs["v1"], k=5, version="v1")
    stored = mem_index.search(Qs, k=5)
    assert (stored.ids == old_only.ids).all()
    assert mem_index.version("v2").serving["fusion"] == {"v2": 0.0, "v1": 1.0}
    new_only = mem_index.search(Qs, k=5, fusion={"v2": 1.0})
    assert (new_only.ids == mem_index.search(Qs["v2"], k=5, version="v2").ids).all()


def test_serving_survives_reopen(tmp_path):
    path = tmp_path / "ix"
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=8)
        ix.register_version("v2", "v1", 8)
        ix.set_serving("v2", fusion={"v1": 0.25, "v2": 0.75}, calibration=[("v2", "v1", 2.0, 0.5)])
    with compatindex.open(path, readonly=True) as ro:
        s = ro.version("v2").serving
        assert s["fusion"] == {"v1": 0.25, "v2": 0.75} and s["calibration"] == [["v2", "v1", 2.0, 0.5]]
        assert ro.verify() == []


@pytest.mark.parametrize("bad, match", [
    ({"v2": -0.1, "v1": 1.0}, r"fusion\['v2'\]` must be a finite number >= 0"),
    ({"v2": float("nan"), "v1": 1.0}, r"fusion\['v2'\]` must be a finite number >= 0"),
    ({"v2": 0.0, "v1": 0}, "all zero"),
    ({"v9": 1.0}, "'v9', which is not a version of the query"),
    ({"v2": "x"}, r"fusion\['v2'\]` must be a number"),
    ([0.5, 0.5], "must be a mapping"),
])
def test_bad_fusion_weights_are_refused_and_change_nothing(mem_index, bad, match):
    mem_index.create_version("v1", dim=4)
    mem_index.register_version("v2", "v1", 6)
    mem_index.add(["a", "b"], np.eye(4, dtype=np.float32)[:2], version="v1")
    mem_index.set_serving("v2", fusion={"v2": 0.5, "v1": 0.5})
    before = (mem_index.stats()["seq"], mem_index.version("v2").serving)
    Qs = {"v2": np.ones((1, 6)), "v1": np.ones((1, 4))}
    with pytest.raises(InvalidInputError, match=match):
        mem_index.search(Qs, k=1, fusion=bad)
    with pytest.raises(InvalidInputError):
        mem_index.set_serving("v2", fusion=bad if isinstance(bad, dict) and "v9" not in bad else {"v2": -1})
    assert (mem_index.stats()["seq"], mem_index.version("v2").serving) == before


def test_bad_multi_version_queries_are_refused(mem_index):
    mem_index.create_version("v1", dim=4)
    mem_index.register_version("v2", "v1", 6)
    mem_index.add(["a"], np.ones((1, 4)), version="v1")
    with pytest.raises(InvalidInputError, match=r"same number of queries; got v2: 2, v1: 3"):
        mem_index.search({"v2": np.ones((2, 6)), "v1": np.ones((3, 4))}, k=1)
    with pytest.raises(UnknownVersionError, match="`queries` 'v7' is not a version"):
        mem_index.search({"v7": np.ones((1, 6))}, k=1)
    with pytest.raises(InvalidInputError, match="`version` 'v2' was given with a mapping"):
        mem_index.search({"v2": np.ones((1, 6))}, k=1, version="v2")
    with pytest.raises(InvalidInputError, match="empty mapping"):
        mem_index.search({}, k=1)
    with pytest.raises(InvalidInputError, match=r"queries\['v1'\]"):
        mem_index.search({"v2": np.ones((1, 6)), "v1": np.ones((1, 5))}, k=1)
    with pytest.raises(InvalidInputError, match="a must be finite and > 0"):
        mem_index.set_serving("v2", calibration=[("v2", "v1", 0.0, 0.0)])


def _planted(rng, n=400, classes=20, noise_old=1.0, noise_new=1.0, d=16):
    """Labels, old vectors (class centre + noise) and new vectors (the same centres rotated into a
    24-d v2 space whose first 16 dims are v1's, + independent noise): the two models' errors are
    independent, so the fused query beats either alone when their noise is alike."""
    y = rng.integers(0, classes, n)
    C = rng.standard_normal((classes, d)) * 1.5
    G = C[y] + noise_old * rng.standard_normal((n, d))
    Z = np.hstack([C[y] + noise_new * rng.standard_normal((n, d)), 0.3 * rng.standard_normal((n, 8))])
    return y, G.astype(np.float32), Z.astype(np.float32)


@pytest.mark.parametrize("noise_old, noise_new, lo, hi", [
    (1.6, 1.6, 0.3, 0.7),   # equal, independent errors: averaging both wins
    (2.0, 0.8, 0.5, 1.0),   # the new model is better: it gets the larger weight
    (1.2, 30.0, 0.0, 0.5),  # the new model is junk: the old one keeps the larger weight (and,
                            # calibrated, the junk term's slope is near zero)
])
def test_fusion_weights_recovered_on_a_planted_case(noise_old, noise_new, lo, hi):
    rng = np.random.default_rng(4)
    y, G, Z = _planted(rng, noise_old=noise_old, noise_new=noise_new)
    with compatindex.open() as ix:
        ix.create_version("v1", dim=16)
        ix.register_version("v2", "v1", 24)
        ids = list(range(len(G)))
        ix.add(ids, G, version="v1", labels=y.tolist())
        rep = ix.fit_serving("v2", Z[:200], ids[:200], labels=y[:200].tolist())
        w = rep["fusion"]["fusion"]["v2"]
        assert lo <= w <= hi, rep["fusion"]["grid"]
        assert rep["fusion"]["score"] >= rep["fusion"]["old_only_score"]
        assert ix.version("v2").serving["fusion"] == rep["fusion"]["fusion"]
        # the stored weights serve by default, and on the other half (unseen) they do no worse
        # than the old model alone at finding an item of the query's label
        Qs = {"v2": Z[200:], "v1": G[200:]}
        fused = ix.search(Qs, k=2)
        old = ix.search(G[200:], k=2, version="v1")
        lab = dict(zip(ids, y.tolist()))
        hit = lambda res: np.mean([lab[res.ids[i, 1]] == y[200 + i] for i in range(len(res))])  # noqa: E731 - [0] is self
        assert hit(fused) >= hit(old) - 0.02


def test_calibration_puts_cross_version_scores_on_one_scale():
    """A planted upgrade whose cross-version scores are the new/new scores halved: the log-odds fits
    of the two pairs differ exactly by that factor, and a calibrated search of a half-backfilled
    gallery ranks every item as the new model alone would (old items no longer sink)."""
    rng = np.random.default_rng(2)
    with compatindex.open() as ix:
        ix.create_version("v1", dim=8, metric="ip")
        ix.register_version("v2", "v1", 8)
        C = rng.standard_normal((15, 8))
        Z = C[rng.integers(0, 15, 400)] + 0.4 * rng.standard_normal((400, 8))
        Z = (Z / np.linalg.norm(Z, axis=1, keepdims=True)).astype(np.float32)
        G = (0.5 * Z).astype(np.float32)  # <Z_i, G_j> = 0.5 <Z_i, Z_j>
        ids = list(range(400))
        ix.add(ids, G, version="v1")
        ix.backfill(ids[:200], Z[:200], version="v2")
        rep = ix.calibrate("v2")["calibration"]
        own, cross = rep["v2->v2"], rep["v2->v1"]
        assert not own["fallback"] and own["a"] > 0
        assert cross["a"] == pytest.approx(2 * own["a"], rel=1e-4) and cross["b"] == pytest.approx(own["b"], rel=1e-4)
        assert rep["v1->v1"]["a"] == pytest.approx(2 * rep["v1->v2"]["a"], rel=1e-4)
        q = Z[[5, 250, 300, 390]]
        truth = np.argsort(-(q @ Z.T), axis=1, kind="stable")[:, :10]
        cal = ix.search(q, k=10, version="v2", score="calibrated")
        assert [list(r) for r in cal.ids] == truth.tolist()
        pad = ix.search(q, k=10, version="v2", score="pad")
        assert (pad.versions == "v2").mean() > 0.9  # uncalibrated, backfilled items crowd out the rest
        assert 0.3 < (cal.versions == "v2").mean() < 0.7


def test_labelled_fusion_fit_judges_first_hits_among_every_distractor():
    """fit_fusion's first-hit precision with labelled distractors equals brute force over the
    stacked gallery (the sample's old vectors, each item's own left out, then the distractors),
    for the old-only weights it reports."""
    from compatindex.core.calibration import fit_fusion
    from compatindex.core.datatypes import Version

    rng = np.random.default_rng(9)
    C = rng.normal(size=(5, 8))
    y = rng.integers(0, 5, 60)
    G = C[y] + 1.5 * rng.normal(size=(60, 8))
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    Z = np.hstack([G + 0.3 * rng.normal(size=G.shape), rng.normal(size=(60, 4))])
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    yd = rng.integers(0, 5, 20_000)
    D = (C[yd] + 1.5 * rng.normal(size=(20_000, 8))).astype(np.float32)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    vs = {"v1": Version(name="v1", dim=8, metric=Metric.COSINE, parent=None),
          "v2": Version(name="v2", dim=12, metric=Metric.COSINE, parent="v1")}
    res = fit_fusion(vs, "v2", "v1", Z, G, labels=y.tolist(), score=Score.PAD, distractors=D,
                     distractor_labels=yd.tolist())
    gal = np.vstack([G, D])
    gl = np.concatenate([y, yd])
    S = G @ gal.T
    S[np.arange(60), np.arange(60)] = -np.inf
    assert res["old_only"]["P@1"] == pytest.approx(np.mean(gl[S.argmax(1)] == y))
    assert res["gallery"] == 60 + 20_000
    small = fit_fusion(vs, "v2", "v1", Z, G, labels=y.tolist(), score=Score.PAD)
    assert small["gallery"] == 60 and small["old_only"]["P@1"] != pytest.approx(res["old_only"]["P@1"])
    with pytest.raises(InvalidInputError, match="distractors"):
        fit_fusion(vs, "v2", "v1", Z, G, labels=y.tolist(), distractors=D[:, :4], distractor_labels=yd.tolist())


@pytest.mark.parametrize("seed", range(5))
def test_fusion_fit_keeps_old_only_weights_when_a_gain_is_not_established(seed):
    """A new version that carries no information (random vectors), on a few dozen held-out
    pairs: some weights may show a small positive mean gain by chance; the fit must not store
    them (every weight's lower confidence bound is <= 0), so dual queries search as old ones."""
    from compatindex.core.calibration import fit_fusion
    from compatindex.core.datatypes import Version

    rng = np.random.default_rng(seed)
    C = rng.normal(size=(4, 8))
    y = rng.integers(0, 4, 40)
    G = C[y] + 1.0 * rng.normal(size=(40, 8))
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    Z = rng.normal(size=(40, 8))
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    vs = {"v1": Version(name="v1", dim=8, metric=Metric.COSINE, parent=None),
          "v2": Version(name="v2", dim=8, metric=Metric.COSINE, parent="v1")}
    res = fit_fusion(vs, "v2", "v1", Z, G, labels=y.tolist(), score=Score.PAD)
    assert res["fusion"] == {"v2": 0.0, "v1": 1.0}
    assert all(b <= 0 for w, b in res["grid_lower_bound"].items() if w != "0.0")


def test_a_single_weighted_version_ranks_exactly_as_its_query_alone(tmp_path):
    """Old-only weights: the fused query ranks the old shard exactly as the old query alone does,
    near-ties included (the calibration's scale is applied to the scores, not folded into the
    float32 query, which swapped near-tied hits), and its scores are the calibrated old scores."""
    rng = np.random.default_rng(11)
    base = rng.standard_normal((40, 4))
    G = base[rng.integers(0, 40, 1500)] + 1e-6 * rng.standard_normal((1500, 4))  # many near-ties
    q1 = base[rng.integers(0, 40, 400)] + 0.3 * rng.standard_normal((400, 4))
    q2 = rng.standard_normal((400, 6)).astype(np.float32)
    pytest.importorskip("qdrant_client")
    for ix in (compatindex.open(tmp_path / "e"), compatindex.Index(DictBackend()),
               compatindex.open("qdrant+local://:memory:")):
        with ix:
            ix.create_version("v1", dim=4)
            ix.register_version("v2", "v1", 6)
            ix.add(list(range(1500)), G.astype(np.float32), version="v1")
            ix.set_serving("v2", calibration=[("v1", "v1", 7.3, -1.1), ("v2", "v1", 3.1, 0.2)])
            alone = ix.search(q1.astype(np.float32), k=10, version="v1")
            fused = ix.search({"v2": q2, "v1": q1.astype(np.float32)}, k=10, score="calibrated",
                              fusion={"v2": 0.0, "v1": 1.0}, raw=False)
            np.testing.assert_array_equal(np.asarray(fused.ids), np.asarray(alone.ids))
            np.testing.assert_array_equal(fused.scores, alone.scores * np.float32(7.3) + np.float32(-1.1))
