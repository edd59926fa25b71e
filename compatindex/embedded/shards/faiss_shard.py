"""One version's FAISS shard: a derived, rebuildable index of that version's live vectors.

The CPU index is authoritative in memory and is what gets persisted; an accelerator mirror
(faiss GPU or torch) may serve searches (see :mod:`compatindex.embedded.shards.accel`). Internal item
ids are the FAISS ids.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..faiss_import import faiss
from ...errors import InvalidInputError

SHARD_KINDS = ("flat", "ivf", "hnsw")


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """How a shard indexes its vectors.

    ``flat``: exact inner product (default). ``ivf``: ``nlist`` inverted lists searched with
    ``nprobe``; trained once it holds ``train_factor * nlist`` vectors (exact flat until then).
    ``hnsw``: graph with ``m`` links, ``ef_search``/``ef_construction``; deletes are tombstones
    filtered at search time and compacted when they pass 20% of the shard.
    """

    kind: str = "flat"
    nlist: int = 1024
    nprobe: int = 16
    train_factor: int = 39
    m: int = 32
    ef_search: int = 64
    ef_construction: int = 200

    @classmethod
    def parse(cls, spec: Any) -> "ShardSpec":
        if spec is None:
            return cls()
        if isinstance(spec, ShardSpec):
            out = spec
        elif isinstance(spec, str):
            out = cls(kind=spec)
        elif isinstance(spec, dict):
            unknown = set(spec) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise InvalidInputError(f"`shard` has unknown fields {sorted(unknown)}")
            out = cls(**spec)
        else:
            raise InvalidInputError(f"`shard` must be a dict, a kind name or a ShardSpec; got {type(spec).__name__}")
        if out.kind not in SHARD_KINDS:
            raise InvalidInputError(f"`shard.kind` must be one of {SHARD_KINDS}; got {out.kind!r}")
        for name in ("nlist", "nprobe", "train_factor", "m", "ef_search", "ef_construction"):
            v = getattr(out, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InvalidInputError(f"`shard.{name}` must be an int >= 1; got {v!r}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _bitmap_selector(allowed: np.ndarray | None):
    if allowed is None:
        return None
    return faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(allowed))


class FaissShard:
    """The CPU FAISS index of one version.

    Parameters
    ----------
    dim:
        The version's native dim.
    spec:
        Index kind and parameters.
    """

    def __init__(self, dim: int, spec: ShardSpec) -> None:
        self.dim = dim
        self.spec = spec
        self.seq = 0
        self.tombstones: set[int] = set()
        self.index = self._empty_index()
        self.staging = None  # untrained IVF: vectors wait in an exact flat index
        # An upper bound of the ids held (a bitmap over ids must reach it); None: not known yet.
        self._max_id: int | None = -1
        if spec.kind == "ivf":
            self.staging = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def _empty_index(self):
        d, s = self.dim, self.spec
        if s.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        if s.kind == "hnsw":
            h = faiss.IndexHNSWFlat(d, s.m, faiss.METRIC_INNER_PRODUCT)
            h.hnsw.efConstruction = s.ef_construction
            h.hnsw.efSearch = s.ef_search
            return faiss.IndexIDMap2(h)
        quant = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quant, d, s.nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.nprobe = s.nprobe  # faiss's Python layer keeps `quant` referenced by `ivf`
        return ivf

    # -- contents ----------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        n = int(self.index.ntotal) + (int(self.staging.ntotal) if self.staging is not None else 0)
        return n - len(self.tombstones)

    def ids(self) -> np.ndarray:
        """``(ntotal,)`` int64 internal ids of the live vectors."""
        parts = []
        for idx in (self.index, self.staging):
            if idx is None or idx.ntotal == 0:
                continue
            if isinstance(idx, faiss.IndexIDMap2) or isinstance(idx, faiss.IndexIDMap):
                parts.append(faiss.vector_to_array(idx.id_map).astype(np.int64))
            else:  # IVF holds its ids in the inverted lists
                invl = idx.invlists
                for li in range(idx.nlist):
                    n = invl.list_size(li)
                    if n:
                        parts.append(faiss.rev_swig_ptr(invl.get_ids(li), n).copy().astype(np.int64))
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if self.tombstones:
            ids = ids[~np.isin(ids, np.fromiter(self.tombstones, dtype=np.int64))]
        return ids

    def add(self, iids: np.ndarray, x: np.ndarray) -> None:
        """Add ``(n, dim)`` float32 vectors under int64 internal ids."""
        iids = np.ascontiguousarray(iids, dtype=np.int64)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(iids) == 0:
            return
        if self._max_id is not None:
            self._max_id = max(self._max_id, int(iids.max()))
        if self.tombstones and not self.tombstones.isdisjoint(iids.tolist()):
            # A tombstoned HNSW node still holds the old vector under this id: drop it first.
            self.compact()
        if self.staging is not None:
            self.staging.add_with_ids(x, iids)
            self._maybe_train()
        else:
            self.index.add_with_ids(x, iids)

    def _maybe_train(self) -> None:
        s = self.spec
        n = int(self.staging.ntotal)
        if n < s.train_factor * s.nlist:
            return
        flat = faiss.downcast_index(self.staging.index)
        xb = faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim).copy()
        ids = faiss.vector_to_array(self.staging.id_map).astype(np.int64)
        self.index.train(xb)
        self.index.add_with_ids(xb, ids)
        self.staging = None

    def remove(self, iids: np.ndarray) -> None:
        """Remove internal ids (absent ones are ignored)."""
        iids = np.ascontiguousarray(iids, dtype=np.int64)
        if len(iids) == 0:
            return
        if self.spec.kind == "hnsw":
            # HNSW graphs cannot drop nodes: tombstone them and compact when there are many.
            live = set(self.ids().tolist())
            self.tombstones.update(i for i in iids.tolist() if i in live)
            if len(self.tombstones) > 0.2 * max(int(self.index.ntotal), 1):
                self.compact()
            return
        sel = faiss.IDSelectorBatch(len(iids), faiss.swig_ptr(iids))
        self.index.remove_ids(sel)
        if self.staging is not None:
            self.staging.remove_ids(sel)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """All live ``(ids (n,), vectors (n, dim))`` (used by compaction and accelerator mirrors)."""
        ids = self.ids()
        if len(ids) == 0:
            return ids, np.zeros((0, self.dim), dtype=np.float32)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for idx in (self.index, self.staging):
            if idx is None or idx.ntotal == 0:
                continue
            if isinstance(idx, faiss.IndexIDMap2):
                own = faiss.vector_to_array(idx.id_map).astype(np.int64)
                pos = {int(v): i for i, v in enumerate(own)}
                sub = faiss.downcast_index(idx.index)
                n = int(idx.ntotal)
                if isinstance(sub, faiss.IndexFlat):
                    xb = faiss.rev_swig_ptr(sub.get_xb(), n * self.dim).reshape(n, self.dim)
                else:
                    xb = sub.reconstruct_n(0, n)
                where = np.flatnonzero(np.isin(ids, own))
                out[where] = xb[[pos[int(i)] for i in ids[where]]]
            else:
                idx.make_direct_map()
                where = np.flatnonzero(np.isin(ids, self._ivf_ids()))
                for w in where:
                    out[w] = idx.reconstruct(int(ids[w]))
        return ids, out

    def _ivf_ids(self) -> np.ndarray:
        invl = self.index.invlists
        parts = [faiss.rev_swig_ptr(invl.get_ids(li), invl.list_size(li)).copy()
                 for li in range(self.index.nlist) if invl.list_size(li)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def compact(self) -> None:
        """Rebuild the index from its live vectors (drops tombstones)."""
        ids, x = self.vectors()
        self.tombstones = set()
        self.index = self._empty_index()
        if self.spec.kind == "ivf":
            self.staging = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        self.add(ids, x)

    # -- search ------------------------------------------------------------------------------
    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product among allowed ids.

        Parameters
        ----------
        q:
            ``(nq, dim)`` float32.
        allowed:
            Optional little-endian bitmap (uint8) over internal ids; only set bits may be returned.

        Returns
        -------
        (D, I):
            ``(nq, k')`` float32 scores and int64 ids with ``k' = min(k, ntotal)``; -1 ids pad.
        """
        k = min(k, max(self.ntotal, 0))
        nq = q.shape[0]
        if k == 0:
            return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64)
        if self.tombstones:
            allowed = self._minus_tombstones(allowed)
        results = []
        for idx in (self.index, self.staging):
            if idx is None or idx.ntotal == 0:
                continue
            sel = _bitmap_selector(allowed)
            params = None
            if sel is not None or self.spec.kind != "flat":
                if isinstance(idx, faiss.IndexIVF):
                    params = faiss.SearchParametersIVF(sel=sel, nprobe=self.spec.nprobe)
                elif self.spec.kind == "hnsw":
                    params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.spec.ef_search, k))
                elif sel is not None:
                    params = faiss.SearchParameters(sel=sel)
            kk = min(k, int(idx.ntotal))
            D, I = idx.search(q, kk, params=params) if params is not None else idx.search(q, kk)
            results.append((D, I))
        if len(results) == 1:
            return results[0]
        D = np.concatenate([r[0] for r in results], axis=1)
        I = np.concatenate([r[1] for r in results], axis=1)
        D = np.where(I >= 0, D, -np.inf)
        order = np.argsort(-D, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)

    def _minus_tombstones(self, allowed: np.ndarray | None) -> np.ndarray:
        # Only the tombstones are cleared; the bitmap must still reach every id the shard holds.
        if self._max_id is None:
            self._max_id = int(self.ids().max(initial=-1))
        top = max(max(self.tombstones), self._max_id) + 1
        if allowed is None:
            bits = np.ones(top, dtype=bool)
        else:
            bits = np.unpackbits(allowed, bitorder="little").astype(bool)
            if len(bits) < top:
                bits = np.concatenate([bits, np.zeros(top - len(bits), bool)])
        bits[np.fromiter(self.tombstones, dtype=np.int64)] = False
        return np.packbits(bits, bitorder="little")

    # -- persistence -------------------------------------------------------------------------
    def save(self, folder: Path, name: str, seq: int) -> None:
        """Write ``<name>.faiss`` and its ``<name>.json`` manifest atomically (tmp + fsync + rename).

        The manifest goes last, so a crash leaves either the old pair or a manifest whose
        checksum does not match the index file; both are detected on load.
        """
        folder.mkdir(parents=True, exist_ok=True)
        idx = self.staging if self.staging is not None else self.index
        final = folder / f"{name}.faiss"
        tmp = final.with_name(final.name + ".tmp")
        try:
            faiss.write_index(idx, str(tmp))  # faiss's own writer: no in-memory copy of the index
        except RuntimeError as exc:  # faiss reports a full disk as RuntimeError: keep it an OSError
            tmp.unlink(missing_ok=True)
            raise OSError(f"could not write shard {final}: {exc}") from None
        crc, size = _file_crc(tmp)  # read back from the page cache, then made durable
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(folder)
        meta = {
            "seq": int(seq), "dim": self.dim, "spec": self.spec.to_dict(), "ntotal": self.ntotal,
            "trained": self.staging is None, "crc32": crc, "bytes": size,
            "tombstones": sorted(self.tombstones),
        }
        _atomic_write(folder / f"{name}.json", json.dumps(meta).encode())
        self.seq = int(seq)

    @classmethod
    def load(cls, folder: Path, name: str, *, dim: int, spec: ShardSpec) -> "FaissShard":
        """Read a shard saved by :meth:`save`; raises ``ValueError`` when it is missing or damaged."""
        meta_path, idx_path = folder / f"{name}.json", folder / f"{name}.faiss"
        if not meta_path.exists() or not idx_path.exists():
            raise ValueError("shard files are missing")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"shard manifest unreadable: {exc}") from None
        if meta.get("dim") != dim or meta.get("spec") != spec.to_dict():
            raise ValueError("shard manifest does not match the version (dim or shard spec changed)")
        # Stream the checksum, then let faiss read the file itself: holding the whole file as
        # bytes next to the index it becomes would double the peak memory of an open.
        crc, size = _file_crc(idx_path)
        if size != meta.get("bytes") or crc != meta.get("crc32"):
            raise ValueError("shard file is truncated or its checksum does not match")
        try:
            idx = faiss.read_index(str(idx_path))
        except Exception as exc:  # faiss raises RuntimeError on garbage
            raise ValueError(f"faiss cannot read the shard: {exc}") from None
        shard = cls(dim, spec)
        if idx.d != dim:
            raise ValueError("shard dim does not match")
        if spec.kind == "ivf" and not meta.get("trained"):
            shard.staging = idx
        else:
            shard.index = idx
            shard.staging = None
            if spec.kind == "ivf":
                faiss.downcast_index(idx).nprobe = spec.nprobe
        shard.tombstones = set(int(t) for t in meta.get("tombstones", []))
        shard._max_id = None  # found on first need: most shards never need it
        shard.seq = int(meta["seq"])
        if shard.ntotal != meta.get("ntotal"):
            raise ValueError("shard holds a different number of vectors than its manifest says")
        return shard


def _file_crc(path: Path) -> tuple[int, int]:
    """CRC-32 and size of a file, streamed in 16 MiB pieces."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return crc, size


def _fsync_dir(folder: Path) -> None:
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _atomic_write(path: Path, data: bytes | memoryview) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
