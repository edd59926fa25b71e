"""The embedded backend: one index folder holding an LMDB store and FAISS shards derived from it.

Folder layout (docs/on-disk-format.md): ``compatindex.json`` (marker and format version),
``store/`` (the LMDB environment, the source of truth), ``shards/`` (one FAISS file per version,
each with the sequence number it contains) and ``.lock`` (the writer lock). A write commits to
the store in one transaction, then is applied to the shards; a crash in between only costs a
replay of the op log on the next open (docs/reliability.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from ..backend import ShardHits, ShardQuery
from ..core.datatypes import ItemBatch, ItemId, Version
from ..core.records import version_from_record
from ..core.validate import check_id_kind, sample_rows, unknown_ids
from ..errors import CorruptIndexError, FormatVersionError, NotAnIndexError, VersionExistsError
from .lock import WriterLock
from .shards import ShardSet, ShardSpec
from .shards.shard_set import resolve_device
from .store import FORMAT_VERSION, LmdbStore, Writer, unpack
from .verify import verify_index

if TYPE_CHECKING:
    from ..backend import Backend

log = logging.getLogger("compatindex")

MARKER = "compatindex.json"
T = TypeVar("T")


def open_backend(path: str | os.PathLike[str], *, readonly: bool = False, create: bool = True, shard: Any = None,
                 device: str = "auto", lock_timeout: float = 0.0) -> "EmbeddedBackend":
    """Open (or create) the index folder at ``path`` (``":memory:"``: a temporary folder)."""
    return EmbeddedBackend(path, readonly=readonly, create=create, shard=shard, device=device,
                           lock_timeout=lock_timeout)


class EmbeddedBackend:
    """LMDB store + per-version FAISS shards (implements :class:`compatindex.backend.Backend`).

    Parameters
    ----------
    path:
        Index folder, or ``":memory:"`` for a throwaway folder removed on close.
    readonly:
        Take no writer lock; :meth:`refresh` follows writes committed by other processes.
    create:
        Create the index when the folder is absent or empty.
    shard:
        Shard kind and parameters (see :class:`ShardSpec`); None keeps the recorded spec.
    device:
        ``"auto"``, ``"cpu"``, ``"gpu"``, ``"torch"`` or ``"torch-fp16"``.
    lock_timeout:
        Seconds to wait for another writer before raising ``IndexLockedError``.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool, create: bool, shard: Any,
                 device: str, lock_timeout: float) -> None:
        self._tmp: str | None = None
        if str(path) == ":memory:":
            self._tmp = tempfile.mkdtemp(prefix="compatindex-mem-")
            path = self._tmp
            readonly = False
        self.path: Path = Path(path)
        self.readonly = readonly
        self._lock: WriterLock | None = None
        self._creating = False
        self._store: LmdbStore | None = None
        self._versions: dict[str, Version] = {}
        self._seen_seq = 0
        spec = None if shard is None else ShardSpec.parse(shard)
        device_resolved = resolve_device(device)
        try:
            self._open_folder(create=create)
            if not readonly:
                self._lock = WriterLock(self.path / ".lock", timeout=lock_timeout)
            self._store = LmdbStore(self.path / "store", readonly=readonly, create=not readonly)
            if self._creating:
                self._write_marker()
            spec = self._shard_spec(spec)
            self._load_versions()
            self.shards = ShardSet(self.path / "shards", spec, device_resolved)
            self.shards.open(self.store, self._dims())
            for event in self.shards.events:
                log.info("%s: %s", self.path, event)
            if self.shards.events and not readonly and self._tmp is None:
                # A shard was rebuilt or replayed (e.g. after a crash mid-flush): persist it now, so
                # that a damaged file does not outlive the recovery (verify() checks the files).
                try:
                    self.shards.flush(self.store.seq())
                except OSError as exc:
                    log.warning("%s: could not save recovered shards (%s); they will be rebuilt on open", self.path, exc)
        except BaseException:
            self._release()
            raise

    @property
    def store(self) -> LmdbStore:
        """The LMDB store (raises once closed)."""
        if self._store is None:
            raise CorruptIndexError(f"index {self.path} is closed")
        return self._store

    # -- opening -----------------------------------------------------------------------------
    def _open_folder(self, *, create: bool) -> None:
        marker = self.path / MARKER
        if marker.exists():
            try:
                info = json.loads(marker.read_text())
                fmt = int(info["format_version"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise NotAnIndexError(f"{marker} is damaged ({exc}); this folder is not a readable index") from None
            if info.get("format") != "compatindex":
                raise NotAnIndexError(f"{self.path} is not a compatindex index ({marker} says {info.get('format')!r})")
            if fmt > FORMAT_VERSION:
                raise FormatVersionError(
                    f"index {self.path} has format version {fmt}; this compatindex reads up to {FORMAT_VERSION}"
                )
            return
        interrupted = (self.path / "store" / "data.mdb").exists() and not self.readonly and create
        if not interrupted and self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise NotAnIndexError(
                f"{self.path} is not a compatindex index (no {MARKER})",
                hint="point at an index folder, or at an absent or empty folder to create one",
            )
        if not create or self.readonly:
            raise NotAnIndexError(f"no index at {self.path}", hint="create it with compatindex.open(path) or `compatindex init`")
        # The marker is written once the store exists (see __init__), so a reader never finds a
        # marker without a store; a creation interrupted before the marker is finished on retry.
        self.path.mkdir(parents=True, exist_ok=True)
        self._creating = True

    def _write_marker(self) -> None:
        tmp = self.path / (MARKER + ".tmp")
        tmp.write_text(json.dumps({"format": "compatindex", "format_version": FORMAT_VERSION,
                                   "created_at": time.time()}, indent=1))
        os.replace(tmp, self.path / MARKER)

    def _shard_spec(self, spec: ShardSpec | None) -> ShardSpec:
        with self.store.read() as r:
            stored = r.meta("shard_spec")
        if spec is None:
            return ShardSpec.parse(stored) if stored else ShardSpec()
        if stored != spec.to_dict() and not self.readonly:
            # Shards are derived: a new spec is recorded and the shards rebuild themselves.
            self.store.write(lambda w: w.put_meta("shard_spec", spec.to_dict()), log=False)
        return spec

    def _load_versions(self) -> None:
        with self.store.read() as r:
            records = r.versions()
            self._seen_seq = r.seq()
        self._versions = {rec["name"]: version_from_record(rec, where=str(self.store.file)) for rec in records}

    def _dims(self) -> list[tuple[int, int]]:
        return [(v.code, v.dim) for v in self._versions.values()]

    # -- versions ----------------------------------------------------------------------------
    def versions(self) -> Mapping[str, Version]:
        return self._versions

    def refresh(self, *, force: bool = False) -> None:
        """Catch up with writes committed by other processes since the last call (cheap when none)."""
        seq = self.store.seq()
        if seq != self._seen_seq:
            self._load_versions()
            self.shards.sync(self.store)

    def put_version(self, record: dict[str, Any]) -> None:
        name = record["name"]

        def fn(w: Writer) -> None:
            if w.txn.get(name.encode(), db=w.s.db["versions"]) is not None:
                raise VersionExistsError(f"`name` {name!r} is already a version of this index")
            record["created_seq"] = w.seq() + 1
            w.put_version(record)

        _, seq = self.store.write(fn)
        self._load_versions()
        self.shards.add_version(record["code"], record["dim"], seq)
        self.shards.seq = max(self.shards.seq, seq)

    def set_serving(self, name: str, serving: dict[str, Any]) -> None:
        def fn(w: Writer) -> None:
            raw = w.txn.get(name.encode(), db=w.s.db["versions"])
            if raw is None:
                raise CorruptIndexError(f"version {name!r} has no record in {self.store.file}")
            record = unpack(raw, what=f"version record {name!r}", where=self.store.file)
            record["serving"] = serving
            w.put_version(record)

        _, seq = self.store.write(fn)
        self._load_versions()
        self.shards.seq = max(self.shards.seq, seq)  # the op adds nothing to any shard

    # -- writes ------------------------------------------------------------------------------
    def add(self, version: Version, ids: list[ItemId], id_kind: str, vectors: np.ndarray,
            labels: list[Any] | None, metadata: list[Any] | None) -> int:
        def fn(w: Writer) -> tuple[np.ndarray, dict[str, Any]]:
            self._check_kind(w, id_kind)
            iids = w.new_items(ids, labels, metadata)  # raises DuplicateIdError for existing ids
            w.put_vectors(version.code, iids, vectors, fresh=True)
            return iids, w.op

        return self._commit(fn, version, vectors)

    def backfill(self, version: Version, ids: list[ItemId], id_kind: str, vectors: np.ndarray,
                 *, drop_old: bool) -> int:
        codes = [u.code for u in self._versions.values() if u.code != version.code]

        def fn(w: Writer) -> tuple[np.ndarray, dict[str, Any]]:
            self._check_kind(w, id_kind)
            iids = w.lookup(ids)
            self._require_known(ids, iids)
            w.put_vectors(version.code, iids, vectors)
            if drop_old:
                for c in codes:
                    w.remove_vectors(c, iids, missing_ok=True)
            return iids, w.op

        return self._commit(fn, version, vectors)

    def delete(self, ids: list[ItemId], id_kind: str) -> int:
        codes = [u.code for u in self._versions.values()]

        def fn(w: Writer) -> tuple[np.ndarray, dict[str, Any]]:
            self._check_kind(w, id_kind)
            iids = w.lookup(ids)
            self._require_known(ids, iids)
            w.delete_items(iids, codes)
            return iids, w.op

        (iids, op), seq = self.store.write(fn)
        self._apply(seq, op, [])
        return len(iids)

    def _commit(self, fn: Callable[[Writer], tuple[np.ndarray, dict[str, Any]]], version: Version,
                vectors: np.ndarray) -> int:
        (iids, op), seq = self.store.write(fn)
        self._apply(seq, op, [(version.code, iids, vectors)])
        return seq

    def _apply(self, seq: int, op: dict[str, Any], adds: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        removes = [(vc, np.frombuffer(b, dtype=">i8").astype(np.int64)) for vc, b in op.get("r", [])]
        try:
            self.shards.apply(seq, removes, adds)
        except Exception as exc:  # the write is committed; shards are derived, so rebuild them
            log.warning("%s: shard update failed (%s); rebuilding shards from the store", self.path, exc)
            self.shards = ShardSet(self.path / "shards", self.shards.spec, self.shards.device)
            self.shards.open(self.store, self._dims())
        self._seen_seq = seq

    @staticmethod
    def _check_kind(w: Writer, kind: str) -> None:
        stored = w.meta("id_kind")
        check_id_kind(stored, kind)
        if stored is None:
            w.put_meta("id_kind", kind)

    @staticmethod
    def _require_known(ids: Sequence[Any], iids: np.ndarray) -> None:
        err = unknown_ids(ids, iids >= 0)
        if err is not None:
            raise err

    # -- reads -------------------------------------------------------------------------------
    def search(self, queries: Sequence[ShardQuery], k: int) -> ShardHits:
        codes = {name: v.code for name, v in self._versions.items()}
        views = self._views(queries, codes)
        scores, keys = [], []
        for step, view in zip(queries, views):
            vc = codes[step.version]
            nq = len(step.queries)
            D, I = self.shards.search(vc, step.queries, k, view)
            if D.shape[1] == 0:  # empty, or every item it holds is represented by another version
                D = np.full((nq, k), -np.inf, dtype=np.float32)
                I = np.full((nq, k), -1, dtype=np.int64)
            scores.append(D)
            keys.append(I)
        return ShardHits(scores, keys, self._resolver())

    def _views(self, queries: Sequence[ShardQuery], codes: Mapping[str, int]) -> list[Any]:
        """Per step, the view of the items its shard represents (kept up to date by the shards)."""
        if not queries:
            return []
        pref = list(queries[-1].shadowing) + [queries[-1].version]
        if all(s.shadowing == tuple(pref[:i]) and s.version == pref[i] for i, s in enumerate(queries)):
            view = self.shards.view([codes[u] for u in pref])  # one view for the whole preference order
            return [view] * len(queries)
        return [self.shards.view([codes[u] for u in (*s.shadowing, s.version)]) for s in queries]

    def _resolver(self) -> Callable[[np.ndarray], list[ItemId] | None]:
        shards_seq = self.shards.seq

        def resolve(keys: np.ndarray) -> list[ItemId] | None:
            with self.store.read() as r:
                try:
                    return r.external(keys.tolist())
                except CorruptIndexError:
                    if self.readonly and r.seq() != shards_seq:
                        return None  # internal ids are never reused, so only a concurrent delete does this
                    raise

        return resolve

    def known(self, ids: list[ItemId]) -> np.ndarray:
        with self.store.read() as r:
            return r.lookup(ids) >= 0

    def vectors(self, version: Version, ids: list[ItemId]) -> tuple[np.ndarray, np.ndarray]:
        with self.store.read() as r:
            iids = r.lookup(ids)
            x, ok = r.vectors(version.code, version.dim, iids.tolist())
        return x, ok & (iids >= 0)

    def labels(self, ids: list[ItemId]) -> list[Any]:
        with self.store.read() as r:
            return r.labels(r.lookup(ids).tolist())

    def sample(self, version: Version, limit: int | None, rng: np.random.Generator) -> ItemBatch:
        with self.store.read() as r:
            parts = list(self.store.iter_live(version.code, version.dim, reader=r))
            iids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
            x = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, version.dim), np.float32)
            order = np.argsort(iids, kind="stable")
            iids, x = iids[order], x[order]
            pick = sample_rows(len(iids), limit, rng)
            if pick is not None:
                iids, x = iids[pick], x[pick]
            ext = r.external(iids.tolist())
            labels = r.labels(iids.tolist())
        return ItemBatch(ext, x, labels, version.name)

    def count(self) -> int:
        with self.store.read() as r:
            return int(r.meta("n_items", 0))

    def stats(self) -> dict[str, Any]:
        with self.store.read() as r:
            n = int(r.meta("n_items", 0))
            seq = r.seq()
            # one list of versions for the counts and the loop below: a refresh in between could
            # load a version registered meanwhile by another process
            listed = sorted(self._versions.values(), key=lambda u: u.code)
            counts = {v.name: int(r.meta(f"count:{v.code}", 0)) for v in listed}
            id_kind = r.meta("id_kind")
        disk = 0
        for f in self.path.rglob("*"):
            try:  # another process may rename or remove files meanwhile (shard saves: .tmp -> final)
                if f.is_file():
                    disk += f.stat().st_size
            except OSError:
                pass
        out: dict[str, Any] = {"path": str(self.path), "backend": "embedded", "items": n, "seq": seq,
                               "id_kind": id_kind, "disk_bytes": disk, "device": self.shards.device,
                               "shard_spec": self.shards.spec.to_dict(), "versions": {}}
        for v in listed:
            shard = self.shards.shards[v.code]
            saved = self.shards.saved_seq(v.code)
            out["versions"][v.name] = {
                "dim": v.dim, "parent": v.parent, "metric": v.metric.value, "vectors": counts[v.name],
                "coverage": counts[v.name] / n if n else 0.0,
                "shard": {"ntotal": shard.ntotal, "seq": shard.seq, "saved_seq": saved,
                          "persisted": saved == seq},
            }
        return out

    def verify(self) -> list[str]:
        return verify_index(self.store, self.shards, list(self._versions.values()), check_file=not self.readonly)

    # -- lifecycle ---------------------------------------------------------------------------
    def flush(self) -> None:
        self.shards.flush(self.store.seq())

    def close(self) -> None:
        """Persist shards (writers), release the store and the writer lock."""
        try:
            if not self.readonly and self._store is not None and self._tmp is None:
                try:
                    self.shards.flush(self.store.seq())
                except OSError as exc:  # shards are derived: a failed save only costs a rebuild
                    log.warning("%s: could not save shards (%s); they will be rebuilt on open", self.path, exc)
        finally:
            self._release()

    def _release(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


if TYPE_CHECKING:
    def _typecheck(b: EmbeddedBackend) -> Backend:  # mypy verifies EmbeddedBackend satisfies the Protocol
        return b
