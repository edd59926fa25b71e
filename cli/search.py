"""`compatindex search INDEX QUERIES [-k K] [--version NAME] [--score pad|renorm] [--raw] [--json]`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import (
    Json,
    Quiet,
    at_least_one,
    check_vectors,
    cli_errors,
    dumps,
    open_index,
    progress,
    resolve_version,
    to_jsonable,
    IndexArg,
)
from ._io import open_vectors

EXAMPLES = """\b
Examples:
  compatindex search my.index queries.npy -k 5
  compatindex search my.index queries.npy -k 10 --version v2 --json > hits.jsonl
  compatindex search my.index raw_queries.fvecs --version v2 --raw --score pad --json
"""


class ScoreChoice(str, Enum):
    renorm = "renorm"
    pad = "pad"


def search(
    index: IndexArg,
    queries: Annotated[Path, typer.Argument(metavar="QUERIES", help="Queries: .npy, .fvecs, .parquet or .jsonl.", show_default=False)],
    k: Annotated[int, typer.Option("-k", "--k", callback=at_least_one, help="Hits per query (>= 1).")] = 10,
    version: Annotated[
        str | None,
        typer.Option("--version", help="Version the queries belong to (default: the newest).", show_default=False),
    ] = None,
    score: Annotated[
        ScoreChoice,
        typer.Option("--score", help="How queries score vectors of older versions: renorm (rescale the"
                     " query prefix) or pad (plain inner product of the prefix)."),
    ] = ScoreChoice.renorm,
    raw: Annotated[
        bool, typer.Option("--raw", help="Queries are raw encoder outputs; map them with the version's transform.")
    ] = False,
    column: Annotated[
        str | None, typer.Option("--column", help="Column/field holding the queries (.parquet/.jsonl).",
                                 show_default=False)
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", callback=at_least_one, help="Queries per search call.")] = 1024,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Search the index: the k best items per query, across every version (read-only)."""
    with cli_errors():
        source = open_vectors(queries, param="QUERIES", column=column)
        ix = open_index(index, readonly=True)
        with ix:
            ver = resolve_version(ix, version)
            check_vectors(source, ix, ver, raw=raw, batch_size=batch_size, quiet=True)
            header = False
            with progress(f"searching {ver.name}", source.n, quiet=quiet) as advance:
                for start, q in source.batches(batch_size):
                    res = ix.search(q, k, version=ver.name, score=score.value, raw=raw)
                    lines = _rows(res, start)
                    if json_out:
                        typer.echo("\n".join(dumps(r) for r in lines))
                    else:
                        typer.echo(_table(lines, header=not header))
                        header = True
                    advance(len(q))


def _rows(res: Any, start: int) -> list[dict[str, Any]]:
    out = []
    for i in range(res.ids.shape[0]):
        ids, scores, versions = [], [], []
        for j in range(res.ids.shape[1]):
            item = res.ids[i, j]
            if item is None:
                continue
            ids.append(to_jsonable(item))
            scores.append(float(res.scores[i, j]))
            versions.append(res.versions[i, j])
        out.append({"query": start + i, "ids": ids, "scores": scores, "versions": versions})
    return out


def _table(rows: list[dict[str, Any]], *, header: bool) -> str:
    lines = []
    if header:
        lines.append(f"{'query':>7}  {'rank':>4}  {'id':<20}  {'score':>10}  version")
    for r in rows:
        if not r["ids"]:
            lines.append(f"{r['query']:>7}  {'-':>4}  {'(no items)':<20}")
        for rank, (i, s, v) in enumerate(zip(r["ids"], r["scores"], r["versions"]), 1):
            lines.append(f"{r['query']:>7}  {rank:>4}  {str(i):<20}  {s:>10.6f}  {v}")
    return "\n".join(lines)
