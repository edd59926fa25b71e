"""The shards of an index: one per version, derived from the store and kept in step with it.

On open each shard is loaded from its files; a shard that is missing or damaged is rebuilt from
the store (with a log line), and every shard then replays the store's op log past its own
sequence number. The set also tracks which versions each item holds, which decides the one
vector that represents an item for a query version (docs/concepts.md, "One hit per item").

Per preference order of versions a :class:`PrefView` keeps which version represents each item
and how many of each shard's items are shadowed, updated in place by every write. Exact shards
searched on the CPU never get a FAISS selector (it turns off the BLAS path): a shard with no
shadowed item is searched bare, a wholly shadowed one not at all, and a partly shadowed one for
enough candidates that ``k`` represented ones remain after the shadowed are dropped.
"""

from __future__ import annotations

import logging
import threading
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


OVERFETCH_SLACK = 1.25  # over-fetch margin on top of k / (represented fraction)
OVERFETCH_MAX = 4096    # past this many candidates per query a bitmap selector is cheaper
MAX_VIEWS = 64          # preference orders whose masks are kept (one per query version in practice)


def _rep_of(held: np.ndarray, pref: tuple[int, ...]) -> np.ndarray:
    """Per item, the first version of ``pref`` it holds (-1: none)."""
    rep = np.full(len(held), -1, dtype=np.int16)
    for vc in pref:
        has = ((held >> np.uint64(vc)) & np.uint64(1)).astype(bool)
        rep[has & (rep < 0)] = vc
    return rep


class PrefView:
    """Which items each shard represents for one preference order of versions (codes).

    An item is represented by the first version of the order that it holds; its other vectors
    are *shadowed* and must not be returned (docs/concepts.md, "One hit per item"). The view
    keeps, per item, the representing version (``rep``) and, per shard, how many of its items
    are shadowed; both are updated in place for the items a write touches (:meth:`update`),
    never recomputed over the gallery. Packed bitmaps (for FAISS selectors and accelerator
    mirrors) are built on first need and then updated in place as well.
    """

    def __init__(self, pref: tuple[int, ...], held: np.ndarray) -> None:
        self.pref = pref
        self.rep = _rep_of(held, pref)
        self.shadowed: dict[int, int] = {}
        for vc in pref:
            has = ((held >> np.uint64(vc)) & np.uint64(1)).astype(bool)
            self.shadowed[vc] = int((has & (self.rep != vc)).sum())
        self._bitmaps: dict[int, np.ndarray] = {}

    def update(self, ids: np.ndarray, old: np.ndarray, new: np.ndarray, size: int) -> None:
        """Items ``ids`` (unique) changed their held bits from ``old`` to ``new``."""
        if len(self.rep) < size:
            grown = np.full(size, -1, dtype=np.int16)
            grown[: len(self.rep)] = self.rep
            self.rep = grown
        old_rep = self.rep[ids]
        new_rep = _rep_of(new, self.pref)
        for vc in self.pref:
            bit = np.uint64(1) << np.uint64(vc)
            was = ((old & bit) != 0) & (old_rep != vc)
            now = ((new & bit) != 0) & (new_rep != vc)
            self.shadowed[vc] += int(now.sum()) - int(was.sum())
        self.rep[ids] = new_rep
        for vc, bm in list(self._bitmaps.items()):
            need = (size + 7) // 8
            if len(bm) < need:
                bm = np.concatenate([bm, np.zeros(need - len(bm), np.uint8)])
                self._bitmaps[vc] = bm
            byte = ids >> 3
            bit8 = (np.uint8(1) << (ids & 7).astype(np.uint8)).astype(np.uint8)
            on = new_rep == vc
            np.bitwise_and.at(bm, byte[~on], ~bit8[~on])
            np.bitwise_or.at(bm, byte[on], bit8[on])

    def bitmap(self, vc: int) -> np.ndarray | None:
        """Little-endian bitmap of the ids shard ``vc`` represents (None: all of its items)."""
        if not self.shadowed.get(vc, 0):
            return None
        bm = self._bitmaps.get(vc)
        if bm is None:
            bm = np.packbits(self.rep == vc, bitorder="little")
            self._bitmaps[vc] = bm
        return bm

    def is_shadowed(self, vc: int, ids: np.ndarray) -> np.ndarray:
        """Bool mask of ``ids`` (held by shard ``vc``; -1 allowed) that ``vc`` does not represent."""
        safe = np.where(ids >= 0, ids, 0)
        return (self.rep[safe] != vc) | (ids < 0)


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
        self._views: dict[tuple[int, ...], PrefView] = {}
        self._view_lock = threading.Lock()
        self._saved_seq: dict[int, int] = {}
        self._dirty: set[int] = set()  # shards changed since they were last saved
        self.events: list[str] = []  # rebuilds and replays done on open, for stats() and logs
        self.filter_cache: dict[Any, Any] = {}  # filtered search: allowed rows per (mask, shard state)

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self, store, versions: Iterable[tuple[int, int]]) -> None:
        """Load or rebuild every version's shard, then replay the store's tail."""
        with store.read() as r:
            store_seq = r.seq()
            floor = store.oplog_from(r)
        for vcode, dim in versions:
            self.dims[vcode] = dim
            shard = None
            if self.folder is not None:
                try:
                    shard = FaissShard.load(self.folder, self._name(vcode), dim=dim, spec=self.spec)
                    if shard.seq > store_seq:
                        raise ValueError(f"shard is ahead of the store (seq {shard.seq} > {store_seq})")
                    if shard.seq < floor - 1:
                        raise ValueError(f"shard (seq {shard.seq}) is older than the op log, which starts at {floor}")
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

    def reload(self, store, versions: Iterable[tuple[int, int]]) -> None:
        """Drop every in-memory shard and open them again from their files (or the store)."""
        old_seq = self.seq
        self.shards, self.dims, self._saved_seq, self._dirty = {}, {}, {}, set()
        self._views.clear()
        self._mirrors.clear()
        self.filter_cache.clear()
        self.held = np.zeros(0, dtype=np.uint64)
        self.events.append(f"shards at seq {old_seq} reloaded: the op log was truncated past them")
        self.open(store, versions)

    def _rebuild(self, store, vcode: int, dim: int, seq: int) -> FaissShard:
        shard = FaissShard(dim, self.spec)
        # one snapshot: the shard holds exactly the writes up to r.seq(); buffers=True so that only
        # live rows are copied out of the memory map
        with store.read(buffers=True) as r:
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

    def drop_version(self, vcode: int, *, delete_files: bool = False) -> None:
        """Forget a retired version's shard (its vectors are gone from the store); the writer also
        deletes its files."""
        self.shards.pop(vcode, None)
        self.dims.pop(vcode, None)
        self._saved_seq.pop(vcode, None)
        self._dirty.discard(vcode)
        self.held &= ~(np.uint64(1) << np.uint64(vcode))
        self._touch()
        if delete_files and self.folder is not None:
            for f in self.files(vcode) or ():
                f.unlink(missing_ok=True)
                f.with_name(f.name + ".tmp").unlink(missing_ok=True)

    def sync(self, store) -> int:
        """Replay every write committed after the shards' sequence number; returns ops replayed.

        Shards older than the op log's start (the writer truncated the log past them) are loaded
        again from their files, which the writer saved before truncating (or rebuilt)."""
        n = 0
        with store.read() as r:
            if r.seq() <= self.seq:
                return 0
            if store.oplog_from(r) > self.seq + 1:
                versions = [(rec["code"], rec["dim"]) for rec in r.versions() if not rec.get("retired")]
                behind = True
            else:
                behind = False
        if behind:
            self.reload(store, versions)
            return 0
        # The tail is applied as one coalesced write per shard (one removal call, one addition):
        # replaying op by op costs a full pass over a flat shard per removal. Additions read the
        # chunks' rows alive in this snapshot, so an id removed and re-added along the tail is
        # removed once and added with its current vector; ids added anew are in the removal too
        # (a no-op for them), which drops any older vector the shard holds for a replaced id.
        removes: dict[int, list[np.ndarray]] = {}
        adds: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        with store.read() as r:
            if r.seq() <= self.seq:
                return 0
            # retired versions hold nothing in this snapshot: their shards go, their ops are skipped
            retired = {rec["code"] for rec in r.versions() if rec.get("retired")}
            for vc in retired & set(self.shards):
                self.drop_version(vc)
            for seq, op in store.oplog_since(self.seq, reader=r):
                if op.get("v") is not None:
                    for rec in r.versions():
                        if rec["name"] == op["v"] and rec["code"] not in self.shards and rec["code"] not in retired:
                            self.add_version(rec["code"], rec["dim"], seq - 1)
                for vc, ids in op.get("r", []):
                    shard = self.shards.get(vc)
                    if shard is not None and shard.seq < seq:
                        removes.setdefault(vc, []).append(np.frombuffer(ids, dtype=">i8").astype(np.int64))
                for vc, chunk in op.get("a", []):
                    shard = self.shards.get(vc)
                    if shard is None or shard.seq >= seq:
                        continue
                    meta = r.chunk_meta(vc, chunk)
                    ids, alive = r.live_rows(meta)
                    if alive.any():
                        x = r.chunk_vectors(vc, chunk, int(meta["n"]), self.dims[vc])
                        adds.setdefault(vc, []).append((ids[alive], x[alive]))
                n += 1
            top = r.seq()
        if removes or adds:
            rem, add = [], []
            for vc in set(removes) | set(adds):
                new_parts = adds.get(vc, [])
                gone = removes.get(vc, []) + [p[0] for p in new_parts]
                rem.append((vc, np.unique(np.concatenate(gone))))
                if new_parts:
                    ids = np.concatenate([p[0] for p in new_parts])
                    x = np.concatenate([p[1] for p in new_parts])
                    last = len(ids) - 1 - np.unique(ids[::-1], return_index=True)[1]  # newest row per id
                    add.append((vc, ids[last], x[last]))
            self.apply(top, rem, add)
        for shard in self.shards.values():
            shard.seq = max(shard.seq, top)
        self.seq = max(self.seq, top)
        return n

    def apply(self, seq: int, removes: list[tuple[int, np.ndarray]], adds: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        """Apply one committed write: removals first (a write that replaces a vector removes the
        old row, then adds the new one), then additions. Shards already past ``seq`` skip it."""
        touched: list[np.ndarray] = []
        changes: list[tuple[int, np.ndarray, bool]] = []
        for vc, ids in removes:
            shard = self.shards.get(vc)
            if shard is not None and shard.seq < seq and len(ids):
                shard.remove(ids)
                changes.append((vc, ids, False))
                self._changed(vc)
        for vc, ids, x in adds:
            shard = self.shards.get(vc)
            if shard is not None and shard.seq < seq and len(ids):
                shard.add(ids, x)
                changes.append((vc, ids, True))
                self._changed(vc)
        if changes:
            ids_all = np.unique(np.concatenate([np.asarray(c[1], dtype=np.int64) for c in changes]))
            self._grow(int(ids_all[-1]) + 1)
            old = self.held[ids_all].copy()
            for vc, ids, on in changes:
                self._set_bits(ids, vc, on)
            new = self.held[ids_all]
            for view in self._views.values():
                view.update(ids_all, old, new, len(self.held))
            if self._mirrors:
                added = {vc: (ids, x) for vc, ids, x in adds}
                for vc in {c[0] for c in changes}:
                    mirror = self._mirrors.get(vc)
                    if mirror is None:
                        continue
                    gone = [np.asarray(ids, np.int64) for c, ids in removes if c == vc]
                    new_ids, new_x = added.get(vc, (np.zeros(0, np.int64), None))
                    if not mirror.refresh(np.concatenate(gone) if gone else np.zeros(0, np.int64),
                                          np.asarray(new_ids, np.int64), new_x):
                        del self._mirrors[vc]  # rebuilt from the shard on its next search
        for shard in self.shards.values():
            shard.seq = max(shard.seq, seq)
        self.seq = max(self.seq, seq)

    def _changed(self, vc: int) -> None:
        self._dirty.add(vc)

    def flush(self, seq: int) -> list[int]:
        """Persist the shards that changed since they were last saved; returns their codes.

        A shard no write touched since its save keeps its ``.faiss`` file: only its manifest's
        sequence number moves forward (a small fsynced rename), so a v2-only write never makes
        a flush rewrite, fsync and re-checksum v1's file.
        """
        if self.folder is None:
            return []
        saved = []
        for vc, shard in self.shards.items():
            prev = self._saved_seq.get(vc, -1)
            if prev == seq:
                continue
            if prev < 0 or vc in self._dirty or not shard.save_manifest(self.folder, self._name(vc), seq):
                shard.save(self.folder, self._name(vc), seq)
                saved.append(vc)
            self._saved_seq[vc] = seq
            self._dirty.discard(vc)
        return saved

    def dirty(self) -> set[int]:
        """Codes of the shards changed since their last save (or never saved)."""
        return set(self._dirty) | {vc for vc in self.shards if self._saved_seq.get(vc, -1) < 0}

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
        self._views.clear()

    def _grow(self, top: int) -> None:
        if top > len(self.held):
            grown = np.zeros(max(top, 2 * len(self.held)), dtype=np.uint64)
            grown[: len(self.held)] = self.held
            self.held = grown

    def _set_bits(self, ids: np.ndarray, vc: int, on: bool) -> None:
        self._grow(int(ids.max()) + 1)
        bit = np.uint64(1) << np.uint64(vc)
        if on:
            self.held[ids] |= bit
        else:
            self.held[ids] &= ~bit

    def _touch(self) -> None:
        """Forget every cached view and mirror (a new version changes every preference order)."""
        self._views.clear()
        self._mirrors.clear()
        self.filter_cache.clear()

    def view(self, preference: list[int] | tuple[int, ...]) -> PrefView:
        """The :class:`PrefView` of a query whose versions rank as ``preference`` (codes)."""
        key = tuple(preference)
        view = self._views.get(key)
        if view is None:
            with self._view_lock:  # searches run in several threads at once (shared lock)
                view = self._views.get(key)
                if view is None:
                    if len(self._views) >= MAX_VIEWS:
                        self._views.pop(next(iter(self._views)), None)
                    view = PrefView(key, self.held)
                    self._views[key] = view
        return view

    def allowed(self, preference: list[int]) -> dict[int, np.ndarray | None]:
        """For a query whose versions rank as ``preference`` (codes), the bitmap of ids each shard
        may return: the items it represents. None where the shard represents all its items."""
        view = self.view(preference)
        return {vc: view.bitmap(vc) for vc in preference}

    # -- search ------------------------------------------------------------------------------
    def search(self, vcode: int, q: np.ndarray, k: int, view: PrefView | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of shard ``vcode`` among the items it represents in ``view`` (None: all).

        Exact shards on the CPU never use a FAISS selector (it turns off the BLAS path): a shard
        with no shadowed item is searched bare; one with shadowed items is searched for enough
        candidates that ``k`` represented ones remain once the shadowed are dropped (over-fetch by
        the shadowed fraction), and only the queries left short are searched again, with a
        selector once the candidates would pass ``OVERFETCH_MAX``.
        """
        shard = self.shards.get(vcode)
        nq = q.shape[0]
        if shard is None:  # a retired version: it holds nothing
            return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64)
        n = shard.ntotal
        shadowed = 0 if view is None else view.shadowed.get(vcode, 0)
        if n == 0 or shadowed >= n:
            return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64)
        if shadowed == 0:
            return self._search(vcode, q, k, None)
        assert view is not None
        if self.device != "cpu" or self.spec.kind != "flat":
            return self._search(vcode, q, k, view.bitmap(vcode))
        k = min(k, n - shadowed)
        kk = min(n, int(k * n / (n - shadowed) * OVERFETCH_SLACK) + 16)
        D = np.full((nq, k), -np.inf, dtype=np.float32)
        I = np.full((nq, k), -1, dtype=np.int64)
        rows = np.arange(nq)
        qs = q
        while len(rows):
            if kk > OVERFETCH_MAX and kk < n:
                d, i = shard.search(qs, k, view.bitmap(vcode))
                D[rows, : d.shape[1]], I[rows, : d.shape[1]] = d, i
                break
            d, i = shard.search(qs, kk)
            bad = view.is_shadowed(vcode, i)
            order = np.argsort(bad, axis=1, kind="stable")[:, :k]
            d = np.take_along_axis(d, order, 1)
            i = np.take_along_axis(i, order, 1)
            ok = ~np.take_along_axis(bad, order, 1)
            d = np.where(ok, d, -np.inf)
            i = np.where(ok, i, -1)
            w = d.shape[1]
            D[rows, :w], I[rows, :w] = d, i
            if kk >= n:
                break
            short = ok.sum(axis=1) < k
            rows, qs = rows[short], qs[short]
            kk = min(n, kk * 4)
        return D, I

    def search_where(self, vcode: int, q: np.ndarray, k: int, view: PrefView | None,
                     match: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of shard ``vcode`` among the items it represents in ``view`` that the bool mask
        ``match`` (over internal ids) allows; exact shards stay exact (:mod:`.filtered`)."""
        from .filtered import search_filtered

        if vcode not in self.shards:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        return search_filtered(self, vcode, q, k, view, match)

    def _search(self, vcode: int, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
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
