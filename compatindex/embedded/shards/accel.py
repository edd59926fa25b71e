"""Accelerator mirrors of a CPU shard, used for search only (docs/concepts.md, "Storage").

- :class:`FaissGpuMirror`: a faiss GPU copy of a flat or IVF shard, when faiss sees GPUs. GPU
  indexes have no ``remove_ids`` and no bitmap selectors, so the mirror keeps rows by position,
  follows writes in place (dead rows marked) and applies the CPU's masks by over-fetching in
  proportion to the rows a query may not return (no cliff at a count of excluded items). The
  tests run it with a CPU stand-in for the device; the GPU transfer is verified only by
  ``bench/gpu_check.py`` on a GPU machine.
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
    """A faiss GPU copy of a CPU shard (flat or IVF), searched with the CPU's masks.

    GPU indexes take no bitmap selector and cannot remove rows, so the mirror stores the shard's
    live vectors at positions ``0..n-1`` (``ids[pos]`` maps back), follows writes in place (added
    rows appended, removed rows marked dead) and searches with over-fetch sized by the fraction of
    rows a query may not return (dead, shadowed or filtered out): ``k * n / n_allowed`` plus
    slack, rounds of 4x more for queries left short. Only when that passes the GPU's k limit
    (``GPU_MAX_K``: fewer than about ``k / GPU_MAX_K`` of the rows allowed) does the CPU shard
    search, where such a selective mask is cheap anyway. Rebuilt once dead rows pass 20%.

    Parameters
    ----------
    shard:
        The CPU shard to mirror.
    to_device:
        Moves a CPU faiss index to the accelerator; default ``faiss.index_cpu_to_gpu`` on GPU 0.
        The tests pass the identity to exercise the masks and refreshes on the CPU; the GPU
        transfer itself is verified only by ``bench/gpu_check.py`` on a GPU machine.
    """

    _resources: Any = None
    SLACK = 1.2

    def __init__(self, shard: FaissShard, *, to_device: Any = None) -> None:
        if to_device is None:
            if FaissGpuMirror._resources is None:
                FaissGpuMirror._resources = faiss.StandardGpuResources()  # one per process, kept alive
            res = FaissGpuMirror._resources

            def to_device(index: Any) -> Any:
                return faiss.index_cpu_to_gpu(res, 0, index)

        self.shard = shard
        ids, x = shard.vectors()
        self.ids = ids
        self.alive = np.ones(len(ids), dtype=bool)
        trained = shard.spec.kind == "ivf" and shard.staging is None
        if trained:  # same coarse quantizer, rows stored under their positions
            cpu = faiss.clone_index(shard.index)
            cpu.reset()
            cpu.add_with_ids(x, np.arange(len(ids), dtype=np.int64))
        else:  # flat, or an IVF shard still waiting for its training sample (searched exactly)
            cpu = faiss.IndexFlatIP(shard.dim)
            cpu.add(x)
        self.positional_ids = trained
        self.index = to_device(cpu)
        if trained:
            try:
                self.index.nprobe = shard.spec.nprobe
            except AttributeError:  # pragma: no cover - a GPU index without the attribute
                faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe", shard.spec.nprobe)

    def refresh(self, removed: np.ndarray, added: np.ndarray, x: np.ndarray | None) -> bool:
        """Follow one write in place; False (rebuild from the shard) once dead rows pass 20%."""
        if len(removed):
            self.alive &= ~np.isin(self.ids, removed)
        if len(added):
            assert x is not None
            x = np.ascontiguousarray(x, dtype=np.float32)
            pos = np.arange(len(self.ids), len(self.ids) + len(added), dtype=np.int64)
            if self.positional_ids:
                self.index.add_with_ids(x, pos)
            else:
                self.index.add(x)
            self.ids = np.concatenate([self.ids, np.asarray(added, dtype=np.int64)])
            self.alive = np.concatenate([self.alive, np.ones(len(added), dtype=bool)])
        return int((~self.alive).sum()) <= 0.2 * max(len(self.ids), 1)

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.ids)
        bits = _bits(allowed, self.ids)
        ok = self.alive if bits is None else (self.alive & bits)
        n_ok = int(ok.sum())
        nq = len(q)
        if min(k, n_ok) == 0:
            return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64)
        width = min(k, n)  # as the CPU shard: -1 ids pad past the allowed rows
        D = np.full((nq, width), -np.inf, dtype=np.float32)
        I = np.full((nq, width), -1, dtype=np.int64)
        k = min(k, n_ok)
        everything = n_ok == n
        kk = k if everything else min(n, int(k * n / n_ok * self.SLACK) + 16)
        rows = np.arange(nq)
        qs = np.ascontiguousarray(q, dtype=np.float32)
        while len(rows):
            if kk > GPU_MAX_K:  # too selective for the GPU's k limit: the CPU shard (cheap then)
                d, i = self.shard.search(qs, k, allowed)
                D[rows, : d.shape[1]], I[rows, : d.shape[1]] = d, i
                break
            d, p = self.index.search(qs, kk)
            good = (p >= 0) & ok[np.where(p >= 0, p, 0)]
            order = np.argsort(~good, axis=1, kind="stable")[:, :k]  # allowed hits first, in score order
            d = np.take_along_axis(d, order, 1)
            p = np.take_along_axis(p, order, 1)
            g = np.take_along_axis(good, order, 1)
            w = d.shape[1]
            D[rows, :w] = np.where(g, d, -np.inf)
            I[rows, :w] = np.where(g, self.ids[np.where(g, p, 0)], -1)
            if everything or kk >= n:
                break
            short = g.sum(axis=1) < k
            rows, qs = rows[short], qs[short]
            kk = min(n, kk * 4)
        return D, I
