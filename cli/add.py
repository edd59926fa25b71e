"""`compatindex add INDEX VECTORS [--ids IDS] [--version NAME] [--labels LABELS] [--raw]`: new items."""

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
    check_vectors,
    cli_errors,
    dumps,
    fmt_ids,
    open_index,
    progress,
    resolve_version,
    say,
    to_jsonable,
    IndexArg,
)
from ._io import InputFileError, check_unique, open_vectors, read_keys

EXAMPLES = """\b
Examples:
  compatindex add my.index vectors.npy
  compatindex add my.index vectors.npy --ids ids.txt --labels labels.npy --version v2
  compatindex add my.index items.parquet --column embedding --ids doc_id --quiet
"""

IdsOpt = Annotated[
    str | None,
    typer.Option(
        "--ids",
        help="Item ids: .npy or .txt file (one per line), or a column/field of a .parquet/.jsonl input."
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
    str | None, typer.Option("--version", help="Version the vectors belong to (default: the newest).", show_default=False)
]
RawOpt = Annotated[
    bool, typer.Option("--raw", help="Vectors are raw encoder outputs; map them with the version's transform.")
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
    raw: RawOpt = False,
    column: ColumnOpt = None,
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
        if ids is not None:
            keys = read_keys(ids, param="--ids", source=source)
            check_length(keys, n, param="--ids", spec=ids, vectors=vectors)
        elif source.kind in ("parquet", "jsonl") and "id" in source.columns:
            keys = source.column("id")
            how = f"from the 'id' {'column' if source.kind == 'parquet' else 'field'} of VECTORS"
        if keys is not None:
            check_unique(keys, what=f"--ids '{ids}'" if ids is not None else f"the 'id' values of VECTORS '{vectors}'")
        label_vals: Any = None
        if labels is not None:
            label_vals = read_keys(labels, param="--labels", source=source)
            check_length(label_vals, n, param="--labels", spec=labels, vectors=vectors)

        ix = open_index(index, lock_timeout=lock_timeout)
        with ix:
            ver = resolve_version(ix, version)
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
