"""Export one version of an index to a file: ``.npy`` (the vectors, ids beside them) or ``.parquet``.

:func:`export_file` is what ``compatindex export INDEX --to FILE --version NAME`` runs; library
users call it on an open :class:`~compatindex.Index`. It reads the index through the public API
only (``list_items`` pages, then ``get_vectors``), so every backend exports the same way, and it
streams: memory follows ``batch_size``, not the index.

Formats
-------
``.npy``
    The ``(n, d)`` float32 vectors of the version, one row per item that holds one, in insertion
    order, and a sidecar ``<stem>.ids.npy`` beside it with the ``n`` ids in the same order (int64
    for int ids, a unicode array for text ids, so the id type survives the round trip:
    ``compatindex add other.index out.npy --ids out.ids.npy``). Labels and metadata are not
    written; use ``.parquet`` for them.
``.parquet``
    Columns ``id`` (int64 or string), ``label`` (int64 when every label is an int, else string;
    null where an item has none), ``metadata`` (the metadata dict as JSON text, null where none)
    and ``vector`` (``list<float32>``), written in row groups of ``batch_size`` rows with pyarrow
    (the ``io`` extra: ``pip install 'compatindex[io]'``).

Items without a vector of the version are left out (counted as ``skipped``). The file appears
whole or not at all: it is written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import CompatIndexError, InvalidInputError

if TYPE_CHECKING:  # pragma: no cover
    from .core.datatypes import Item
    from .index import Index

__all__ = ["export_file", "ids_sidecar", "FORMATS"]

FORMATS = (".npy", ".parquet")
DEFAULT_BATCH = 4096


def ids_sidecar(dest: str | Path) -> Path:
    """Where the ids of a ``.npy`` export go: ``out.npy`` -> ``out.ids.npy``."""
    dest = Path(dest)
    return dest.with_name(dest.stem + ".ids.npy")


def _pages(index: "Index", batch_size: int) -> Iterator[list["Item"]]:
    offset: int | None = 0
    while offset is not None:
        page = index.list_items(offset=offset, limit=batch_size)
        if page.items:
            yield list(page.items)
        offset = page.next_offset


def _json_default(o: Any) -> Any:
    if isinstance(o, (bytes, bytearray)):
        return bytes(o).hex()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def export_file(index: "Index", dest: str | Path, *, version: str, batch_size: int = DEFAULT_BATCH,
                overwrite: bool = False, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write the vectors of ``version`` (and, for ``.parquet``, ids, labels, metadata) to ``dest``.

    Parameters
    ----------
    index:
        An open index (read-only is enough).
    dest:
        ``*.npy`` or ``*.parquet`` (see the module docstring for the layouts).
    version:
        The version whose vectors are written.
    batch_size:
        Items read (and, for parquet, rows per row group) at a time.
    overwrite:
        Replace existing files; else an existing ``dest`` (or ids sidecar) is an error.
    progress:
        Called with the number of items looked at after each batch.

    Returns
    -------
    dict
        ``{"path", "format", "version", "dim", "items", "skipped", "ids_path", "seconds"}``
        (``ids_path`` None for parquet).
    """
    t0 = time.perf_counter()
    dest = Path(dest)
    fmt = dest.suffix.lower()
    if fmt not in FORMATS:
        raise InvalidInputError(f"`dest` {str(dest)!r} must end in {' or '.join(FORMATS)}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidInputError(f"`batch_size` must be an int >= 1; got {batch_size!r}")
    v = index.version(version)
    targets = [dest] + ([ids_sidecar(dest)] if fmt == ".npy" else [])
    for t in targets:
        if t.exists() and not overwrite:
            raise InvalidInputError(f"{str(t)!r} already exists", hint="remove it, or pass overwrite=True (--overwrite)")
    if not dest.parent.is_dir():
        raise InvalidInputError(f"the folder of `dest` {str(dest)!r} does not exist")
    tick = progress or (lambda n: None)
    tmps = [_tmp(t) for t in targets]
    try:
        if fmt == ".npy":
            n, skipped = _write_npy(index, v.name, v.dim, tmps[0], tmps[1], batch_size, tick)
        else:
            n, skipped = _write_parquet(index, v.name, v.dim, tmps[0], batch_size, tick)
        for tmp, t in zip(tmps, targets):
            os.replace(tmp, t)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return {"path": str(dest), "format": fmt[1:], "version": v.name, "dim": int(v.dim), "items": n,
            "skipped": skipped, "ids_path": str(targets[1]) if fmt == ".npy" else None,
            "seconds": time.perf_counter() - t0}


def _batches(index: "Index", version: str, batch_size: int,
             tick: Callable[[int], None]) -> Iterator[tuple[list["Item"], np.ndarray, int]]:
    """``(items holding version, their (b, d) vectors, items skipped)`` per page."""
    for items in _pages(index, batch_size):
        mine = [it for it in items if version in it.versions]
        x = index.get_vectors([it.id for it in mine], version=version) if mine else None
        yield mine, x if x is not None else np.zeros((0, 0), np.float32), len(items) - len(mine)
        tick(len(items))


def _write_npy(index: "Index", version: str, dim: int, out: Path, ids_out: Path, batch_size: int,
               tick: Callable[[int], None]) -> tuple[int, int]:
    raw = out.with_name(out.name + ".raw")
    ids: list[Any] = []
    skipped = 0
    try:
        with open(raw, "wb") as fh:
            for mine, x, skip in _batches(index, version, batch_size, tick):
                skipped += skip
                if mine:
                    fh.write(np.ascontiguousarray(x, dtype="<f4").tobytes())
                    ids.extend(it.id for it in mine)
        n = len(ids)
        arr = np.lib.format.open_memmap(out, mode="w+", dtype="<f4", shape=(n, dim))
        if n:
            src = np.memmap(raw, dtype="<f4", mode="r", shape=(n, dim))
            step = max(1, (64 << 20) // max(1, 4 * dim))
            for s in range(0, n, step):
                arr[s:s + step] = src[s:s + step]
            del src
        arr.flush()
        del arr
    finally:
        raw.unlink(missing_ok=True)
    if ids and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        id_arr = np.asarray(ids, dtype=np.int64)
    else:
        id_arr = np.asarray([str(i) for i in ids], dtype=str) if ids else np.zeros(0, dtype=np.int64)
    with open(ids_out, "wb") as fh:
        np.save(fh, id_arr, allow_pickle=False)
    return n, skipped


def _write_parquet(index: "Index", version: str, dim: int, out: Path, batch_size: int,
                   tick: Callable[[int], None]) -> tuple[int, int]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CompatIndexError("exporting to .parquet needs pyarrow, which is not installed",
                               hint="pip install 'compatindex[io]'") from None
    # one pass over ids and labels first: the column types must be fixed before the first row group
    id_int = True
    label_kinds: set[str] = set()
    for items in _pages(index, batch_size):
        for it in items:
            if version not in it.versions:
                continue
            id_int = id_int and isinstance(it.id, (int, np.integer)) and not isinstance(it.id, bool)
            if it.label is not None:
                label_kinds.add("int" if isinstance(it.label, (int, np.integer)) else "str")
    label_int = label_kinds == {"int"}
    schema = pa.schema([
        ("id", pa.int64() if id_int else pa.string()),
        ("label", pa.int64() if label_int else pa.string()),
        ("metadata", pa.string()),
        ("vector", pa.list_(pa.float32())),
    ])
    n = skipped = 0
    with pq.ParquetWriter(out, schema) as writer:
        for mine, x, skip in _batches(index, version, batch_size, tick):
            skipped += skip
            if not mine:
                continue
            b = len(mine)
            ids = [int(it.id) if id_int else str(it.id) for it in mine]
            labels = [None if it.label is None else (int(it.label) if label_int else str(it.label)) for it in mine]
            metas = [None if it.metadata is None else json.dumps(it.metadata, default=_json_default) for it in mine]
            values = pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1), type=pa.float32())
            offsets = pa.array(np.arange(0, (b + 1) * dim, dim, dtype=np.int32), type=pa.int32())
            vectors = pa.ListArray.from_arrays(offsets, values, type=pa.list_(pa.float32()))
            table = pa.Table.from_arrays(
                [pa.array(ids, type=schema.field("id").type), pa.array(labels, type=schema.field("label").type),
                 pa.array(metas, type=pa.string()), vectors],
                schema=schema,
            )
            writer.write_table(table, row_group_size=batch_size)
            n += b
    return n, skipped
