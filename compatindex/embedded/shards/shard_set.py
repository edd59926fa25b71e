"""The shards of an index: one per version, derived from the store and kept in step with it.

On open each shard is loaded from its files; a shard that is missing or damaged is rebuilt from
the store (with a log line), and every shard then replays the store's op log past its own
sequence number. The set also tracks which versions each item holds, which decides the one
vector that represents an item for a query version (docs/concepts.md, "One hit per item").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..faiss_import import num_gpus
from ...core.versions import MAX_VERSIONS  # one bit per version in the per-item mask
from ...errors import InvalidInputError
from .accel import FaissGpuMirror, TorchMirror
from .faiss_shard import FaissShard, ShardSpec

log = logging.getLogger("compatindex")

DEVICES = ("auto", "cpu", "gpu", "torch", "torch-fp16")


def _nvidia_present() -> bool:
    import os

    return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/version")


def resolve_device(device: str) -> str:
    """Pick the search backend: ``faiss-gpu``, ``torch`` (CUDA or CPU), ``torch-fp16`` or ``cpu``."""
    if device not in DEVICES:
        raise InvalidInputError(f"`device` must be one of {DEVICES}; got {device!r}")
    if device == "cpu":
        return "cpu"
    if device in ("torch", "torch-fp16"):
        return device
    if num_gpus() > 0:
        return "faiss-gpu"
    if (device == "gpu" or device == "auto") and _nvidia_present():
        try:
            import torch  # only imported where a driver exists: importing torch costs ~1 s

            if torch.cuda.is_available():
                return "torch"
        except ImportError:
            pass
    if device == "gpu":
        raise InvalidInputError("`device` 'gpu' asked for, but neither faiss nor torch sees a GPU")
    return "cpu"


class ShardSet:
    """Per-version shards plus the per-item version mask.

    Parameters
    ----------
    folder:
        Where shard files live (None: never persisted).
    spec:
        Shard kind and parameters, shared by every version.
    device:
        A resolved device (see :func:`resolve_device`).
    """

    def __init__(self, folder: Path | None, spec: ShardSpec, device: str) -> None:
        self.folder = folder
        self.spec = spec
        self.device = device
        self.shards: dict[int, FaissShard] = {}
        self.dims: dict[int, int] = {}
        self.seq = 0
        self.held = np.zeros(0, dtype=np.uint64)
        self._mirrors: dict[int, Any] = {}
        self._allowed_cache: dict[tuple[int, ...], dict[int, np.ndarray | None]] = {}
        self._saved_seq: dict[int, int] = {}
        self.events: list[str] = []  # rebuilds and replays done on open, for stats() and logs

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self, store, versions: Iterable[tuple[int, int]]) -> None:
        """Load or rebuild every version's shard, then replay the store's tail."""
        store_seq = store.seq()
        for vcode, dim in versions:
            self.dims[vcode] = dim
            shard = None
            if self.folder is not None:
                try:
                    shard = FaissShard.load(self.folder, self._name(vcode), dim=dim, spec=self.spec)
                    if shard.seq > store_seq:
                        raise ValueError(f"shard is ahead of the store (seq {shard.seq} > {store_seq})")
                except ValueError as exc:
                    msg = f"shard of version code {vcode} rebuilt from the store: {exc}"
                    if (self.folder / f"{self._name(vcode)}.json").exists() or (
                        self.folder / f"{self._name(vcode)}.faiss").exists():
                        log.warning(msg)
                    else:
                        log.info(msg)
                    self.events.append(msg)
                    shard = None
            if shard is None:
                shard = self._rebuild(store, vcode, dim, store_seq)
            else:
                self._saved_seq[vcode] = shard.seq
            self.shards[vcode] = shard
        self._rebuild_mask()
        self.seq = min([s.seq for s in self.shards.values()], default=store_seq)
        replayed = self.sync(store)
        if replayed:
            self.events.append(f"replayed {replayed} writes from the store's op log")

    def _rebuild(self, store, vcode: int, dim: int, seq: int) -> FaissShard:
        shard = FaissShard(dim, self.spec)
        with store.read() as r:  # one snapshot: the shard holds exactly the writes up to r.seq()
            seq = r.seq()
            for iids, x in store.iter_live(vcode, dim, reader=r):
                shard.add(iids, x)
        shard.seq = seq
        self._saved_seq[vcode] = -1  # never saved in this form: flush writes it
        return shard

    def add_version(self, vcode: int, dim: int, seq: int) -> None:
        if vcode >= MAX_VERSIONS:
            raise InvalidInputError(f"an index holds at most {MAX_VERSIONS} versions")
        self.dims[vcode] = dim
        shard = FaissShard(dim, self.spec)
        shard.seq = seq
        self.shards[vcode] = shard
        self._saved_seq[vcode] = -1
        self._touch()

    def sync(self, store) -> int:
        """Replay every write committed after the shards' sequence number; returns ops replayed."""
        n = 0
        with store.read() as r:
            if r.seq() <= self.seq:
                return 0
            for seq, op in store.oplog_since(self.seq, reader=r):
                removes = [(vc, np.frombuffer(ids, dtype=">i8").astype(np.int64)) for vc, ids in op.get("r", [])]
                adds = []
                for vc, chunk in op.get("a", []):
                    meta = r.chunk_meta(vc, chunk)
                    ids, alive = r.live_rows(meta)
                    if alive.any():
                        x = r.chunk_vectors(vc, chunk, int(meta["n"]), self.dims[vc])
                        adds.append((vc, ids[alive], x[alive]))
                if op.get("v") is not None:
                    for rec in r.versions():
                        if rec["name"] == op["v"] and rec["code"] not in self.shards:
                            self.add_version(rec["code"], rec["dim"], seq - 1)
                self.apply(seq, removes, adds)
                n += 1
            top = r.seq()
        for shard in self.shards.values():
            shard.seq = max(shard.seq, top)
        self.seq = max(self.seq, top)
        return n

    def apply(self, seq: int, removes: list[tuple[int, np.ndarray]], adds: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        """Apply one committed write: removals first (a write that replaces a vector removes the
        old row, then adds the new one), then additions. Shards already past ``seq`` skip it."""
        for vc, ids in removes:
            shard = self.shards.get(vc)
            if shard is not None and shard.seq < seq and len(ids):
                shard.remove(ids)
                self._set_bits(ids, vc, False)
        for vc, ids, x in adds:
            shard = self.shards.get(vc)
            if shard is not None and shard.seq < seq and len(ids):
                shard.add(ids, x)
                self._set_bits(ids, vc, True)
        for shard in self.shards.values():
            shard.seq = max(shard.seq, seq)
        self.seq = max(self.seq, seq)
        self._touch()

    def flush(self, seq: int) -> None:
        """Persist every shard that changed since it was last saved."""
        if self.folder is None:
            return
        for vc, shard in self.shards.items():
            if self._saved_seq.get(vc) != seq:
                shard.save(self.folder, self._name(vc), seq)
                self._saved_seq[vc] = seq

    @staticmethod
    def _name(vcode: int) -> str:
        return f"v{vcode:03d}"

    def files(self, vcode: int) -> tuple[Path, Path] | None:
        """The ``(json, faiss)`` files a version's shard is saved to (None: never persisted)."""
        if self.folder is None:
            return None
        name = self._name(vcode)
        return self.folder / f"{name}.json", self.folder / f"{name}.faiss"

    def saved_seq(self, vcode: int) -> int:
        """Sequence number of a version's shard as last saved (-1: not saved in this form)."""
        return self._saved_seq.get(vcode, -1)

    # -- per-item version mask ---------------------------------------------------------------
    def _rebuild_mask(self) -> None:
        top = 0
        ids_per = {}
        for vc, shard in self.shards.items():
            ids = shard.ids()
            ids_per[vc] = ids
            if len(ids):
                top = max(top, int(ids.max()) + 1)
        self.held = np.zeros(top, dtype=np.uint64)
        for vc, ids in ids_per.items():
            self.held[ids] |= np.uint64(1) << np.uint64(vc)

    def _set_bits(self, ids: np.ndarray, vc: int, on: bool) -> None:
        top = int(ids.max()) + 1
        if top > len(self.held):
            grown = np.zeros(max(top, 2 * len(self.held)), dtype=np.uint64)
            grown[: len(self.held)] = self.held
            self.held = grown
        bit = np.uint64(1) << np.uint64(vc)
        if on:
            self.held[ids] |= bit
        else:
            self.held[ids] &= ~bit

    def _touch(self) -> None:
        self._allowed_cache.clear()
        self._mirrors.clear()

    def allowed(self, preference: list[int]) -> dict[int, np.ndarray | None]:
        """For a query whose versions rank as ``preference`` (codes), the bitmap of ids each shard
        may return: the items it represents. None where the shard represents all its items."""
        key = tuple(preference)
        cached = self._allowed_cache.get(key)
        if cached is not None:
            return cached
        held = self.held
        rep = np.full(len(held), -1, dtype=np.int16)
        for vc in preference:
            has = ((held >> np.uint64(vc)) & np.uint64(1)).astype(bool)
            rep[has & (rep < 0)] = vc
        out: dict[int, np.ndarray | None] = {}
        for vc in preference:
            has = ((held >> np.uint64(vc)) & np.uint64(1)).astype(bool)
            mine = rep == vc
            out[vc] = np.packbits(mine, bitorder="little") if bool((has & ~mine).any()) else None
        self._allowed_cache[key] = out
        return out

    # -- search ------------------------------------------------------------------------------
    def search(self, vcode: int, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        shard = self.shards[vcode]
        if self.device == "cpu" or shard.ntotal == 0:
            return shard.search(q, k, allowed)
        mirror = self._mirrors.get(vcode)
        if mirror is None:
            if self.device == "faiss-gpu" and self.spec.kind in ("flat", "ivf"):
                mirror = FaissGpuMirror(shard)
            elif self.device == "faiss-gpu":  # HNSW has no faiss GPU form: search it on the CPU
                return shard.search(q, k, allowed)
            else:
                import torch

                dev = "cuda" if torch.cuda.is_available() else "cpu"
                mirror = TorchMirror(shard, device=dev, fp16=self.device == "torch-fp16")
            self._mirrors[vcode] = mirror
        return mirror.search(q, k, allowed)
