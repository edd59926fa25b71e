"""`compatindex calibrate INDEX --version NAME [--against NAME] [--limit N] [--reference VECTORS --reference-ids IDS] [--json]`.

Refits the calibration of a version from the items that already hold vectors of both it and
its parent (after any partial backfill those are exact pairs), so that the ``calibrated`` score
convention ranks backfilled and not-yet-backfilled items on one scale (docs/concepts.md). With
``--reference``, the fit uses those items (drawn at random from the gallery, with their vectors of
the version) as queries and the stored labels as relevance (``Index.calibrate(reference=...)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import (
    IndexArg,
    Json,
    LockTimeout,
    Quiet,
    CliError,
    at_least_one,
    cli_errors,
    dumps,
    open_index,
    require_version,
    resolve_ids,
    resolve_version,
    say,
    to_jsonable,
)
from ._io import check_unique, open_vectors, read_all, read_ids
from .add import check_length

EXAMPLES = """\b
Examples:
  compatindex calibrate my.index --version v2
  compatindex calibrate my.index --version v2 --against v1 --limit 20000 --json
  compatindex calibrate my.index --version v2 --reference sample_v2.npy --reference-ids sample_ids.npy
"""


def calibrate(
    index: IndexArg,
    version: Annotated[
        str | None,
        typer.Option("--version", help="The version to calibrate, its queries and vectors (required unless "
                     "$COMPATINDEX_VERSION names one).", show_default=False),
    ] = None,
    against: Annotated[
        str | None,
        typer.Option("--against", help="The other version of the pairs (default: the version's parent).",
                     show_default=False),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", callback=at_least_one,
                                       help="Most items holding both versions used for the fit (the fit is quadratic in it).")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the draw when more items hold both versions.")] = 0,
    reference: Annotated[Path | None, typer.Option(
        "--reference", metavar="VECTORS", help="Vectors of the version (version space) of stored items drawn at "
        "random from the whole gallery, e.g. the upgrade's held-out pairs: the fit then uses them as queries and "
        "the stored labels as relevance, each score on the items it will rank (a backfill order that is not "
        "random no longer skews it). Needs --reference-ids and labelled items.", show_default=False)] = None,
    reference_ids: Annotated[str | None, typer.Option(
        "--reference-ids", metavar="IDS", help="The ids of the --reference rows (.npy, .txt or a column).",
        show_default=False)] = None,
    lock_timeout: LockTimeout = 0.0,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Refit a version's score calibration from items that hold vectors of both versions."""
    with cli_errors():
        require_version(index, version, what="the version to calibrate")
        if (reference is None) != (reference_ids is None):
            raise CliError("--reference and --reference-ids go together: give both or neither")
        ref: tuple[Any, Any] | None = None
        if reference is not None and reference_ids is not None:
            source = open_vectors(reference, param="--reference")
            keys = read_ids(reference_ids, param="--reference-ids", source=source)
            check_length(keys, source.n, param="--reference-ids", spec=reference_ids, vectors=reference)
            ref = (keys, read_all(source))
        ix = open_index(index, lock_timeout=lock_timeout)
        with ix:
            version = resolve_version(ix, version).name
            if ref is not None:
                keys = resolve_ids(ref[0], ix)  # text ids become ints on an index of int ids
                check_unique(keys, what=f"--reference-ids '{reference_ids}'")
                ref = (keys.tolist() if hasattr(keys, "tolist") else list(keys), ref[1])
            report = ix.calibrate(version, against=against, limit=limit, seed=seed, reference=ref)
            serving = ix.version(version).serving
        if json_out:
            typer.echo(dumps({"version": version, "calibration": to_jsonable(report["calibration"]),
                              "reference": to_jsonable(report.get("reference")), "serving": to_jsonable(serving)}))
            return
        for pair, fit in report["calibration"].items():
            note = " (no positive fit: identity kept)" if fit["fallback"] else ""
            src = f" ({fit['queries']} reference queries, {fit['gallery']} gallery items)" if fit.get("method") == "reference" \
                else f" from {fit['queries']} items"
            say(f"{pair}: a={fit['a']:.4g} b={fit['b']:+.4g}{src}{note}")
        for qv, c in (report.get("reference") or {}).items():
            say(f"{qv} queries: kept the {c['chosen']} fit (first hit of the label: reference "
                f"{c['first_hit']['reference']:.3f}, pairs {c['first_hit']['pairs']:.3f}, in {c['gallery']} items)")
