"""Malformed input files through the CLI (typer's CliRunner, in process): every run exits 0, 1 or
2 with a message and no traceback, and a refused ``add`` changes nothing."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compatindex

typer_testing = pytest.importorskip("typer.testing")
cli_main = pytest.importorskip("compatindex_cli.main")

SETTINGS = settings(max_examples=int(os.environ.get("COMPATINDEX_FUZZ_EXAMPLES", "60")), deadline=None,
                    derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def index_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("clifuzz") / "ix"
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=4)
        ix.add([0, 1, 2], np.eye(4, dtype=np.float32)[:3])
    return path


def npy_bytes(draw):
    kind = draw(st.integers(0, 4))
    if kind == 0:  # a real .npy of a random dtype/shape
        import io

        shape = draw(st.sampled_from([(0,), (3,), (2, 4), (2, 3), (1, 4, 1), (2, 4)]))
        dt = draw(st.sampled_from(["<f4", "<f8", "<f2", "<i8", "|b1", ">f4", "<c8", "<U2"]))
        a = np.zeros(shape, dtype=dt)
        if dt[1] == "f" and a.size and draw(st.booleans()):
            a.flat[0] = draw(st.sampled_from([np.nan, np.inf, 1e300]))
        buf = io.BytesIO()
        np.save(buf, a)
        data = buf.getvalue()
        if draw(st.booleans()):  # then cut or poison it
            cut = draw(st.integers(0, len(data)))
            data = data[:cut] + draw(st.binary(max_size=16))
        return data
    if kind == 1:  # a pickled object array: must be refused, never loaded
        import io
        import pickle

        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        return buf.getvalue() + pickle.dumps(1)
    if kind == 2:  # a header that lies
        hdr = draw(st.sampled_from(["{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 4), }",
                                    "{'descr': 'O', 'fortran_order': False, 'shape': (2,), }",
                                    "{'descr': '<f4', 'fortran_order': True, 'shape': (-1, 4), }",
                                    "__import__('os').system('touch /tmp/pwned')", "{}"]))
        h = hdr.encode() + b" " * (118 - len(hdr) % 64) + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + b"\x00" * 16
    return draw(st.binary(max_size=64))


@st.composite
def input_file(draw):
    suffix = draw(st.sampled_from([".npy", ".fvecs", ".jsonl", ".txt", ".parquet", ".bin"]))
    if suffix == ".npy":
        data = npy_bytes(draw)
    elif suffix == ".fvecs":
        d = draw(st.sampled_from([4, 3, 0, -1, 2**31 - 1]))
        rows = draw(st.integers(0, 3))
        data = b"".join(struct.pack("<i", d) + struct.pack("<4f", *([draw(st.sampled_from([0.5, np.nan]))] * 4))
                        for _ in range(rows)) + draw(st.binary(max_size=6))
    elif suffix == ".jsonl":
        lines = draw(st.lists(st.sampled_from(['{"vector": [1, 0, 0, 0]}', '{"vector": [1, 0]}', '{"vector": "x"}',
                                               '{"id": 5, "vector": [0, 1, 0, 0]}', '{"vector": [NaN, 0, 0, 0]}',
                                               "not json", "[]", '{"id": {"a": 1}, "vector": [1, 1, 1, 1]}', ""]),
                              max_size=4))
        data = "\n".join(lines).encode()
    else:
        data = draw(st.binary(max_size=64))
    return suffix, data


@SETTINGS
@given(f=input_file(), cmd=st.sampled_from(["add", "search", "backfill", "delete"]),
       ids=st.one_of(st.none(), input_file()), k=st.sampled_from(["1", "0", "-3", "x", "99999999999999"]))
def test_malformed_files_exit_cleanly(index_path, tmp_path_factory, f, cmd, ids, k):
    work = tmp_path_factory.mktemp("in")
    path = work / f"in{f[0]}"
    path.write_bytes(f[1])
    args = [cmd, str(index_path)]
    if cmd == "delete":
        args.append(str(path))
    else:
        args.append(str(path))
    if ids is not None and cmd in ("add", "backfill"):
        ids_path = work / f"ids{ids[0]}"
        ids_path.write_bytes(ids[1])
        args += ["--ids", str(ids_path)]
    if cmd == "backfill":
        args += ["--version", "v1"]
    if cmd == "search":
        args += ["-k", k]
    before = compatindex.open(index_path, readonly=True)
    try:
        count, seq = before.count, before.stats()["seq"]
    finally:
        before.close()
    res = typer_testing.CliRunner().invoke(cli_main.app, args, catch_exceptions=True)
    assert res.exit_code in (0, 1, 2), (args, res.exit_code, res.output)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    assert not os.path.exists("/tmp/pwned")
    if res.exit_code != 0:
        with compatindex.open(index_path, readonly=True) as ix:
            assert (ix.count, ix.stats()["seq"]) == (count, seq)
    elif cmd in ("add", "delete", "backfill"):  # a valid write slipped through: undo adds, keep 3 items
        with compatindex.open(index_path) as ix:
            extra = [i for i in ix.fetch("v1").ids if i not in (0, 1, 2)]
            if extra:
                ix.delete(extra)
            missing = [i for i in (0, 1, 2) if not ix.has([i])[0]]
            if missing:
                ix.add(missing, np.eye(4, dtype=np.float32)[missing])
