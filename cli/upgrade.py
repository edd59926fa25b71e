"""`compatindex upgrade INDEX VECTORS --ids IDS [--name v2] [--parent v1] [--method auto|...]`.

Trains the next compatible version against the stored gallery (compatindex.trainer), prints the
gate report (a table, or JSON with ``--json``), registers the version when the gate passes (or
``--force``), and exits 1 when the gate refuses.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ._common import (
    CliError,
    Json,
    LockTimeout,
    Quiet,
    cli_errors,
    dumps,
    open_index,
    out_console,
    say,
)
from ._io import check_unique, open_vectors, read_keys
from .add import ColumnOpt, check_length

EXAMPLES = """\b
Examples:
  compatindex upgrade my.index new_vectors.npy --ids ids.txt --name v2
  compatindex upgrade my.index new.npy --ids ids.npy --method isometric --extra-dims 32 --json
  compatindex search my.index new_queries.npy --version v2 --raw -k 10
"""

class Method(str, enum.Enum):
    auto = "auto"
    isometric = "isometric"
    procrustes = "procrustes"
    oca = "oca"
    affine = "affine"
    mlp = "mlp"


def _f(x: Any, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def render_report(report: dict[str, Any]) -> None:
    """The gate report as tables on stdout."""
    from rich.table import Table

    con = out_console()
    d = report["data"]
    con.print(f"pairs: {d['n_pairs']} ({d['n_train']} train / {d['n_heldout']} held out), raw dim "
              f"{d['raw_dim']}, parent '{report.get('parent')}' dim {d['parent_dim']}, labels: "
              f"{'yes (' + str(d['n_classes']) + ' classes)' if d['labels'] else 'no'}")
    t = Table(title="candidates (held-out)")
    for c in ("method", "dim", "fit s", "recall@1", "recall@10", "MRR", "new/old top1", "new/new top1"):
        t.add_column(c)
    for c in report["candidates"]:
        h = c["heldout"]
        name = c["method"] + (" *" if c["method"] == report["chosen"] else "")
        t.add_row(name, str(c["dim"]), _f(c["fit_seconds"], 2), _f(h["pairs"]["recall@1"]),
                  _f(h["pairs"]["recall@10"]), _f(h["pairs"]["mrr"]),
                  _f(h.get("new_old", {}).get("top1")), _f(h.get("new_new", {}).get("top1")))
    con.print(t)
    g = report["gate"]
    t = Table(title="gate: held-out alignment with the stored gallery")
    for c in ("queries", "recall@1", "recall@10", "MRR", "mean cos"):
        t.add_column(c)
    for key, label in (("fit", f"{report['chosen']} (this version)"), ("untransformed", "untransformed (control)"),
                       ("shuffled", "fit on shuffled pairs (control)")):
        a = g["pairs"][key]
        t.add_row(label, _f(a["recall@1"]), _f(a["recall@10"]), _f(a["mrr"]), _f(a["mean_cos"]))
    con.print(t)
    lab = g.get("labels")
    if lab and "old_old" in lab:
        t = Table(title="gate: held-out label retrieval (leave-one-out)")
        for c in ("query / gallery", "top1", "top5", "mAP"):
            t.add_column(c)
        for key, label in (("old_old", "old / old"), ("new_old", "new / old"), ("new_new", "new / new"),
                           ("raw_new_new", "raw new / raw new")):
            if key in lab:
                m = lab[key]
                t.add_row(label, _f(m["top1"]), _f(m["top5"]), _f(m["mAP"]))
        con.print(t)
    if report.get("registered"):
        forced = " (forced past the gate)" if report.get("forced") else ""
        con.print(f"registered version '{report['name']}' (dim {report['dim']}, parent '{report['parent']}', "
                  f"method {report['chosen']}){forced}")
    else:
        con.print(f"refused: version '{report['name']}' was not registered")
        for r in g["reasons"]:
            con.print(f"  - {r}")


def upgrade(
    index: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.", show_default=False)],
    vectors: Annotated[Path, typer.Argument(
        metavar="VECTORS", help="Raw new-encoder vectors of stored items: .npy, .fvecs, .parquet or .jsonl.",
        show_default=False)],
    ids: Annotated[str, typer.Option("--ids", help="Ids of the items VECTORS embeds: .npy or .txt file, or a "
                                     "column/field of the input.", show_default=False)],
    name: Annotated[str | None, typer.Option("--name", help="Name of the new version (default: v{N+1}).",
                                             show_default=False)] = None,
    parent: Annotated[str | None, typer.Option("--parent", help="Version to stay compatible with (default: "
                                               "the latest).", show_default=False)] = None,
    method: Annotated[Method, typer.Option("--method", help="How to fit the version (auto: the best of "
                                           "isometric, procrustes and oca on held-out pairs).")] = Method.auto,
    extra_dims: Annotated[int | None, typer.Option("--extra-dims", min=0, help="Budget of dims added to the "
                                                   "parent's (default: max(8, parent dim / 8)).",
                                                   show_default=False)] = None,
    use_labels: Annotated[bool, typer.Option("--use-labels/--no-labels", help="Use the labels stored with "
                                             "gallery items (prototypes and the label gate).")] = True,
    force: Annotated[bool, typer.Option("--force", help="Register even when the gate refuses.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split and of training.")] = 0,
    steps: Annotated[int | None, typer.Option("--steps", min=0, help="Training steps of torch heads.",
                                              show_default=False)] = None,
    column: ColumnOpt = None,
    lock_timeout: LockTimeout = 0.0,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Learn the next compatible version against the stored gallery; register it if the gate passes."""
    with cli_errors():
        source = open_vectors(vectors, param="VECTORS", column=column)
        keys = read_keys(ids, param="--ids", source=source)
        check_length(keys, source.n, param="--ids", spec=ids, vectors=vectors)
        check_unique(keys, what=f"--ids '{ids}'")
        parts = []
        for start, x in source.batches(65_536):
            source.check_finite(x, start)
            parts.append(x)
        X = np.concatenate(parts) if parts else np.zeros((0, source.dim), np.float32)
        key_list = keys.tolist() if isinstance(keys, np.ndarray) else list(keys)
        from compatindex.trainer import upgrade as run_upgrade  # torch loads only for this command

        ix = open_index(index, lock_timeout=lock_timeout)
        with ix:
            if key_list:
                present = np.asarray(ix.has(key_list), dtype=bool)
                if not present.all():
                    missing = [key_list[i] for i in np.flatnonzero(~present)[:5]]
                    raise CliError(f"{int((~present).sum())} of --ids '{ids}' are not in INDEX '{index}': {missing}",
                                   "pairs must be items already stored in the parent version")
            overrides: dict[str, Any] = {"seed": seed, "quiet": quiet}
            if steps is not None:
                overrides["steps"] = steps
            version, report = run_upgrade(ix, X, key_list, method=Method(method).value, parent=parent, name=name,
                                          extra_dims=extra_dims, use_labels=use_labels, force=force,
                                          **overrides)
        if json_out:
            say(dumps(report))
        else:
            render_report(report)
        if version is None:
            typer.echo("error: the compatibility gate refused the upgrade: " + "; ".join(report["gate"]["reasons"])
                       + " (hint: check the pairs, or pass --force to register it anyway)", err=True)
            raise typer.Exit(code=1)
