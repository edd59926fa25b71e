"""Shared fixtures: seeded data and in-memory / on-disk indexes."""

from __future__ import annotations

import numpy as np
import pytest

import compatindex
from core_testkit import BruteForce


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def mem_index():
    ix = compatindex.open(":memory:")
    yield ix
    ix.close()


@pytest.fixture
def tmp_index(tmp_path):
    path = tmp_path / "ix"
    ix = compatindex.open(path)
    yield ix
    ix.close()


@pytest.fixture
def brute():
    return BruteForce
