"""`Index.calibrate(reference=(ids, vectors))` and `compatindex calibrate --reference`: the calibration
fit with a random reference sample as queries, labels as relevance, and each (query version, gallery
version) pair on the items it will score (docs/concepts.md, "Calibrating from a reference sample")."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import minimize

import compatindex
from compatindex.errors import CompatIndexError

N, D_OLD, D_NEW, C = 240, 8, 12, 6


def _planted(rng: np.random.Generator):
    """Labelled old vectors, new vectors whose prefix is a noisy copy of the old one."""
    y = rng.integers(0, C, N)
    centres = rng.normal(size=(C, D_NEW))
    Z = centres[y] + 0.7 * rng.normal(size=(N, D_NEW))
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    G = Z[:, :D_OLD] + 0.5 * rng.normal(size=(N, D_OLD))
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    return y, G.astype(np.float32), Z.astype(np.float32)


def _index(path, rng, backfilled):
    """``backfilled``: the ids given v2 vectors, or a function of the labels that returns them."""
    y, G, Z = _planted(rng)
    if callable(backfilled):
        backfilled = backfilled(y)
    ix = compatindex.open(path)
    ix.create_version("v1", dim=D_OLD)
    ix.add(list(range(N)), G, labels=y.tolist())
    ix.register_version("v2", "v1", D_NEW)
    ix.backfill(list(backfilled), Z[backfilled], version="v2")
    return ix, y, G, Z


def _logit_fit(s: np.ndarray, r: np.ndarray) -> tuple[float, float]:
    """Maximum likelihood of P(r | s) = sigmoid(a s + b) by scipy (independent of the library's IRLS)."""
    def nll(w):
        z = w[0] * s + w[1]
        return float(np.sum(np.logaddexp(0, z) - r * z))

    def grad(w):
        p = 1 / (1 + np.exp(-(w[0] * s + w[1])))
        return np.array([np.sum((p - r) * s), np.sum(p - r)])

    res = minimize(nll, np.zeros(2), jac=grad, method="BFGS", options={"gtol": 1e-10, "maxiter": 10_000})
    return float(res.x[0]), float(res.x[1])


@pytest.mark.parametrize("engine", ["embedded", "qdrant"])
def test_reference_fit_is_the_logistic_fit_of_labels_on_the_served_populations(tmp_path, engine):
    """With `limit` above every population, each row is the maximum-likelihood logistic fit of
    "same label" on the reference queries' scores against exactly the items that row will rank:
    v2 vectors of backfilled items, v1 vectors of the items not backfilled; an item never scores itself."""
    rng = np.random.default_rng(0)
    back = np.sort(rng.choice(N, 90, replace=False))
    if engine == "qdrant":
        pytest.importorskip("qdrant_client")
    ix, y, G, Z = _index(tmp_path / "ix" if engine == "embedded" else "qdrant+local://:memory:", rng, back)
    with ix:
        ref = np.sort(rng.choice(N, 60, replace=False))
        rep = ix.calibrate("v2", reference=(ref.tolist(), Z[ref]), limit=1000)["calibration"]
        rest = np.setdiff1d(np.arange(N), back)
        holds_old = ref  # nothing was dropped: every reference item still holds v1
        cases = {"v2->v2": (Z[ref], Z[back], ref, back),
                 "v2->v1": (Z[ref][:, :D_OLD], G[rest], ref, rest),  # pad projection of the v2 query
                 "v1->v1": (G[holds_old], G[rest], holds_old, rest),
                 "v1->v2": (np.hstack([G[holds_old], np.zeros((len(holds_old), D_NEW - D_OLD), np.float32)]),
                            Z[back], holds_old, back)}
        for pair, (Q, Gal, qi, gi) in cases.items():
            S = Q.astype(np.float64) @ Gal.astype(np.float64).T
            keep = qi[:, None] != gi[None, :]
            rel = (y[qi][:, None] == y[gi][None, :]).astype(np.float64)
            a, b = _logit_fit(S[keep], rel[keep])
            got = rep[pair]
            assert got["method"] == "reference" and not got["fallback"]
            assert got["a"] == pytest.approx(a, rel=1e-4, abs=1e-4) and got["b"] == pytest.approx(b, rel=1e-4, abs=1e-4), pair
            assert got["queries"] == len(qi) and got["gallery"] == len(gi)
        stored = {(i, u): (a, b) for i, u, a, b in ix.version("v2").serving["calibration"]}
        assert stored[("v2", "v1")] == pytest.approx((rep["v2->v1"]["a"], rep["v2->v1"]["b"]))


def test_the_stored_rows_are_the_chosen_fit_and_its_judge_is_a_brute_force(tmp_path):
    """Each query version's rows are the reference fit or the pairs' fit as the report says, and the
    first-hit rates it compares equal a written-out search of the served mix (own item left out)."""
    from compatindex.core.calibration import served_retrieval
    from compatindex.core.datatypes import Version
    from compatindex.core.scoring import Metric

    rng = np.random.default_rng(5)
    back = np.sort(rng.choice(N, 120, replace=False))
    ix, y, G, Z = _index(tmp_path / "ix", rng, back)
    with ix:
        pairs = ix.calibrate("v2")["calibration"]
        ref = np.sort(rng.choice(N, 70, replace=False))
        rep = ix.calibrate("v2", reference=(ref.tolist(), Z[ref]))
        for qv, c in rep["reference"].items():
            assert c["chosen"] in ("pairs", "reference")
            for u in ("v1", "v2"):
                row = rep["calibration"][f"{qv}->{u}"]
                assert (row.get("method") == "reference") == (c["chosen"] == "reference")
                if c["chosen"] == "pairs":
                    assert (row["a"], row["b"]) == pytest.approx((pairs[f"{qv}->{u}"]["a"], pairs[f"{qv}->{u}"]["b"]))
    # the judge: first hit of the label and AP over two galleries, against a loop
    vs = {"v1": Version(name="v1", dim=D_OLD, metric=Metric.COSINE, parent=None),
          "v2": Version(name="v2", dim=D_NEW, metric=Metric.COSINE, parent="v1")}
    rest = np.setdiff1d(np.arange(N), back)
    q = ref[:20]
    cal = {"v2": (3.0, -1.0), "v1": (2.0, 0.5)}
    first, ap = served_retrieval(vs, "v2", Z[q], y[q].astype(str), q.astype(object),
                                 [("v2", Z[back], y[back].astype(str), back.astype(object)),
                                  ("v1", G[rest], y[rest].astype(str), rest.astype(object))], cal)
    for r, i in enumerate(q):
        scored = [(cal["v2"][0] * float(Z[i] @ Z[j]) + cal["v2"][1], j) for j in back if j != i]
        scored += [(cal["v1"][0] * float(Z[i, :D_OLD] @ G[j]) + cal["v1"][1], j) for j in rest if j != i]
        scored.sort(key=lambda t: -t[0])
        hits = [y[j] == y[i] for _, j in scored]
        assert first[r] == float(hits[0])
        prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        assert ap[r] == pytest.approx(float((prec * hits).sum() / max(sum(hits), 1)))


@pytest.mark.parametrize("bad, match", [
    ("x", r"`reference` must be \(ids, vectors\)"),
    ("one", r"`reference` must be \(ids, vectors\); got tuple of length 1"),
    ("dim", r"`reference\[1\]` must have dim 12"),
    ("nan", r"reference\[1\]"),
    ("rows", r"reference\[0\]"),
    ("unknown", r"`reference\[0\]`: 1 id\(s\) are not in the index, e.g. 9999"),
    ("two", r"at least 3"),
    ("unlabelled", r"item 500 has no label"),
])
def test_bad_reference_is_refused_and_changes_nothing(tmp_path, bad, match):
    rng = np.random.default_rng(1)
    ix, y, G, Z = _index(tmp_path / "ix", rng, np.arange(40))
    with ix:
        ix.add([500], G[[5]], version="v1")  # an item without a label
        before = json.dumps(ix.version("v2").serving, sort_keys=True, default=str)
        ids = list(range(10))
        arg = {"dim": (ids, Z[:10, :5]), "nan": (ids, np.where(np.arange(10)[:, None] == 3, np.nan, Z[:10])),
               "rows": (ids[:9], Z[:10]), "unknown": ([9999] + ids[1:], Z[:10]), "two": (ids[:2], Z[:2]),
               "unlabelled": ([500] + ids[1:], Z[:10]), "one": (ids,)}.get(bad, bad)
        with pytest.raises(CompatIndexError, match=match):
            ix.calibrate("v2", reference=arg)
        assert json.dumps(ix.version("v2").serving, sort_keys=True, default=str) == before
