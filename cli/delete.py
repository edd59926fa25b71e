"""`compatindex delete INDEX --ids IDS`: remove items and all their vectors."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import typer

from ._common import CliError, IndexArg, Json, LockTimeout, Quiet, cli_errors, dumps, fmt_ids, open_index, resolve_ids, say
from ._io import check_unique, read_ids

EXAMPLES = """\b
Examples:
  compatindex delete my.index --ids stale_ids.txt
  compatindex delete my.index --ids ids.npy --json
"""


def delete(
    index: IndexArg,
    ids: Annotated[str, typer.Option("--ids", help="Ids to remove: .npy or .txt (one per line).",
                                     show_default=False)],
    lock_timeout: LockTimeout = 0.0,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Delete items (all their vectors, of every version). Unknown ids are an error."""
    with cli_errors():
        keys = read_ids(ids, param="--ids")
        check_unique(keys, what=f"--ids '{ids}'")
        ix = open_index(index, lock_timeout=lock_timeout)
        with ix:
            keys = resolve_ids(keys, ix)
            check_unique(keys, what=f"--ids '{ids}'")
            if len(keys):
                present = np.asarray(ix.has(keys), dtype=bool)
                if not present.all():
                    missing = [keys[i] for i in np.flatnonzero(~present)[:6]]
                    raise CliError(
                        f"{int((~present).sum())} of --ids '{ids}' are not in INDEX '{index}': {fmt_ids(missing)}",
                        "nothing was deleted",
                    )
                removed = int(ix.delete(keys))
            else:
                removed = 0
            left = int(ix.count)
        if json_out:
            say(dumps({"deleted": removed, "count": left}))
        else:
            say(f"deleted {removed} items; the index holds {left} items")
