"""`compatindex init INDEX --dim D [--name v1] [--metric cosine|ip]`: a new index with its root version."""

from __future__ import annotations

import shutil
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

import compatindex
from compatindex.errors import NotAnIndexError

from ._common import CliError, at_least_one, Json, Quiet, cli_errors, dumps, say

EXAMPLES = """\b
Examples:
  compatindex init my.index --dim 128
  compatindex init my.index --dim 384 --name minilm-v1 --metric ip
"""


class MetricChoice(str, Enum):
    cosine = "cosine"
    ip = "ip"


class ShardChoice(str, Enum):
    flat = "flat"
    ivf = "ivf"
    hnsw = "hnsw"


def init(
    index: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder to create (absent or empty).", show_default=False)],
    dim: Annotated[int, typer.Option("--dim", callback=at_least_one, help="Dimension of the root version's vectors.")],
    name: Annotated[str, typer.Option("--name", help="Name of the root version.")] = "v1",
    metric: Annotated[MetricChoice, typer.Option("--metric", help="Similarity of the index.")] = MetricChoice.cosine,
    shard: Annotated[
        ShardChoice, typer.Option("--shard", help="How shards index vectors: exact flat, IVF or HNSW.")
    ] = ShardChoice.flat,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Create an index folder holding its root version."""
    with cli_errors():
        existed = index.exists()
        if existed and not index.is_dir():
            raise CliError(f"INDEX '{index}' is a file, not a folder")
        if existed:
            try:
                compatindex.open(str(index), readonly=True, create=False).close()
            except NotAnIndexError:
                pass
            else:
                raise CliError(
                    f"INDEX '{index}' already holds an index",
                    "pick another folder, or remove this one first",
                )
            if any(index.iterdir()):
                raise CliError(
                    f"INDEX '{index}' is a folder that is not empty and holds no index",
                    "init needs an absent or empty folder",
                )
        created = False
        try:
            spec = None if shard is ShardChoice.flat else {"kind": shard.value}
            ix = compatindex.open(str(index), create=True, shard=spec)
            created = True
            with ix:
                v = ix.create_version(name, dim, metric=metric.value)
        except BaseException:
            # leave the folder as it was: absent, or empty
            if created or index.exists():
                if not existed:
                    shutil.rmtree(index, ignore_errors=True)
                else:
                    for child in index.iterdir():
                        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
            raise
        if json_out:
            say(dumps({"index": str(index), "version": v.name, "dim": v.dim, "metric": metric.value}))
        else:
            say(f"created index '{index}' with root version '{v.name}' (dim {v.dim}, {metric.value})")
