"""`compatindex upgrade INDEX VECTORS --ids IDS [--name v2] [--parent v1] [--method auto|...] [--dry-run]`.

Trains the next compatible version against the stored gallery (compatindex.trainer), prints the
gate report (a table, or JSON with ``--json``), registers the version when the gate passes (or
``--force``), and exits 1 when the gate refuses. ``--dry-run`` fits and gates, registers
nothing, and prints the expected day-one new/old against old/old and the backfill benefit.
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
    resolve_ids,
    say,
)
from ._io import check_unique, open_vectors, read_all, read_ids
from .add import ColumnOpt, check_length

EXAMPLES = """\b
Examples:
  compatindex upgrade my.index new_vectors.npy --ids ids.txt --name v2 --dry-run
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


class OcaHead(str, enum.Enum):
    isometry = "isometry"
    linear = "linear"
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
    p = g["pairs"]
    con.print(f"gate split: {d['n_heldout']} held-out pairs, seen by no fit or selection")
    t = Table(title=f"gate: held-out alignment with the stored gallery ({p['fit']['gallery_size']} items)")
    for c in ("queries", "recall@1", "recall@10", "MRR", "mean cos"):
        t.add_column(c)
    for key, label in (("fit", f"{report['chosen']} (version '{report.get('name')}')"),
                       ("shuffled", f"{p.get('control_method', report['chosen'])} on shuffled pairs (control)")):
        a = p[key]
        t.add_row(label, _f(a["recall@1"]), _f(a["recall@10"]), _f(a["mrr"]), _f(a["mean_cos"]))
    con.print(t)
    ties = " (same-label items are ties)" if p.get("label_ties") else ""
    con.print(f"pairs rule{ties}: MRR {_f(p['mrr'], 4)} vs shuffled {_f(p['mrr_shuffled'], 4)} (margin "
              f"{p['margin']}), sign-test z={_f(p['z_vs_shuffled'], 2)}, permutation p={p['p_permutation']:.3g}")
    lab = g.get("labels")
    if lab and "old_old" in lab:
        size = f", among {lab['gallery_size']} stored items" if "gallery_size" in lab else ""
        t = Table(title=f"gate: held-out label retrieval (leave-one-out{size})")
        for c in ("query / gallery", "top1", "top5", "mAP"):
            t.add_column(c)
        for key, label in (("old_old", "old / old"), ("new_old", "new / old"), ("new_new", "new / new"),
                           ("raw_new_new", "raw new / raw new")):
            if key in lab:
                m = lab[key]
                t.add_row(label, _f(m["top1"]), _f(m["top5"]), _f(m["mAP"]))
        con.print(t)
    dry = report.get("dry_run")
    if dry is not None:
        verdict = "would be registered" if dry["would_register"] else "would be REFUSED"
        con.print(f"dry run: version '{report['name']}' {verdict}; nothing was registered")
        lab = dry.get("labels")
        if lab:
            m = lab["metric"]
            con.print(f"  expected day one (new queries, old gallery): {m} {lab['day_one_new_old']:.4f} vs "
                      f"old/old {lab['old_old']:.4f} ({lab['day_one_gain']:+.4f})")
            con.print(f"  after a full backfill (new/new): {m} {lab['after_backfill_new_new']:.4f} "
                      f"(backfill benefit {lab['backfill_benefit']:+.4f})")
        for r in dry["reasons"]:
            con.print(f"  - {r}")
    elif report.get("registered"):
        forced = " (forced past the gate)" if report.get("forced") else ""
        con.print(f"registered version '{report['name']}' (dim {report['dim']}, parent '{report['parent']}', "
                  f"method {report['chosen']}){forced}")
        srv = report.get("serving")
        if srv:
            w = srv.get("fusion") or {}
            weights = ", ".join(f"{k}={_f(float(v), 1)}" for k, v in w.items())
            if srv.get("reason"):
                con.print(f"serving: fusion weights {weights} stored: {srv['reason']}")
            else:
                on = "same-label items" if srv.get("labels") else "the neighbours both models agree on"
                con.print(f"serving: fusion weights {weights} stored (fit on the {srv.get('pairs')} held-out pairs, "
                          f"targets {on}; held-out gain over '{report['parent']}' queries alone "
                          f"{_f(srv.get('gain'), 4)}); search with --query {report['name']}=NEW.npy --query "
                          f"{report['parent']}=OLD.npy while both encoders run")
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
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Fit and gate, register nothing: print the expected "
                                          "day-one new/old against old/old and the backfill benefit.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split and of training.")] = 0,
    steps: Annotated[int | None, typer.Option("--steps", min=0, help="Training steps of torch heads.",
                                              show_default=False)] = None,
    w_rank: Annotated[float | None, typer.Option("--w-rank", min=0.0, help="Weight of the gallery ranking term "
                                                 "of the torch heads (oca, mlp): each new query learns to rank the "
                                                 "stored gallery as the same item's stored vector does (default 0: "
                                                 "off).", show_default=False)] = None,
    oca_head: Annotated[OcaHead | None, typer.Option("--oca-head", help="The oca method's head: isometry "
                                                     "(default; new/new kept exact), linear or mlp (query "
                                                     "adapters).", show_default=False)] = None,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", min=1.0, help="Wall-clock budget of one "
                                                      "torch head's training (default 20).",
                                                      show_default=False)] = None,
    extra_pairs: Annotated[tuple[Path, Path] | None, typer.Option(
        "--extra-pairs", metavar="NEW OLD", help="More pairs that are not stored items: two vector files of the "
        "same inputs (e.g. sentences of the re-embedded documents), raw new-encoder vectors and the parent "
        "model's vectors, row for row. They train and are held out with the stored pairs.",
        show_default=False)] = None,
    column: ColumnOpt = None,
    lock_timeout: LockTimeout = 0.0,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Learn the next compatible version against the stored gallery; register it if the gate passes."""
    with cli_errors():
        source = open_vectors(vectors, param="VECTORS", column=column)
        keys = read_ids(ids, param="--ids", source=source)
        check_length(keys, source.n, param="--ids", spec=ids, vectors=vectors)
        check_unique(keys, what=f"--ids '{ids}'")
        X = read_all(source)
        extra: tuple[np.ndarray, np.ndarray] | None = None
        if extra_pairs is not None:
            extra = (read_all(open_vectors(extra_pairs[0], param="--extra-pairs NEW")),
                     read_all(open_vectors(extra_pairs[1], param="--extra-pairs OLD")))
        from compatindex.trainer import upgrade as run_upgrade  # torch loads only for this command

        ix = open_index(index, lock_timeout=lock_timeout)
        with ix:
            keys = resolve_ids(keys, ix)  # text ids become ints on an index of int ids
            check_unique(keys, what=f"--ids '{ids}'")
            key_list = keys.tolist() if isinstance(keys, np.ndarray) else list(keys)
            if key_list:
                present = np.asarray(ix.has(key_list), dtype=bool)
                if not present.all():
                    missing = [key_list[i] for i in np.flatnonzero(~present)[:5]]
                    raise CliError(f"{int((~present).sum())} of --ids '{ids}' are not in INDEX '{index}': {missing}",
                                   "pairs must be items already stored in the parent version")
            overrides: dict[str, Any] = {"seed": seed, "quiet": quiet}
            if steps is not None:
                overrides["steps"] = steps
            if w_rank is not None:
                overrides["w_rank"] = w_rank
            if oca_head is not None:
                overrides["oca_head"] = OcaHead(oca_head).value
            if max_seconds is not None:
                overrides["max_seconds"] = max_seconds
            import warnings

            with warnings.catch_warnings():  # the refusal is said below, on stderr, once
                warnings.simplefilter("ignore", RuntimeWarning)
                version, report = run_upgrade(ix, X, key_list, method=Method(method).value, parent=parent,
                                              name=name, extra_dims=extra_dims, use_labels=use_labels, force=force,
                                              strict=False, dry_run=dry_run, extra_pairs=extra, **overrides)
        if json_out:
            say(dumps(report))
        else:
            render_report(report)
        if dry_run:
            if not report["gate"]["passed"]:
                raise typer.Exit(code=1)
            return
        if version is None:
            typer.echo(f"error: the compatibility gate refused version '{report['name']}' (parent "
                       f"'{report['parent']}'): " + "; ".join(report["gate"]["reasons"])
                       + " (hint: check the pairs, try --dry-run, or pass --force to register it anyway)", err=True)
            raise typer.Exit(code=1)
        if report.get("forced"):
            typer.echo(f"warning: version '{report['name']}' failed the compatibility gate and was registered "
                       "anyway (--force)", err=True)
