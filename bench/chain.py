"""Scenario 2: a chain of versions on Fashion-MNIST, each compatible with its parent.

v1: classes 0-3 (64-d, independent training); v2: classes 0-6 (+16 dims); v3: all 10 classes
(+16), with two recipes for v2 and v3: the trainer's OCA and the benchmark-local OCA + pairs. Each child's prototypes are the class means of the parent's vectors stored in the index
(the gallery is backfilled with each version as it is made). The compatibility matrix
M[i][j] = top-1 of version-i queries against a gallery holding only version-j vectors, searched
with ``Index.search`` (so v3 against v1 is zero-padding across two generations); AC and AM as in
"Stationary Representations: Optimally Approximating Compatibility and Implications for Improved
Model Replacements" (Biondi et al., CVPR 2024), defined in docs/trainer.md, "Metrics".

Run: ``.venv/bin/python -m bench.run chain [--quick]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compatindex import evaluation as ev

from .common import RESULTS, Timer, cmc_from_hits, command_line, fmt, log, machine, md_table, png_name, search_ids, write_result
from .fmnist import D_OLD, DELTA, fresh_index, gallery_prototypes, load_data, setup, train_model


RECIPES = ("oca", "oca+pairs")
"""``oca``: ``compatindex.trainer.train_backbone`` (prototypes only); ``oca+pairs``: the
benchmark-local recipe with a per-item pair term (bench/pairs_backbone.py)."""


def _chain(recipe: str, s: Any, data: dict[str, np.ndarray], plan: list[tuple], v1: dict[str, Any]) -> dict[str, Any]:
    yg, yq = data["yg"], data["yq"]
    ng = len(yg)
    ids = np.arange(ng)
    index = fresh_index(f"chain-{recipe}", s)
    models: list[dict[str, Any]] = [v1]
    index.create_version(plan[0][0], dim=plan[0][3])
    index.add(ids, v1["gallery"], labels=yg)
    for i, (name, method, classes, d, ep) in enumerate(plan[1:], start=1):
        parent = plan[i - 1][0]
        P = gallery_prototypes(index, parent, 10)  # from the stored parent vectors
        pt = index.get_vectors(ids, version=parent) if recipe == "oca+pairs" else None
        m = train_model(f"chain-{recipe}-{name}", s, data, method=method, classes=classes, d_out=d,
                        d_parent=plan[i - 1][3], prototypes=P, epochs=ep, group="chain", pair_targets=pt)
        index.register_version(name, parent, d, report={"recipe": recipe, "method": method, "classes": classes})
        index.backfill(ids, m["gallery"], version=name)
        models.append(m)
        log(f"chain {recipe} {name}: classes<{classes}, {d}-d")
    index.close()
    names = [p[0] for p in plan]
    Tn = len(plan)
    M1 = np.full((Tn, Tn), np.nan)
    M5 = np.full((Tn, Tn), np.nan)
    for j in range(Tn):  # a gallery holding only version-j vectors; the whole lineage registered
        ix = fresh_index(f"chain-{recipe}-g{j}", s)
        ix.create_version(names[0], dim=plan[0][3])
        for i in range(1, Tn):
            ix.register_version(names[i], names[i - 1], plan[i][3])
        ix.add(ids, models[j]["gallery"], version=names[j], labels=yg)
        for i in range(j, Tn):
            hit, _, _ = search_ids(ix, models[i]["query"], 5, version=names[i])
            c = cmc_from_hits(yg[hit], yq)
            M1[i, j], M5[i, j] = c["top1"], c["top5"]
            if (i, j) == (Tn - 1, 0):
                last_first_hits = hit
        ix.close()
    # brute-force cross-check of the cell across most generations (compatindex.evaluation; queries != gallery)
    nb = min(1000, len(yq))
    cross = {"brute_force": ev.cmc_map(models[-1]["query"][:nb], models[0]["gallery"], yq[:nb], yg, topk=(1,))["top1"],
             "index_search": cmc_from_hits(yg[last_first_hits[:nb]], yq[:nb], ks=(1,))["top1"], "n_queries": nb}
    out = {"versions": [{"name": n, "method": "independent" if i == 0 else recipe, "classes": f"0-{c - 1}", "dim": d,
                         "epochs": ep, "parent": names[i - 1] if i else None,
                         "train_seconds": models[i]["train_seconds"]}
                        for i, (n, m_, c, d, ep) in enumerate(plan)],
           "matrix_top1": M1, "matrix_top5": M5,
           "AC_top1": ev.average_compatibility(M1), "AM_top1": ev.average_accuracy(M1),
           "AC_top5": ev.average_compatibility(M5), "AM_top5": ev.average_accuracy(M5),
           "crosscheck_last_vs_first": cross}
    out["violations_top1"] = [{"query": names[i], "gallery": names[j], "M_ij": M1[i, j], "M_jj": M1[j, j]}
                              for i in range(Tn) for j in range(i) if not M1[i, j] > M1[j, j]]
    out["AC_is_1"] = bool(out["AC_top1"] == 1.0)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    s = setup(quick)
    T = Timer()
    data = load_data(s)
    plan = [("v1", "independent", 4, D_OLD, s.epochs_old), ("v2", "oca", 7, D_OLD + DELTA, s.epochs_new),
            ("v3", "oca", 10, D_OLD + 2 * DELTA, s.epochs_new)]
    v1 = train_model("chain-v1", s, data, method="independent", classes=4, d_out=D_OLD, epochs=s.epochs_old,
                     group="chain")
    chains = {r: _chain(r, s, data, plan, v1) for r in RECIPES}
    res = {"scenario": "chain", "quick": quick, "command": command_line(), "machine": machine(),
           "setup": {"n_gallery": len(data["yg"]), "n_query": len(data["yq"]), "n_train": s.n_train or len(data["yg"]),
                     "metric": "top-1 (Index.search)", "recipes": list(RECIPES)},
           "chains": chains, "goal_AC_is_1": {r: c["AC_is_1"] for r, c in chains.items()}}
    res["seconds"] = T()
    res["plot"] = plot(res, quick)
    write_result("chain", res, markdown(res), quick=quick)
    return res


def plot(r: dict[str, Any], quick: bool) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chains = r["chains"]
    fig, axes = plt.subplots(1, len(chains), figsize=(4.2 * len(chains), 3.6))
    for ax, (recipe, c) in zip(np.atleast_1d(axes), chains.items()):
        names = [v["name"] for v in c["versions"]]
        M = np.asarray(c["matrix_top1"], dtype=float)
        ax.imshow(M, vmin=0, vmax=1, cmap="viridis")
        for i in range(len(names)):
            for j in range(i + 1):
                ax.text(j, i, f"{100 * M[i, j]:.1f}", ha="center", va="center", color="w", fontsize=9)
        ax.set_xticks(range(len(names)), names)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("gallery version")
        ax.set_ylabel("query version")
        ax.set_title(f"{recipe}: top-1, AC={c['AC_top1']:.2f} AM={100 * c['AM_top1']:.1f}", fontsize=9)
    fig.tight_layout()
    name = png_name("chain", quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / name, dpi=90)
    plt.close(fig)
    return name


def markdown(r: dict[str, Any], names: list[str] | None = None) -> str:
    out = [f"### Chains of versions on Fashion-MNIST\n\nGallery {r['setup']['n_gallery']} training images, "
           f"{r['setup']['n_query']} test queries, models trained on {r['setup']['n_train']} images. Two recipes "
           "for v2 onwards: `oca` (the trainer's `train_backbone`, prototypes of the parent's stored vectors) and "
           "`oca+pairs` (benchmark-local: the same plus a per-item pair term against the parent's stored "
           "vectors). Compatibility matrix M[i][j] = top-1 (%) of version-i queries against a gallery holding "
           "only version-j vectors, through `Index.search` (v3 against v1 is zero padding across two "
           "generations).\n\n"]
    for recipe, c in r["chains"].items():
        nm = [v["name"] for v in c["versions"]]
        M = np.asarray(c["matrix_top1"], dtype=float)
        rows = [[nm[i]] + [fmt(M[i, j]) if j <= i else "" for j in range(len(nm))] for i in range(len(nm))]
        out.append(f"**{recipe}** ("
                   + ", ".join(f"{v['name']}: {v['method']}, classes {v['classes']}, {v['dim']}-d" for v in c["versions"])
                   + "):\n\n" + md_table(["query \\ gallery"] + nm, rows)
                   + f"\nAC (top-1) = {c['AC_top1']:.2f}, AM (top-1) = {100 * c['AM_top1']:.1f}; "
                     f"AC (top-5) = {c['AC_top5']:.2f}, AM (top-5) = {100 * c['AM_top5']:.1f}. "
                   + ("Every pair is compatible.\n\n" if not c["violations_top1"] else
                      "Violations (top-1): " + "; ".join(f"{v['query']}/{v['gallery']} {fmt(v['M_ij'])} <= "
                                                          f"{v['gallery']}/{v['gallery']} {fmt(v['M_jj'])}"
                                                          for v in c["violations_top1"]) + ".\n\n"))
    out.append(f"![chain]({r['plot']})\n")
    return "".join(out)
