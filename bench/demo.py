"""The main job: a model upgrade on Fashion-MNIST, without re-embedding the gallery.

1. An "old" embedding model (v1, 64 dims) is trained on classes 0-4 only; the 60,000 training
   images are embedded with it and stored in an on-disk index, with their labels.
2. The new model is trained on all 10 classes with the bundled trainer's OCA recipe against
   the stored gallery (class prototypes = mean stored v1 vector per label: no old model
   needed), plus a term against the stored v1 vectors themselves: a cosine pin to each
   training image's own stored vector and a supervised contrastive loss in which the stored
   vectors of the batch's same-label images are the positives (label retrieval in the old
   gallery, which is what M(new, old) measures). It emits 64 + 32 dims whose 64-dim prefix
   lives in v1's space: version v2.
3. The frozen-encoder path: an independently trained new model (128 dims, someone else's
   model) is made compatible post hoc by ``compatindex.trainer.upgrade`` from 10% of the
   gallery; the compatibility gate admits it as version v2-posthoc (a branch of v1).
4. New-model queries (the 10,000 test images) search the old gallery the day v2 ships, alone and
   fused with the old model's queries (migration-time serving, docs/serving.md);
   then the gallery is backfilled a quarter at a time (the backfill curve, written as
   backfill.png); old clients keep searching throughout.

Run with: ``bash scripts/demo.sh`` (or ``.venv/bin/python -m bench.demo [--quick]``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import compatindex
from bench.datasets import DatasetMissingError, load_fashion_mnist


def _mlp(d_in: int, hidden: int, d_out: int, seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, d_out))


def _top1(res, gallery_labels: dict, query_labels: np.ndarray) -> float:
    first = [gallery_labels[i] if i is not None else -1 for i in res.ids[:, 0]]
    return float(np.mean(np.asarray(first) == query_labels))


RECIPES = ("bct", "bct+pairs", "oca", "oca+pairs", "oca+gallery")
RECIPE = "oca+gallery"
RECIPE_CONFIG = {"oca+gallery": {"pair_negatives": "same_labels", "w_cos": 0.0, "w_pair": 2.0, "w_nce": 2.0}}
"""Extra ``BackboneConfig`` fields of a recipe. ``oca+gallery``: OCA's class terms plus, for each
training image, a supervised contrastive term against the stored v1 vectors of the batch (its
own and every same-label one are positives) and a cosine pin to its own; no cosine-to-prototype
term. On the demo's models it measured new/old 0.812 against old/old 0.778 (``oca+pairs``:
0.778), 2026-12-06."""


def _plot_curve(curve: list[tuple[float, float]], old_old: float, path: Path) -> Path | None:
    """The backfill curve as a PNG (None when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot([100 * f for f, _ in curve], [v for _, v in curve], "o-", label="v2 queries")
    ax.axhline(old_old, color="gray", ls="--", label="old/old (before the upgrade)")
    ax.set_xlabel("gallery backfilled with v2 vectors (%)")
    ax.set_ylabel("top-1")
    ax.set_title("Fashion-MNIST: backfill curve")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="compatindex demo: a backward-compatible model upgrade on Fashion-MNIST")
    ap.add_argument("--workdir", default=".work/demo", help="where the index and models go (default .work/demo)")
    ap.add_argument("--quick", action="store_true", help="smaller gallery and shorter training (about 1 minute)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--recipe", choices=RECIPES, default=RECIPE,
                    help=f"how v2 is trained against the stored gallery (default {RECIPE}: the recipe that met "
                         "the criterion in the Fashion-MNIST benchmark)")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from compatindex.trainer import BackboneConfig, train_backbone, upgrade

    out = Console()
    err = Console(stderr=True, quiet=args.quiet)
    t0 = time.perf_counter()
    try:
        Xtr, ytr = load_fashion_mnist("train")
        Xte, yte = load_fashion_mnist("test")
    except DatasetMissingError as exc:
        out.print(f"[red]{exc}[/red]")
        sys.exit(1)
    n_gallery = 20_000 if args.quick else len(Xtr)
    n_query = 2_000 if args.quick else len(Xte)
    # --quick is a smoke run: on its 20,000 images v2 does not reach old/old (measured 2026-12-06:
    # new/old 0.719 vs 0.777 with 2 epochs, 0.775 with 8); the full run is the measurement
    epochs = 2 if args.quick else 4
    epochs_v2 = epochs
    Xtr, ytr = Xtr[:n_gallery].astype(np.float32) / 255.0, ytr[:n_gallery]
    Xte, yte = Xte[:n_query].astype(np.float32) / 255.0, yte[:n_query]

    err.print("[bold]1.[/bold] training the old model on classes 0-4 (v1, 64 dims)")
    old_mask = ytr < 5
    old = train_backbone(_mlp(784, 256, 64, 0), Xtr[old_mask], ytr[old_mask],
                         config=BackboneConfig(method="independent", num_classes=5, epochs=epochs, batch_size=256,
                                               seed=0, quiet=args.quiet))
    G_old, Q_old = old.embed(Xtr), old.embed(Xte)
    err.print("[bold]2b.[/bold] training an independent new model on all 10 classes (128 dims, for the post-hoc path)")
    indep = train_backbone(_mlp(784, 512, 128, 1), Xtr, ytr,
                           config=BackboneConfig(method="independent", num_classes=10, epochs=epochs, batch_size=256,
                                                 seed=1, quiet=args.quiet))
    H_gal, H_q = indep.embed(Xtr), indep.embed(Xte)

    work = Path(args.workdir)
    path = work / "fashion.index"
    if path.exists():
        import shutil

        shutil.rmtree(path)
    ids = [f"img{i:05d}" for i in range(n_gallery)]
    labels = {i: int(l) for i, l in zip(ids, ytr)}
    rows: list[tuple[str, str, float]] = []
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=64, metric="cosine")
        ix.add(ids, G_old, version="v1", labels=ytr.tolist())
        err.print(f"   index {path}: {ix.count} items embedded by v1")
        rows.append(("old/old", "v1 queries, v1 gallery (before the upgrade)",
                     _top1(ix.search(Q_old, k=1, version="v1"), labels, yte)))

        err.print(f"[bold]2.[/bold] training the new model ({args.recipe}) against the stored gallery (v2, 64+32 dims)")
        stored = ix.fetch("v1")
        lab = np.asarray(stored.labels)
        P = np.stack([stored.vectors[lab == c].mean(0) for c in range(10)]).astype(np.float32)
        pos = {i: k for k, i in enumerate(stored.ids)}
        G_stored = np.asarray(stored.vectors, np.float32)[[pos[i] for i in ids]]  # stored v1 vector per image
        method, pairs = args.recipe.split("+")[0], "+" in args.recipe
        new = train_backbone(_mlp(784, 512, 96, 2), Xtr, ytr, prototypes=P, old_vectors=G_stored if pairs else None,
                             config=BackboneConfig(method=method, d_parent=64, num_classes=10, epochs=epochs_v2,
                                                   batch_size=256, seed=2, quiet=args.quiet,
                                                   bct_alpha=10.0,  # BCT's influence weight, as benchmarked
                                                   **RECIPE_CONFIG.get(args.recipe, {})))
        N_gal, N_q = new.embed(Xtr), new.embed(Xte)
        ix.register_version("v2", "v1", 96, config={"recipe": args.recipe, "epochs": epochs_v2,
                                                    "prototypes": "stored v1 class means",
                                                    "pairs": "stored v1 vector of each training image" if pairs
                                                    else None})
        rows.append(("new/old", f"v2 ({args.recipe}) queries, v1 gallery (no backfill)",
                     _top1(ix.search(N_q, k=1, version="v2"), labels, yte)))

        err.print("[bold]3.[/bold] post hoc: learning v2-posthoc from an independent model on 10% of the gallery")
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(n_gallery, size=n_gallery // 10, replace=False))
        from compatindex.errors import IncompatibleVersionError

        try:
            version, report = upgrade(ix, H_gal[sample], [ids[i] for i in sample], parent="v1", name="v2-posthoc",
                                      quiet=args.quiet)
        except IncompatibleVersionError as exc:  # strict by default: a refusal is an error, said loudly
            out.print(f"[yellow]the compatibility gate refused v2-posthoc (nothing registered; v1 keeps serving): "
                      f"{exc}[/yellow]")
            version, report = None, {}
        if version is not None:
            rows.append(("post-hoc new/old", "v2-posthoc queries, v1 gallery (no backfill)",
                         _top1(ix.search(H_q, k=1, version="v2-posthoc", raw=True), labels, yte)))

        # --- fused day-one search (migration-time serving, docs/serving.md): while the v1 encoder
        # --- still runs, each query is sent embedded by both models and the scores are fused, with
        # --- the weights and calibration fit on the re-embedded 10% sample of the gallery and its
        # --- stored labels (what upgrade() does on its held-out pairs; no test query is used), and
        # --- stored only when a gain is established there; measured on every test query.
        try:
            held = sample[::5]  # a fifth of it, as upgrade() holds out a fifth of its pairs
            fit = ix.fit_serving("v2", N_gal[held], ids=[ids[i] for i in held], labels=ytr[held].tolist())
            weights = fit["fusion"]["fusion"]
            fused = _top1(ix.search({"v2": N_q, "v1": Q_old}, k=1, score="calibrated"), labels, yte)
            fused_base = rows[0][2]
            rows.append(("fused day one", "v2 + v1 queries fused, v1 gallery (no backfill; weights "
                         + ", ".join(f"{k} {w:g}" for k, w in weights.items()) + ")", fused))
        except Exception as exc:  # noqa: BLE001 - the demo goes on without it, and says why
            out.print(f"[red]fused day-one search unavailable: {type(exc).__name__}: {exc}[/red]")

        err.print("[bold]4.[/bold] backfilling the gallery with v2 vectors, a quarter at a time")
        curve = [(0.0, rows[1][2])]
        order = np.random.default_rng(1).permutation(n_gallery)
        done = 0
        for frac in (0.25, 0.5, 0.75, 1.0):
            upto = int(round(frac * n_gallery))
            part = order[done:upto]
            ix.backfill([ids[i] for i in part], N_gal[part], version="v2")
            done = upto
            curve.append((frac, _top1(ix.search(N_q, k=1, version="v2"), labels, yte)))
            if frac == 0.5:
                for score in ("renorm", "pad"):
                    rows.append((f"new/mixed ({score})", "v2 queries, 50% backfilled gallery",
                                 _top1(ix.search(N_q, k=1, version="v2", score=score), labels, yte)))
                rows.append(("old/mixed", "old clients: v1 queries, 50% backfilled gallery",
                             _top1(ix.search(Q_old, k=1, version="v1"), labels, yte)))
        rows.append(("new/new", "v2 queries, fully backfilled gallery", curve[-1][1]))
        stats = ix.stats()

    with compatindex.open(path, readonly=True) as ro:  # reopened from disk: shards loaded, store verified
        problems = ro.verify()
        same = _top1(ro.search(N_q, k=1, version="v2"), labels, yte)

    table = Table(title=f"Fashion-MNIST upgrade: top-1 (label of the first hit), {n_query} queries, {n_gallery} gallery images")
    for col in ("setting", "what", "top-1"):
        table.add_column(col)
    for name, what, value in rows:
        table.add_row(name, what, f"{value:.3f}")
    out.print(table)
    chosen = report.get("chosen")
    posthoc = (f"v2-posthoc {stats['versions']['v2-posthoc']['dim']} (method chosen by auto: [bold]{chosen}[/bold], "
               "gate passed)") if version is not None else "v2-posthoc refused by the gate"
    out.print(f"dims: v1 {stats['versions']['v1']['dim']} -> v2 {stats['versions']['v2']['dim']} ({args.recipe}); "
              + posthoc)
    compatible = rows[1][2] > rows[0][2]
    out.print(f"BCT criterion M(new, old) > M(old, old) for v2, measured on {n_query} held-out test queries: "
              f"[bold]{'met' if compatible else 'NOT met'}[/bold] ({rows[1][2]:.3f} vs {rows[0][2]:.3f}, "
              f"{100 * (rows[1][2] - rows[0][2]):+.1f} points); new/new reached with no backfill: "
              f"{rows[1][2] / rows[-1][2]:.0%}")
    fused_row = next((r for r in rows if r[0] == "fused day one"), None)
    if fused_row is not None:
        old_only = not any(w > 0 for k, w in weights.items() if k != "v1")
        why = (" (no gain from v2 queries was established on the held-out sample, so v1 weights alone were "
               "stored: dual queries search exactly as v1 queries do)" if old_only else "")
        out.print(f"day one with both encoders running (fused v2 + v1 queries) never below old/old: "
                  f"[bold]{'met' if fused_row[2] >= fused_base else 'NOT met'}[/bold] "
                  f"({fused_row[2]:.3f} vs {fused_base:.3f}, {100 * (fused_row[2] - fused_base):+.1f} points){why}")
    work.mkdir(parents=True, exist_ok=True)
    png = _plot_curve(curve, rows[0][2], work / "backfill.png")
    out.print("backfill curve (top-1 of v2 queries vs fraction backfilled): "
              + ", ".join(f"{f:.0%} {v:.3f}" for f, v in curve) + (f" -> {png}" if png else ""))
    out.print(f"reopened read-only: verify {'ok' if not problems else problems}, new/new top-1 {same:.3f}; "
              f"disk {stats['disk_bytes'] / 1e6:.1f} MB; wall {time.perf_counter() - t0:.0f} s")
    summary = {"rows": [{"setting": a, "what": b, "top1": c} for a, b, c in rows], "chosen": chosen,
               "criterion_met": compatible, "backfill_curve": curve,
               "gallery": n_gallery, "queries": n_query, "verify": problems, "wall_s": time.perf_counter() - t0}
    work.mkdir(parents=True, exist_ok=True)
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    main()
