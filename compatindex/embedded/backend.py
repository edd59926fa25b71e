"""The embedded backend: one index folder holding an LMDB store and FAISS shards derived from it.

Folder layout (docs/on-disk-format.md): ``compatindex.json`` (marker and format version),
``store/`` (the LMDB environment, the source of truth), ``shards/`` (one FAISS file per version,
each with the sequence number it contains) and ``.lock`` (the writer lock). A write commits to
the store in one transaction, then is applied to the shards; a crash in between only costs a
replay of the op log on the next open (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from ..backend import ShardHits, ShardQuery
from ..core.datatypes import ItemBatch, ItemId, Version
from ..core.filters import Filter, check_payload, check_schema_name, values_of
from ..core.records import version_from_record
from ..core.validate import check_id_kind, sample_rows, unknown_ids
from ..errors import (CorruptIndexError, FormatVersionError, InvalidInputError, NotAnIndexError, ReadOnlyError,
                      VersionExistsError)
from .durable import fsync_path, write_durably
from .lock import WriterLock
from .payload_index import PayloadIndex, check_columns
from .rwlock import RWLock
from .shards import ShardSet, ShardSpec
from .shards.shard_set import resolve_device
from .store import FORMAT_VERSION, LmdbStore, Writer, unpack
from .verify import verify_index

if TYPE_CHECKING:
    from ..backend import Backend

log = logging.getLogger("compatindex")

MARKER = "compatindex.json"
COMPACT_PENDING = "compact.pending"  # a compacted copy is complete and being swapped in
T = TypeVar("T")
CHECKPOINT_OPS = 1000  # a writer saves its changed shards after this many writes ...
CHECKPOINT_SECONDS = 60.0  # ... or this long after the first unsaved write


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
        self._ext_cache: tuple[np.ndarray, np.ndarray] | None = None  # internal id -> int external id
        self._payload = PayloadIndex()  # label and metadata columns for filters (derived, in memory)
        # Threads: searches share `_rw`; applying writes, syncing and saving shards hold it alone.
        # `_commit_lock` keeps one writer thread's commit and its shard update together, so shards
        # apply writes in sequence order.
        self._rw = RWLock()
        self._commit_lock = threading.RLock()
        self._save_lock = threading.RLock()  # one shard save at a time (checkpoints, flush, compact)
        # Automatic checkpoints (writers): changed shards saved by a background thread, then the op
        # log truncated up to the previous checkpoint (docs/on-disk-format.md, "Checkpoints").
        self.checkpoint_ops = CHECKPOINT_OPS
        self._checkpoint_seconds = CHECKPOINT_SECONDS
        self._unsaved_ops = 0
        self._first_unsaved = 0.0
        self._ckpt_seqs: list[int] = []  # sequence numbers of the last checkpoints
        self._ckpt_thread: threading.Thread | None = None
        self._ckpt_wake = threading.Event()
        self._ckpt_stop = threading.Event()
        self._ckpt_error: BaseException | None = None
        spec = None if shard is None else ShardSpec.parse(shard)
        device_resolved = resolve_device(device)
        try:
            self._open_folder(create=create)
            if not readonly:
                self._lock = WriterLock(self.path / ".lock", timeout=lock_timeout)
                self._recover_compaction()
            else:
                self._wait_for_swap()
            self._store = LmdbStore(self.path / "store", readonly=readonly, create=not readonly)
            if self._creating:
                self._write_marker()
            spec = self._shard_spec(spec)
            self._load_versions()
            self.shards = ShardSet(self.path / "shards", spec, device_resolved)
            self.shards.open(self.store, self._dims())
            for event in self.shards.events:
                log.info("%s: %s", self.path, event)
            if not readonly:  # a retire cut short by a kill may leave its shard files behind
                for v in self._versions.values():
                    if v.retired:
                        self.shards.drop_version(v.code, delete_files=True)
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

    def _wait_for_swap(self, timeout: float = 5.0) -> None:
        """A reader opening while a compaction swaps the store folders waits for the new one."""
        end = time.monotonic() + timeout
        while (self.path / COMPACT_PENDING).exists() and not (self.path / "store" / "data.mdb").exists():
            if time.monotonic() > end:
                return
            time.sleep(0.02)

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
        """Codes and dims of the versions that have a shard (a retired version has none)."""
        return [(v.code, v.dim) for v in self._versions.values() if not v.retired]

    # -- versions ----------------------------------------------------------------------------
    def versions(self) -> Mapping[str, Version]:
        return self._versions

    def refresh(self, *, force: bool = False) -> None:
        """Catch up with writes committed by other processes since the last call (cheap when none)."""
        if self.readonly and self.store.replaced():
            self._follow_compaction()
        seq = self.store.seq()
        if seq != self._seen_seq:
            with self._rw.write():
                if self.store.seq() != self._seen_seq:
                    self._load_versions()
                    self.shards.sync(self.store)

    def put_version(self, record: dict[str, Any]) -> None:
        name = record["name"]

        def fn(w: Writer) -> None:
            if w.txn.get(name.encode(), db=w.s.db["versions"]) is not None:
                raise VersionExistsError(f"`name` {name!r} is already a version of this index")
            record["created_seq"] = w.seq() + 1
            w.put_version(record)

        with self._commit_lock:
            _, seq = self.store.write(fn)
            with self._rw.write():
                self._load_versions()
                if record["code"] not in self.shards.shards:  # a refresh may have synced it meanwhile
                    self.shards.add_version(record["code"], record["dim"], seq)
                self.shards.seq = max(self.shards.seq, seq)
            self._payload.committed(seq)

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
        self._payload.committed(seq)

    # -- writes ------------------------------------------------------------------------------
    def add(self, version: Version, ids: list[ItemId], id_kind: str, vectors: np.ndarray,
            labels: list[Any] | None, metadata: list[Any] | None) -> int:
        self._live(version)

        def fn(w: Writer) -> tuple[np.ndarray, dict[str, Any]]:
            self._check_kind(w, id_kind)
            if metadata is not None:
                check_payload(metadata, w.meta("payload_schema") or {})  # the payload index stays typed
            iids = w.new_items(ids, labels, metadata)  # raises DuplicateIdError for existing ids
            w.put_vectors(version.code, iids, vectors, fresh=True)
            return iids, w.op

        return self._commit(fn, version, vectors, labels=labels, metadata=metadata)

    def backfill(self, version: Version, ids: list[ItemId], id_kind: str, vectors: np.ndarray,
                 *, drop_old: bool) -> int:
        self._live(version)
        codes = [u.code for u in self._versions.values() if u.code != version.code and not u.retired]

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
        codes = [u.code for u in self._versions.values() if not u.retired]

        def fn(w: Writer) -> tuple[np.ndarray, dict[str, Any]]:
            self._check_kind(w, id_kind)
            iids = w.lookup(ids)
            self._require_known(ids, iids)
            w.delete_items(iids, codes)
            return iids, w.op

        with self._commit_lock:
            (iids, op), seq = self.store.write(fn)
            self._apply(seq, op, [])
        return len(iids)

    # -- payload -----------------------------------------------------------------------------
    def set_payload(self, ids: list[ItemId], id_kind: str, *, labels: list[Any] | None,
                    metadata: list[dict[str, Any] | None] | None, merge: bool) -> int:
        """Replace (or, ``merge``, update key by key) labels and metadata in one transaction.

        ``UnknownIdError`` with nothing written when an id is absent; ``InvalidInputError`` (nothing
        written) when a resulting value of an indexed field has another type. Other processes see the
        change at their next ``refresh`` (the op log names the items: docs/on-disk-format.md)."""
        out: dict[str, Any] = {}

        def fn(w: Writer) -> tuple[np.ndarray, dict[str, Any]]:
            self._check_kind(w, id_kind)
            iids = w.lookup(ids)
            self._require_known(ids, iids)
            stored = w.set_payload(iids, labels, metadata, merge=merge)
            if stored is not None:
                check_payload(stored, w.meta("payload_schema") or {})
            out["metadata"] = stored
            return iids, w.op

        with self._commit_lock:
            (iids, op), seq = self.store.write(fn)
            self._apply(seq, op, [], iids=iids, labels=labels, metadata=out["metadata"])
        return seq

    def create_payload_index(self, field: str, schema: str) -> None:
        """Declare ``field`` indexed as ``schema`` (durable: meta ``payload_schema``).

        Reads every item's metadata once to check the stored values (``InvalidInputError`` naming the
        first item whose value has another type; nothing changes). The writer builds the field's
        in-memory column at once (another read of every item's metadata); readers build it on the
        first filter that names the field."""
        field, schema = check_schema_name(field, schema)
        if self.readonly:
            raise ReadOnlyError(f"index {self.path} is open read-only")

        def fn(w: Writer) -> dict[str, str]:
            cur = dict(w.meta("payload_schema") or {})
            with w.txn.cursor(db=w.s.db["attrs"]) as c:
                for k, raw in c:
                    m = unpack(raw, what="metadata", where=self.store.file)
                    try:
                        check_payload([m], {field: schema})
                    except InvalidInputError:
                        iid = int.from_bytes(k, "big", signed=True)
                        bad = [v for v in values_of(None, m, field)]
                        ext = w.external([iid])[0]
                        raise InvalidInputError(
                            f"cannot index field {field!r} as {schema!r}: item {ext!r} holds "
                            + ", ".join(f"{type(v).__name__} {v!r}" for v in bad[:3]),
                            hint="fix the item's metadata with set_metadata, or pick the schema its values have") from None
            cur[field] = schema
            w.put_meta("payload_schema", cur)
            return cur

        with self._commit_lock:
            _, seq = self.store.write(fn)
            self._apply(seq, {}, [])
            self._payload.build(self.store, {field}, len(self.shards.held))

    def payload_state(self) -> dict[str, Any]:
        """The payload index in memory: declared ``schema``, the ``columns`` built, the sequence
        number they reflect, how many full ``builds`` ran and their ``memory_bytes``."""
        return self._payload.describe()

    def payload_schema(self) -> dict[str, str]:
        with self.store.read() as r:
            schema = r.meta("payload_schema") or {}
        if not isinstance(schema, dict):
            raise CorruptIndexError(f"damaged meta record 'payload_schema' in {self.store.file}")
        return dict(schema)

    def retire(self, version: Version) -> int:
        """Drop every vector of ``version`` and its shard; mark the record ``retired`` (kept: the
        version algebra still maps its queries). Refused, with nothing changed, when some item holds
        no vector of another version. One transaction; the shard files go after it commits (a writer
        opening after a kill in between deletes them)."""
        if self.readonly:
            raise ReadOnlyError(f"index {self.path} is open read-only")
        v = self._versions.get(version.name, version)
        if v.retired:
            raise InvalidInputError(f"version {v.name!r} is already retired")
        others = [u.code for u in self._versions.values() if u.code != v.code and not u.retired]

        def fn(w: Writer) -> int:
            mine = w.live_ids(v.code)
            if len(mine):
                held = [w.live_ids(c) for c in others]
                orphans = np.setdiff1d(mine, np.concatenate(held)) if held else mine
                if len(orphans):
                    ext = w.external(orphans[:3].tolist())
                    raise InvalidInputError(
                        f"cannot retire version {v.name!r}: {len(orphans)} of its {len(mine)} items hold no "
                        f"vector of another version (e.g. {', '.join(repr(x) for x in ext)})",
                        hint="backfill them into another version, or delete them, first")
            n = w.drop_version_vectors(v.code)
            raw = w.txn.get(v.name.encode(), db=w.s.db["versions"])
            if raw is None:
                raise CorruptIndexError(f"version {v.name!r} has no record in {self.store.file}")
            record = unpack(raw, what=f"version record {v.name!r}", where=self.store.file)
            record["retired"] = True
            w.put_version(record)
            return n

        with self._commit_lock:
            n, seq = self.store.write(fn)
            with self._rw.write():
                self._load_versions()
                self.shards.drop_version(v.code, delete_files=self._tmp is None)
            self._apply(seq, {}, [])
        return n

    def _commit(self, fn: Callable[[Writer], tuple[np.ndarray, dict[str, Any]]], version: Version,
                vectors: np.ndarray, *, labels: list[Any] | None = None, metadata: list[Any] | None = None) -> int:
        with self._commit_lock:
            (iids, op), seq = self.store.write(fn)
            self._apply(seq, op, [(version.code, iids, vectors)], iids=iids, labels=labels, metadata=metadata)
        return seq

    def _live(self, version: Version) -> None:
        v = self._versions.get(version.name, version)
        if v.retired:
            raise InvalidInputError(f"version {v.name!r} is retired: it takes no vectors",
                                    hint="write to one of its descendants")

    def _apply(self, seq: int, op: dict[str, Any], adds: list[tuple[int, np.ndarray, np.ndarray]], *,
               iids: np.ndarray | None = None, labels: list[Any] | None = None,
               metadata: list[Any] | None = None) -> None:
        removes = [(vc, np.frombuffer(b, dtype=">i8").astype(np.int64)) for vc, b in op.get("r", [])]
        self._payload.committed(seq, iids, labels, metadata)
        with self._rw.write():
            try:
                self.shards.apply(seq, removes, adds)
            except Exception as exc:  # the write is committed; shards are derived, so rebuild them
                log.warning("%s: shard update failed (%s); rebuilding shards from the store", self.path, exc)
                self.shards = ShardSet(self.path / "shards", self.shards.spec, self.shards.device)
                self.shards.open(self.store, self._dims())
            self._seen_seq = max(self._seen_seq, seq)
        self._note_write()

    # -- compaction ----------------------------------------------------------------------------
    def compact(self) -> dict[str, Any]:
        """Reclaim dead vectors, chunks and op-log records; crash-safe (docs/on-disk-format.md,
        "Compaction"): a kill at any moment leaves the old store or the new one.

        Saves every shard, rewrites chunks holding dead rows into dense chunks and drops the op log
        in one transaction, then makes LMDB's compacting copy (free pages left out) and swaps it in
        for the old store. Searches in this process wait meanwhile; readers in other processes
        follow the swap on their next call.
        """
        if self.readonly:
            raise ReadOnlyError(f"index {self.path} is open read-only; compact needs the writer")
        with self._commit_lock, self._save_lock, self._rw.write():
            before = self._disk_usage()
            seq = self.shards.seq
            self.shards.flush(seq)  # the op log's chunk references die below: shards must not need it
            self._unsaved_ops = 0
            dims = sorted((v.code, v.dim) for v in self._versions.values())
            repack = self.store.repack(dims, oplog_upto=seq)
            self._swap_in_compacted_store()
            after = self._disk_usage()
        return {"seq": seq, **repack, "disk_bytes_before": before, "disk_bytes_after": after}

    def backup(self, dest: str | os.PathLike[str]) -> dict[str, Any]:
        """Write a consistent, compacted copy of the index to the new folder ``dest`` while
        searches and writes go on (docs/reliability.md, "Backups").

        The shard files are copied first (each checked against its manifest's checksum; one that
        a concurrent save replaced is copied again, or left out and rebuilt), then LMDB's
        compacting copy of one snapshot of the store, which is at or past every copied shard. The
        copy is then opened on its own, replays the writes between its shards and its snapshot,
        and is compacted (:meth:`compact`: no dead rows, no op log). Written to ``dest.tmp`` and
        renamed: a ``dest`` that exists is a whole backup.
        """
        out = Path(dest)
        if out.exists():
            raise InvalidInputError(f"backup destination {out} already exists; give a new folder")
        tmp = out.with_name(out.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "shards").mkdir(parents=True)
        shutil.copy2(self.path / MARKER, tmp / MARKER)
        copied, skipped = [], []
        with self._commit_lock if not self.readonly else contextlib.nullcontext():
            # a writer in this process holds its writes for the shard copy only (files, not the store)
            for vc in sorted(self.shards.shards):
                files = self.shards.files(vc)
                if files is None or not files[0].exists():
                    continue
                if _copy_shard(files, tmp / "shards"):
                    copied.append(vc)
                else:
                    skipped.append(vc)
        self.store.compact_copy(tmp / "store")
        fsync_path(tmp / "shards")
        # The copy is an index of its own: open it as its writer (it replays the writes between its
        # shards and its store, saving the shards), then compact it (dead rows and op log dropped).
        copy = EmbeddedBackend(tmp, readonly=False, create=False, shard=None, device="cpu", lock_timeout=0.0)
        try:
            copy.compact()
        finally:
            copy.close()
        (tmp / ".lock").unlink(missing_ok=True)
        size = (tmp / "store" / "data.mdb").stat().st_size
        fsync_path(tmp)
        os.rename(tmp, out)
        fsync_path(out.parent)
        with self.store.read() as r:
            seq = r.seq()
        return {"dest": str(out), "store_bytes": size, "shards_copied": copied, "shards_left_to_rebuild": skipped,
                "seq_at_least": seq}

    def _swap_in_compacted_store(self) -> None:
        new, old, cur = self.path / "store.compact", self.path / "store.old", self.path / "store"
        pending = self.path / COMPACT_PENDING
        if new.exists():
            shutil.rmtree(new)
        self.store.compact_copy(new)
        write_durably(pending, b"store.compact holds a complete compacted copy of store\n")
        if old.exists():
            shutil.rmtree(old)
        os.rename(cur, old)
        os.rename(new, cur)
        fsync_path(self.path)
        pending.unlink()
        fsync_path(self.path)
        self.store.reopen_env()
        shutil.rmtree(old, ignore_errors=True)

    def _recover_compaction(self) -> None:
        """Finish or undo a compaction a kill interrupted (writer, lock held, before LMDB opens)."""
        new, old, cur = self.path / "store.compact", self.path / "store.old", self.path / "store"
        pending = self.path / COMPACT_PENDING
        if pending.exists():
            if new.exists():  # the copy is complete (the marker is written after it): finish the swap
                if cur.exists():
                    if old.exists():
                        shutil.rmtree(old)
                    os.rename(cur, old)
                os.rename(new, cur)
                fsync_path(self.path)
            pending.unlink()
            fsync_path(self.path)
            log.warning("%s: finished a compaction that was interrupted", self.path)
        if new.exists():  # a copy cut short: the old store is whole
            shutil.rmtree(new)
        if old.exists():
            shutil.rmtree(old)

    def _follow_compaction(self) -> None:
        """A reader whose store was replaced by a compaction: reopen it and reload the shards."""
        with self._rw.write():
            if not self.store.replaced():
                return
            self.store.reopen_env()
            self._load_versions()
            self.shards.reload(self.store, self._dims())
            self._payload.reset()

    def _disk_usage(self) -> int:
        disk = 0
        for f in self.path.rglob("*"):
            try:  # another process may rename or remove files meanwhile (shard saves: .tmp -> final)
                if f.is_file():
                    disk += f.stat().st_size
            except OSError:
                pass
        return disk

    # -- checkpoints ---------------------------------------------------------------------------
    def _note_write(self) -> None:
        if self.readonly or self._tmp is not None:
            return
        first = self._unsaved_ops == 0
        if first:
            self._first_unsaved = time.monotonic()
        self._unsaved_ops += 1
        if self._ckpt_thread is None:
            self._ckpt_thread = threading.Thread(target=self._checkpointer, name="compatindex-checkpoint",
                                                 daemon=True)
            self._ckpt_thread.start()
        if first or self._unsaved_ops >= self.checkpoint_ops:
            self._ckpt_wake.set()  # the thread recomputes its deadline from the first unsaved write

    @property
    def checkpoint_seconds(self) -> float:
        """Age of the oldest unsaved write at which the shards are checkpointed."""
        return self._checkpoint_seconds

    @checkpoint_seconds.setter
    def checkpoint_seconds(self, value: float) -> None:
        self._checkpoint_seconds = float(value)
        self._ckpt_wake.set()  # the waiting thread recomputes its deadline

    def _checkpointer(self) -> None:
        """Background thread: checkpoint when the op count or the age of the oldest unsaved write
        passes its threshold. Saving holds the shared lock: searches go on, writes wait."""
        while not self._ckpt_stop.is_set():
            if self._unsaved_ops:
                left = self._first_unsaved + self.checkpoint_seconds - time.monotonic()
            else:
                left = self.checkpoint_seconds
            self._ckpt_wake.wait(timeout=max(left, 0.01))
            self._ckpt_wake.clear()
            if self._ckpt_stop.is_set():
                break
            due = self._unsaved_ops >= self.checkpoint_ops or (
                self._unsaved_ops and time.monotonic() - self._first_unsaved >= self.checkpoint_seconds)
            if due:
                try:
                    self.checkpoint()
                except Exception as exc:  # noqa: BLE001 - shards are derived: the next open replays
                    self._ckpt_error = exc
                    log.warning("%s: automatic checkpoint failed (%s); shards will be replayed on open",
                                self.path, exc)
                    self._unsaved_ops = 0

    def checkpoint(self) -> dict[str, Any]:
        """Save the shards changed since their last save, then truncate the op log up to the
        previous checkpoint (which every shard file is past). Returns what was done."""
        if self.readonly or self._tmp is not None:
            return {"saved": [], "truncated": 0}
        with self._save_lock:
            with self._rw.read():
                seq = self.shards.seq
                saved = self.shards.flush(seq)
                self._unsaved_ops = 0
                durable = min([self.shards.saved_seq(vc) for vc in self.shards.shards], default=seq)
            self._ckpt_seqs = (self._ckpt_seqs + [seq])[-2:]
            # keep one checkpoint interval of the log: a reader a little behind replays instead of reloading
            upto = min(self._ckpt_seqs[0], durable) if len(self._ckpt_seqs) == 2 else 0
            truncated = self.store.truncate_oplog(upto) if upto > 0 else 0
        return {"seq": seq, "saved": saved, "truncated": truncated}

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
    def search(self, queries: Sequence[ShardQuery], k: int, *, where: Filter | None = None) -> ShardHits:
        """Per-version top-``k``; ``where`` restricts every shard to the items it matches (a bool
        mask over internal ids from the payload index, combined with each shard's represented items:
        :mod:`compatindex.embedded.shards.filtered` picks gather-and-matmul, over-fetch or a selector)."""
        with self._rw.read():  # no write changes the shards under a search (docs/reliability.md)
            codes = {name: v.code for name, v in self._versions.items()}
            views = self._views(queries, codes)
            match = None if where is None else self._payload.mask(where, self.store, len(self.shards.held))
            scores, keys = [], []
            for step, view in zip(queries, views):
                vc = codes[step.version]
                nq = len(step.queries)
                if match is None:
                    D, I = self.shards.search(vc, step.queries, k, view)
                else:
                    D, I = self.shards.search_where(vc, step.queries, k, view, match)
                if D.shape[1] == 0:  # empty, or every item it holds is represented by another version
                    D = np.full((nq, k), -np.inf, dtype=np.float32)
                    I = np.full((nq, k), -1, dtype=np.int64)
                scores.append(D)
                keys.append(I)
            resolver = self._resolver()
        return ShardHits(scores, keys, resolver)

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
            keys = np.asarray(keys, dtype=np.int64)
            if not len(keys):
                return []
            cache = self._ext_cache
            miss = keys
            if cache is not None and len(keys):
                inside = keys < len(cache[0])
                hit = np.zeros(len(keys), bool)
                hit[inside] = cache[1][keys[inside]]
                miss = keys[~hit]
            if len(miss):
                with self.store.read() as r:
                    try:
                        ext = r.external(miss.tolist())
                    except CorruptIndexError:
                        if r.seq() != shards_seq:
                            return None  # internal ids are never reused, so only a concurrent delete does this
                        raise
                if not ext or not isinstance(ext[0], int):
                    if len(miss) == len(keys):
                        return ext
                    with self.store.read() as r:  # str ids are not cached (see _remember)
                        return r.external(keys.tolist())
                self._remember(miss, ext)
                cache = self._ext_cache
            assert cache is not None
            out: list[ItemId] = cache[0][keys].tolist()  # an id's external id never changes: no store read
            return out

        return resolve

    def _remember(self, keys: np.ndarray, ext: list[ItemId]) -> None:
        """Keep the external ids of int-id indexes in memory (8 bytes and a flag per internal id up
        to the largest one returned): resolving a 1,000-query batch then costs no store reads."""
        if not len(keys) or not isinstance(ext[0], int):
            return
        cache = self._ext_cache
        top = int(keys.max()) + 1
        if cache is None or len(cache[0]) < top:
            size = max(top, 2 * (0 if cache is None else len(cache[0])))
            values, known = np.zeros(size, np.int64), np.zeros(size, bool)
            if cache is not None:
                values[: len(cache[0])], known[: len(cache[0])] = cache
            cache = (values, known)
        cache[0][keys] = ext
        cache[1][keys] = True
        self._ext_cache = cache

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

    def payload(self, ids: list[ItemId]) -> tuple[list[Any], list[dict[str, Any] | None]]:
        with self.store.read() as r:
            iids = r.lookup(ids).tolist()
            return r.labels(iids), r.attrs(iids)

    def held(self, ids: list[ItemId]) -> list[tuple[str, ...]]:
        listed = sorted((v for v in self._versions.values() if not v.retired), key=lambda u: u.code)
        with self.store.read() as r:
            iids = r.lookup(ids).tolist()
            has = [r.locate(v.code, iids)[0] >= 0 for v in listed]
        return [tuple(v.name for v, h in zip(listed, has) if h[i]) for i in range(len(iids))]

    def list_items(self, offset: int, limit: int, where: Filter | None) -> tuple[list[ItemId], int]:
        """Ids in insertion order from the ``offset``-th matching item on (the in-memory held bits
        and payload columns: no store scan)."""
        with self._rw.read():
            held = self.shards.held
            alive = held != 0
            if where is not None:
                alive &= self._payload.mask(where, self.store, len(held))
            pos = np.flatnonzero(alive)
        page = pos[offset : offset + limit] if offset < len(pos) else pos[:0]
        nxt = offset + len(page) if offset + len(page) < len(pos) else -1
        if not len(page):
            return [], nxt
        with self.store.read() as r:
            return r.external(page.tolist()), nxt

    def sample(self, version: Version, limit: int | None, rng: np.random.Generator, *,
               seeded: bool = True) -> ItemBatch:
        """Items holding ``version`` in insertion (internal id) order, or ``limit`` of them at the
        sorted positions :func:`~compatindex.core.validate.sample_rows` draws.

        A draw costs memory in proportion to ``limit``: the positions are drawn from the version's
        vector count, the locator table (keyed by internal id, so in insertion order) is walked
        without reading values except at the drawn positions, and only the chunks holding drawn
        rows are read, one at a time.
        """
        with self.store.read() as r:
            n = int(r.meta(f"count:{version.code}", 0))
            pick = sample_rows(n, limit, rng)
            if pick is None:
                parts = list(self.store.iter_live(version.code, version.dim, reader=r))
                iids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
                x = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, version.dim), np.float32)
                order = np.argsort(iids, kind="stable")
                iids, x = iids[order], x[order]
            else:
                iids, chunks, rows = r.locate_nth(version.code, pick)
                x = np.empty((len(iids), version.dim), dtype=np.float32)
                for c in np.unique(chunks).tolist():
                    at = np.flatnonzero(chunks == c)
                    meta = r.chunk_meta(version.code, c)
                    block = r.chunk_vectors(version.code, c, int(meta["n"]), version.dim)
                    if int(rows[at].max()) >= len(block):
                        raise CorruptIndexError(f"a locator in {self.store.file} points past its chunk {c}")
                    x[at] = block[rows[at]]
            ext = r.external(iids.tolist())
            labels = r.labels(iids.tolist())
            metadata = r.attrs(iids.tolist())
        return ItemBatch(ext, x, labels, version.name, metadata=metadata)

    def count(self) -> int:
        with self.store.read() as r:
            return int(r.meta("n_items", 0))

    def stats(self) -> dict[str, Any]:
        with self._rw.read():
            return self._stats()

    def _stats(self) -> dict[str, Any]:
        with self.store.read() as r:
            n = int(r.meta("n_items", 0))
            seq = r.seq()
            # one list of versions for the counts and the loop below: a refresh in between could
            # load a version registered meanwhile by another process
            listed = sorted(self._versions.values(), key=lambda u: u.code)
            counts = {v.name: int(r.meta(f"count:{v.code}", 0)) for v in listed}
            id_kind = r.meta("id_kind")
            # stored rows per version, from the chunk records only (no vector is read)
            stored = {v.code: sum(int(m["n"]) for _, m in r.chunk_list(v.code)) for v in listed}
            n_chunks = r.count_entries("chunks")
            oplog_records = r.count_entries("oplog")
            oplog_from = self.store.oplog_from(r)
        info, est = self.store.env.info(), self.store.env.stat()
        used = (int(info["last_pgno"]) + 1) * int(est["psize"])
        disk = self._disk_usage()
        live_b = sum(counts[v.name] * v.dim * 4 for v in listed)
        stored_b = sum(stored[v.code] * v.dim * 4 for v in listed)
        saved = [self.shards.saved_seq(v.code) for v in listed if not v.retired]
        out: dict[str, Any] = {"path": str(self.path), "backend": "embedded", "items": n, "seq": seq,
                               "id_kind": id_kind, "disk_bytes": disk, "device": self.shards.device,
                               "shard_spec": self.shards.spec.to_dict(), "versions": {},
                               "storage": {
                                   "live_vector_bytes": live_b, "dead_vector_bytes": stored_b - live_b,
                                   "chunks": n_chunks,
                                   "store_file_bytes": self.store.file.stat().st_size,
                                   "store_used_bytes": used,
                                   "oplog_records": oplog_records, "oplog_from": oplog_from,
                                   # writes a reader opening now replays on top of the saved shards
                                   "replay_backlog": max(0, seq - min(saved, default=seq)) if min(saved, default=0) >= 0
                                   else None,
                                   "unsaved_writes": self._unsaved_ops,
                               }}
        for v in listed:
            if v.retired:
                out["versions"][v.name] = {"dim": v.dim, "parent": v.parent, "metric": v.metric.value,
                                           "vectors": counts[v.name], "coverage": 0.0, "retired": True,
                                           "dead_vectors": stored[v.code] - counts[v.name], "shard": None}
                continue
            shard = self.shards.shards[v.code]
            saved_v = self.shards.saved_seq(v.code)
            out["versions"][v.name] = {
                "dim": v.dim, "parent": v.parent, "metric": v.metric.value, "vectors": counts[v.name],
                "coverage": counts[v.name] / n if n else 0.0,
                "dead_vectors": stored[v.code] - counts[v.name],
                "shard": {"ntotal": shard.ntotal, "seq": shard.seq, "saved_seq": saved_v,
                          "persisted": saved_v == seq, **shard.describe()},
            }
        return out

    def verify(self) -> list[str]:
        with self._rw.read():
            problems = verify_index(self.store, self.shards, list(self._versions.values()),
                                    check_file=not self.readonly)
            try:
                with self.store.read() as r:
                    self._payload.mask_sync(self.store, r)
                    problems += check_columns(r, self._payload, self.shards.held != 0, self.payload_schema())
            except CorruptIndexError as exc:
                problems.append(str(exc))
            return problems

    # -- lifecycle ---------------------------------------------------------------------------
    def flush(self) -> None:
        with self._commit_lock, self._save_lock, self._rw.write():
            self.shards.flush(self.shards.seq)
            self._unsaved_ops = 0

    def close(self) -> None:
        """Persist shards (writers), release the store and the writer lock."""
        self._stop_checkpointer()
        try:
            if not self.readonly and self._store is not None and self._tmp is None:
                try:
                    with self._commit_lock, self._save_lock, self._rw.write():
                        self.shards.flush(self.shards.seq)
                except OSError as exc:  # shards are derived: a failed save only costs a rebuild
                    log.warning("%s: could not save shards (%s); they will be rebuilt on open", self.path, exc)
        finally:
            self._release()

    def _stop_checkpointer(self) -> None:
        thread = self._ckpt_thread
        if thread is not None:
            self._ckpt_stop.set()
            self._ckpt_wake.set()
            thread.join()
            self._ckpt_thread = None

    def _release(self) -> None:
        self._stop_checkpointer()
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


def _copy_shard(files: tuple[Path, Path], dest: Path, attempts: int = 3) -> bool:
    """Copy a shard's ``.faiss`` and ``.json`` so that they match (checksum); False if a concurrent
    save kept replacing them."""
    from .shards.faiss_shard import _file_crc

    meta_path, idx_path = files
    for _ in range(attempts):
        try:
            meta = json.loads(meta_path.read_text())
            shutil.copyfile(idx_path, dest / idx_path.name)
            crc, size = _file_crc(dest / idx_path.name)
        except (OSError, ValueError):
            continue
        if crc == meta.get("crc32") and size == meta.get("bytes"):
            fsync_path(dest / idx_path.name)
            write_durably(dest / meta_path.name, json.dumps(meta).encode())
            return True
    (dest / idx_path.name).unlink(missing_ok=True)
    return False
