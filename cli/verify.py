"""`compatindex verify INDEX`: check the store and every shard against each other."""

from __future__ import annotations


import typer

from ._common import IndexArg, Json, Quiet, cli_errors, dumps, open_index

EXAMPLES = """\b
Examples:
  compatindex verify my.index && echo sound
"""


def verify(
    index: IndexArg,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Check the store and every shard against each other; exit 1 and list each problem found."""
    with cli_errors():
        ix = open_index(index, readonly=True)
        with ix:
            problems = [str(p) for p in ix.verify()]
            count = int(ix.count)
    if json_out:
        typer.echo(dumps({"ok": not problems, "items": count, "problems": problems}))
    elif problems:
        typer.echo(f"INDEX '{index}': {len(problems)} problem(s) found:")
        for p in problems:
            typer.echo(f"  - {p}")
    else:
        typer.echo(f"INDEX '{index}': ok ({count} items, store and shards agree)")
    if problems:
        raise typer.Exit(code=1)
