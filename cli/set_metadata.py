"""`compatindex set-metadata INDEX --ids IDS --metadata META.jsonl [--replace]`: update stored metadata."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import typer

from ._common import (
    CliError,
    IndexArg,
    Json,
    LockTimeout,
    Quiet,
    cli_errors,
    dumps,
    fmt_ids,
    open_index,
    resolve_ids,
    say,
)
from ._io import InputFileError, check_unique, read_ids, read_metadata

EXAMPLES = """\b
Examples:
  compatindex set-metadata my.index --ids ids.txt --metadata meta.jsonl
  compatindex set-metadata my.index --ids 5000,5001 --metadata two.jsonl --replace --json
"""


def set_metadata(
    index: IndexArg,
    ids: Annotated[str, typer.Option("--ids", show_default=False,
                                     help="Ids to update: a comma list (a,b,c) or a .txt (one per line) / .npy file.")],
    metadata: Annotated[str, typer.Option("--metadata", metavar="META", show_default=False,
                                          help="A .jsonl file: one JSON object per id, in the order of --ids.")],
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace each item's metadata with the new object (default: merge it "
                           "key by key into the stored one; a null value removes the key).")
    ] = False,
    lock_timeout: LockTimeout = 0.0,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Update the metadata of existing items in one transaction (unknown ids: an error, nothing written)."""
    with cli_errors():
        keys = read_ids(ids, param="--ids", comma_list=True)
        rows = read_metadata(metadata, param="--metadata")
        if len(rows) != len(keys):
            raise InputFileError(f"--metadata '{metadata}' holds {len(rows)} rows but --ids {ids!r} holds {len(keys)}"
                                 " ids; they must match one to one (one JSON object per line)")
        ix = open_index(index, lock_timeout=lock_timeout)
        with ix:
            keys = resolve_ids(keys, ix)
            check_unique(keys, what=f"--ids {ids!r}")
            if len(keys):
                present = np.asarray(ix.has(keys), dtype=bool)
                if not present.all():
                    missing = [keys[i] for i in np.flatnonzero(~present)[:6]]
                    raise CliError(f"{int((~present).sum())} of --ids {ids!r} are not in INDEX '{index}': "
                                   f"{fmt_ids(missing)}", "nothing was updated")
                ix.set_metadata(keys, rows, merge=not replace)
        n = len(keys)
        if json_out:
            say(dumps({"updated": n, "mode": "replace" if replace else "merge"}))
        else:
            say(f"{'replaced' if replace else 'merged'} the metadata of {n} items")
