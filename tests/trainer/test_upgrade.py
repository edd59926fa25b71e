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
        v, rep = upgrade(ix, data.H[:1000][perm], ids[:1000], method="isometric")
        assert v is None and not rep["registered"] and [x.name for x in ix.versions()] == ["v1"]
        with pytest.raises(IncompatibleVersionError, match="gate"):
            upgrade(ix, data.H[:1000][perm], ids[:1000], method="isometric", strict=True)
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
    assert len(err) == 1 and err[0].startswith("error: ")
    with compatindex.open(path, readonly=True) as ix:
        assert [v.name for v in ix.versions()] == ["v1", "v2"]
    r = runner.invoke(app, ["upgrade", str(path), str(tmp_path / "new.npy"), "--ids", str(tmp_path / "ids.txt"),
                            "--method", "bogus"])
    assert r.exit_code == 2
