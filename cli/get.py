"""`compatindex get INDEX --ids IDS [--version NAME]... [--no-vectors]`: stored items as JSON lines."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import typer

from ._common import CliError, IndexArg, Quiet, at_least_one, cli_errors, dumps, fmt_ids, open_index, resolve_ids
from ._io import check_unique, read_ids

EXAMPLES = """\b
Examples:
  compatindex get my.index --ids 5000,5001
  compatindex get my.index --ids ids.txt --version v2 --json
  compatindex get my.index --ids ids.npy --no-vectors | jq .metadata
"""


def item_json(item: Any, *, with_vectors: bool) -> dict[str, Any]:
    """One item as the JSON line ``get`` prints (``list`` prints the same without ``vectors``)."""
    out: dict[str, Any] = {"id": item.id, "label": item.label, "metadata": item.metadata,
                           "versions": list(item.versions)}
    if with_vectors:
        out["vectors"] = {name: np.asarray(v, dtype=np.float32).tolist() for name, v in item.vectors.items()}
    return out


def get(
    index: IndexArg,
    ids: Annotated[str, typer.Option("--ids", show_default=False,
                                     help="Ids to show: a comma list (a,b,c) or a .txt (one per line) / .npy file.")],
    version: Annotated[
        list[str] | None,
        typer.Option("--version", show_default=False,
                     help="Print the vectors of this version only (repeatable; default: every version the item holds)."),
    ] = None,
    vectors: Annotated[
        bool, typer.Option("--vectors/--no-vectors", help="Include the stored vectors (`vectors`: {version: [...]}).")
    ] = True,
    batch_size: Annotated[int, typer.Option("--batch-size", callback=at_least_one, help="Items per read.")] = 1024,
    json_out: Annotated[bool, typer.Option("--json", help="Accepted for symmetry: get always prints JSON lines.")] = False,
    quiet: Quiet = False,
) -> None:
    """Print stored items, one JSON line per id in the order given: id, label, metadata, versions, vectors.

    Unknown ids are an error (nothing is printed). Read-only.
    """
    with cli_errors():
        keys = read_ids(ids, param="--ids", comma_list=True)
        ix = open_index(index, readonly=True)
        with ix:
            keys = resolve_ids(keys, ix)
            check_unique(keys, what=f"--ids {ids!r}")
            wanted = None
            if version:
                wanted = []
                for name in version:
                    ix.version(name)  # UnknownVersionError names it
                    if name not in wanted:
                        wanted.append(name)
            if len(keys):
                present = np.asarray(ix.has(keys), dtype=bool)
                if not present.all():
                    missing = [keys[i] for i in np.flatnonzero(~present)[:6]]
                    raise CliError(f"{int((~present).sum())} of --ids {ids!r} are not in INDEX '{index}': "
                                   f"{fmt_ids(missing)}")
            for start in range(0, len(keys), batch_size):
                chunk = keys[start:start + batch_size]
                items = ix.get(chunk, versions=wanted, with_vectors=vectors)
                typer.echo("\n".join(dumps(item_json(it, with_vectors=vectors)) for it in items))
