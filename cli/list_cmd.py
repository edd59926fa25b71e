"""`compatindex list INDEX [--offset N] [--limit N] [--where JSON] [--json]`: one page of item ids."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import IndexArg, Json, Quiet, Where, WhereFile, at_least_one, cli_errors, dumps, open_index, parse_where
from .get import item_json

EXAMPLES = """\b
Examples:
  compatindex list my.index
  compatindex list my.index --offset 100 --limit 50
  compatindex list my.index --where '{"lang": "en"}' --json | jq '.items[].id'
"""


def list_(
    index: IndexArg,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many (matching) items first.")] = 0,
    limit: Annotated[int, typer.Option("--limit", callback=at_least_one, help="Items per page (>= 1).")] = 100,
    where: Where = None,
    where_file: WhereFile = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """One page of items in insertion order: id, versions, label and metadata (read-only).

    The last line says the --offset of the next page, if there is one (`next_offset` with --json).
    """
    with cli_errors():
        flt = parse_where(where, where_file)
        ix = open_index(index, readonly=True)
        with ix:
            page = ix.list_items(offset=offset, limit=limit, where=flt)
        rows = [item_json(it, with_vectors=False) for it in page.items]
        if json_out:
            typer.echo(dumps({"offset": offset, "limit": limit, "items": rows, "next_offset": page.next_offset}))
            return
        if not rows:
            typer.echo("no items" + (" match --where" if flt is not None else "") + (f" at offset {offset}"
                                                                                  if offset else ""))
            return
        width = max(20, *(len(str(r["id"])) for r in rows))
        typer.echo(f"{'id':<{width}}  {'versions':<16}  {'label':<10}  metadata")
        for r in rows:
            label = "-" if r["label"] is None else str(r["label"])
            meta = "-" if r["metadata"] is None else dumps(r["metadata"])
            typer.echo(f"{str(r['id']):<{width}}  {','.join(r['versions']):<16}  {label:<10}  {meta}")
        if page.next_offset is not None:
            typer.echo(f"more items: rerun with --offset {page.next_offset}")
