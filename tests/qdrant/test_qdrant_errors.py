"""Errors of the Qdrant backend: the embedded index's errors for the same calls, plus the backend's own."""

from __future__ import annotations

import http.server
import json
import socket
import threading

import numpy as np
import pytest

qdrant_client = pytest.importorskip("qdrant_client")

import compatindex  # noqa: E402
from compatindex.errors import (  # noqa: E402
    CompatIndexError, IndexLockedError, InvalidInputError, NotAnIndexError, ReadOnlyError,
)
from compatindex.qdrant import BackendError, BackendUnavailableError, BackendVersionError  # noqa: E402
from compatindex.qdrant.errors import retry  # noqa: E402
from compatindex.qdrant.url import parse  # noqa: E402

F = np.float32
X4 = np.eye(4, dtype=F)[:1]


@pytest.fixture(scope="module")
def both():
    e = compatindex.open(":memory:")
    q = compatindex.open("qdrant+local://:memory:")
    for ix in (e, q):
        ix.create_version("v1", dim=4)
        ix.add(["a", "b", "c"], np.eye(4, dtype=F)[:3], labels=[1, 2, 3])
        ix.register_version("v2", "v1", 6)
        ix.backfill(["a"], np.ones((1, 6), F), version="v2", raw=False)
    yield e, q
    e.close()
    q.close()


CASES = {
    "add existing id": lambda ix: ix.add(["a"], X4, version="v1"),
    "add repeated id": lambda ix: ix.add(["x", "x"], np.ones((2, 4), F), version="v1"),
    "add wrong dim": lambda ix: ix.add(["z"], np.ones((1, 5), F), version="v1"),
    "add NaN": lambda ix: ix.add(["z"], np.array([[1, np.nan, 0, 0]], F), version="v1"),
    "add int dtype": lambda ix: ix.add(["z"], np.ones((1, 4), int), version="v1"),
    "add zero vector": lambda ix: ix.add(["z"], np.zeros((1, 4), F), version="v1"),
    "add int id to str index": lambda ix: ix.add([5], X4, version="v1"),
    "add labels length": lambda ix: ix.add(["z"], X4, version="v1", labels=[1, 2]),
    "add metadata not dict": lambda ix: ix.add(["z"], X4, version="v1", metadata=[3]),
    "add empty ids": lambda ix: ix.add([], np.ones((0, 4), F), version="v1"),
    "unknown version": lambda ix: ix.search(X4, 1, version="zz"),
    "k zero": lambda ix: ix.search(X4, 0, version="v1"),
    "k float": lambda ix: ix.search(X4, 2.0, version="v1"),
    "bad score": lambda ix: ix.search(X4, 1, version="v1", score="cos"),
    "query dim": lambda ix: ix.search(X4, 1, version="v2", raw=False),
    "delete unknown": lambda ix: ix.delete(["a", "nope"]),
    "delete int ids": lambda ix: ix.delete([1]),
    "backfill unknown": lambda ix: ix.backfill(["nope"], np.ones((1, 6), F), version="v2", raw=False),
    "backfill dim": lambda ix: ix.backfill(["a"], X4, version="v2", raw=False),
    "get_vectors no such vector": lambda ix: ix.get_vectors(["b"], version="v2"),
    "get_vectors unknown id": lambda ix: ix.get_vectors(["q"], version="v1"),
    "fetch bad limit": lambda ix: ix.fetch("v1", limit=0),
    "fetch unknown version": lambda ix: ix.fetch("nope"),
    "second root": lambda ix: ix.create_version("r2", dim=4),
    "existing version": lambda ix: ix.register_version("v2", "v1", 6),
    "dim below parent": lambda ix: ix.register_version("v3", "v2", 5),
    "unknown parent": lambda ix: ix.register_version("v3", "nope", 8),
    "not orthogonal": lambda ix: ix.register_version("v3", "v2", 6, extension=np.ones((6, 6))),
    "bad name": lambda ix: ix.register_version("a/b", "v1", 6),
    "bad report": lambda ix: ix.register_version("v3", "v2", 6, report=[1]),
    "lca unknown": lambda ix: ix.lca("v1", "nope"),
    "raw dim": lambda ix: ix.to_version_space(np.ones((1, 5), F), version="v1"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_error_as_embedded(both, case):
    e, q = both
    with pytest.raises(CompatIndexError) as ref:
        CASES[case](e)
    with pytest.raises(type(ref.value)) as got:
        CASES[case](q)
    assert str(got.value) == str(ref.value)
    assert q.count == e.count == 3  # a refused call writes nothing
    assert [v.name for v in q.versions()] == ["v1", "v2"]


def test_readonly_closed_and_missing(tmp_path):
    url = f"qdrant+local://{tmp_path}/q"
    with pytest.raises(NotAnIndexError, match="no index at"):
        compatindex.open(url, create=False)
    with pytest.raises(NotAnIndexError, match="no index at"):
        compatindex.open(url, readonly=True)
    with compatindex.open(url) as ix:
        ix.create_version("v1", dim=4)
        with pytest.raises(IndexLockedError):  # local mode: one client per folder
            compatindex.open(url)
    with compatindex.open(url, readonly=True) as ro:
        with pytest.raises(ReadOnlyError, match="readonly=True"):
            ro.add(["a"], X4)
        with pytest.raises(ReadOnlyError):
            ro.register_version("v2", "v1", 6)
    ro2 = compatindex.open(url, create=False)
    ro2.close()
    with pytest.raises(CompatIndexError, match="is closed"):
        ro2.search(X4, 1)
    ro2.close()  # idempotent


def test_collection_that_is_not_an_index(tmp_path):
    from qdrant_client import QdrantClient, models

    c = QdrantClient(path=str(tmp_path / "q"))
    c.create_collection("foreign", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    c.close()
    with pytest.raises(NotAnIndexError, match="not a compatindex index"):
        compatindex.open(f"qdrant+local://{tmp_path}/q?collection=foreign")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server():
    with pytest.raises(BackendUnavailableError, match="unreachable") as err:
        compatindex.open(f"qdrant://127.0.0.1:{_free_port()}/x?timeout=1")
    assert isinstance(err.value, ConnectionError)


def test_too_old_server():
    class Old(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps({"title": "qdrant - vector search engine", "version": "1.9.4", "commit": None}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Old)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        with pytest.raises(BackendVersionError, match="version 1.9.4"):
            compatindex.open(f"qdrant://127.0.0.1:{srv.server_address[1]}/x")
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("url", [
    "qdrant://h:1/x?bogus=1", "qdrant://h:1/x__registry", "qdrant+local://", "qdrant://:1/x",
    "qdrant://h/x?exact=maybe", "qdrant://h/bad/name",
])
def test_bad_urls(url):
    with pytest.raises(InvalidInputError):
        compatindex.open(url)


def test_url_forms():
    t = parse("qdrant://db:7000/faces?https=1&grpc=1&exact=1")
    assert (t.host, t.port, t.collection, t.https, t.prefer_grpc, t.exact) == ("db", 7000, "faces", True, True, True)
    assert parse("qdrant://db").collection == "compatindex" and parse("qdrant://db").port == 6333
    assert parse("qdrant+local://rel/dir?collection=c").path == "rel/dir"
    assert parse("qdrant+local:///abs/dir#c").collection == "c"


def test_retry_helper():
    import httpx
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ResponseHandlingException(httpx.ReadTimeout("slow"))
        return 5

    assert retry(flaky, what="op", where="u", sleep=lambda s: None) == 5 and len(calls) == 3

    def refused():
        calls.append(1)
        raise UnexpectedResponse(400, "Bad Request", b'{"status":{"error":"nope"}}', httpx.Headers())

    calls.clear()
    with pytest.raises(BackendError):
        retry(refused, what="op", where="u", sleep=lambda s: None)
    assert len(calls) == 1

    def down():
        raise ResponseHandlingException(httpx.ConnectError("refused"))

    with pytest.raises(BackendUnavailableError):
        retry(down, what="op", where="u", sleep=lambda s: None)


def test_missing_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "qdrant_client", None)
    with pytest.raises(CompatIndexError, match="qdrant-client"):
        compatindex.open("qdrant+local://:memory:")
