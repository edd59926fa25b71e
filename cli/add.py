"""`compatindex add INDEX VECTORS [--ids IDS] [--version NAME] [--labels LABELS] [--metadata META] [--raw/--no-raw]`: new items."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ._common import (
    DEFAULT_BATCH,
    BatchSize,
    CliError,
    Json,
    LockTimeout,
    Quiet,
    RawOpt,
    check_vectors,
    cli_errors,
    dumps,
    fmt_ids,
    open_index,
    progress,
    resolve_raw,
    resolve_version,
    say,
    to_jsonable,
    IndexArg,
    resolve_ids,
)
from ._io import InputFileError, check_unique, metadata_from_columns, open_vectors, read_ids, read_keys, read_metadata

EXAMPLES = """\b
Examples:
  compatindex add my.index vectors.npy
  compatindex add my.index vectors.npy --ids ids.txt --labels labels.npy --version v2 --no-raw
  COMPATINDEX_VERSION=v1 compatindex add my.index old_model_vectors.npy
  compatindex add my.index items.parquet --column embedding --ids doc_id --quiet
  compatindex add my.index vectors.npy --ids skus.txt --metadata meta.jsonl
  compatindex add my.index items.parquet --metadata-columns lang,year
  compatindex add my.index items.jsonl --all-metadata-columns --int-ids
"""

IdsOpt = Annotated[
    str | None,
    typer.Option(
        "--ids",
        help="Item ids: .npy or .txt file (one per line; text ids keep their text unless --int-ids or the index"
        " holds int ids), or a column/field of a .parquet/.jsonl input."
        " Default: the input's `id` column/field if any, else row numbers offset by the item count.",
        show_default=False,
    ),
]
LabelsOpt = Annotated[
    str | None,
    typer.Option("--labels", help="Labels: .npy or .txt file, or a column/field of a .parquet/.jsonl input.",
                 show_default=False),
]
VersionOpt = Annotated[
    str | None,
    typer.Option("--version", help="Version the vectors belong to (default: $COMPATINDEX_VERSION, else the only "
                 "version; required when the index holds several).", show_default=False),
]
IntIdsOpt = Annotated[
    bool, typer.Option("--int-ids", help="Ids read as text (.txt, str columns) are integers; a line that is not one "
                       "is an error. Implied when the index already holds int ids.")
]
MetadataOpt = Annotated[
    str | None,
    typer.Option("--metadata", metavar="META", show_default=False,
                 help="Per-item metadata: a .jsonl file (one JSON object per row, in the rows' order; {} for none),"
                      " or a column/field of a .parquet/.jsonl input holding JSON objects or JSON text."),
]
MetadataColumnsOpt = Annotated[
    str | None,
    typer.Option("--metadata-columns", metavar="COL,...", show_default=False,
                 help="Build each item's metadata from these columns/fields of a .parquet/.jsonl input "
                      "(nulls left out)."),
]
AllMetadataColumnsOpt = Annotated[
    bool, typer.Option("--all-metadata-columns", help="Metadata from every column/field of a .parquet/.jsonl "
                       "input other than the vectors, the ids and the labels.")
]
ColumnOpt = Annotated[
    str | None,
    typer.Option("--column", help="Column (.parquet) or field (.jsonl) holding the vectors (default: vector).",
                 show_default=False),
]


def check_length(keys: Any, n: int, *, param: str, spec: str, vectors: Path) -> None:
    if len(keys) != n:
        raise InputFileError(
            f"{param} '{spec}' holds {len(keys)} values but VECTORS '{vectors}' holds {n} vectors;"
            " they must match one to one"
        )


def add(
    index: IndexArg,
    vectors: Annotated[Path, typer.Argument(metavar="VECTORS", help="Vectors: .npy, .fvecs, .parquet or .jsonl.", show_default=False)],
    ids: IdsOpt = None,
    version: VersionOpt = None,
    labels: LabelsOpt = None,
    raw: RawOpt = None,
    column: ColumnOpt = None,
    metadata: MetadataOpt = None,
    metadata_columns: MetadataColumnsOpt = None,
    all_metadata_columns: AllMetadataColumnsOpt = False,
    int_ids: IntIdsOpt = False,
    batch_size: BatchSize = DEFAULT_BATCH,
    lock_timeout: LockTimeout = 0.0,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Resume an interrupted or killed add: skip the items already "
                           "stored with identical vectors; an id stored with a different vector is an error.")
    ] = False,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Add new items (ids must not be in the index yet), streamed in batches."""
    with cli_errors():
        source = open_vectors(vectors, param="VECTORS", column=column)
        n = source.n
        keys: Any = None
        how = "from --ids"
        id_column: str | None = None
        if ids is not None:
            keys = read_ids(ids, param="--ids", source=source)
            check_length(keys, n, param="--ids", spec=ids, vectors=vectors)
            if getattr(keys, "unit", None) == "row" or (isinstance(keys, np.ndarray) and ids in source.columns
                                                       and not Path(ids).exists()):
                id_column = ids
        elif source.kind in ("parquet", "jsonl") and "id" in source.columns:
            keys = read_ids("id", param="--ids", source=source)
            id_column = "id"
            how = f"from the 'id' {'column' if source.kind == 'parquet' else 'field'} of VECTORS"
        if keys is not None:  # text duplicates before the index opens; coerced ones (000042 vs 42) below
            check_unique(keys, what=f"--ids '{ids}'" if ids is not None else f"the 'id' values of VECTORS '{vectors}'")
        label_vals: Any = None
        if labels is not None:
            label_vals = read_keys(labels, param="--labels", source=source)
            check_length(label_vals, n, param="--labels", spec=labels, vectors=vectors)
        meta_rows = _read_metadata(source, vectors, metadata=metadata, metadata_columns=metadata_columns,
                                   all_columns=all_metadata_columns, skip={id_column, labels})

        ix = open_index(index, lock_timeout=lock_timeout)
        with ix:
            if keys is not None:
                keys = resolve_ids(keys, ix, int_ids=int_ids)
                check_unique(keys, what=f"--ids '{ids}'" if ids is not None else f"the 'id' values of VECTORS '{vectors}'")
            ver = resolve_version(ix, version)
            raw = resolve_raw(ver, raw)
            check_vectors(source, ix, ver, raw=raw, batch_size=batch_size, quiet=quiet)
            count = int(ix.count)
            if keys is None:
                keys = np.arange(count, count + n, dtype=np.int64)
                how = f"row numbers offset by the item count {count}, as no --ids was given"
            skip = np.zeros(n, dtype=bool)
            if skip_existing and count and n:
                skip = existing_to_skip(ix, ver.name, keys, source, raw=raw, batch_size=batch_size)
            if count and n:
                present = np.asarray(ix.has(keys), dtype=bool) & ~skip
                if present.any():
                    taken = [keys[i] for i in np.flatnonzero(present)[:6]]
                    raise CliError(
                        f"{int(present.sum())} of the ids ({how}) are already in INDEX '{index}': {fmt_ids(taken)}",
                        "add needs new ids; if an earlier add of these items was interrupted or killed, "
                        "delete the ones it left (`compatindex delete`) and rerun it; use `compatindex backfill` "
                        "to give existing items a vector of another version"
                        + ("" if ids is not None else ", or pass --ids"),
                    )
            # the ids this run adds, in order: rollbacks and reports speak of these only (never of
            # items that were stored before it and skipped)
            keep = np.flatnonzero(~skip)
            new_keys: Any = keys if not skip.any() else [keys[i] for i in keep.tolist()]
            n_new = len(keep)
            done = 0
            inflight: tuple[int, int] | None = None
            try:
                with progress(f"adding to {ver.name}", n, quiet=quiet) as advance:
                    for start, x in source.batches(batch_size):
                        stop = start + len(x)
                        rows = np.flatnonzero(~skip[start:stop])
                        if len(rows):
                            inflight = (done, done + len(rows))
                            sel = rows if len(rows) < len(x) else slice(None)
                            ix.add(
                                new_keys[done:done + len(rows)],
                                x[sel],
                                version=ver.name,
                                labels=None if label_vals is None else [label_vals[start + i] for i in rows.tolist()],
                                metadata=None if meta_rows is None else [meta_rows[start + i] for i in rows.tolist()],
                                raw=raw,
                            )
                            done += len(rows)
                            inflight = None
                        advance(len(x))
            except KeyboardInterrupt:
                raise _interrupted(ix, new_keys, done, inflight, n_new, ver.name) from None
            except BaseException as exc:
                if not done:
                    raise
                note = _rollback(ix, new_keys[:done])
                if isinstance(exc, Exception):
                    raise CliError(f"{exc}; {note}") from None
                raise
            total = int(ix.count)
        first = to_jsonable(keys[0]) if n else None
        last = to_jsonable(keys[n - 1]) if n else None
        skipped = int(skip.sum())
        if json_out:
            say(dumps({"added": n - skipped, "skipped": skipped, "version": ver.name, "ids": how, "first_id": first,
                       "last_id": last, "count": total}))
        elif skipped:
            say(f"added {n - skipped} items to version '{ver.name}' and skipped {skipped} already stored with "
                f"identical vectors (--skip-existing); the index holds {total} items")
        elif n == 0:
            say(f"VECTORS '{vectors}' holds no vectors; nothing added")
        else:
            say(f"added {n} items to version '{ver.name}' (ids {first!r}..{last!r}: {how}); the index holds {total} items")


def _read_metadata(source: Any, vectors: Path, *, metadata: str | None, metadata_columns: str | None,
                   all_columns: bool, skip: set[str | None]) -> list[Any] | None:
    """The per-row metadata of an add (None when none is given), checked before the index opens."""
    given = [o for o, v in (("--metadata", metadata), ("--metadata-columns", metadata_columns),
                            ("--all-metadata-columns", all_columns)) if v]
    if len(given) > 1:
        raise CliError(f"{' and '.join(given)} both give the metadata; use one of them")
    if not given:
        return None
    if metadata is not None:
        rows = read_metadata(metadata, param="--metadata", source=source)
        if len(rows) != source.n:
            raise InputFileError(
                f"--metadata '{metadata}' holds {len(rows)} rows but VECTORS '{vectors}' holds {source.n} vectors;"
                " they must match one to one (one JSON object per line, {} for an item without metadata)"
            )
        what = f"--metadata '{metadata}'"
        unit, base = ("line", 1) if not (source.kind in ("parquet", "jsonl") and metadata in source.columns
                                         and not Path(metadata).exists()) else ("row", 0)
    else:
        if metadata_columns is not None:
            names = [c.strip() for c in metadata_columns.split(",")]
            if any(not c for c in names):
                raise CliError(f"--metadata-columns {metadata_columns!r}: an empty column name",
                               "name the columns separated by commas, e.g. --metadata-columns lang,year")
        else:
            names = [c for c in getattr(source, "columns", []) if c not in skip]
        rows = metadata_from_columns(source, names)
        what, unit, base = f"the metadata columns of VECTORS '{vectors}'", "row", 0
    from compatindex.core.validate import as_metadata
    from compatindex.errors import InvalidInputError

    try:
        as_metadata(rows, n=len(rows))
    except InvalidInputError as exc:
        import re

        m = re.match(r"`metadata\[(\d+)\]` (.*)", exc.message)
        if m is None:
            raise
        raise InputFileError(f"{what}: {unit} {int(m.group(1)) + base} {m.group(2)}") from None
    return rows


def existing_to_skip(ix: Any, version: str, keys: Any, source: Any, *, raw: bool, batch_size: int,
                     atol: float = 1e-5) -> np.ndarray:
    """For ``--skip-existing`` (resuming an interrupted or killed add): ``(n,)`` bool, the items
    already stored with the same vector of ``version`` (skip them). Any id already in the index
    without that identical vector raises ``CliError`` before anything is written.

    Compares the stored vector with the input as the index would store it (raw inputs mapped by
    the version's transform, cosine versions normalized).
    """
    from compatindex.core.validate import normalize_rows

    v = ix.version(version)
    skip = np.zeros(len(keys), dtype=bool)
    bad: list[Any] = []
    for start, x in source.batches(batch_size):
        stop = start + len(x)
        sub = keys[start:stop]
        present = np.asarray(ix.has(sub), dtype=bool)
        if not present.any():
            continue
        where = np.flatnonzero(present)
        mine = [sub[i] for i in where]
        want = np.asarray(x[where], dtype=np.float32)
        if raw:
            want = ix.to_version_space(want, version=version)
        want = normalize_rows(want, metric=v.metric, param="VECTORS")
        stored, holds = ix.backend.vectors(v, list(mine))  # holds: which have a vector of the version
        same = np.asarray(holds, dtype=bool) & np.isclose(stored, want, atol=atol).all(axis=1)
        skip[start + where[same]] = True
        bad.extend(m for m, ok in zip(mine, same) if not ok)
    if bad:
        raise CliError(
            f"{len(bad)} ids are already in the index with a different vector of version '{version}' "
            f"(or none): {fmt_ids(bad[:6])}",
            "--skip-existing skips only items stored with identical vectors; use `compatindex backfill` to "
            "replace vectors",
        )
    return skip


def _interrupted(ix: Any, keys: Any, done: int, inflight: tuple[int, int] | None, n: int, version: str) -> typer.Exit:
    """Ctrl-C during an add: say exactly what was committed, roll it back (saying so meanwhile)
    unless every item was committed, and what the index holds now. Exit 130."""
    if inflight is not None and inflight[1] > inflight[0]:
        # the interrupt may land after the batch in flight committed (its call had not returned)
        if bool(np.asarray(ix.has(keys[inflight[0]:inflight[1]]), dtype=bool).all()):
            done = inflight[1]
    if done >= n:
        typer.echo(f"error: interrupted after all {n} items were committed to version '{version}'; "
                   "nothing was rolled back (the add is complete)", err=True)
        return typer.Exit(code=130)
    if done == 0:
        typer.echo("error: interrupted before the first batch was committed; nothing was added", err=True)
        return typer.Exit(code=130)
    typer.echo(f"interrupted: {done} of {n} items were committed; rolling back those {done} items "
               "(one transaction) ...", err=True)
    try:
        ix.delete(keys[:done])
        rolled = True
    except KeyboardInterrupt:
        rolled = not bool(np.asarray(ix.has(keys[:done]), dtype=bool).any())
    except Exception as exc:  # noqa: BLE001 - reported, the interrupt stays the outcome
        typer.echo(f"error: interrupted; rolling back the {done} committed items failed ({exc}): they remain "
                   f"in the index (ids {fmt_ids(list(keys[:done][:6]))}); delete them with `compatindex delete`",
                   err=True)
        return typer.Exit(code=130)
    if rolled:
        typer.echo(f"error: interrupted; the {done} items committed before the interrupt were removed again: "
                   "the index is as it was before this command", err=True)
    else:
        typer.echo(f"error: interrupted twice; the rollback did not commit: the {done} items committed first "
                   f"remain (ids {fmt_ids(list(keys[:done][:6]))}...); delete them with `compatindex delete` "
                   "before rerunning the add", err=True)
    return typer.Exit(code=130)


def _rollback(ix: Any, keys: Any) -> str:
    try:
        ix.delete(keys)
    except Exception as exc:  # report, do not mask the first error
        return f"removing the {len(keys)} items added before the failure also failed ({exc})"
    return f"the {len(keys)} items added before the failure were removed again"
