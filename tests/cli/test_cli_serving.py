"""`compatindex search --query VERSION=FILE ...`, `--fusion`, `--score calibrated` and `compatindex calibrate`:
the CLI form of migration-time serving, checked against the library's own search."""

from __future__ import annotations

import json

import numpy as np
import pytest

import compatindex
from cli_testutil import Cli, snapshot


@pytest.fixture
def served(tmp_path):
    """An index v1 (16) -> v2 (24) with 200 items, 80 of them backfilled; query files of both versions."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 16)).astype(np.float32)
    Z = np.hstack([X + 0.3 * rng.standard_normal(X.shape), rng.standard_normal((200, 8))]).astype(np.float32)
    path = tmp_path / "ix"
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=16)
        ix.add(list(range(200)), X, version="v1")
        ix.register_version("v2", "v1", 24)
        ix.backfill(list(range(80)), Z[:80], version="v2", raw=False)
    np.save(tmp_path / "qnew.npy", Z[150:160])
    np.save(tmp_path / "qold.npy", X[150:160])
    np.save(tmp_path / "qold5.npy", X[150:155])
    return path, tmp_path, X, Z


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("score", ["renorm", "pad", "calibrated"])
def test_multi_version_search_equals_the_library(served, score):
    path, d, X, Z = served
    cli = Cli()
    cli("calibrate", path, "--version", "v2", "-q")
    got = _lines(cli("search", path, "--query", f"v2={d / 'qnew.npy'}", "--query", f"v1={d / 'qold.npy'}",
                     "-k", 7, "--score", score, "--fusion", "v1=0.6,v2=0.4", "--json", "-q").stdout)
    with compatindex.open(path, readonly=True) as ix:
        ref = ix.search({"v2": Z[150:160], "v1": X[150:160]}, k=7, score=score, fusion={"v1": 0.6, "v2": 0.4})
    assert [r["query"] for r in got] == list(range(10))
    for i, r in enumerate(got):
        assert r["ids"] == list(ref.ids[i]) and r["versions"] == list(ref.versions[i])
        np.testing.assert_allclose(r["scores"], ref.scores[i], atol=1e-5)


def test_calibrate_stores_and_shows_the_fit(served):
    path, *_ = served
    cli = Cli()
    out = json.loads(cli("calibrate", path, "--version", "v2", "--json").stdout)
    assert set(out["calibration"]) == {"v2->v1", "v1->v2", "v2->v2", "v1->v1"}
    rows = {(i, u): (a, b) for i, u, a, b in out["serving"]["calibration"]}
    assert rows[("v2", "v1")][0] > 0 and rows[("v1", "v2")][0] > 0
    info = json.loads(cli("info", path, "--json").stdout)
    assert info["versions"]["v2"]["serving"]["calibration"] == out["serving"]["calibration"]
    vers = json.loads(cli("versions", path, "--json").stdout)
    assert [v["serving"] for v in vers["versions"] if v["name"] == "v2"][0] == out["serving"]
    assert "v2->v1 a=" in cli("versions", path).stdout


@pytest.mark.parametrize("args, match", [
    (["--query", "v2=QN", "--query", "v2=QO"], "--query names version 'v2' twice"),
    (["--query", "v2=QN", "--query", "v1=QO5"], "different numbers of queries"),
    (["--query", "v9=QN"], "--query 'v9' is not a version of this index"),
    (["--query", "v2QN"], "must be VERSION=FILE"),
    (["QN", "--query", "v1=QO"], "not both"),
    (["--query", "v2=QN", "--query", "v1=QO", "--fusion", "v1=-1"], r"`fusion\['v1'\]` must be a finite number >= 0"),
    (["--query", "v2=QN", "--query", "v1=QO", "--fusion", "v1=nan,v2=1"], r"`fusion\['v1'\]` must be a finite"),
    (["--query", "v2=QN", "--query", "v1=QO", "--fusion", "v1=0,v2=0"], "all zero"),
    (["--query", "v2=QN", "--query", "v1=QO", "--fusion", "v1:3"], "must be VERSION=WEIGHT"),
    (["--query", "v2=QN", "--query", "v1=QO", "--version", "v2"], "--version goes with QUERIES"),
    (["QN", "--fusion", "v1=1"], "--fusion weighs the versions of --query"),
    ([], "no queries"),
])
def test_bad_multi_version_searches_are_one_line_errors(served, args, match):
    path, d, *_ = served
    names = {"QN": d / "qnew.npy", "QO": d / "qold.npy", "QO5": d / "qold5.npy"}
    argv = []
    for a in args:
        for k in ("QO5", "QN", "QO"):
            if a == k or a.endswith("=" + k):
                a = a[: len(a) - len(k)] + str(names[k])
                break
        argv.append(a)
    before = snapshot(path)
    Cli().fails("search", path, *argv, "-q", match=match)
    assert snapshot(path) == before


def test_calibrate_with_a_reference_sample(tmp_path):
    """`--reference VECTORS --reference-ids IDS`: every row fit from the reference (as the library's
    `calibrate(reference=...)`); one without the other, or a wrong dim, is refused and changes nothing."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 200)
    C = rng.standard_normal((4, 24))
    Z = C[y] + 0.8 * rng.standard_normal((200, 24))
    Z = (Z / np.linalg.norm(Z, axis=1, keepdims=True)).astype(np.float32)
    X = Z[:, :16] + 0.3 * rng.standard_normal((200, 16)).astype(np.float32)
    path = tmp_path / "ix"
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=16)
        ix.add(list(range(200)), X, version="v1", labels=y.tolist())
        ix.register_version("v2", "v1", 24)
        ix.backfill(list(range(80)), Z[:80], version="v2", raw=False)
    ref = np.sort(rng.choice(200, 50, replace=False))
    np.save(tmp_path / "ref.npy", Z[ref])
    np.save(tmp_path / "ref_ids.npy", ref.astype(np.int64))
    np.save(tmp_path / "bad.npy", Z[ref][:, :5])
    cli = Cli()
    before = snapshot(path)
    cli.fails("calibrate", path, "--version", "v2", "--reference", tmp_path / "ref.npy",
              match="--reference and --reference-ids go together")
    cli.fails("calibrate", path, "--version", "v2", "--reference", tmp_path / "bad.npy",
              "--reference-ids", tmp_path / "ref_ids.npy", match="dim 24")
    assert snapshot(path) == before
    with compatindex.open(path, readonly=True, create=False) as ix:
        assert not (ix.version("v2").serving or {}).get("calibration")
    out = json.loads(cli("calibrate", path, "--version", "v2", "--reference", tmp_path / "ref.npy",
                         "--reference-ids", tmp_path / "ref_ids.npy", "--json").stdout)
    assert set(out["reference"]) == {"v1", "v2"}
    for pair, fit in out["calibration"].items():
        assert (fit.get("method") == "reference") == (out["reference"][pair.split("->")[0]]["chosen"] == "reference")
    assert out["reference"]["v2"]["chosen"] == "reference"  # this planted set: the reference fit ranks better
    assert out["calibration"]["v2->v2"]["queries"] == 50 and out["calibration"]["v2->v2"]["gallery"] == 80
    with compatindex.open(path) as ix:
        lib = ix.calibrate("v2", reference=(ref.tolist(), Z[ref]))["calibration"]
        stored = {(i, u): (a, b) for i, u, a, b in ix.version("v2").serving["calibration"]}
    for pair, fit in lib.items():
        i, u = pair.split("->")
        assert out["calibration"][pair]["a"] == pytest.approx(fit["a"]) and stored[(i, u)] == pytest.approx((fit["a"], fit["b"]))


def test_calibrate_without_pairs_is_refused(tmp_path):
    path = tmp_path / "ix"
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=4)
        ix.add([1, 2, 3], np.eye(4, dtype=np.float32)[:3])
        ix.register_version("v2", "v1", 4)
    Cli().fails("calibrate", path, "--version", "v2", match="only 0 items hold vectors of both 'v2' and 'v1'")


def test_serving_summary_names_every_parameter():
    from compatindex_cli.versions import serving_summary

    text = serving_summary({"fusion": {"v2": 0.6, "v1": 0.4}, "calibration": [["v1", "v2", 1.5, -0.25]],
                            "query_maps": {"v1": {"shape": [96, 64]}}})
    assert text == "fusion v2=0.6 v1=0.4; calibration v1->v2 a=1.5 b=-0.25; query map v1 (96x64)"
    assert serving_summary({}) == "-"
