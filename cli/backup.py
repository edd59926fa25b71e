"""`compatindex backup INDEX DEST`: a consistent, compacted copy of an index, made while it serves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import CliError, IndexArg, Json, Quiet, cli_errors, dumps, open_index, say
from .compact import backend_call

EXAMPLES = """\b
Examples:
  compatindex backup my.index /backups/my.index-2026-12-01
  compatindex backup my.index /backups/nightly --json
"""


def backup(
    index: IndexArg,
    dest: Annotated[Path, typer.Argument(help="New folder for the copy (must not exist).", show_default=False)],
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Copy the index to DEST (a new folder), compacted, while readers and the writer keep working.
    Opens the index read-only: it takes no writer lock."""
    with cli_errors():
        if dest.exists():
            raise CliError(f"DEST '{dest}' already exists", "give a new folder; backups never overwrite")
        ix = open_index(index, readonly=True)
        with ix:
            info = backend_call(ix, "backup", dest)
        if json_out:
            say(dumps(info))
        else:
            say(f"backed up INDEX '{index}' to '{dest}' ({info['store_bytes'] / 1e6:.1f} MB store, "
                f"{len(info['shards_copied'])} shard(s) copied)")
