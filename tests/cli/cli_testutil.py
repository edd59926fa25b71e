"""Fixtures and helpers shared by the CLI tests.

Imported by name (tests/ is not a package). There is deliberately no tests/cli/conftest.py: the
core tests import helpers with ``from conftest import ...``, and a second ``conftest`` module
would shadow theirs. Test modules import the fixtures they use from here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import compatindex
from compatindex_cli.main import app

DIM = 8


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def snapshot(path: Path) -> dict:
    """Everything a failed command must leave unchanged: versions, items and their vectors."""
    with compatindex.open(str(path), readonly=True, create=False) as ix:
        out: dict = {"count": ix.count, "versions": [(v.name, v.dim, v.parent) for v in ix.versions()]}
        for v in ix.versions():
            batch = ix.fetch(v.name)
            order = np.argsort(np.array([str(i) for i in batch.ids]))
            out[v.name] = ([batch.ids[i] for i in order], np.asarray(batch.vectors)[order].round(5).tolist())
        return out


def add_v2(path: Path, dim: int = 12, seed: int = 0) -> np.ndarray:
    """Register v2 (dim `dim`, parent v1) through the Python API; returns its extension Q."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    with compatindex.open(str(path), create=False) as ix:
        ix.register_version("v2", parent="v1", dim=dim, extension=q.astype(np.float32))
    return q

class Cli:
    """Runs `compatindex ARGS` in-process; asserts the exit code unless `code=None`."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: object, code: int | None = 0):
        result = self.runner.invoke(app, [str(a) for a in args])
        if code is not None:
            assert result.exit_code == code, (
                f"exit {result.exit_code} != {code}\nstdout: {result.stdout}\nstderr: {result.stderr}\n"
                f"exception: {result.exception!r}"
            )
        return result

    def fails(self, *args: object, code: int = 1, match: str | None = None):
        """An error: exit `code`, one line on stderr (for exit 1), no traceback."""
        result = self(*args, code=code)
        err = result.stderr
        assert "Traceback" not in err and "Traceback" not in result.stdout
        if code == 1:
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: "), err
        if match is not None:
            import re

            flat = " ".join(err.split())
            assert re.search(match, flat), f"{match!r} not in {err!r}"
        return result


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def vecs(tmp_path: Path, rng: np.random.Generator) -> Path:
    """20 x DIM float32 vectors in an .npy file."""
    p = tmp_path / "vecs.npy"
    np.save(p, rng.standard_normal((20, DIM)).astype(np.float32))
    return p


@pytest.fixture
def idx(tmp_path: Path, cli: Cli) -> Path:
    """An empty index (root version v1, dim DIM, cosine)."""
    path = tmp_path / "my.index"
    cli("init", path, "--dim", DIM, "--quiet")
    return path


@pytest.fixture
def full(idx: Path, vecs: Path, cli: Cli) -> Path:
    """`idx` holding the 20 vectors of `vecs` under ids 0..19."""
    cli("add", idx, vecs, "--quiet")
    return idx
