"""Issue 14 on the command line: metadata in (`add --metadata`, `set-metadata`), items out (`get`,
`list`), filtered search (`search --where --with-payload`), text ids that keep their text,
`versions retire` and file exports (`export --to FILE.npy|FILE.parquet`).

Every output is parsed and compared with the library's answer or a brute-force one; every bad
input fails with one `error:` line and leaves the index as it was.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import compatindex
from compatindex.errors import CompatIndexError
from compatindex.file_export import export_file, ids_sidecar

from cli_testutil import DIM, snapshot, unit
from cli_testutil import cli, idx, rng, vecs  # noqa: F401  (fixtures)

N = 20
LANGS = ["en", "de", "fr", "en"]


def meta_rows(n: int = N) -> list[dict]:
    return [{"lang": LANGS[i % 4], "year": 2000 + i, "tags": ["even" if i % 2 == 0 else "odd"]} for i in range(n)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def lib(path: Path):
    return compatindex.open(str(path), readonly=True, create=False)


@pytest.fixture
def sku(tmp_path: Path, idx: Path, vecs: Path, cli) -> Path:
    """`idx` holding 20 items with text ids sku-00..sku-19, labels 0..2 and metadata."""
    (tmp_path / "ids.txt").write_text("".join(f"sku-{i:02d}\n" for i in range(N)))
    np.save(tmp_path / "labels.npy", np.arange(N) % 3)
    write_jsonl(tmp_path / "meta.jsonl", meta_rows())
    cli("add", idx, vecs, "--ids", tmp_path / "ids.txt", "--labels", tmp_path / "labels.npy",
        "--metadata", tmp_path / "meta.jsonl", "--version", "v1", "--quiet")
    return idx


# -- add --metadata, get -------------------------------------------------------------------------

def test_add_metadata_then_get_matches_the_library(sku, vecs, cli):
    out = jsonl(cli("get", sku, "--ids", "sku-03,sku-00", "--version", "v1").stdout)
    assert [o["id"] for o in out] == ["sku-03", "sku-00"]  # the order given
    with lib(sku) as ix:
        items = ix.get(["sku-03", "sku-00"])
    x = unit(np.load(vecs))
    for o, it, row in zip(out, items, (3, 0)):
        assert set(o) == {"id", "label", "metadata", "versions", "vectors"}
        assert o["label"] == it.label == row % 3
        assert o["metadata"] == it.metadata == meta_rows()[row]
        assert o["versions"] == list(it.versions) == ["v1"]
        assert set(o["vectors"]) == {"v1"}
        np.testing.assert_allclose(o["vectors"]["v1"], x[row], atol=1e-6)
        np.testing.assert_allclose(o["vectors"]["v1"], it.vectors["v1"], atol=0)
    bare = jsonl(cli("get", sku, "--ids", "sku-05", "--no-vectors").stdout)
    assert bare == [{"id": "sku-05", "label": 2, "metadata": meta_rows()[5], "versions": ["v1"]}]


def test_get_ids_from_files_and_errors(sku, tmp_path, cli):
    (tmp_path / "two.txt").write_text("sku-07\nsku-01\n")
    np.save(tmp_path / "two.npy", np.array(["sku-07", "sku-01"]))
    a = jsonl(cli("get", sku, "--ids", tmp_path / "two.txt", "--no-vectors").stdout)
    b = jsonl(cli("get", sku, "--ids", tmp_path / "two.npy", "--no-vectors").stdout)
    assert a == b and [o["id"] for o in a] == ["sku-07", "sku-01"]
    cli.fails("get", sku, "--ids", "sku-01,nope", match=r"1 of --ids 'sku-01,nope' are not in INDEX .*'nope'")
    cli.fails("get", sku, "--ids", "sku-01", "--version", "v9", match="v9")
    cli.fails("get", sku, "--ids", "sku-01,,sku-02", match="empty id")
    assert cli("get", sku, code=2).exit_code == 2  # --ids is required


def test_metadata_file_errors_name_the_file_and_line(sku, tmp_path, rng, cli):
    before = snapshot(sku)
    np.save(tmp_path / "new.npy", rng.standard_normal((3, DIM)).astype(np.float32))
    (tmp_path / "new_ids.txt").write_text("n0\nn1\nn2\n")
    args = ("add", sku, tmp_path / "new.npy", "--ids", tmp_path / "new_ids.txt", "--version", "v1")
    write_jsonl(tmp_path / "short.jsonl", [{"a": 1}, {"a": 2}])
    cli.fails(*args, "--metadata", tmp_path / "short.jsonl",
              match=r"--metadata '.*short.jsonl' holds 2 rows but VECTORS '.*new.npy' holds 3 vectors")
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{"a": 2\n{"a": 3}\n')
    cli.fails(*args, "--metadata", tmp_path / "bad.jsonl", match=r"--metadata '.*bad.jsonl': line 2 is not valid JSON")
    (tmp_path / "list.jsonl").write_text('{"a": 1}\n{"a": 2}\n[3]\n')
    cli.fails(*args, "--metadata", tmp_path / "list.jsonl", match=r"line 3 holds a JSON list, not an object")
    (tmp_path / "gap.jsonl").write_text('{"a": 1}\n\n{"a": 3}\n')
    cli.fails(*args, "--metadata", tmp_path / "gap.jsonl", match=r"line 2 is empty")
    cli.fails(*args, "--metadata", tmp_path / "missing.jsonl", match=r"--metadata '.*missing.jsonl': no such file")
    cli.fails(*args, "--metadata", tmp_path / "short.jsonl", "--metadata-columns", "a", match="use one of them")
    cli.fails(*args, "--metadata-columns", "lang", match=r"reads columns of a .parquet/.jsonl input")
    assert snapshot(sku) == before
    with lib(sku) as ix:
        assert not ix.has(["n0"]).any()


def test_metadata_from_parquet_and_jsonl_columns(tmp_path, idx, rng, cli):
    x = rng.standard_normal((6, DIM)).astype(np.float32)
    table = pa.table({"id": [f"p{i}" for i in range(6)], "vector": [r.tolist() for r in x],
                      "lang": ["en", "de", None, "en", "fr", "de"], "year": list(range(2020, 2026)),
                      "score": [0.5] * 6})
    pq.write_table(table, tmp_path / "items.parquet")
    cli("add", idx, tmp_path / "items.parquet", "--metadata-columns", "lang,year", "--version", "v1", "--quiet")
    with lib(idx) as ix:
        got = {it.id: it.metadata for it in ix.get([f"p{i}" for i in range(6)], with_vectors=False)}
    assert got["p0"] == {"lang": "en", "year": 2020}
    assert got["p2"] == {"year": 2022}  # a null is left out
    cli.fails("add", idx, tmp_path / "items.parquet", "--metadata-columns", "lang,nope", "--version", "v1",
              match=r"--metadata-columns 'nope': .*items.parquet' has no such column")

    with (tmp_path / "items.jsonl").open("w") as fh:
        for i in range(4):
            fh.write(json.dumps({"id": f"j{i}", "vector": x[i].tolist(), "label": i % 2, "lang": LANGS[i],
                                 "nested": {"a": i}}) + "\n")
    cli("add", idx, tmp_path / "items.jsonl", "--labels", "label", "--all-metadata-columns", "--version", "v1",
        "--quiet")
    with lib(idx) as ix:
        (it,) = ix.get(["j1"], with_vectors=False)
    assert it.label == 1 and it.metadata == {"lang": "de", "nested": {"a": 1}}  # not id, vector or label


# -- ids keep their text ------------------------------------------------------------------------

def test_text_ids_keep_their_text(idx, tmp_path, rng, cli):
    np.save(tmp_path / "two.npy", rng.standard_normal((2, DIM)).astype(np.float32))
    (tmp_path / "skus.txt").write_text("000042\n42\n")
    write_jsonl(tmp_path / "m.jsonl", [{"which": "padded"}, {"which": "plain"}])
    res = cli("add", idx, tmp_path / "two.npy", "--ids", tmp_path / "skus.txt", "--metadata", tmp_path / "m.jsonl",
              "--version", "v1", "--json", "--quiet")
    assert json.loads(res.stdout)["added"] == 2
    with lib(idx) as ix:
        assert ix.count == 2
        assert [it.metadata["which"] for it in ix.get(["000042", "42"], with_vectors=False)] == ["padded", "plain"]
    out = jsonl(cli("get", idx, "--ids", "000042", "--no-vectors").stdout)
    assert out[0]["id"] == "000042" and out[0]["metadata"] == {"which": "padded"}
    assert {o["id"] for o in json.loads(cli("list", idx, "--json").stdout)["items"]} == {"000042", "42"}


def test_int_ids_only_when_asked_or_held(tmp_path, cli, rng):
    path = tmp_path / "ints.index"
    cli("init", path, "--dim", DIM, "--quiet")
    np.save(tmp_path / "two.npy", rng.standard_normal((2, DIM)).astype(np.float32))
    (tmp_path / "pad.txt").write_text("000042\n42\n")
    cli.fails("add", path, tmp_path / "two.npy", "--ids", tmp_path / "pad.txt", "--int-ids", "--version", "v1",
              match=r"repeats 1 id\(s\): 42")
    (tmp_path / "abc.txt").write_text("7\nabc\n")
    cli.fails("add", path, tmp_path / "two.npy", "--ids", tmp_path / "abc.txt", "--int-ids", "--version", "v1",
              match=r"--ids '.*abc.txt': line 2 holds 'abc', which is not an integer \(--int-ids\)")
    assert snapshot(path)["count"] == 0
    (tmp_path / "ok.txt").write_text("7\n8\n")
    cli("add", path, tmp_path / "two.npy", "--ids", tmp_path / "ok.txt", "--int-ids", "--version", "v1", "--quiet")
    with lib(path) as ix:
        assert ix.has([7, 8]).all()
    # the index holds int ids now: text ids that are ints become ints, others are an error naming the file
    before = snapshot(path)
    (tmp_path / "more.txt").write_text("9\nx10\n")
    cli.fails("add", path, tmp_path / "two.npy", "--ids", tmp_path / "more.txt", "--version", "v1",
              match=r"--ids '.*more.txt': line 2 holds the text id 'x10', but INDEX holds integer ids")
    assert snapshot(path) == before
    out = jsonl(cli("get", path, "--ids", "8,7", "--no-vectors").stdout)
    assert [o["id"] for o in out] == [8, 7]
    (tmp_path / "del.txt").write_text("7\n")
    assert "deleted 1 items" in cli("delete", path, "--ids", tmp_path / "del.txt").stdout
    # and --int-ids on an index of text ids is refused
    txt = tmp_path / "txt.index"
    cli("init", txt, "--dim", DIM, "--quiet")
    (tmp_path / "t.txt").write_text("a\nb\n")
    cli("add", txt, tmp_path / "two.npy", "--ids", tmp_path / "t.txt", "--version", "v1", "--quiet")
    cli.fails("add", txt, tmp_path / "two.npy", "--ids", tmp_path / "ok.txt", "--int-ids", "--version", "v1",
              match="--int-ids: INDEX .* holds text ids")


# -- search --where --with-payload -------------------------------------------------------------

def brute(x: np.ndarray, q: np.ndarray, rows: list[int], k: int) -> tuple[list[int], np.ndarray]:
    s = unit(x)[rows] @ unit(q[None])[0]
    order = np.argsort(-s, kind="stable")[:k]
    return [rows[i] for i in order], s[order]


def test_search_where_with_payload_is_brute_force(sku, vecs, tmp_path, rng, cli):
    x = np.load(vecs)
    q = rng.standard_normal((3, DIM)).astype(np.float32)
    np.save(tmp_path / "q.npy", q)
    flt = {"lang": "en", "year": {"$gte": 2004}}
    rows = [i for i, m in enumerate(meta_rows()) if m["lang"] == "en" and m["year"] >= 2004]
    res = jsonl(cli("search", sku, tmp_path / "q.npy", "-k", 3, "--version", "v1", "--where", json.dumps(flt),
                    "--with-payload", "--json", "--quiet").stdout)
    assert len(res) == 3
    for i, r in enumerate(res):
        want, scores = brute(x, q[i], rows, 3)
        assert r["ids"] == [f"sku-{j:02d}" for j in want]
        np.testing.assert_allclose(r["scores"], scores, atol=1e-5)
        assert r["labels"] == [j % 3 for j in want]
        assert r["metadata"] == [meta_rows()[j] for j in want]
    with lib(sku) as ix:
        lib_res = ix.search(q, 3, version="v1", where=flt)
    assert [r["ids"] for r in res] == [[i for i in row if i is not None] for row in lib_res.ids.tolist()]
    # the same filter from a file; without --with-payload no payload keys
    (tmp_path / "f.json").write_text(json.dumps(flt))
    plain = jsonl(cli("search", sku, tmp_path / "q.npy", "-k", 3, "--version", "v1", "--where-file",
                      tmp_path / "f.json", "--json", "--quiet").stdout)
    assert [p["ids"] for p in plain] == [r["ids"] for r in res] and "metadata" not in plain[0]
    table = cli("search", sku, tmp_path / "q.npy", "-k", 2, "--version", "v1", "--where", json.dumps(flt),
                "--with-payload", "--quiet").stdout
    assert "metadata" in table.splitlines()[0] and '"lang": "en"' in table
    # a label filter and a filter matching nothing
    lab = jsonl(cli("search", sku, tmp_path / "q.npy", "-k", 20, "--version", "v1", "--where", '{"$label": 1}',
                    "--json", "--quiet").stdout)
    assert sorted(lab[0]["ids"]) == [f"sku-{j:02d}" for j in range(N) if j % 3 == 1]
    none = jsonl(cli("search", sku, tmp_path / "q.npy", "-k", 3, "--version", "v1", "--where", '{"lang": "xx"}',
                     "--json", "--quiet").stdout)
    assert all(r["ids"] == [] for r in none)


def test_bad_filters_are_clear_errors(sku, tmp_path, rng, cli):
    np.save(tmp_path / "q.npy", rng.standard_normal((2, DIM)).astype(np.float32))
    base = ("search", sku, tmp_path / "q.npy", "--version", "v1")
    cli.fails(*base, "--where", '{"lang": "en"', match=r"--where is not valid JSON: .* \(line 1 column \d+\)")
    cli.fails(*base, "--where", '{"year": {"$foo": 1}}',
              match=r"--where: filter `where\['year'\]\['\$foo'\]`: unknown operator '\$foo'")
    cli.fails(*base, "--where", '{"$nand": []}', match=r"filter `where\['\$nand'\]`: unknown operator")
    cli.fails(*base, "--where", '{"year": {"$gte": "2020"}}', match=r"where\['year'\]\['\$gte'\]")
    (tmp_path / "bad.json").write_text("{lang: en}")
    cli.fails(*base, "--where-file", tmp_path / "bad.json", match=r"--where-file '.*bad.json' is not valid JSON")
    cli.fails(*base, "--where-file", tmp_path / "none.json", match="no such file")
    cli.fails(*base, "--where", "{}", "--where-file", tmp_path / "bad.json", match="not both")
    cli.fails("list", sku, "--where", '{"lang": {"$in": "en"}}', match=r"where\['lang'\]\['\$in'\]")


# -- list ----------------------------------------------------------------------------------------

def test_list_pages_through_every_item(sku, cli):
    seen, offset, pages = [], 0, 0
    while offset is not None:
        page = json.loads(cli("list", sku, "--offset", offset, "--limit", 6, "--json").stdout)
        assert len(page["items"]) <= 6 and page["offset"] == offset
        seen.extend(page["items"])
        offset = page["next_offset"]
        pages += 1
    assert pages == 4 and [s["id"] for s in seen] == [f"sku-{i:02d}" for i in range(N)]
    assert seen[4] == {"id": "sku-04", "label": 1, "metadata": meta_rows()[4], "versions": ["v1"]}
    with lib(sku) as ix:
        lib_page = ix.list_items(offset=0, limit=6)
    assert [s["id"] for s in seen[:6]] == [it.id for it in lib_page.items]
    en = json.loads(cli("list", sku, "--where", '{"lang": "en"}', "--limit", 100, "--json").stdout)
    assert [s["id"] for s in en["items"]] == [f"sku-{i:02d}" for i in range(N) if LANGS[i % 4] == "en"]
    assert en["next_offset"] is None
    table = cli("list", sku, "--limit", 5).stdout.splitlines()
    assert table[0].split()[:3] == ["id", "versions", "label"] and table[1].startswith("sku-00")
    assert table[-1] == "more items: rerun with --offset 5"
    assert "no items" in cli("list", sku, "--where", '{"lang": "xx"}').stdout
    cli.fails("list", sku, "--limit", 0, code=2)


# -- set-metadata --------------------------------------------------------------------------------

def test_set_metadata_merges_or_replaces(sku, tmp_path, cli):
    write_jsonl(tmp_path / "two.jsonl", [{"lang": "es", "new": 1}, {"year": None}])
    out = cli("set-metadata", sku, "--ids", "sku-00,sku-01", "--metadata", tmp_path / "two.jsonl").stdout
    assert "merged the metadata of 2 items" in out
    with lib(sku) as ix:
        a, b = ix.get(["sku-00", "sku-01"], with_vectors=False)
    assert a.metadata == {**meta_rows()[0], "lang": "es", "new": 1}
    assert b.metadata == {k: v for k, v in meta_rows()[1].items() if k != "year"}  # a null removes the key
    cli("set-metadata", sku, "--ids", "sku-00,sku-01", "--metadata", tmp_path / "two.jsonl", "--replace")
    with lib(sku) as ix:
        a, _ = ix.get(["sku-00", "sku-01"], with_vectors=False)
    assert a.metadata == {"lang": "es", "new": 1}
    before = snapshot(sku)
    with lib(sku) as ix:
        meta_before = [it.metadata for it in ix.get([f"sku-{i:02d}" for i in range(N)], with_vectors=False)]
    cli.fails("set-metadata", sku, "--ids", "sku-02,sku-03,sku-04", "--metadata", tmp_path / "two.jsonl",
              match=r"--metadata '.*two.jsonl' holds 2 rows but --ids 'sku-02,sku-03,sku-04' holds 3 ids")
    cli.fails("set-metadata", sku, "--ids", "sku-02,ghost", "--metadata", tmp_path / "two.jsonl",
              match=r"1 of --ids 'sku-02,ghost' are not in INDEX .*'ghost'.*nothing was updated")
    assert snapshot(sku) == before
    with lib(sku) as ix:
        assert [it.metadata for it in ix.get([f"sku-{i:02d}" for i in range(N)], with_vectors=False)] == meta_before


# -- versions retire -----------------------------------------------------------------------------

def test_versions_retire(sku, vecs, tmp_path, rng, cli):
    with compatindex.open(str(sku), create=False) as ix:
        ix.register_version("v2", parent="v1", dim=DIM + 4)
    np.save(tmp_path / "g2.npy", rng.standard_normal((N, DIM + 4)).astype(np.float32))
    (tmp_path / "half.txt").write_text("".join(f"sku-{i:02d}\n" for i in range(10)))
    np.save(tmp_path / "g2_half.npy", np.load(tmp_path / "g2.npy")[:10])
    cli("backfill", sku, tmp_path / "g2_half.npy", "--ids", tmp_path / "half.txt", "--version", "v2", "--quiet")
    before = snapshot(sku)
    cli.fails("versions", "retire", sku, "v1")  # 10 items hold only v1: the library refuses
    assert snapshot(sku) == before
    cli.fails("versions", "retire", sku, "v9", match="v9")
    res = json.loads(cli("versions", "retire", sku, "v2", "--json").stdout)
    assert res == {"retired": "v2", "dropped": 10, "count": N}
    with lib(sku) as ix:
        assert ix.version("v2").retired and all(it.versions == ("v1",) for it in ix.get(
            [f"sku-{i:02d}" for i in range(N)], with_vectors=False))
    listing = json.loads(cli("versions", sku, "--json").stdout)  # `versions INDEX` still lists
    assert [v["name"] for v in listing["versions"]] == ["v1", "v2"]
    assert json.loads(cli("versions", "show", sku, "--json").stdout) == listing
    assert "retire" in cli("versions", "--help").stdout


# -- export to files -----------------------------------------------------------------------------

def test_export_npy_with_ids_sidecar(sku, vecs, tmp_path, cli):
    out = tmp_path / "v1.npy"
    res = json.loads(cli("export", sku, "--to", out, "--version", "v1", "--json", "--quiet").stdout)
    assert res["items"] == N and res["skipped"] == 0 and res["dim"] == DIM
    assert Path(res["ids_path"]) == tmp_path / "v1.ids.npy" == ids_sidecar(out)
    x = np.load(out)
    ids = np.load(tmp_path / "v1.ids.npy")
    assert x.dtype == np.float32 and x.shape == (N, DIM) and ids.tolist() == [f"sku-{i:02d}" for i in range(N)]
    np.testing.assert_allclose(x, unit(np.load(vecs)), atol=1e-6)
    cli.fails("export", sku, "--to", out, "--version", "v1", match="already exists")
    cli("export", sku, "--to", out, "--version", "v1", "--overwrite", "--quiet")
    # round trip: the exported files are add inputs, ids keep their type
    other = tmp_path / "copy.index"
    cli("init", other, "--dim", DIM, "--quiet")
    cli("add", other, out, "--ids", tmp_path / "v1.ids.npy", "--version", "v1", "--quiet")
    with lib(other) as ix:
        assert ix.has([f"sku-{i:02d}" for i in range(N)]).all()


def test_export_parquet_round_trips(sku, vecs, tmp_path, cli):
    with compatindex.open(str(sku), create=False) as ix:
        ix.register_version("v2", parent="v1", dim=DIM)
    cli.fails("export", sku, "--to", tmp_path / "x.parquet", match=r"--version: .* has 2 versions \(v1, v2\)")
    out = tmp_path / "v1.parquet"
    text = cli("export", sku, "--to", out, "--version", "v1", "--batch-size", 7).stdout
    assert f"exported {N} vectors of version 'v1' (dim {DIM}) to {out}" in text
    f = pq.ParquetFile(out)
    assert f.schema_arrow.names == ["id", "label", "metadata", "vector"]
    assert f.schema_arrow.field("vector").type == pa.list_(pa.float32())
    assert f.metadata.num_row_groups == 3  # batches of 7
    t = f.read().to_pylist()
    assert [r["id"] for r in t] == [f"sku-{i:02d}" for i in range(N)]
    assert [r["label"] for r in t] == [i % 3 for i in range(N)]
    assert [json.loads(r["metadata"]) for r in t] == meta_rows()
    np.testing.assert_allclose(np.array([r["vector"] for r in t]), unit(np.load(vecs)), atol=1e-6)
    # v2 holds no vector yet: nothing to export, every item skipped
    res = json.loads(cli("export", sku, "--to", tmp_path / "v2.parquet", "--version", "v2", "--json").stdout)
    assert res["items"] == 0 and res["skipped"] == N
    # back into a fresh index: ids, labels and metadata (the JSON text column) survive
    other = tmp_path / "copy.index"
    cli("init", other, "--dim", DIM, "--quiet")
    cli("add", other, out, "--ids", "id", "--labels", "label", "--metadata", "metadata", "--version", "v1", "--quiet")
    with lib(sku) as a, lib(other) as b:
        ids = [f"sku-{i:02d}" for i in range(N)]
        for x, y in zip(a.get(ids), b.get(ids)):
            assert (x.id, x.label, x.metadata, x.versions) == (y.id, y.label, y.metadata, y.versions)
            np.testing.assert_allclose(x.vectors["v1"], y.vectors["v1"], atol=1e-6)


def test_export_file_library_call_and_missing_pyarrow(sku, tmp_path, monkeypatch):
    with lib(sku) as ix:
        res = export_file(ix, tmp_path / "a.parquet", version="v1", batch_size=5)
        assert res["items"] == N and res["format"] == "parquet" and res["ids_path"] is None
        with pytest.raises(CompatIndexError, match="must end in .npy or .parquet"):
            export_file(ix, tmp_path / "a.csv", version="v1")
        monkeypatch.setitem(sys.modules, "pyarrow", None)
        monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
        with pytest.raises(CompatIndexError, match=r"needs pyarrow.*pip install 'compatindex\[io\]'"):
            export_file(ix, tmp_path / "b.parquet", version="v1")
    assert not (tmp_path / "b.parquet").exists() and sorted(p.name for p in tmp_path.iterdir()
                                                             if p.name.startswith(".")) == []


def test_export_keeps_its_qdrant_interface(sku, tmp_path, cli):
    cli.fails("export", sku, "--to", "out.csv", match="not a Qdrant URL, nor a .parquet/.npy file")
    cli.fails("export", sku, "--to", "qdrant+local://x", "--version", "v1", match="applies to a file export")
