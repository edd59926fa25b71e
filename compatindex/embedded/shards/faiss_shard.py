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

from ..durable import atomic_write, fsync_path
from ..faiss_import import faiss
from ...errors import InvalidInputError

SHARD_KINDS = ("flat", "ivf", "hnsw")
RETRAIN_GROWTH = 10  # an IVF shard that grew this many times past its training sample retrains


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """How a shard indexes its vectors.

    ``flat``: exact inner product (default). ``ivf``: ``nlist`` inverted lists searched with
    ``nprobe``; trained once it holds ``train_factor * nlist`` vectors (exact flat until then).
    ``hnsw``: graph with ``m`` links, ``ef_search``/``ef_construction``; a removed or replaced
    vector's graph node becomes a tombstone (a replacement is a fresh node: the graph is never
    rebuilt for it), filtered at search time; the graph is rebuilt from its live nodes once
    tombstones pass 20% of it (batched compaction).
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
        # flat/IVF: unused. HNSW: graph node positions whose vector is gone (removed or replaced).
        self.tombstones: set[int] = set()
        self._labels: np.ndarray | None = None  # HNSW: node position -> internal id (id_map copy)
        self.index = self._empty_index()
        self.staging = None  # untrained IVF: vectors wait in an exact flat index
        self.trained_on = 0  # IVF: vectors the coarse quantizer was trained on
        self.retrains = 0  # IVF: retrains done by this process (the shard outgrew its training)
        self.version = 0  # bumped by every change of the contents (keys caches such as row maps)
        self._rowmap: tuple[int, Any] | None = None
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
            ids = ids[self._live_nodes()]
        return ids

    def describe(self) -> dict[str, Any]:
        """Kind-specific state for ``stats()``: IVF training, HNSW tombstones."""
        if self.spec.kind == "ivf":
            return {"trained": self.staging is None, "trained_on": self.trained_on, "retrains": self.retrains,
                    "retrain_at": RETRAIN_GROWTH * max(self.trained_on, 1) if self.staging is None else None}
        if self.spec.kind == "hnsw":
            return {"graph_nodes": int(self.index.ntotal), "tombstones": len(self.tombstones)}
        return {}

    # -- HNSW nodes --------------------------------------------------------------------------
    def _node_labels(self) -> np.ndarray:
        """HNSW: the internal id of every graph node, by node position (dead nodes included)."""
        if self._labels is None or len(self._labels) != int(self.index.ntotal):
            self._labels = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        return self._labels

    def _live_nodes(self) -> np.ndarray:
        live = np.ones(int(self.index.ntotal), dtype=bool)
        if self.tombstones:
            live[np.fromiter(self.tombstones, dtype=np.int64)] = False
        return live

    def add(self, iids: np.ndarray, x: np.ndarray) -> None:
        """Add ``(n, dim)`` float32 vectors under int64 internal ids."""
        iids = np.ascontiguousarray(iids, dtype=np.int64)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(iids) == 0:
            return
        self.version += 1
        if self.staging is not None:
            self.staging.add_with_ids(x, iids)
            self._maybe_train()
        else:
            self.index.add_with_ids(x, iids)
            if self.spec.kind == "ivf" and self.ntotal >= RETRAIN_GROWTH * max(self.trained_on, 1):
                self.retrain()
            if self.spec.kind == "hnsw" and self._labels is not None:
                self._labels = np.concatenate([self._labels, iids])  # new nodes at the end

    def _maybe_train(self) -> None:
        s = self.spec
        staging = self.staging
        assert staging is not None  # called while staging only
        n = int(staging.ntotal)
        if n < s.train_factor * s.nlist:
            return
        flat = faiss.downcast_index(staging.index)
        xb = faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim).copy()
        ids = faiss.vector_to_array(staging.id_map).astype(np.int64)
        self.index.train(xb)
        self.index.add_with_ids(xb, ids)
        self.trained_on = n
        self.staging = None

    def retrain(self) -> None:
        """IVF: train a new coarse quantizer on the shard's current vectors (at most 256 per list,
        drawn evenly) and re-add them all: the training sample no longer represented the shard."""
        ids, x = self.vectors()
        self.version += 1
        cap = 256 * self.spec.nlist
        sample = x if len(x) <= cap else x[np.linspace(0, len(x) - 1, cap).astype(np.int64)]
        self.index = self._empty_index()
        self.index.train(np.ascontiguousarray(sample))
        self.index.add_with_ids(x, ids)
        self.trained_on = len(ids)
        self.retrains += 1

    def remove(self, iids: np.ndarray) -> None:
        """Remove internal ids (absent ones are ignored)."""
        iids = np.ascontiguousarray(iids, dtype=np.int64)
        if len(iids) == 0:
            return
        self.version += 1
        if self.spec.kind == "hnsw":
            # HNSW graphs cannot drop nodes: tombstone the live nodes of these ids (a replacement
            # then adds a fresh node), and rebuild once tombstones pass 20% of the graph.
            hit = np.isin(self._node_labels(), iids) & self._live_nodes()
            self.tombstones.update(np.flatnonzero(hit).tolist())
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
                live = self._live_nodes() if idx is self.index and self.tombstones else None
                pos = {int(v): i for i, v in enumerate(own) if live is None or live[i]}
                sub = faiss.downcast_index(idx.index)
                n = int(idx.ntotal)
                if isinstance(sub, faiss.IndexFlat):
                    xb = faiss.rev_swig_ptr(sub.get_xb(), n * self.dim).reshape(n, self.dim)
                else:
                    xb = sub.reconstruct_n(0, n)
                where = np.flatnonzero(np.isin(ids, own))
                out[where] = xb[[pos[int(i)] for i in ids[where]]]
            else:  # IVF-Flat: read each inverted list's ids and raw codes (no direct map: that
                # needs sequential ids and forbids removals, so it broke after the first delete)
                own, xb = self._ivf_contents(idx)
                pos = {int(v): i for i, v in enumerate(own)}
                where = np.flatnonzero(np.isin(ids, own))
                out[where] = xb[[pos[int(i)] for i in ids[where]]]
        return ids, out

    def _ivf_contents(self, idx) -> tuple[np.ndarray, np.ndarray]:
        """All ``(ids, vectors)`` an IVF-Flat index holds, list by list."""
        invl = idx.invlists
        id_parts, x_parts = [], []
        for li in range(idx.nlist):
            n = invl.list_size(li)
            if not n:
                continue
            id_parts.append(faiss.rev_swig_ptr(invl.get_ids(li), n).copy().astype(np.int64))
            codes = faiss.rev_swig_ptr(invl.get_codes(li), n * invl.code_size).copy()
            x_parts.append(codes.view(np.float32).reshape(n, self.dim))
        if not id_parts:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.concatenate(id_parts), np.concatenate(x_parts)

    def _ivf_ids(self) -> np.ndarray:
        invl = self.index.invlists
        parts = [faiss.rev_swig_ptr(invl.get_ids(li), invl.list_size(li)).copy()
                 for li in range(self.index.nlist) if invl.list_size(li)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def compact(self) -> None:
        """Rebuild the index from its live vectors (drops tombstones)."""
        ids, x = self.vectors()
        self.version += 1
        self.tombstones = set()
        self._labels = None
        self.index = self._empty_index()
        if self.spec.kind == "ivf":
            self.staging = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        self.add(ids, x)

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool] | None:
        """Exact row access for filtered search: ``(xb, ids, pos, identity)`` where ``xb`` is the
        ``(rows, dim)`` float32 storage (a view, not a copy), ``ids[row]`` the internal id of each row
        (-1: a tombstone), ``pos[iid]`` the row of each internal id (-1: none) and ``identity`` says
        ``ids == arange``. None for IVF (its vectors live in inverted lists). Cached per contents."""
        if self._rowmap is not None and self._rowmap[0] == self.version:
            return self._rowmap[1]
        if self.spec.kind == "ivf" and self.staging is None:
            return None
        idx = self.staging if self.staging is not None else self.index
        n = int(idx.ntotal)
        ids = faiss.vector_to_array(idx.id_map).astype(np.int64)
        inner = faiss.downcast_index(idx.index)
        store = faiss.downcast_index(inner.storage) if self.spec.kind == "hnsw" and self.staging is None else inner
        xb = faiss.rev_swig_ptr(store.get_xb(), n * self.dim).reshape(n, self.dim) if n else \
            np.zeros((0, self.dim), np.float32)
        if self.tombstones:
            ids = np.where(self._live_nodes(), ids, -1)
        identity = bool(n == 0 or (ids[0] == 0 and ids[-1] == n - 1 and np.array_equal(ids, np.arange(n))))
        top = int(ids.max()) + 1 if n else 0
        pos = np.full(top, -1, dtype=np.int64)
        ok = ids >= 0
        pos[ids[ok]] = np.flatnonzero(ok)
        out = (xb, ids, pos, identity)
        self._rowmap = (self.version, out)
        return out

    def search_rows(self, q: np.ndarray, k: int, rowbits: np.ndarray, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Flat or HNSW: top-``k`` among the rows set in the little-endian bitmap ``rowbits``, searched
        on the inner index (no id translation per row), ids mapped back (-1 pads)."""
        xb, ids, _, _ = self.rows()  # type: ignore[misc]
        idx = self.staging if self.staging is not None else self.index
        inner = faiss.downcast_index(idx.index)
        sel = faiss.IDSelectorBitmap(len(rowbits), faiss.swig_ptr(rowbits))
        if isinstance(inner, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.spec.ef_search, k, ef or 0))
        else:
            params = faiss.SearchParameters(sel=sel)
        D, N = inner.search(q, k, params=params)
        I = np.where(N >= 0, ids[np.where(N >= 0, N, 0)], -1)
        return D, I

    # -- search ------------------------------------------------------------------------------
    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
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
        if self.spec.kind == "hnsw" and (self.tombstones or allowed is not None):
            return self._search_hnsw_nodes(q, k, allowed)
        results = []
        for idx in (self.index, self.staging):
            if idx is None or idx.ntotal == 0:
                continue
            sel = _bitmap_selector(allowed)
            params = None
            if sel is not None or self.spec.kind != "flat":
                if isinstance(idx, faiss.IndexIVF):
                    params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe or self.spec.nprobe)
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

    def _search_hnsw_nodes(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """HNSW with tombstones or a mask: search the graph by node position, with a bitmap of
        the live nodes whose item is allowed, and map node positions back to internal ids."""
        labels = self._node_labels()
        ok = self._live_nodes()
        if allowed is not None:
            byte = labels >> 3
            inside = byte < len(allowed)
            bit = np.zeros(len(labels), dtype=bool)
            bit[inside] = (allowed[byte[inside]] >> (labels[inside] & 7).astype(np.uint8)) & 1 == 1
            ok &= bit
        bits = np.packbits(ok, bitorder="little")
        sel = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
        graph = faiss.downcast_index(self.index.index)
        params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.spec.ef_search, k))
        D, N = graph.search(q, k, params=params)
        I = np.where(N >= 0, labels[np.where(N >= 0, N, 0)], -1)
        return D, I

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
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(folder)
        meta = {
            "seq": int(seq), "dim": self.dim, "spec": self.spec.to_dict(), "ntotal": self.ntotal,
            "trained": self.staging is None, "crc32": crc, "bytes": size,
            "tombstones": sorted(self.tombstones), "tombstone_kind": "node", "trained_on": self.trained_on,
        }
        atomic_write(folder / f"{name}.json", json.dumps(meta).encode())
        self.seq = int(seq)

    def save_manifest(self, folder: Path, name: str, seq: int) -> bool:
        """Move the saved manifest's ``seq`` forward for a shard unchanged since its save (the
        ``.faiss`` file stays). False when there is no readable manifest of this shard to move."""
        path = folder / f"{name}.json"
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(meta, dict) or meta.get("ntotal") != self.ntotal or meta.get("dim") != self.dim:
            return False
        meta["seq"] = int(seq)
        atomic_write(path, json.dumps(meta).encode())
        self.seq = int(seq)
        return True

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
        tomb = [int(t) for t in meta.get("tombstones", [])]
        if spec.kind == "hnsw" and tomb and meta.get("tombstone_kind") != "node":
            # written before tombstones were node positions: they were internal ids, one node each
            tomb = np.flatnonzero(np.isin(shard._node_labels(), tomb)).tolist()
        shard.tombstones = set(tomb)
        shard.seq = int(meta["seq"])
        trained = meta.get("trained_on")
        shard.trained_on = int(trained) if isinstance(trained, int) else (shard.ntotal if shard.staging is None else 0)
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
