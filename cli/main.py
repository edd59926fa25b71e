"""The `compatindex` command group: one file per command, composed here.

The console script ``compatindex`` runs :func:`main`. ``upgrade`` comes from ``cli/upgrade.py``
(the trainer's command); it is left out while that module defines no ``upgrade`` function.
"""

from __future__ import annotations

from importlib import metadata
from typing import Annotated

import typer

from . import add as add_module
from . import backfill as backfill_module
from . import backup as backup_module
from . import calibrate as calibrate_module
from . import compact as compact_module
from . import delete as delete_module
from . import export as export_module
from . import get as get_module
from . import list_cmd as list_module
from . import set_metadata as set_metadata_module
from . import info as info_module
from . import init as init_module
from . import search as search_module
from . import verify as verify_module
from . import versions as versions_module

app = typer.Typer(
    name="compatindex",
    help=(
        "An on-disk multi-version vector index whose embedding-model upgrades are backward compatible.\n\n"
        "\b\nQuick start:\n"
        "  compatindex init my.index --dim 64 --name v1\n"
        "  compatindex add my.index vectors.npy --ids ids.txt --labels labels.txt\n"
        "  compatindex search my.index queries.npy -k 10 --json\n\n"
        "Exit codes: 0 success, 1 an error in the files, the data or the index, 2 a usage error.\n\n"
        "On an index of several versions, name the version with --version (or set COMPATINDEX_VERSION=NAME "
        "to pin a default), and say --raw or --no-raw for a version with a head or a non-identity Q."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _tool_version() -> str:
    try:
        return metadata.version("compatindex")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        import compatindex

        return str(getattr(compatindex, "__version__", "unknown"))


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"compatindex {_tool_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the tool's version and exit."),
    ] = False,
) -> None:
    """An on-disk multi-version vector index whose embedding-model upgrades are backward compatible."""


for _name, _module in (
    ("init", init_module),
    ("add", add_module),
    ("search", search_module),
    ("backfill", backfill_module),
    ("delete", delete_module),
    ("get", get_module),
    ("set-metadata", set_metadata_module),
    ("info", info_module),
    ("verify", verify_module),
    ("export", export_module),
    ("calibrate", calibrate_module),
    ("compact", compact_module),
    ("backup", backup_module),
):
    app.command(_name, epilog=_module.EXAMPLES)(getattr(_module, _name.replace("-", "_")))
app.command("list", epilog=list_module.EXAMPLES)(list_module.list_)
# `versions INDEX` lists them (the default subcommand `show`); `versions retire INDEX NAME` retires one
app.add_typer(versions_module.app, name="versions")

try:  # the trainer's command; absent (or not importable) until it lands
    from . import upgrade as upgrade_module
except ImportError:  # pragma: no cover
    upgrade_module = None  # type: ignore[assignment]
if upgrade_module is not None and callable(getattr(upgrade_module, "upgrade", None)):
    app.command("upgrade", epilog=getattr(upgrade_module, "EXAMPLES", None))(upgrade_module.upgrade)


def main() -> None:
    """Entry point of the ``compatindex`` console script."""
    app(prog_name="compatindex")


if __name__ == "__main__":  # pragma: no cover
    main()
