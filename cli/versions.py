"""`compatindex versions INDEX [--json]`: lineage, dims and how each version was made;
`compatindex versions retire INDEX NAME`: drop a version's vectors."""

from __future__ import annotations

import datetime as _dt
from typing import Annotated, Any

import numpy as np
import typer
import typer.core

from ._common import IndexArg, Json, LockTimeout, Quiet, cli_errors, dumps, metric_name, open_index, out_console, say

EXAMPLES = """\b
Examples:
  compatindex versions my.index
  compatindex versions my.index --json | jq '.versions[].name'
  compatindex versions retire my.index v1     (drop every vector of v1; see `versions retire --help`)
"""

RETIRE_EXAMPLES = """\b
Examples:
  compatindex versions retire my.index v1
  compatindex versions retire my.index v1 --json
"""


class VersionsGroup(typer.core.TyperGroup):
    """``versions``: ``show`` (the listing) is the default, so ``compatindex versions INDEX`` lists
    the versions and ``compatindex versions retire INDEX NAME`` retires one."""

    default_command = "show"

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=VersionsGroup,
    help="List the versions (`versions INDEX`, the same as `versions show INDEX`) or retire one (`versions retire INDEX NAME`).",
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def made_by(v: Any) -> str:
    """How a version maps into its parent: root, identity/orthogonal extension, head."""
    if v.parent is None:
        return "root"
    parts = []
    if v.head:
        parts.append(f"{v.head.get('kind', '?')} head")
    ext = v.extension
    if ext is None:
        parts.append("identity extension")
    else:
        ext = np.asarray(ext)
        ident = ext.shape[0] == ext.shape[1] and np.allclose(ext, np.eye(ext.shape[0]))
        parts.append("identity extension" if ident else f"orthogonal extension {ext.shape[0]}x{ext.shape[1]}")
    if v.report:
        parts.append("trained")
    return " + ".join(parts)


def describe(ix: Any, v: Any) -> dict[str, Any]:
    created = v.created_at
    if isinstance(created, (int, float)):
        created = _dt.datetime.fromtimestamp(created, tz=_dt.timezone.utc).isoformat(timespec="seconds")
    return {
        "name": v.name,
        "parent": v.parent,
        "lineage": list(ix.lineage(v.name)),
        "dim": int(v.dim),
        "raw_dim": int(v.raw_dim) if v.raw_dim is not None else int(v.dim),
        "metric": metric_name(v),
        "made_by": made_by(v),
        "head": (v.head or {}).get("kind") if v.head else None,
        "created_seq": v.created_seq,
        "created_at": created,
        "report": v.report or {},
        "config": v.config or {},
        "serving": serving_shown(v.serving or {}),
    }


def serving_shown(serving: dict[str, Any]) -> dict[str, Any]:
    """The stored serving parameters, with each set of retained pairs as its figures (not its vectors)."""
    from compatindex.core.neighbour_map import summary

    out = dict(serving)
    if out.get("pairs"):
        out["pairs"] = {str(a): summary(e) for a, e in out["pairs"].items()}
    return out


def serving_summary(serving: dict[str, Any]) -> str:
    """``fusion v2=0.6 v1=0.4; calibration v2->v1 a=1.3 b=-0.05; query map v1 (96x64)`` (``-`` when none is stored)."""
    parts = []
    fusion = serving.get("fusion")
    if fusion:
        parts.append("fusion " + " ".join(f"{k}={float(w):g}" for k, w in fusion.items()))
    cal = serving.get("calibration")
    if cal:
        parts.append("calibration " + ", ".join(f"{i}->{u} a={float(a):.3g} b={float(b):+.3g}" for i, u, a, b in cal))
    maps = serving.get("query_maps")
    if maps:  # {ancestor: {"shape": [d_u, d_a], ...}}: old-version queries carried into this space
        parts.append("query map " + ", ".join(f"{a} ({'x'.join(str(n) for n in (m or {}).get('shape', []))})"
                                              for a, m in maps.items()))
    pairs = serving.get("pairs")
    if pairs:  # {ancestor: retained pairs}: old clients served by the neighbour map once k is set
        parts.append("retained pairs " + ", ".join(
            f"{a} ({(e or {}).get('pairs', len((e or {}).get('ids') or []))}, k={(e or {}).get('k')})"
            for a, e in pairs.items()))
    return "; ".join(parts) or "-"


def versions(
    index: IndexArg,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """List the versions: lineage, dims, metric and how each one was made."""
    with cli_errors():
        ix = open_index(index, readonly=True)
        with ix:
            rows = [describe(ix, v) for v in ix.versions()]
            latest = ix.latest.name if rows else None
        if json_out:
            typer.echo(dumps({"latest": latest, "versions": rows}))
            return
        if not rows:
            typer.echo("no versions")
            return
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        for col in ("name", "parent", "dim", "raw dim", "metric", "made by", "lineage", "serving", "created"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["name"] + (" *" if r["name"] == latest else ""),
                r["parent"] or "-",
                str(r["dim"]),
                str(r["raw_dim"]),
                r["metric"],
                r["made_by"],
                " > ".join(r["lineage"]),
                serving_summary(r["serving"]),
                str(r["created_at"] or "-"),
            )
        out_console().print(table)
        typer.echo("* newest version")


def retire(
    index: IndexArg,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The version to retire.", show_default=False)],
    lock_timeout: LockTimeout = 0.0,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Retire a version: drop every stored vector of it (its record stays, so its queries still map
    onto its descendants). Refused, with nothing changed, while some item holds no vector of another version."""
    with cli_errors():
        ix = open_index(index, lock_timeout=lock_timeout)
        with ix:
            dropped = int(ix.retire_version(name))
            left = int(ix.count)
    if json_out:
        say(dumps({"retired": name, "dropped": dropped, "count": left}))
    else:
        say(f"retired version '{name}': dropped {dropped} vectors; the index holds {left} items")


app.command("show", epilog=EXAMPLES)(versions)
app.command("retire", epilog=RETIRE_EXAMPLES)(retire)
