"""`compatindex export INDEX --to qdrant://HOST:PORT/COLLECTION`: copy an embedded index into Qdrant."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import CliError, Json, Quiet, at_least_one, cli_errors, dumps, say

EXAMPLES = """\b
Examples:
  compatindex export my.index --to qdrant://db.internal:6333/products
  compatindex export my.index --to qdrant+local:///srv/products.qdrant --json
  QDRANT_API_KEY=... compatindex export my.index --to 'qdrant://cluster:6333/products?https=1'
Rerun the same command after an interruption: points already copied are skipped.
"""


def export(
    index: Annotated[Path, typer.Argument(metavar="INDEX", help="Embedded index folder to copy.", show_default=False)],
    to: Annotated[str, typer.Option("--to", metavar="URL", show_default=False,
                                    help="Destination: qdrant://HOST:PORT/COLLECTION or qdrant+local://PATH.")],
    batch_size: Annotated[int, typer.Option("--batch-size", callback=at_least_one,
                                            help="Items per request to Qdrant.")] = 1024,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Copy an index (every version, item, vector, label, metadata and the registry) into Qdrant.

    Resumable: a rerun skips the points already present. Verified by counts at the end (exit 1
    and a list of differences when Qdrant does not hold what the index holds).
    """
    with cli_errors():
        if not to.startswith(("qdrant://", "qdrant+local://")):
            raise CliError(f"--to {to!r} is not a Qdrant URL", "use qdrant://HOST:PORT/COLLECTION or qdrant+local://PATH")
        if not index.exists():
            raise CliError(f"INDEX '{index}': no such folder")
        if not index.is_dir():
            raise CliError(f"INDEX '{index}' is a file, not an index folder")
        from compatindex.qdrant import export_index

        result = export_index(str(index), to, batch=batch_size, progress=not quiet)
    if json_out:
        say(dumps(result))
    elif result["ok"]:
        per = ", ".join(f"{k}: {v}" for k, v in result["vectors"].items())
        say(f"exported {result['items']} items to {to} ({result['copied']} copied, {result['skipped']} already there; "
            f"vectors {per}) in {result['seconds']:.1f}s; counts verified")
    else:
        say(f"exported to {to}, but the counts differ:")
        for p in result["problems"]:
            say(f"  - {p}")
    if not result["ok"]:
        raise typer.Exit(code=1)
