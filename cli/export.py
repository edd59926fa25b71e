"""`compatindex export INDEX --to qdrant://HOST:PORT/COLLECTION`: copy an embedded index into Qdrant;
`compatindex export INDEX --to out.parquet|out.npy --version NAME`: write one version to a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import CliError, Json, Quiet, at_least_one, cli_errors, dumps, open_index, progress, say

EXAMPLES = """\b
Examples:
  compatindex export my.index --to qdrant://db.internal:6333/products
  compatindex export my.index --to qdrant+local:///srv/products.qdrant --json
  QDRANT_API_KEY=... compatindex export my.index --to 'qdrant://cluster:6333/products?https=1'
Rerun the same command after an interruption: points already copied are skipped.

  compatindex export my.index --to v1.parquet --version v1
  compatindex export my.index --to v1.npy --version v1      (ids in v1.ids.npy)
"""


def export(
    index: Annotated[str, typer.Argument(metavar="INDEX", show_default=False,
                                         help="Embedded index folder to copy (for a file export, also a Qdrant URL).")],
    to: Annotated[str, typer.Option("--to", metavar="URL|FILE", show_default=False,
                                    help="Destination: qdrant://HOST:PORT/COLLECTION or qdrant+local://PATH, or a "
                                         ".parquet/.npy file (one version's vectors; see --version).")],
    version: Annotated[str | None, typer.Option("--version", show_default=False,
                                                help="The version a file export writes (required when the index has "
                                                     "several; a Qdrant export copies every version).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="A file export replaces existing files.")] = False,
    batch_size: Annotated[int | None, typer.Option("--batch-size", callback=at_least_one, show_default=False,
                                                   help="Items per request to Qdrant (default 1024), or per batch "
                                                        "and parquet row group of a file export (default 4096).")] = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Copy an index (every version, item, vector, label, metadata and the registry) into Qdrant,
    or write one version to a .parquet/.npy file.

    Qdrant: resumable (a rerun skips the points already present) and verified by counts at the end
    (exit 1 and a list of differences when Qdrant does not hold what the index holds).
    Files: .npy holds the (n, d) float32 vectors, their ids go to <stem>.ids.npy beside it;
    .parquet holds the columns id, label, metadata (JSON text) and vector (list<float32>).
    """
    suffix = Path(to).suffix.lower()
    if not to.startswith(("qdrant://", "qdrant+local://")) and suffix in (".npy", ".parquet"):
        _export_file(index, to, version=version, overwrite=overwrite, batch_size=batch_size, json_out=json_out,
                     quiet=quiet)
        return
    with cli_errors():
        if not to.startswith(("qdrant://", "qdrant+local://")):
            raise CliError(f"--to {to!r} is not a Qdrant URL, nor a .parquet/.npy file",
                           "use qdrant://HOST:PORT/COLLECTION, qdrant+local://PATH, out.parquet or out.npy")
        if version is not None or overwrite:
            raise CliError(f"{'--version' if version is not None else '--overwrite'} applies to a file export; "
                           "a Qdrant export copies every version")
        folder = Path(index)
        if not folder.exists():
            raise CliError(f"INDEX '{index}': no such folder")
        if not folder.is_dir():
            raise CliError(f"INDEX '{index}' is a file, not an index folder")
        from compatindex.qdrant import export_index

        result = export_index(str(folder), to, batch=batch_size or 1024, progress=not quiet)
    if json_out:
        say(dumps(result))
    elif result["ok"]:
        per = ", ".join(f"{k}: {v}" for k, v in result["vectors"].items())
        say(f"exported {result['items']} items to {to} ({result['copied']} copied, {result['skipped']} already there; "
            f"vectors {per}) in {result['seconds']:.1f}s; counts verified")
    else:
        say(f"exported to {to}, but the counts differ:")
        for p in result["problems"]:
            say(f"  - {p}")
    if not result["ok"]:
        raise typer.Exit(code=1)


def _export_file(index: str, to: str, *, version: str | None, overwrite: bool, batch_size: int | None,
                 json_out: bool, quiet: bool) -> None:
    from compatindex.file_export import DEFAULT_BATCH, export_file

    with cli_errors():
        ix = open_index(index, readonly=True)
        with ix:
            names = [v.name for v in ix.versions()]
            if version is None:
                if len(names) != 1:
                    raise CliError(f"--version: INDEX '{index}' has {len(names)} versions ({', '.join(names)}); "
                                   "a file export writes one", "pick it with --version NAME")
                version = names[0]
            with progress(f"exporting {version} to {Path(to).name}", int(ix.count), quiet=quiet) as advance:
                result = export_file(ix, to, version=version, batch_size=batch_size or DEFAULT_BATCH,
                                     overwrite=overwrite, progress=advance)
    if json_out:
        say(dumps(result))
        return
    extra = f", ids in {result['ids_path']}" if result["ids_path"] else ""
    skipped = f"; {result['skipped']} items hold no vector of '{version}' and were left out" if result["skipped"] else ""
    say(f"exported {result['items']} vectors of version '{version}' (dim {result['dim']}) to {to}{extra}{skipped}")
