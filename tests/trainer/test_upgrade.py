"""upgrade() end to end through a real index, and `compatindex upgrade` through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from trainer_testkit import make_synthetic, unit
from typer.testing import CliRunner

import compatindex
from compatindex.errors import IncompatibleVersionError, InvalidInputError, VersionExistsError
from compatindex.trainer import upgrade
from compatindex.trainer.upgrade import to_space


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n=1500, old_noise=0.5)


def _fill(ix, s, labels=True):
    ix.create_version("v1", dim=16)
    ids = [f"i{i}" for i in range(len(s.G))]
    ix.add(ids, s.G, labels=[int(v) for v in s.y] if labels else None)
    return ids


@pytest.mark.parametrize("method", ["isometric", "procrustes", "oca", "affine", "mlp"])
def test_each_method_registers_a_working_version(tmp_path, data, method):
    with compatindex.open(tmp_path / "ix") as ix:
        ids = _fill(ix, data)
        v, rep = upgrade(ix, data.H[:1000], ids[:1000], method=method, name="v2", steps=40)
        assert v is not None and v.name == "v2" and v.parent == "v1", rep["gate"]["reasons"]
        assert rep["registered"] and rep["chosen"] == method
        # the stored version maps raw vectors exactly as the trainer evaluated them
        fit_view = {"extension": v.extension, "head": v.head, "dim": v.dim}
        np.testing.assert_allclose(ix.to_version_space(data.H[1000:1010], version="v2"),
                                   to_space(fit_view, data.H[1000:1010]), atol=1e-5)
        # held-out new-encoder queries find their own old item through search(raw=True)
        res = ix.search(data.H[1000:1100], k=10, version="v2", raw=True)
        own = np.mean([f"i{1000 + q}" in list(res.ids[q]) for q in range(100)])
        assert own > 0.6
        if method in ("isometric", "procrustes", "oca"):
            Z = ix.to_version_space(data.H[1000:1050], version="v2")
            Hn = unit(data.H[1000:1050])
            np.testing.assert_allclose(Z @ Z.T, Hn @ Hn.T, atol=2e-5)  # new/new preserved
    with compatindex.open(tmp_path / "ix") as ix:  # the version rebuilds from the index alone
        v = ix.version("v2")
        assert v.config["method"] == method and v.report["gate"]["passed"]
        assert v.report["candidates"][0]["method"] == method


def test_auto_with_labels_is_compatible(data):
    with compatindex.open(":memory:") as ix:
        ids = _fill(ix, data)
        v, rep = upgrade(ix, data.H[:1000], ids[:1000], steps=60)
        assert v is not None and v.name == "v2"
        lab = rep["gate"]["labels"]
        assert lab["new_old"]["top1"] > lab["old_old"]["top1"]
        assert {c["method"] for c in rep["candidates"]} == {"isometric", "procrustes", "oca"}
        assert rep["seconds"] > 0 and rep["data"]["n_distractors"] == 500


def test_gate_refuses_shuffled_ids_and_registers_nothing(data):
    with compatindex.open(":memory:") as ix:
        ids = _fill(ix, data, labels=False)
        perm = np.random.default_rng(0).permutation(1000)
        with pytest.raises(IncompatibleVersionError, match="'v2'.*gate"):  # strict by default
            upgrade(ix, data.H[:1000][perm], ids[:1000], method="isometric")
        with pytest.warns(RuntimeWarning, match="version 'v2'.*not registered"):
            v, rep = upgrade(ix, data.H[:1000][perm], ids[:1000], method="isometric", strict=False)
        assert v is None and not rep["registered"] and [x.name for x in ix.versions()] == ["v1"]
        with pytest.warns(RuntimeWarning, match="registered anyway"):
            v, rep = upgrade(ix, data.H[:1000][perm], ids[:1000], method="isometric", force=True)
        assert v is not None and rep["forced"] and v.report["forced"]


def test_upgrade_input_errors(data):
    with compatindex.open(":memory:") as ix:
        ids = _fill(ix, data)
        with pytest.raises(InvalidInputError, match="one row per id"):
            upgrade(ix, data.H[:10], ids[:11])
        with pytest.raises(InvalidInputError, match="duplicates"):
            upgrade(ix, data.H[:2], ["i0", "i0"])
        with pytest.raises(InvalidInputError, match="method"):
            upgrade(ix, data.H[:100], ids[:100], method="nope")
        with pytest.raises(KeyError):
            upgrade(ix, data.H[:100], ["zz"] + ids[1:100])
        with pytest.raises(VersionExistsError):
            upgrade(ix, data.H[:100], ids[:100], name="v1")


def test_cli_upgrade_then_search_raw(tmp_path, data):
    from compatindex_cli.main import app

    path = tmp_path / "ix"
    with compatindex.open(path) as ix:
        ids = _fill(ix, data)
    np.save(tmp_path / "new.npy", data.H[:1000])
    (tmp_path / "ids.txt").write_text("\n".join(ids[:1000]) + "\n")
    np.save(tmp_path / "q.npy", data.H[1000:1020])
    runner = CliRunner()
    r = runner.invoke(app, ["upgrade", str(path), str(tmp_path / "new.npy"), "--ids", str(tmp_path / "ids.txt"),
                            "--name", "v2", "--method", "isometric", "--json", "--quiet"])
    assert r.exit_code == 0, r.stderr + r.stdout
    rep = json.loads(r.stdout)
    assert rep["registered"] and rep["name"] == "v2" and rep["gate"]["passed"]
    r = runner.invoke(app, ["search", str(path), str(tmp_path / "q.npy"), "--version", "v2", "--raw", "-k", "5",
                            "--json"])
    assert r.exit_code == 0, r.stderr + r.stdout
    hits = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert len(hits) == 20
    assert np.mean([f"i{1000 + h['query']}" in h["ids"] for h in hits]) > 0.5
    # a table by default; a refused upgrade exits 1 with one error line and registers nothing
    perm = np.random.default_rng(1).permutation(1000)
    np.save(tmp_path / "bad.npy", data.H[:1000][perm])
    r = runner.invoke(app, ["upgrade", str(path), str(tmp_path / "bad.npy"), "--ids", str(tmp_path / "ids.txt"),
                            "--parent", "v1", "--name", "v3", "--method", "procrustes", "--no-labels", "-q"])
    assert r.exit_code == 1
    assert "refused" in r.stdout and "shuffled" in r.stdout
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "'v3'" in err[0]
    with compatindex.open(path, readonly=True) as ix:
        assert [v.name for v in ix.versions()] == ["v1", "v2"]
    r = runner.invoke(app, ["upgrade", str(path), str(tmp_path / "new.npy"), "--ids", str(tmp_path / "ids.txt"),
                            "--method", "bogus"])
    assert r.exit_code == 2


def test_cli_upgrade_w_rank_trains_the_gallery_ranking_term(tmp_path, data):
    """``--w-rank`` reaches the torch head: its loss has the gallery ranking term and keep-best scores
    held-out ranking (a negated KL, at most 0) instead of pair MRR; ``--oca-head`` picks the head;
    a negative weight, an unknown head and a zero time budget are refused."""
    from compatindex_cli.main import app

    path = tmp_path / "ix"
    with compatindex.open(path) as ix:
        ids = _fill(ix, data)
    np.save(tmp_path / "new.npy", data.H[:600])
    (tmp_path / "ids.txt").write_text("\n".join(ids[:600]) + "\n")
    runner = CliRunner()
    args = ["upgrade", str(path), str(tmp_path / "new.npy"), "--ids", str(tmp_path / "ids.txt"), "--method", "oca",
            "--no-labels", "--steps", "30", "--dry-run", "--json", "--quiet"]
    r = runner.invoke(app, args + ["--w-rank", "2", "--oca-head", "linear", "--max-seconds", "60"])
    assert r.exit_code == 0, r.stderr + r.stdout
    (cand,) = json.loads(r.stdout)["candidates"]
    hist = cand["info"]["final_loss"]
    assert "gallery_rank" in hist and hist["val_start"][0] <= 0 and hist["gallery_rank_rows"] > 0
    assert cand["info"]["head"] == "linear"
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.stderr + r.stdout
    hist0 = json.loads(r.stdout)["candidates"][0]["info"]["final_loss"]
    assert "gallery_rank" not in hist0 and hist0["val_start"][0] > 0  # pair MRR without the term
    hist0_head = json.loads(r.stdout)["candidates"][0]["info"]["head"]
    assert hist0_head == "isometry"
    for bad in (["--w-rank", "-1"], ["--oca-head", "orthogonal"], ["--max-seconds", "0"]):
        r = runner.invoke(app, args + bad)
        assert r.exit_code == 2 and bad[0] in r.stderr


def test_planted_isometric_upgrade_under_ip_is_exact():
    """Under ``ip`` the norms are part of the score: the raw new vectors are not normalized, so an
    exactly isometric new model (a rotation of the old one) gives new/new equal to the raw new
    model's after a full backfill, and new->old top-10 equal to old->old's."""
    from trainer_testkit import random_orthogonal

    rng = np.random.default_rng(7)
    n, d = 1500, 24
    G = (rng.normal(size=(n, d)) * rng.uniform(0.3, 3.0, size=(n, 1))).astype(np.float32)
    R = random_orthogonal(d, rng)
    H = (G @ R).astype(np.float32)  # h = R^T g: an isometry that keeps every norm
    qo = (rng.normal(size=(200, d)) * rng.uniform(0.3, 3.0, size=(200, 1))).astype(np.float32)
    qn = (qo @ R).astype(np.float32)
    ids = list(range(n))
    with compatindex.open(":memory:") as ix:
        ix.create_version("v1", dim=d, metric="ip")
        ix.add(ids, G)
        v, rep = upgrade(ix, H[:800], ids[:800], name="v2")
        assert rep["resolved"]["normalize_input"] is False and rep["data"]["metric"] == "ip"
        old = ix.search(qo, k=10, version="v1")
        new_old = ix.search(qn, k=10, version="v2", raw=True, score="pad")  # ip across versions
        overlap = np.mean([len(set(old.ids[i]) & set(new_old.ids[i])) / 10 for i in range(len(qo))])
        assert overlap >= 0.99, overlap
        ix.backfill(ids, H, version="v2", raw=True)
        new_new = ix.search(qn, k=10, version="v2", raw=True, score="pad")
        brute = np.argsort(-(qn.astype(np.float64) @ H.T.astype(np.float64)), axis=1)[:, :10]
        exact = np.mean([set(new_new.ids[i]) == set(brute[i].tolist()) for i in range(len(qn))])
        assert exact == 1.0, exact


def test_junk_pairs_are_refused_before_any_torch_training(data):
    import time

    with compatindex.open(":memory:") as ix:
        ids = _fill(ix, data, labels=False)
        junk = np.random.default_rng(3).normal(size=(1000, 24)).astype(np.float32)
        t = time.perf_counter()
        with pytest.warns(RuntimeWarning, match="version 'v7'"):
            v, rep = upgrade(ix, junk, ids[:1000], name="v7", strict=False, steps=100_000, max_seconds=None)
        assert time.perf_counter() - t < 30  # 100k oca steps would take far longer
        assert v is None and rep["skipped"] == ["oca"] and not rep["closed_form_gate"]["passed"]
        assert [c["method"] for c in rep["candidates"]] == ["isometric", "procrustes"]
        assert all("'v7'" in r for r in rep["gate"]["reasons"])


def test_dry_run_reports_day_one_and_backfill_and_registers_nothing(data):
    with compatindex.open(":memory:") as ix:
        ids = _fill(ix, data)
        v, rep = upgrade(ix, data.H[:1000], ids[:1000], method="isometric", dry_run=True)
        assert v is None and [x.name for x in ix.versions()] == ["v1"]
        dry = rep["dry_run"]
        lab = dry["labels"]
        assert dry["would_register"] and lab["day_one_new_old"] > lab["old_old"]
        assert lab["backfill_benefit"] == pytest.approx(lab["after_backfill_new_new"] - lab["day_one_new_old"], abs=1e-6)


def test_second_upgrade_on_unbackfilled_items_says_to_pass_parent(data):
    with compatindex.open(":memory:") as ix:
        ids = _fill(ix, data)
        ix.register_version("v2", parent="v1", dim=16)  # holds no vectors yet
        with pytest.raises(InvalidInputError, match="hold no vector of version 'v2'") as e:
            upgrade(ix, data.H[:200], ids[:200])
        assert "--parent" in str(e.value) and "backfill" in str(e.value)


def test_cli_dry_run_registers_nothing(tmp_path, data):
    from compatindex_cli.main import app

    path = tmp_path / "ix"
    with compatindex.open(path) as ix:
        ids = _fill(ix, data)
    np.save(tmp_path / "new.npy", data.H[:1000])
    (tmp_path / "ids.txt").write_text("\n".join(ids[:1000]) + "\n")
    r = CliRunner().invoke(app, ["upgrade", str(path), str(tmp_path / "new.npy"), "--ids", str(tmp_path / "ids.txt"),
                                 "--method", "isometric", "--dry-run"])
    assert r.exit_code == 0, r.stderr + r.stdout
    assert "dry run" in r.stdout and "expected day one" in r.stdout and "backfill benefit" in r.stdout
    with compatindex.open(path, readonly=True) as ix:
        assert [v.name for v in ix.versions()] == ["v1"]


@pytest.mark.parametrize("labels", [True, False])
def test_upgrade_stores_serving_fit_on_the_gate_split_and_search_uses_it(data, labels):
    """upgrade() fits fusion weights (and calibration) on the held-out pairs and stores them with
    the version: a query given in both versions then searches with exactly those weights, and
    the weights are never below the parent-only ones on those pairs."""
    with compatindex.open(":memory:") as ix:
        ids = _fill(ix, data, labels=labels)
        v, rep = upgrade(ix, data.H[:1000], ids[:1000], name="v2", steps=40)
        assert v is not None
        srv = rep["serving"]
        assert srv["pairs"] == rep["data"]["n_heldout"] and srv["labels"] is labels
        w = srv["fusion"]
        assert set(w) == {"v1", "v2"} and abs(w["v1"] + w["v2"] - 1.0) < 1e-9
        assert srv["gain"] >= 0.0  # parent-only scores 0: stored weights never below it
        assert ix.version("v2").serving["fusion"] == pytest.approx(w)
        assert {"v2->v1", "v1->v1"} <= set(srv["calibration"])
        q = {"v2": data.H[1000:1040], "v1": data.G[1000:1040]}
        a = ix.search(q, k=10, raw=True, score="calibrated")
        b = ix.search(q, k=10, raw=True, score="calibrated", fusion=w)
        assert a.ids.tolist() == b.ids.tolist()
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)


def test_upgrade_without_serving_stores_no_fusion(data):
    with compatindex.open(":memory:") as ix:
        ids = _fill(ix, data)
        v, rep = upgrade(ix, data.H[:1000], ids[:1000], name="v2", steps=40, serving=False)
        assert v is not None and "serving" not in rep and not (v.serving or {}).get("fusion")


def test_oca_head_that_keeps_its_start_registers_the_closed_form_refit(data):
    """A head that never beats its closed-form start (no steps) is that start: it is refit on the
    training and selection splits like the closed-form version, so it maps raw vectors exactly
    as `upgrade(method=start)` does and never serves below it."""
    with compatindex.open(":memory:") as a, compatindex.open(":memory:") as b:
        ids = _fill(a, data)
        _fill(b, data)
        v, rep = upgrade(a, data.H[:1000], ids[:1000], method="oca", name="v2", steps=0, serving=False)
        assert v is not None and rep["chosen"] == "oca", rep["gate"]["reasons"]
        start = rep["start_kept"]
        assert start in ("isometric", "procrustes")
        w, _ = upgrade(b, data.H[:1000], ids[:1000], method=start, name="v2", serving=False)
        assert w is not None
        np.testing.assert_allclose(a.to_version_space(data.H[1000:1100], version="v2"),
                                   b.to_version_space(data.H[1000:1100], version="v2"), atol=1e-6)


def _own_rank_mrr(Z, G):
    """Mean reciprocal rank of each row's own stored vector among all of ``G`` (cosine)."""
    S = unit(Z) @ G.T
    own = S[np.arange(len(S)), np.arange(len(S))]
    return float(np.mean(1.0 / (1 + (S > own[:, None]).sum(1))))


def test_extra_pairs_train_with_the_stored_pairs_and_stay_out_of_the_serving_fit(data):
    """``extra_pairs`` (inputs embedded by both encoders that are not stored items) join the
    stored pairs: with 60 stored pairs and 600 extra ones the fitted version aligns unseen
    items better than from the 60 alone, and the serving fit, which needs stored items, sees
    only the stored held-out pairs."""
    ev_H, ev_G = data.H[1200:], data.G[1200:]  # unseen by either fit
    mrr = {}
    for extra in (False, True):
        with compatindex.open(":memory:") as ix:
            ids = _fill(ix, data, labels=False)
            kw = {"extra_pairs": (data.H[400:1000], data.G[400:1000])} if extra else {}
            v, rep = upgrade(ix, data.H[:60], ids[:60], name="v2", method="isometric", **kw)
            assert v is not None
            assert rep["data"]["n_pairs"] == 60 + (600 if extra else 0)
            assert rep["data"]["n_extra_pairs"] == (600 if extra else 0)
            srv = rep["serving"]
            if extra:  # the held-out split mixes both kinds; only stored items are served from
                assert srv.get("pairs", 0) < rep["data"]["n_heldout"]
            Z = ix.to_version_space(ev_H, version="v2")[:, :16]
            mrr[extra] = _own_rank_mrr(Z, ev_G)
    assert mrr[True] > mrr[False] + 0.02, mrr


def test_extra_pairs_bad_input_is_refused_and_registers_nothing(data):
    with compatindex.open(":memory:") as ix:
        ids = _fill(ix, data, labels=False)
        H, G = data.H[400:500], data.G[400:500]
        bad_nan = G.copy()
        bad_nan[3, 0] = np.nan
        for extra, msg in [((H[:, :5], G), r"extra_pairs\[0\]` must have dim 24 \(the new vectors' dim\); got 5"),
                           ((H, G[:, :5]), r"extra_pairs\[1\]` must have dim 16 \(the parent's dim\); got 5"),
                           ((H, G[:50]), r"extra_pairs.*same number"),
                           ((H, bad_nan), r"extra_pairs\[1\]` holds NaN or inf \(first at row 3"),
                           ((H,), r"extra_pairs.*pair of arrays")]:
            with pytest.raises(compatindex.errors.CompatIndexError, match=msg):
                upgrade(ix, data.H[:100], ids[:100], name="v2", method="isometric", extra_pairs=extra)
        assert [v.name for v in ix.versions()] == ["v1"]


def test_cli_upgrade_extra_pairs(tmp_path, data):
    """``--extra-pairs NEW OLD`` reaches upgrade(): the report counts them with the pairs; a file of
    the wrong dim or holding NaN is refused naming the option, and nothing is registered."""
    from compatindex_cli.main import app

    path = tmp_path / "ix"
    with compatindex.open(path) as ix:
        ids = _fill(ix, data, labels=False)
    np.save(tmp_path / "new.npy", data.H[:60])
    (tmp_path / "ids.txt").write_text("\n".join(ids[:60]) + "\n")
    np.save(tmp_path / "xn.npy", data.H[400:1000])
    np.save(tmp_path / "xo.npy", data.G[400:1000])
    runner = CliRunner()
    args = ["upgrade", str(path), str(tmp_path / "new.npy"), "--ids", str(tmp_path / "ids.txt"),
            "--method", "isometric", "--json", "--quiet", "--extra-pairs"]
    r = runner.invoke(app, args + [str(tmp_path / "xn.npy"), str(tmp_path / "xo.npy"), "--dry-run"])
    assert r.exit_code == 0, r.stderr + r.stdout
    rep = json.loads(r.stdout)
    assert rep["data"]["n_pairs"] == 660 and rep["data"]["n_extra_pairs"] == 600
    np.save(tmp_path / "bad_dim.npy", data.G[400:1000, :5])
    bad = data.H[400:1000].copy()
    bad[7, 1] = np.inf
    np.save(tmp_path / "bad_inf.npy", bad)
    for files, msg in [(["xn.npy", "bad_dim.npy"], "extra_pairs"), (["bad_inf.npy", "xo.npy"], "--extra-pairs NEW")]:
        r = runner.invoke(app, args + [str(tmp_path / f) for f in files])
        assert r.exit_code != 0 and msg in r.stderr, r.stderr
    with compatindex.open(path) as ix:
        assert [v.name for v in ix.versions()] == ["v1"]
