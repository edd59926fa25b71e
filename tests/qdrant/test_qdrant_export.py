"""`export_index` / `compatindex export`: embedded -> Qdrant (local mode), then identical searches."""

from __future__ import annotations

import json

import numpy as np
import pytest

qdrant_client = pytest.importorskip("qdrant_client")

import compatindex  # noqa: E402
from compatindex.errors import VersionExistsError  # noqa: E402
from compatindex.qdrant import export_index, point_id  # noqa: E402
from compatindex.qdrant.items import item_meta  # noqa: E402
from qdrant_testkit import DIMS, assert_same_results, build, queries  # noqa: E402


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    emb = compatindex.open(root / "e")
    build(emb, seed=11)
    yield emb, root
    emb.close()


def test_round_trip_and_resume(source):
    emb, root = source
    url = f"qdrant+local://{root}/q"
    res = export_index(emb, url, batch=64, progress=False)
    assert res["ok"] and res["problems"] == []
    assert res["items"] == emb.count == res["copied"] and res["skipped"] == 0
    assert res["vectors"] == {n: v["vectors"] for n, v in emb.stats()["versions"].items()}
    with compatindex.open(url) as qd:
        for qv in DIMS:
            for score in ("renorm", "pad"):
                q = queries(DIMS[qv], seed=5)
                assert_same_results(qd.search(q, 10, version=qv, score=score, raw=False), emb.search(q, 10, version=qv, score=score, raw=False))
        for v in DIMS:
            a, b = emb.fetch(v), qd.fetch(v)
            assert a.ids == b.ids and a.labels == b.labels  # same order: insertion order is kept
        assert [(v.name, v.dim, v.parent, v.report, v.config) for v in qd.versions()] == \
               [(v.name, v.dim, v.parent, v.report, v.config) for v in emb.versions()]
        with emb.backend.store.read() as r:
            attrs = r.attrs(r.lookup(["item1", "item3"]).tolist())
        recs = qd.backend.client.retrieve(qd.backend.collection, [point_id("item1"), point_id("item3")], with_payload=True)
        by_ext = {rec.payload["ext"]: item_meta(rec.payload) for rec in recs}
        assert [by_ext["item1"], by_ext["item3"]] == attrs == [None, {"n": 3, "tag": "x"}]
        assert qd.verify() == []
        # an interrupted copy: some points missing, one that lacks one of its versions' vectors
        gone = ["item1", "item2", "item4", "item5", "item6"]
        qd.delete(gone)
        held = [v for v in DIMS if emb.has(["item7"])[0] and _holds(emb, "item7", v)]
        assert len(held) >= 2
        qd.backend.client.delete_vectors(qd.backend.collection, vectors=held[-1:], points=[point_id("item7")])
    again = export_index(emb, url, batch=50, progress=False)
    assert again["ok"] and again["copied"] == 6 and again["skipped"] == emb.count - 6
    with compatindex.open(url, readonly=True) as qd:
        q = queries(32, seed=8)
        assert_same_results(qd.search(q, 10, version="v3", raw=False), emb.search(q, 10, version="v3", raw=False))
        assert qd.verify() == []


def test_export_into_other_index_is_refused(source, tmp_path):
    emb, _ = source
    url = f"qdrant+local://{tmp_path}/q"
    with compatindex.open(url) as other:
        other.create_version("v1", dim=8)
    with pytest.raises(VersionExistsError, match="not the source's"):
        export_index(emb, url, progress=False)


def test_cli_export(tmp_path):
    import typer
    from typer.testing import CliRunner

    from compatindex_cli.export import EXAMPLES, export

    src = tmp_path / "small"
    with compatindex.open(src) as ix:
        ix.create_version("v1", dim=4)
        ix.add(list(range(12)), np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32))
    app = typer.Typer()
    app.command("export", epilog=EXAMPLES)(export)
    app.command("other")(lambda: None)  # a group, as in the real CLI
    url = f"qdrant+local://{tmp_path}/q"
    out = CliRunner().invoke(app, ["export", str(src), "--to", url, "--json", "-q"])
    assert out.exit_code == 0, out.output
    body = json.loads(out.stdout)
    assert body["ok"] and body["items"] == 12 and body["vectors"] == {"v1": 12}
    out = CliRunner().invoke(app, ["export", str(src), "--to", url])  # with a progress bar; all skipped
    assert out.exit_code == 0 and "12 already there" in out.stdout
    out = CliRunner().invoke(app, ["export", str(tmp_path / "nope"), "--to", url])
    assert out.exit_code == 1 and "no such folder" in out.output
    out = CliRunner().invoke(app, ["export", str(src), "--to", "http://x"])
    assert out.exit_code == 1 and "not a Qdrant URL" in out.output


def _holds(index, item, version):
    try:
        index.get_vectors([item], version=version)
    except KeyError:
        return False
    return True
