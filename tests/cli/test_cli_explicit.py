"""The CLI's explicit versions and transforms: `--version` (or `COMPATINDEX_VERSION`) on an index of
several versions, `--raw/--no-raw` for a version with a head or a non-identity Q (docs/cli.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import compatindex

from cli_testutil import DIM, add_v2, snapshot
from cli_testutil import cli, full, idx, rng, vecs  # noqa: F401  (fixtures)


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


@pytest.fixture
def two(full):
    """`full` (v1, 20 items) plus v2 of the same dim with an identity extension: the 384 -> 384 trap."""
    with compatindex.open(str(full), create=False) as ix:
        ix.register_version("v2", parent="v1", dim=DIM)
    return full


@pytest.fixture
def files(tmp_path, rng):
    x = rng.standard_normal((3, DIM)).astype(np.float32)
    np.save(tmp_path / "x8.npy", x)
    np.save(tmp_path / "x12.npy", rng.standard_normal((3, 12)).astype(np.float32))
    (tmp_path / "new_ids.txt").write_text("100\n101\n102\n")
    (tmp_path / "old_ids.txt").write_text("0\n1\n2\n")
    (tmp_path / "more_ids.txt").write_text("200\n201\n202\n")
    return tmp_path


@pytest.mark.parametrize("command", ["add", "backfill", "search"])
def test_missing_raw_is_a_clear_error(full, files, cli, command):
    add_v2(full, dim=12)  # an orthogonal Q: raw and version-space vectors are both (n, 12)
    before = snapshot(full)
    args = {"add": ["add", full, files / "x12.npy", "--ids", files / "new_ids.txt", "--version", "v2"],
            "backfill": ["backfill", full, files / "x12.npy", "--ids", files / "old_ids.txt", "--version", "v2"],
            "search": ["search", full, files / "x12.npy", "--version", "v2", "-k", "2"]}[command]
    res = cli(*args, "--quiet", code=None)
    assert res.exit_code == 2, res.stderr
    line = one_error_line(res)
    assert "version 'v2'" in line and "non-identity Q" in line
    assert "pass --raw (encoder outputs) or --no-raw (version-space vectors)" in line
    assert snapshot(full) == before
    cli(*args, "--raw", "--quiet")
    if command != "add":  # (add: the ids now exist)
        cli(*args, "--no-raw", "--quiet")


def test_missing_raw_in_a_multi_version_search(full, files, cli):
    add_v2(full, dim=12)
    res = cli("search", full, "--query", f"v2={files / 'x12.npy'}", "--query", f"v1={files / 'x8.npy'}",
              "-k", "2", "--json", code=None)
    assert res.exit_code == 2 and "--raw" in one_error_line(res)
    out = cli("search", full, "--query", f"v2={files / 'x12.npy'}", "--query", f"v1={files / 'x8.npy'}",
              "-k", "2", "--json", "--no-raw").stdout
    assert len(out.strip().splitlines()) == 3


def test_raw_may_be_left_out_for_an_identity_version(two, files, cli):
    cli("add", two, files / "x8.npy", "--ids", files / "new_ids.txt", "--version", "v2", "--quiet")
    out = cli("search", two, files / "x8.npy", "--version", "v2", "-k", "1", "--json").stdout
    assert [json.loads(line)["ids"][0] for line in out.strip().splitlines()] == [100, 101, 102]
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((DIM, DIM)))
    with compatindex.open(str(two), create=False) as ix:  # the same dim with an orthogonal Q needs the flag
        ix.register_version("v3", parent="v1", dim=DIM, extension=q)
    res = cli("search", two, files / "x8.npy", "--version", "v3", "-k", "1", code=2)
    assert "--no-raw" in one_error_line(res)


@pytest.mark.parametrize("command", ["add", "backfill", "search", "calibrate"])
def test_missing_version_on_two_versions_lists_them(two, files, cli, monkeypatch, command):
    monkeypatch.delenv("COMPATINDEX_VERSION", raising=False)
    before = snapshot(two)
    args = {"add": ["add", two, files / "x8.npy", "--ids", files / "new_ids.txt"],
            "backfill": ["backfill", two, files / "x8.npy", "--ids", files / "old_ids.txt"],
            "search": ["search", two, files / "x8.npy", "-k", "2"],
            "calibrate": ["calibrate", two]}[command]
    res = cli(*args, "--quiet", code=None)
    assert res.exit_code == 2, res.stderr
    line = one_error_line(res)
    assert "--version" in line and "'v1', 'v2'" in line and "COMPATINDEX_VERSION" in line
    assert snapshot(two) == before


def test_compatindex_version_pins_the_cli_default(two, files, cli, monkeypatch):
    monkeypatch.setenv("COMPATINDEX_VERSION", "v1")
    out = cli("add", two, files / "x8.npy", "--ids", files / "new_ids.txt", "--json").stdout
    assert json.loads(out)["version"] == "v1"
    out = cli("backfill", two, files / "x8.npy", "--ids", files / "old_ids.txt", "--json").stdout
    assert json.loads(out)["version"] == "v1"
    with compatindex.open(str(two), readonly=True, create=False) as ix:
        assert {100, 101, 102} <= set(ix.fetch("v1").ids)
        assert ix.stats()["versions"]["v2"]["vectors"] == 0
    hits = cli("search", two, files / "x8.npy", "-k", "1", "--json").stdout
    assert [json.loads(line)["ids"][0] for line in hits.strip().splitlines()] == [100, 101, 102]
    # an explicit --version wins; --query names its versions (the pin does not apply)
    out = cli("add", two, files / "x8.npy", "--ids", files / "more_ids.txt", "--version", "v2", "--json").stdout
    assert json.loads(out)["version"] == "v2"
    cli("search", two, "--query", f"v2={files / 'x8.npy'}", "--query", f"v1={files / 'x8.npy'}", "-k", "1")


def test_unknown_compatindex_version_is_refused(two, files, cli, monkeypatch):
    monkeypatch.setenv("COMPATINDEX_VERSION", "v9")
    res = cli("search", two, files / "x8.npy", "-k", "1", code=1)
    line = one_error_line(res)
    assert "COMPATINDEX_VERSION='v9'" in line and "'v1', 'v2'" in line
