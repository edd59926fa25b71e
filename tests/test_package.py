"""Packaging: public names, py.typed, the faiss distribution checks, no pickles in an index."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import numpy as np
import pytest

import compatindex


def test_public_names():
    for name in ("open", "Index", "Version", "SearchResult", "AddResult", "ItemBatch", "errors", "__version__"):
        assert hasattr(compatindex, name)
    assert compatindex.__version__.count(".") >= 2


def test_py_typed_ships():
    assert (Path(compatindex.__file__).parent / "py.typed").exists()


def test_two_faiss_distributions_warn(monkeypatch):
    import compatindex.embedded.faiss_import as F

    monkeypatch.setattr(F, "installed_faiss_distributions", lambda: ["faiss-cpu", "faiss-gpu"])
    with pytest.warns(RuntimeWarning, match="more than one faiss distribution"):
        F._load()


def test_missing_faiss_names_the_extras(monkeypatch):
    import builtins

    import compatindex.embedded.faiss_import as F

    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r"compatindex\[cpu\].*compatindex\[gpu\]"):
        F._load()


def test_index_folder_holds_no_pickles(tmp_path):
    with compatindex.open(tmp_path / "ix") as ix:
        ix.create_version("v1", dim=4)
        ix.add(["a"], np.ones((1, 4)), metadata=[{"k": [1, 2]}], labels=["x"])
    for f in (tmp_path / "ix").rglob("*"):
        if f.is_file():
            assert b"\x80\x04\x95" not in f.read_bytes()[:64]  # pickle protocol 4 header
