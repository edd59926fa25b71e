"""Fixtures of the trainer tests: seeded synthetic pairs (Gaussian classes seen by two encoders)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


@dataclass
class Synthetic:
    """``n`` items of ``K`` classes in a latent space ``X`` ``(n, L)``: the old encoder saw a noisy
    16-dim view, ``G = unit(X A + noise)``; the new one sees all of it, ``H = X B + small noise``
    (24 dims), so a good upgrade exists and M(new, old) > M(old, old) is reachable."""

    G: np.ndarray
    H: np.ndarray
    y: np.ndarray


def make_synthetic(n: int = 1500, K: int = 12, L: int = 20, d_p: int = 16, d_h: int = 24, old_noise: float = 1.0,
                   new_noise: float = 0.05, seed: int = 0) -> Synthetic:
    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(K, L))
    y = rng.integers(0, K, n)
    X = cent[y] + rng.normal(size=(n, L))
    G = unit(X @ rng.normal(size=(L, d_p)) / np.sqrt(L) + old_noise * rng.normal(size=(n, d_p)))
    H = (X @ rng.normal(size=(L, d_h)) / np.sqrt(L) + new_noise * rng.normal(size=(n, d_h))).astype(np.float32)
    return Synthetic(G=G, H=H, y=y)


@pytest.fixture(scope="session")
def synth() -> Synthetic:
    return make_synthetic()
