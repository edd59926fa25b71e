"""`compatindex compact INDEX`: reclaim the disk held by replaced and deleted vectors."""

from __future__ import annotations

from typing import Any

import compatindex

from ._common import CliError, IndexArg, Json, LockTimeout, Quiet, cli_errors, dumps, open_index, say

EXAMPLES = """\b
Examples:
  compatindex compact my.index
  compatindex compact my.index --json
"""


def backend_call(ix: compatindex.Index, name: str, *args: Any) -> Any:
    """Call an embedded-backend maintenance method (``compact``, ``backup``).

    Goes through ``Index.<name>``; an index whose engine has no such method is a clear error.
    """
    fn = getattr(ix.backend, name, None) and getattr(ix, name)
    if fn is None:
        raise CliError(f"INDEX '{ix.path}' is served by an engine without `{name}`",
                       "compact and backup are for index folders (the embedded engine)")
    return fn(*args)


def compact(
    index: IndexArg,
    lock_timeout: LockTimeout = 0.0,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Rewrite the index without its dead vectors and old op-log records (crash-safe: a kill
    leaves the old index or the new one). Searches in other processes go on meanwhile."""
    with cli_errors():
        ix = open_index(index, lock_timeout=lock_timeout)
        with ix:
            info = backend_call(ix, "compact")
        if json_out:
            say(dumps(info))
        else:
            before, after = info["disk_bytes_before"], info["disk_bytes_after"]
            say(f"compacted INDEX '{index}': {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB "
                f"({info['dead_rows']} dead vectors dropped, {info['chunks_dropped']} chunks rewritten)")
