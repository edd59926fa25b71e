"""`compatindex info INDEX [--json]`: counts per version, backfill coverage, disk use, shard state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .versions import serving_shown, serving_summary
from ._common import IndexArg, Json, Quiet, cli_errors, dumps, is_url, open_index, to_jsonable

EXAMPLES = """\b
Examples:
  compatindex info my.index
  compatindex info my.index --json | jq .
"""


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _lines(obj: Any, indent: int = 0) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:")
                out.extend(_lines(v, indent + 1))
            else:
                val = _human(v) if isinstance(v, int) and ("bytes" in str(k) or "disk" in str(k)) else v
                out.append(f"{pad}{k}: {val}")
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, (dict, list)):
                sub = _lines(v, indent + 1)
                out.append(f"{pad}- " + sub[0].lstrip() if sub else f"{pad}-")
                out.extend(sub[1:])
            else:
                out.append(f"{pad}- {v}")
    else:
        out.append(f"{pad}{obj}")
    return out


def info(
    index: IndexArg,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Show item and vector counts per version, backfill coverage, disk use and shard state."""
    with cli_errors():
        ix = open_index(index, readonly=True)
        with ix:
            stats = to_jsonable(ix.stats())
            if isinstance(stats, dict) and isinstance(stats.get("versions"), dict):
                for v in ix.versions():  # the serving parameters stored with each version
                    if v.name in stats["versions"]:
                        stats["versions"][v.name]["serving"] = to_jsonable(serving_shown(v.serving or {}))
            body: dict[str, Any] = {"index": str(index), "items": int(ix.count),
                                    "latest": ix.latest.name if ix.versions() else None}
        body.update(stats if isinstance(stats, dict) else {"stats": stats})
        body.setdefault("disk_bytes", 0 if is_url(index) else _disk_bytes(Path(index)))
    if json_out:
        typer.echo(dumps(body))
    else:
        typer.echo(_text(body))


def _text(body: dict[str, Any]) -> str:
    """Readable summary: a few headline fields, a table of versions, then anything else."""
    body = dict(body)
    lines = [f"index:   {body.pop('index')}", f"items:   {body.pop('items')}", f"latest:  {body.pop('latest')}"]
    disk = body.pop("disk_bytes", None)
    if isinstance(disk, int):
        lines.append(f"disk:    {_human(disk)}")
    spec = body.pop("shard_spec", None)
    if isinstance(spec, dict):
        kind = spec.get("kind", "?")
        keys = {"ivf": ("nlist", "nprobe"), "hnsw": ("m", "ef_search", "ef_construction")}.get(str(kind), ())
        params = ", ".join(f"{k}={spec[k]}" for k in keys if k in spec)
        lines.append(f"shards:  {kind}" + (f" ({params})" if params else ""))
    if "device" in body:
        lines.append(f"device:  {body.pop('device')}")
    body.pop("path", None)
    versions = body.pop("versions", None)
    if isinstance(versions, dict) and all(isinstance(v, dict) for v in versions.values()):
        header = ["version", "dim", "parent", "metric", "vectors", "coverage", "shard"]
        rows = []
        for name, v in versions.items():
            cov = v.get("coverage")
            shard = v.get("shard")
            if isinstance(shard, dict):
                state = f"{shard.get('ntotal', '?')} indexed" + (
                    "" if shard.get("persisted", True) else ", unsaved"
                )
            else:
                state = str(shard if shard is not None else "-")
            rows.append([name, str(v.get("dim", "?")), str(v.get("parent") or "-"), str(v.get("metric", "?")),
                         str(v.get("vectors", "?")),
                         f"{100 * cov:.1f}%" if isinstance(cov, (int, float)) else str(cov), state])
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines.append("")
        for r in [header, *rows]:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        served = [(name, serving_summary(v["serving"])) for name, v in versions.items() if v.get("serving")]
        if served:
            lines.append("")
            lines.extend(f"serving {name}: {text}" for name, text in served)
    elif versions is not None:
        body["versions"] = versions
    if body:
        lines.append("")
        lines.extend(_lines(body))
    return "\n".join(lines)
