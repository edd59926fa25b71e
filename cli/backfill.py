"""`compatindex backfill INDEX VECTORS --ids IDS --version NAME --raw/--no-raw [--drop-old]`."""

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
    require_version,
    resolve_ids,
    resolve_raw,
    resolve_version,
    say,
    IndexArg,
)
from ._io import check_unique, open_vectors, read_ids
from .add import ColumnOpt, check_length

EXAMPLES = """\b
Examples:
  compatindex backfill my.index v2_vectors.npy --ids ids.txt --version v2 --no-raw
  compatindex backfill my.index raw_v2.npy --ids ids.npy --version v2 --raw --drop-old
"""


def backfill(
    index: IndexArg,
    vectors: Annotated[Path, typer.Argument(metavar="VECTORS", help="Vectors: .npy, .fvecs, .parquet or .jsonl.", show_default=False)],
    ids: Annotated[
        str,
        typer.Option("--ids", help="Ids of existing items: .npy or .txt file, or a column/field of the input.",
                     show_default=False),
    ],
    version: Annotated[
        str | None,
        typer.Option("--version", help="Version of the new vectors (required unless $COMPATINDEX_VERSION names one).",
                     show_default=False),
    ] = None,
    raw: RawOpt = None,
    drop_old: Annotated[
        bool, typer.Option("--drop-old", help="Remove these items' vectors of every other version.")
    ] = False,
    keep_pairs: Annotated[
        int, typer.Option("--keep-pairs", min=0, metavar="N",
                          help="With --drop-old: keep both vectors of a uniform sample of at most N dropped items, "
                               "to serve old clients (docs/serving.md, \"Old clients\"); 0 keeps none.")
    ] = 0,
    column: ColumnOpt = None,
    batch_size: BatchSize = DEFAULT_BATCH,
    lock_timeout: LockTimeout = 0.0,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Give existing items a vector of a (newer) version, streamed in batches."""
    with cli_errors():
        require_version(index, version, what="the version of the new vectors")
        source = open_vectors(vectors, param="VECTORS", column=column)
        n = source.n
        keys = read_ids(ids, param="--ids", source=source)
        check_length(keys, n, param="--ids", spec=ids, vectors=vectors)
        check_unique(keys, what=f"--ids '{ids}'")
        ix = open_index(index, lock_timeout=lock_timeout)
        with ix:
            keys = resolve_ids(keys, ix)
            check_unique(keys, what=f"--ids '{ids}'")
            ver = resolve_version(ix, version)
            raw = resolve_raw(ver, raw)
            if n:
                present = np.asarray(ix.has(keys), dtype=bool)
                if not present.all():
                    missing = [keys[i] for i in np.flatnonzero(~present)[:6]]
                    raise CliError(
                        f"{int((~present).sum())} of --ids '{ids}' are not in INDEX '{index}': {fmt_ids(missing)}",
                        "backfill gives existing items a new vector; add new items with `compatindex add`",
                    )
            check_vectors(source, ix, ver, raw=raw, batch_size=batch_size, quiet=quiet)
            done = 0
            try:
                with progress(f"backfilling {ver.name}", n, quiet=quiet) as advance:
                    for start, x in source.batches(batch_size):
                        stop = start + len(x)
                        ix.backfill(keys[start:stop], x, version=ver.name, raw=raw, drop_old=drop_old,
                                    keep_pairs=keep_pairs)
                        done = stop
                        advance(len(x))
            except Exception as exc:
                if done:
                    raise CliError(f"{exc}; the first {done} of {n} items were backfilled before the failure") from None
                raise
            kept = _retained(ix, ver.name) if drop_old and keep_pairs else None
        if json_out:
            say(dumps({"backfilled": n, "version": ver.name, "drop_old": drop_old,
                       **({"retained_pairs": kept} if kept is not None else {})}))
        else:
            extra = " and dropped their vectors of other versions" if drop_old else ""
            if kept is not None:
                extra += "; retained pairs " + (", ".join(f"{a}: {d['pairs']} (k={d['k']})" for a, d in kept.items())
                                                 or "none")
            say(f"backfilled {n} items with version '{ver.name}' vectors{extra}")


def _retained(ix: Any, version: str) -> dict[str, Any]:
    """``{ancestor: {"pairs", "seen", "capacity", "k", "fit"}}`` of the pairs retained with ``version``."""
    from compatindex.core.neighbour_map import summary

    return {str(a): summary(e) for a, e in ((ix.version(version).serving or {}).get("pairs") or {}).items()}
