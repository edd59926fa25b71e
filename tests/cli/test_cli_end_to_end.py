"""The installed `compatindex` executable in subprocesses: init -> add -> v2 through the Python API
-> backfill part of the gallery -> search --json, checked against a numpy brute force."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import compatindex

D1, D2, N, NQ, K = 64, 80, 300, 25, 10


def executable() -> list[str]:
    exe = shutil.which("compatindex")
    if exe is None:  # venv not on PATH: the console script sits next to the interpreter
        from pathlib import Path

        cand = Path(sys.executable).with_name("compatindex")
        exe = str(cand) if cand.exists() else None
    return [exe] if exe else [sys.executable, "-m", "compatindex_cli"]


def run(*args: object) -> str:
    proc = subprocess.run([*executable(), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(q, g1, g2, has_v2, *, score):
    """Top-K ids, scores and versions: each item by its vector of the query's version if it has
    one, else by its v1 vector (the nearest ancestor), under cosine (everything L2-normalized)."""
    q = unit(q.astype(np.float64))
    g1 = unit(g1.astype(np.float64))
    if q.shape[1] == D1:  # v1 queries only see v1 vectors
        s = q @ g1.T
        vers = np.full(s.shape, "v1", dtype=object)
    else:
        pre = q[:, :D1]
        s1 = pre @ g1.T
        if score == "renorm":  # <q[:d_u], g> * ||q|| / ||q[:d_u]||
            s1 = s1 * (np.linalg.norm(q, axis=1) / np.linalg.norm(pre, axis=1))[:, None]
        s2 = np.full_like(s1, -np.inf)
        s2[:, has_v2] = q @ unit(g2.astype(np.float64)).T
        s = np.where(has_v2[None, :], s2, s1)
        vers = np.where(has_v2[None, :], "v2", "v1").astype(object)
    order = np.argsort(-s, axis=1, kind="stable")[:, :K]
    return order, np.take_along_axis(s, order, 1), np.take_along_axis(vers, order, 1)


def test_end_to_end_subprocess(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "e2e.index"
    g1 = rng.standard_normal((N, D1)).astype(np.float32)
    np.save(tmp_path / "g1.npy", g1)

    out = run("--version")
    assert out.strip() == f"compatindex {compatindex.__version__}" or out.startswith("compatindex ")
    run("init", path, "--dim", D1, "--name", "v1")
    assert "ids 0..299" in run("add", path, tmp_path / "g1.npy", "--quiet")

    # v2 through the Python API (until `compatindex upgrade` lands)
    qmat, _ = np.linalg.qr(rng.standard_normal((D2, D2)))
    with compatindex.open(str(path), create=False) as ix:
        ix.register_version("v2", parent="v1", dim=D2, extension=qmat.astype(np.float32))

    # backfill the first half of the gallery with v2 vectors whose prefix stays close to v1
    half = np.arange(N // 2)
    g2 = np.concatenate([g1[half], rng.standard_normal((len(half), D2 - D1))], axis=1).astype(np.float32)
    g2 += 0.3 * rng.standard_normal(g2.shape).astype(np.float32)
    np.save(tmp_path / "g2.npy", g2)
    (tmp_path / "half.txt").write_text("\n".join(map(str, half)) + "\n")
    assert "backfilled 150 items" in run("backfill", path, tmp_path / "g2.npy", "--ids", tmp_path / "half.txt",
                                         "--version", "v2", "--no-raw", "--quiet")
    has_v2 = np.zeros(N, bool)
    has_v2[half] = True

    q2 = rng.standard_normal((NQ, D2)).astype(np.float32)
    q1 = rng.standard_normal((NQ, D1)).astype(np.float32)
    np.save(tmp_path / "q2.npy", q2)
    np.save(tmp_path / "q1.npy", q1)
    cases = [("q2.npy", "v2", "renorm", q2), ("q2.npy", "v2", "pad", q2), ("q1.npy", "v1", "renorm", q1)]
    for fname, version, score, q in cases:
        out = run("search", path, tmp_path / fname, "-k", K, "--version", version, "--score", score,
                  "--no-raw", "--json", "--quiet")
        rows = [json.loads(line) for line in out.splitlines()]
        assert [r["query"] for r in rows] == list(range(NQ))
        ids, scores, versions = brute_force(q, g1, g2, has_v2, score=score)
        got_ids = np.array([r["ids"] for r in rows])
        got_scores = np.array([r["scores"] for r in rows])
        np.testing.assert_allclose(got_scores, scores, atol=2e-4, err_msg=f"{version}/{score}")
        # ids must agree except where two scores tie within float32 precision
        mismatch = got_ids != ids
        assert (np.abs(np.diff(scores, axis=1)).min() < 1e-4) or not mismatch.any(), (version, score)
        assert np.array_equal(np.array([r["versions"] for r in rows])[~mismatch], versions[~mismatch])
        if version == "v2":
            assert {"v1", "v2"} <= set(np.concatenate([r["versions"] for r in rows]))

    info = json.loads(run("info", path, "--json"))
    assert info["items"] == N
    vers = json.loads(run("versions", path, "--json"))
    assert [v["name"] for v in vers["versions"]] == ["v1", "v2"]
    proc = subprocess.run([*executable(), "verify", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout


@pytest.mark.parametrize("argv", [["search", "{p}", "{p}/q.npy"], ["info", "{p}"]])
def test_executable_errors_are_one_line(tmp_path, argv):
    proc = subprocess.run([*executable(), *[a.format(p=tmp_path / "none") for a in argv]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
