"""`compatindex search INDEX QUERIES [-k K] [--version NAME] [--score pad|renorm|calibrated] [--raw/--no-raw] [--json]`,
or `compatindex search INDEX --query v2=new.npy --query v1=old.npy [--fusion v1=0.6,v2=0.4] ...`: the same
queries embedded by several models during a migration, fused (docs/concepts.md)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import (
    CliError,
    Json,
    Quiet,
    RawOpt,
    at_least_one,
    check_vectors,
    cli_errors,
    dumps,
    open_index,
    progress,
    resolve_raw,
    resolve_version,
    to_jsonable,
    IndexArg,
    Where,
    WhereFile,
    parse_where,
)
from ._io import VectorSource, open_vectors

EXAMPLES = """\b
Examples:
  compatindex search my.index queries.npy -k 5
  compatindex search my.index queries.npy -k 10 --version v2 --no-raw --json > hits.jsonl
  compatindex search my.index raw_queries.fvecs --version v2 --raw --score pad --json
  COMPATINDEX_VERSION=v1 compatindex search my.index old_queries.npy -k 10
  compatindex search my.index --query v2=new.npy --query v1=old.npy -k 10 --no-raw --json
  compatindex search my.index --query v2=new.npy --query v1=old.npy --fusion v1=0.6,v2=0.4
  compatindex search my.index queries.npy --version v1 --where '{"lang": "en"}' --with-payload --json
  compatindex search my.index queries.npy --version v1 --where-file filter.json
"""


class ScoreChoice(str, Enum):
    renorm = "renorm"
    pad = "pad"
    calibrated = "calibrated"


def parse_queries(values: list[str]) -> list[tuple[str, Path]]:
    """``["v2=new.npy", "v1=old.npy"]`` -> ``[("v2", Path("new.npy")), ("v1", Path("old.npy"))]``."""
    out: list[tuple[str, Path]] = []
    for text in values:
        name, sep, file = text.partition("=")
        if not sep or not name.strip() or not file.strip():
            raise CliError(f"--query {text!r} must be VERSION=FILE, e.g. --query v2=new.npy")
        name = name.strip()
        if any(name == n for n, _ in out):
            raise CliError(f"--query names version {name!r} twice", "give each version's queries once")
        out.append((name, Path(file.strip())))
    return out


def parse_fusion(text: str) -> dict[str, float]:
    """``"v1=0.6,v2=0.4"`` -> ``{"v1": 0.6, "v2": 0.4}`` (values are checked by the library)."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            if not sep or not name:
                raise ValueError
            weight = float(value)
        except ValueError:
            raise CliError(f"--fusion {text!r} must be VERSION=WEIGHT[,VERSION=WEIGHT...], e.g. v1=0.6,v2=0.4") from None
        if name in out:
            raise CliError(f"--fusion names version {name!r} twice")
        out[name] = weight
    return out


def search(
    index: IndexArg,
    queries: Annotated[
        Path | None,
        typer.Argument(metavar="[QUERIES]", help="Queries of one version: .npy, .fvecs, .parquet or .jsonl.",
                       show_default=False),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", callback=at_least_one, help="Hits per query (>= 1).")] = 10,
    version: Annotated[
        str | None,
        typer.Option("--version", help="Version the queries belong to (default: $COMPATINDEX_VERSION, else the "
                     "only version; required when the index holds several).", show_default=False),
    ] = None,
    query: Annotated[
        list[str] | None,
        typer.Option("--query", metavar="VERSION=FILE", show_default=False,
                     help="Queries of one version, repeatable: the same queries embedded by several models "
                          "(the first is the primary version). Replaces QUERIES."),
    ] = None,
    fusion: Annotated[
        str | None,
        typer.Option("--fusion", metavar="V=W,...", show_default=False,
                     help="Weights of the --query versions (default: those stored by upgrade/calibrate, else equal)."),
    ] = None,
    score: Annotated[
        ScoreChoice,
        typer.Option("--score", help="How queries score vectors of other versions: renorm (rescale the"
                     " query prefix), pad (plain inner product of the prefix) or calibrated (pad mapped onto"
                     " one scale per pair of versions by the stored calibration)."),
    ] = ScoreChoice.renorm,
    raw: RawOpt = None,
    column: Annotated[
        str | None, typer.Option("--column", help="Column/field holding the queries (.parquet/.jsonl).",
                                 show_default=False)
    ] = None,
    where: Where = None,
    where_file: WhereFile = None,
    with_payload: Annotated[
        bool, typer.Option("--with-payload", help="Add each hit's label and metadata (`labels`, `metadata`).")
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", callback=at_least_one, help="Queries per search call.")] = 1024,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Search the index: the k best items per query, across every version (read-only)."""
    with cli_errors():
        if (queries is None) == (not query):
            raise CliError("give the queries either as QUERIES or as --query VERSION=FILE (repeatable), not both"
                           if queries is not None else "no queries: give QUERIES or --query VERSION=FILE")
        if query and version is not None:
            raise CliError("--version goes with QUERIES; with --query, each VERSION=FILE names its version")
        if fusion is not None and not query:
            raise CliError("--fusion weighs the versions of --query; give the queries with --query VERSION=FILE")
        flt = parse_where(where, where_file)
        named = parse_queries(query) if query else []
        weights = parse_fusion(fusion) if fusion is not None else None
        sources: list[tuple[str | None, VectorSource]]
        if queries is not None:
            sources = [(None, open_vectors(queries, param="QUERIES", column=column))]
        else:
            sources = [(name, open_vectors(file, param=f"--query {name}", column=column)) for name, file in named]
        counts = {s.n for _, s in sources}
        if len(counts) > 1:
            raise CliError("the --query files hold different numbers of queries: "
                           + ", ".join(f"{n}={s.path} has {s.n}" for n, s in sources))
        ix = open_index(index, readonly=True)
        with ix:
            known = {v.name for v in ix.versions()}
            for name, _ in sources:
                if name is not None and name not in known:
                    raise CliError(f"--query {name!r} is not a version of this index (versions: {', '.join(sorted(known))})",
                                   "list them with `compatindex versions INDEX`")
            vers = [resolve_version(ix, version if name is None else name) for name, _ in sources]
            # one flag for every --query: it must be said when any of the versions needs it
            is_raw = [resolve_raw(ver, raw) for ver in vers][0]
            for (_, source), ver in zip(sources, vers):
                check_vectors(source, ix, ver, raw=is_raw, batch_size=batch_size, quiet=True)
            header = False
            payload_kw: dict[str, Any] = {}
            if flt is not None:
                payload_kw["where"] = flt
            if with_payload:
                payload_kw["with_payload"] = True
            label = "+".join(v.name for v in vers)
            with progress(f"searching {label}", sources[0][1].n, quiet=quiet) as advance:
                batches = zip(*(s.batches(batch_size) for _, s in sources))
                for group in batches:
                    start = group[0][0]
                    if queries is not None:
                        res = ix.search(group[0][1], k, version=vers[0].name, score=score.value, raw=is_raw,
                                        **payload_kw)
                    else:
                        res = ix.search({v.name: q for v, (_, q) in zip(vers, group)}, k, score=score.value,
                                        raw=is_raw, fusion=weights, **payload_kw)
                    lines = _rows(res, start, with_payload=with_payload)
                    if json_out:
                        typer.echo("\n".join(dumps(r) for r in lines))
                    else:
                        typer.echo(_table(lines, header=not header, with_payload=with_payload))
                        header = True
                    advance(len(group[0][1]))


def _rows(res: Any, start: int, *, with_payload: bool = False) -> list[dict[str, Any]]:
    out = []
    for i in range(res.ids.shape[0]):
        ids, scores, versions, labels, metas = [], [], [], [], []
        for j in range(res.ids.shape[1]):
            item = res.ids[i, j]
            if item is None:
                continue
            ids.append(to_jsonable(item))
            scores.append(float(res.scores[i, j]))
            versions.append(res.versions[i, j])
            if with_payload:
                labels.append(to_jsonable(res.labels[i, j]) if res.labels is not None else None)
                metas.append(to_jsonable(res.metadata[i, j]) if res.metadata is not None else None)
        row: dict[str, Any] = {"query": start + i, "ids": ids, "scores": scores, "versions": versions}
        if with_payload:
            row["labels"] = labels
            row["metadata"] = metas
        out.append(row)
    return out


def _table(rows: list[dict[str, Any]], *, header: bool, with_payload: bool = False) -> str:
    lines = []
    if header:
        lines.append(f"{'query':>7}  {'rank':>4}  {'id':<20}  {'score':>10}  version"
                     + ("  label       metadata" if with_payload else ""))
    for r in rows:
        if not r["ids"]:
            lines.append(f"{r['query']:>7}  {'-':>4}  {'(no items)':<20}")
        for rank, (i, s, v) in enumerate(zip(r["ids"], r["scores"], r["versions"]), 1):
            line = f"{r['query']:>7}  {rank:>4}  {str(i):<20}  {s:>10.6f}  {v}"
            if with_payload:
                lab = r["labels"][rank - 1]
                meta = r["metadata"][rank - 1]
                line += f"{'':<{max(0, 7 - len(str(v)))}}  {'-' if lab is None else str(lab):<10}  " + (
                    "-" if meta is None else dumps(meta))
            lines.append(line)
    return "\n".join(lines)
