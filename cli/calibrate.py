"""`compatindex calibrate INDEX --version NAME [--against NAME] [--limit N] [--json]`.

Refits the calibration of a version from the items that already hold vectors of both it and
its parent (after any partial backfill those are exact pairs), so that the ``calibrated`` score
convention ranks backfilled and not-yet-backfilled items on one scale (docs/concepts.md).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import (
    IndexArg,
    Json,
    LockTimeout,
    Quiet,
    at_least_one,
    cli_errors,
    dumps,
    open_index,
    require_version,
    resolve_version,
    say,
    to_jsonable,
)

EXAMPLES = """\b
Examples:
  compatindex calibrate my.index --version v2
  compatindex calibrate my.index --version v2 --against v1 --limit 20000 --json
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
    lock_timeout: LockTimeout = 0.0,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Refit a version's score calibration from items that hold vectors of both versions."""
    with cli_errors():
        require_version(index, version, what="the version to calibrate")
        ix = open_index(index, lock_timeout=lock_timeout)
        with ix:
            version = resolve_version(ix, version).name
            report = ix.calibrate(version, against=against, limit=limit, seed=seed)
            serving = ix.version(version).serving
        if json_out:
            typer.echo(dumps({"version": version, "calibration": to_jsonable(report["calibration"]),
                              "serving": to_jsonable(serving)}))
            return
        for pair, fit in report["calibration"].items():
            note = " (no positive fit: identity kept)" if fit["fallback"] else ""
            say(f"{pair}: a={fit['a']:.4g} b={fit['b']:+.4g} from {fit['queries']} items{note}")
