"""Each `compatindex` command on its happy path (CliRunner, in-process)."""

from __future__ import annotations

import json
from importlib import metadata

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import compatindex
from compatindex_cli.main import app

from cli_testutil import DIM, add_v2, unit
from cli_testutil import cli, full, idx, rng, vecs  # noqa: F401  (fixtures)

COMMANDS = ["init", "add", "search", "backfill", "delete", "versions", "info", "verify"]


def test_version_and_help(cli):
    out = cli("--version").stdout
    assert out.strip() == f"compatindex {metadata.version('compatindex')}"
    top = cli("--help").stdout
    for name in COMMANDS:
        assert name in top
        page = cli(name, "--help").stdout
        assert "Examples:" in page and f"compatindex {name}" in page and "--quiet" in page


def test_upgrade_is_registered_only_when_defined():
    from compatindex_cli import upgrade as upgrade_module

    names = {c.name for c in app.registered_commands}
    assert ("upgrade" in names) == callable(getattr(upgrade_module, "upgrade", None))


def test_init_creates_root_version(tmp_path, cli):
    path = tmp_path / "a.index"
    res = cli("init", path, "--dim", 16, "--name", "base", "--metric", "ip", "--json")
    assert json.loads(res.stdout) == {"index": str(path), "version": "base", "dim": 16, "metric": "ip"}
    with compatindex.open(str(path), readonly=True, create=False) as ix:
        (v,) = ix.versions()
        assert (v.name, v.dim, v.parent) == ("base", 16, None)
        assert str(getattr(v.metric, "value", v.metric)).lower() == "ip"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "created index" in cli("init", empty, "--dim", 4).stdout


def test_add_default_ids_say_so_and_offset(idx, vecs, cli, rng):
    res = cli("add", idx, vecs)
    assert "ids 0..19" in res.stdout and "row numbers offset by the item count 0" in res.stdout
    more = tmp = idx.parent / "more.npy"
    np.save(tmp, rng.standard_normal((5, DIM)).astype(np.float32))
    res = cli("add", idx, more, "--json", "--quiet")
    out = json.loads(res.stdout)
    assert out["added"] == 5 and out["first_id"] == 20 and out["last_id"] == 24 and out["count"] == 25
    assert "item count 20" in out["ids"]
    with compatindex.open(str(idx), readonly=True, create=False) as ix:
        np.testing.assert_allclose(ix.get_vectors([0, 19], version="v1"), unit(np.load(vecs)[[0, 19]]), atol=1e-5)
        np.testing.assert_allclose(ix.get_vectors([22], version="v1"), unit(np.load(more)[[2]]), atol=1e-5)


def test_add_ids_and_labels_from_files_in_batches(idx, vecs, cli, tmp_path):
    (tmp_path / "ids.txt").write_text("\n".join(f"doc-{i}" for i in range(20)) + "\n")
    np.save(tmp_path / "labels.npy", np.arange(20) % 3)
    cli("add", idx, vecs, "--ids", tmp_path / "ids.txt", "--labels", tmp_path / "labels.npy",
        "--version", "v1", "--batch-size", 7, "--quiet")
    with compatindex.open(str(idx), readonly=True, create=False) as ix:
        assert ix.count == 20 and ix.has(["doc-0", "doc-19"]).all()
        batch = ix.fetch("v1", ids=["doc-4", "doc-5"])
        assert dict(zip(batch.ids, batch.labels)) == {"doc-4": 1, "doc-5": 2}


def test_add_parquet_jsonl_fvecs(idx, cli, tmp_path, rng):
    x = rng.standard_normal((9, DIM)).astype(np.float32)
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(x[:3].ravel()), DIM)
    pq.write_table(pa.table({"id": ["p0", "p1", "p2"], "emb": fixed, "cls": ["a", "b", "a"]}),
                   tmp_path / "x.parquet")
    res = cli("add", idx, tmp_path / "x.parquet", "--column", "emb", "--labels", "cls", "--quiet")
    assert "the 'id' column of VECTORS" in res.stdout
    lines = [json.dumps({"id": f"j{i}", "vector": x[3 + i].tolist()}) for i in range(3)]
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
    cli("add", idx, tmp_path / "x.jsonl", "--quiet")
    rows = np.empty((3, DIM + 1), dtype="<f4")
    rows[:, 0] = np.array([DIM], dtype="<i4").view("<f4")[0]
    rows[:, 1:] = x[6:]
    rows.tofile(tmp_path / "x.fvecs")
    (tmp_path / "f.txt").write_text("f0\nf1\nf2\n")
    cli("add", idx, tmp_path / "x.fvecs", "--ids", tmp_path / "f.txt", "--quiet")
    with compatindex.open(str(idx), readonly=True, create=False) as ix:
        got = ix.get_vectors(["p0", "p1", "p2", "j0", "j1", "j2", "f0", "f1", "f2"], version="v1")
        np.testing.assert_allclose(got, unit(x), atol=1e-5)
        assert ix.fetch("v1", ids=["p1"]).labels == ["b"]


def test_progress_goes_to_stderr_and_quiet_silences_it(idx, vecs, cli):
    res = cli("add", idx, vecs, "--json")
    json.loads(res.stdout)  # stdout stays machine-readable
    assert "adding to v1" in res.stderr
    res = cli("search", idx, vecs, "-k", 2, "--json", "--quiet")
    assert res.stderr == ""
    assert len(res.stdout.splitlines()) == 20


def test_search_json_and_table(full, vecs, cli):
    res = cli("search", full, vecs, "-k", 3, "--json", "--quiet")
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["query"] for r in rows] == list(range(20))
    for r in rows:
        assert set(r) == {"query", "ids", "scores", "versions"}
        assert r["ids"][0] == r["query"]  # each vector finds itself first
        assert r["scores"] == sorted(r["scores"], reverse=True) and r["versions"] == ["v1"] * 3
        assert abs(r["scores"][0] - 1.0) < 1e-4
    table = cli("search", full, vecs, "-k", 2, "--quiet", "--batch-size", 6).stdout.splitlines()
    assert table[0].split() == ["query", "rank", "id", "score", "version"]
    assert len(table) == 1 + 20 * 2 and table[1].split()[:3] == ["0", "1", "0"]


def test_search_k_larger_than_index_and_pad(full, vecs, cli):
    res = cli("search", full, vecs, "-k", 50, "--json", "--quiet", "--score", "pad")
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert all(len(r["ids"]) == 20 for r in rows)


def test_backfill_and_cross_version_search(full, vecs, cli, tmp_path, rng):
    add_v2(full, dim=12)
    new = rng.standard_normal((5, 12)).astype(np.float32)
    np.save(tmp_path / "v2.npy", new)
    np.save(tmp_path / "ids.npy", np.arange(5))
    res = cli("backfill", full, tmp_path / "v2.npy", "--ids", tmp_path / "ids.npy", "--version", "v2", "--no-raw",
              "--quiet")
    assert "backfilled 5 items with version 'v2'" in res.stdout
    res = cli("search", full, tmp_path / "v2.npy", "-k", 20, "--version", "v2", "--no-raw", "--json", "--quiet")
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert rows[0]["ids"][0] == 0 and rows[0]["versions"][0] == "v2"
    assert set(rows[0]["versions"]) == {"v1", "v2"}
    by_id = dict(zip(rows[0]["ids"], rows[0]["versions"]))
    assert all(by_id[i] == "v2" for i in range(5)) and all(by_id[i] == "v1" for i in range(5, 20))
    with compatindex.open(str(full), readonly=True, create=False) as ix:
        np.testing.assert_allclose(ix.get_vectors([3], version="v2"), unit(new[[3]]), atol=1e-5)
    # --drop-old removes the v1 vectors of the backfilled items
    cli("backfill", full, tmp_path / "v2.npy", "--ids", tmp_path / "ids.npy", "--version", "v2", "--no-raw",
        "--drop-old", "--quiet")
    with compatindex.open(str(full), readonly=True, create=False) as ix:
        assert set(ix.fetch("v1").ids) == set(range(5, 20))


def test_add_and_backfill_raw_map_through_the_transform(full, cli, tmp_path, rng):
    q = add_v2(full, dim=12)
    raw = rng.standard_normal((3, 12)).astype(np.float32)
    np.save(tmp_path / "raw.npy", raw)
    (tmp_path / "ids.txt").write_text("100\n101\n102\n")
    cli("add", full, tmp_path / "raw.npy", "--ids", tmp_path / "ids.txt", "--version", "v2", "--raw", "--quiet")
    with compatindex.open(str(full), readonly=True, create=False) as ix:
        expected = ix.to_version_space(raw, version="v2")
        np.testing.assert_allclose(ix.get_vectors([100, 101, 102], version="v2"), unit(expected), atol=1e-5)
    assert q.shape == (12, 12)


def test_delete(full, cli, tmp_path):
    (tmp_path / "del.txt").write_text("3\n4\n")
    res = cli("delete", full, "--ids", tmp_path / "del.txt")
    assert "deleted 2 items; the index holds 18 items" in res.stdout
    with compatindex.open(str(full), readonly=True, create=False) as ix:
        assert ix.count == 18 and not ix.has([3, 4]).any()


def test_versions(full, cli):
    add_v2(full)
    out = json.loads(cli("versions", full, "--json").stdout)
    assert out["latest"] == "v2"
    v1, v2 = out["versions"]
    assert (v1["name"], v1["parent"], v1["dim"], v1["made_by"], v1["lineage"]) == ("v1", None, DIM, "root", ["v1"])
    assert (v2["parent"], v2["dim"], v2["lineage"]) == ("v1", 12, ["v1", "v2"])
    assert "orthogonal extension 12x12" in v2["made_by"]
    table = cli("versions", full).stdout
    assert "v2 *" in table and "v1 > v2" in table and "root" in table


def test_info(full, cli):
    out = json.loads(cli("info", full, "--json").stdout)
    assert out["items"] == 20 and out["latest"] == "v1" and out["index"] == str(full)
    assert out["disk_bytes"] > 0 or any("disk" in k for k in out)
    text = cli("info", full).stdout
    assert "items:   20" in text and "latest:  v1" in text
    add_v2(full)
    text = cli("info", full).stdout.splitlines()
    header = next(i for i, line in enumerate(text) if line.startswith("version"))
    assert text[header].split()[:5] == ["version", "dim", "parent", "metric", "vectors"]
    assert text[header + 1].split()[0] == "v1" and text[header + 2].split()[:3] == ["v2", "12", "v1"]


def test_verify_ok_and_problems(full, cli, monkeypatch):
    assert "ok (20 items" in cli("verify", full).stdout
    monkeypatch.setattr(compatindex.Index, "verify", lambda self: ["shard v1/0 misses item 7", "item 9 has no vector"])
    res = cli("verify", full, code=1)
    assert "2 problem(s) found" in res.stdout and "- shard v1/0 misses item 7" in res.stdout
    assert json.loads(cli("verify", full, "--json", code=1).stdout)["problems"][1] == "item 9 has no vector"


def test_search_while_a_writer_holds_the_lock_reads_committed_data(full, vecs, cli):
    with compatindex.open(str(full), create=False) as ix:
        ix.add([1000], np.ones((1, DIM), np.float32))
        ix.flush()
        res = cli("search", full, vecs, "-k", 1, "--json", "--quiet")
    assert len(res.stdout.splitlines()) == 20


@pytest.mark.parametrize("command", ["versions", "info", "verify"])
def test_read_commands_accept_quiet_after_arguments(full, cli, command):
    cli(command, full, "--quiet")


def test_add_failing_midway_rolls_back(full, vecs, cli, monkeypatch):
    from cli_testutil import snapshot

    before = snapshot(full)
    real_add = compatindex.Index.add
    calls = {"n": 0}

    def flaky_add(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise compatindex.errors.StoreFullError("disk full while writing batch 2")
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(compatindex.Index, "add", flaky_add)
    ids = full.parent / "new_ids.npy"
    np.save(ids, np.arange(100, 120))
    res = cli.fails("add", full, vecs, "--ids", ids, "--batch-size", 8,
                    match=r"disk full while writing batch 2.*the 8 items added before the failure were removed again")
    assert res.exit_code == 1
    monkeypatch.undo()
    assert snapshot(full) == before


def test_init_with_hnsw_shards(tmp_path, cli, vecs):
    path = tmp_path / "h.index"
    cli("init", path, "--dim", DIM, "--shard", "hnsw", "--quiet")
    cli("add", path, vecs, "--quiet")
    rows = [json.loads(line) for line in cli("search", path, vecs, "-k", 1, "--json", "--quiet").stdout.splitlines()]
    assert [r["ids"][0] for r in rows] == list(range(20))
    assert "hnsw" in cli("info", path).stdout


def test_backfill_keep_pairs_retains_a_sample(full, cli, tmp_path, rng):
    add_v2(full, dim=12)
    new = rng.standard_normal((20, 12)).astype(np.float32)
    np.save(tmp_path / "v2.npy", new)
    np.save(tmp_path / "ids.npy", np.arange(20))
    res = cli("backfill", full, tmp_path / "v2.npy", "--ids", tmp_path / "ids.npy", "--version", "v2", "--no-raw",
              "--drop-old", "--keep-pairs", 6, "--json", "--quiet")
    out = json.loads(res.stdout)
    assert out["retained_pairs"]["v1"]["pairs"] == 6 and out["retained_pairs"]["v1"]["seen"] == 20
    with compatindex.open(str(full), readonly=True, create=False) as ix:
        kept = list(ix.version("v2").serving["pairs"]["v1"]["ids"])
        assert len(set(ix.fetch("v1").ids)) == 6 and set(ix.fetch("v1").ids) == set(kept)
    shown = json.loads(cli("versions", full, "--json").stdout)["versions"][1]["serving"]["pairs"]["v1"]
    assert shown["pairs"] == 6 and "old" not in shown  # figures, not the vectors
    assert "retained pairs v1 (6, k=" in cli("versions", full).stdout
    bad = cli("backfill", full, tmp_path / "v2.npy", "--ids", tmp_path / "ids.npy", "--version", "v2", "--no-raw",
              "--drop-old", "--keep-pairs", -1, code=None)
    assert bad.exit_code == 2 and "--keep-pairs" in bad.output
