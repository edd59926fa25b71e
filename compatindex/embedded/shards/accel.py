"""Accelerator mirrors of a CPU shard, used for search only (docs/concepts.md, "Storage").

- :class:`FaissGpuMirror`: a faiss GPU copy of a flat or IVF shard, when faiss sees GPUs. GPU
  indexes have no ``remove_ids`` and no bitmap selectors, so the CPU shard stays authoritative:
  the mirror is rebuilt after a write to its shard, and excluded ids are filtered by
  over-fetching (past ``GPU_MAX_K`` the CPU searches). Not verified on a GPU by these tests.
- :class:`TorchMirror`: an exact shard in torch (matmul + top-k, optional float16), for machines
  where torch sees CUDA but faiss has no GPU support. It takes the CPU's masks (the same
  bitmaps, applied as ``-inf`` before top-k: no over-fetch), and follows writes in place (rows
  appended, removed rows masked) until a fifth of its rows are dead. It also runs on the CPU,
  which is how the tests exercise it here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..faiss_import import faiss
from .faiss_shard import FaissShard

GPU_MAX_K = 2048  # faiss GPU k and nprobe limit


def _bits(allowed: np.ndarray | None, ids: np.ndarray) -> np.ndarray | None:
    """Which of ``ids`` a little-endian bitmap allows, as a bool array (None = all)."""
    if allowed is None:
        return None
    byte = ids >> 3
    ok = byte < len(allowed)
    out = np.zeros(len(ids), dtype=bool)
    out[ok] = (allowed[byte[ok]] >> (ids[ok] & 7).astype(np.uint8)) & 1 == 1
    return out


class TorchMirror:
    """Exact inner-product search of a shard's vectors with torch.

    Parameters
    ----------
    shard:
        The CPU shard to mirror.
    device:
        ``"cuda"`` or ``"cpu"``.
    fp16:
        Keep vectors in float16 (halves memory and bandwidth; scores lose ~3 decimal digits).
    """

    def __init__(self, shard: FaissShard, *, device: str, fp16: bool = False) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.dtype = torch.float16 if fp16 else torch.float32
        ids, x = shard.vectors()
        self.ids = ids
        self.ids_t = torch.as_tensor(ids, device=device)
        self.x = torch.as_tensor(x, device=device).to(self.dtype)
        self.alive = np.ones(len(ids), dtype=bool)
        self.alive_t = None  # a device copy, made when some row is dead

    def refresh(self, removed: np.ndarray, added: np.ndarray, x: np.ndarray | None) -> bool:
        """Follow one write in place: removed rows are masked out, added rows appended. False
        (rebuild from the shard) once dead rows pass 20% of the mirror."""
        torch = self.torch
        if len(removed):
            self.alive &= ~np.isin(self.ids, removed)
        if len(added):
            self.ids = np.concatenate([self.ids, added])
            self.alive = np.concatenate([self.alive, np.ones(len(added), dtype=bool)])
            self.ids_t = torch.cat([self.ids_t, torch.as_tensor(added, device=self.device)])
            self.x = torch.cat([self.x, torch.as_tensor(x, device=self.device).to(self.dtype)])
        dead = int((~self.alive).sum())
        if dead > 0.2 * max(len(self.ids), 1):
            return False
        self.alive_t = None if dead == 0 else torch.as_tensor(self.alive, device=self.device)
        return True

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        n = int(self.alive.sum())
        k = min(k, n)
        if k == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        qt = torch.as_tensor(q, device=self.device).to(self.dtype)
        with torch.no_grad():
            s = (qt @ self.x.T).float()  # (nq, n)
            mask = _bits(allowed, self.ids)
            if mask is not None:
                s[:, torch.as_tensor(~(mask & self.alive), device=self.device)] = float("-inf")
            elif self.alive_t is not None:
                s[:, ~self.alive_t] = float("-inf")
            D, pos = torch.topk(s, k, dim=1)
            I = self.ids_t[pos]
            I = torch.where(torch.isfinite(D), I, torch.full_like(I, -1))
        return D.cpu().numpy().astype(np.float32), I.cpu().numpy().astype(np.int64)


class FaissGpuMirror:
    """A faiss GPU copy of a CPU shard (flat or IVF)."""

    _resources: Any = None

    def __init__(self, shard: FaissShard) -> None:
        if FaissGpuMirror._resources is None:
            FaissGpuMirror._resources = faiss.StandardGpuResources()  # one per process, kept alive
        self.shard = shard
        self.ids = shard.ids()
        src = shard.staging if shard.staging is not None else shard.index
        self.index = faiss.index_cpu_to_gpu(FaissGpuMirror._resources, 0, src)

    def refresh(self, removed: np.ndarray, added: np.ndarray, x: np.ndarray | None) -> bool:
        """Follow a write; False: the mirror is rebuilt from the shard (GPU indexes have no
        ``remove_ids``). Unverified here: no GPU on the machines these tests run on."""
        return False

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        mask = _bits(allowed, self.ids)
        excluded = 0 if mask is None else int((~mask).sum())
        want = min(k + excluded, len(self.ids))
        if want > GPU_MAX_K:
            return self.shard.search(q, k, allowed)  # beyond the GPU's k limit: exact on the CPU
        D, I = self.index.search(q, want)
        if mask is not None and excluded:
            ok = _bits(allowed, np.where(I >= 0, I, 0)) & (I >= 0)
            D = np.where(ok, D, -np.inf)
            order = np.argsort(-D, axis=1, kind="stable")
            D, I = np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)
            I = np.where(np.isfinite(D), I, -1)
        return D[:, :k], I[:, :k]
