"""Scenario 2: a chain of four versions on Fashion-MNIST.

v1: classes 0-2 (64-d); v2: classes 0-4 (+16 dims); v3: classes 0-6 (+16); v4: all 10 classes
(+16), with three recipes:

- ``oca``: v1 trained independently, then the trainer's OCA against the parent (prototypes = the
  class means of the parent's vectors stored in the index);
- ``oca+pairs``: the same v1, then the benchmark-local OCA + pairs against the parent;
- ``simplex``: the trainer's ``method="simplex"`` for every version, v1 included: a fixed
  d-simplex classifier over all 10 classes shared by every version, plus an InfoNCE between each
  new feature and the stored vectors of the same item in *every* ancestor version (iamcl2r's
  d-Simplex-HOC).

The gallery is backfilled with each version as it is made. The compatibility matrices
M[i][j] = top-1 / top-5 (``Index.search``) and mAP (full ranking, brute force) of version-i
queries against a gallery holding only version-j vectors (v4 against v1 is zero padding across
three generations); AC and AM as in "Stationary Representations: Optimally Approximating
Compatibility and Implications for Improved Model Replacements" (Biondi et al., CVPR 2024),
defined in docs/trainer.md, "Metrics".

Run: ``.venv/bin/python -m bench.run chain [--quick]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compatindex import evaluation as ev

from .common import (RESULTS, Timer, cmc_from_hits, command_line, fmt, label_map, log, machine, md_table, png_name,
                     search_ids, write_result)
from .fmnist import D_OLD, DELTA, _digest, fresh_index, gallery_prototypes, load_data, setup, train_model


ALL_RECIPES = ("oca", "oca+pairs", "simplex", "simplex+gallery", "simplex+labels", "simplex+gallery+labels",
               "simplex+gallery+ranking", "simplex+gallery+scoped")
"""``oca``: ``compatindex.trainer.train_backbone`` (prototypes only); ``oca+pairs``: the
benchmark-local recipe with a per-item pair term (bench/pairs_backbone.py); ``simplex``:
``train_backbone(method="simplex")`` against every stored ancestor, on the images of the classes
each version is given; ``simplex+gallery``: the same, with the pair terms also over the stored
gallery's images of the other classes (label -1: no class term; a different protocol);
``simplex+labels``: ``simplex`` with ``pair_negatives="same_labels"`` (the ancestor InfoNCE is
supervised: the stored ancestor vectors of same-label images are positives too), the
class-incremental protocol of ``simplex``; ``simplex+gallery+labels`` both; ``simplex+gallery+ranking``
the last with ``unlabelled_targets="old_ranking"`` (an unlabelled image learns the ancestor's own
ranking of the batch, :func:`compatindex.trainer.losses.old_ranking_targets`)."""

RECIPES = ("oca", "simplex", "simplex+gallery", "simplex+labels", "simplex+gallery+labels", "simplex+gallery+ranking",
           "simplex+gallery+scoped")
"""The recipes a run measures (``oca+pairs`` is left out of the default run for time)."""

CLASSES = (3, 5, 7, 10)
"""Classes seen by v1..v4 (0-2, 0-4, 0-6, 0-9)."""

SIMPLEX_FINETUNE = True
"""``simplex``: each version starts from its parent's weights (output layer widened by
``grow_output``), iamcl2r's continual protocol; False trains each from scratch."""

SIMPLEX_CFG: dict[str, Any] = {"lr": 3e-4, "w_ancestor_cos": 1.0, "hoc_mu": 20.0}
"""Extra ``BackboneConfig`` options of the ``simplex`` versions: a lower learning rate (each
version fine-tunes its parent), a light ``1 - cos`` pin to each ancestor and a sharper InfoNCE
(temperature 0.05); on a 20k-image, 3-epoch subset this beat the trainer's iamcl2r defaults
(lr 1e-3, mu 10, no pin), which broke every top-1 pair of the chain."""

SIMPLEX_RECIPE_CFG: dict[str, dict[str, Any]] = {"simplex+labels": {"pair_negatives": "same_labels"},
                                                 "simplex+gallery+labels": {"pair_negatives": "same_labels"},
                                                 "simplex+gallery+ranking": {"pair_negatives": "same_labels",
                                                                             "unlabelled_targets": "old_ranking"}}
"""Options a simplex recipe adds to (or overrides in) :data:`SIMPLEX_CFG` for v2 onwards (v1 is shared)."""
SIMPLEX_RECIPE_CFG["simplex+gallery+scoped"] = SIMPLEX_RECIPE_CFG["simplex+gallery+ranking"]  # + ancestor_classes

SCOPED = ("simplex+gallery+scoped",)
"""Recipes that tell each version which classes every ancestor had labels for
(``train_backbone(ancestor_classes=...)``): an item of a class an ancestor never had labels for
targets that ancestor's own ranking of the batch's same-label items."""

N_MAP_QUERIES = 2000
"""Queries (a seeded subset) over which each cell's mAP is computed (full-ranking mAP against
60,000 items costs ~4 ms a query here; top-1/top-5 use every query)."""




def chain_plan(s: Any) -> list[tuple]:
    """``(name, method, classes, dim, epochs)`` of v1..v4 for the sizes ``s``."""
    return [("v1", "independent", CLASSES[0], D_OLD, s.epochs_old)] + [
        (f"v{i + 1}", "oca", c, D_OLD + i * DELTA, s.epochs_new) for i, c in enumerate(CLASSES[1:], start=1)]


def _chain(recipe: str, s: Any, data: dict[str, np.ndarray], plan: list[tuple], v1: dict[str, Any]) -> dict[str, Any]:
    yg, yq = data["yg"], data["yq"]
    ng = len(yg)
    ids = np.arange(ng)
    index = fresh_index(f"chain-{recipe}", s)
    index.create_version(plan[0][0], dim=plan[0][3])
    simplex = recipe.startswith("simplex")
    if simplex:  # v1 too (shared by both simplex recipes): the fixed classifier covers every future class
        v1 = train_model(f"chain-simplex-{plan[0][0]}", s, data, method="simplex", classes=plan[0][2],
                         num_classes=10, d_out=plan[0][3], epochs=plan[0][4], group="chain", **SIMPLEX_CFG)
    models: list[dict[str, Any]] = [v1]
    index.add(ids, v1["gallery"], version=plan[0][0], labels=yg, raw=False)
    for i, (name, method, classes, d, ep) in enumerate(plan[1:], start=1):
        parent = plan[i - 1][0]
        if simplex:  # against every stored ancestor, not only the parent
            anc = [index.get_vectors(ids, version=p[0]) for p in plan[:i]]
            par = f"chain-simplex-{parent}" if i == 1 else f"chain-{recipe}-{parent}"
            m = train_model(f"chain-{recipe}-{name}", s, data, method="simplex", classes=classes, num_classes=10,
                            d_out=d, epochs=ep, group="chain", ancestors=anc, lineage=_digest(*anc),
                            init_from=par if SIMPLEX_FINETUNE else None, unlabelled="+gallery" in recipe,
                            ancestor_classes=([list(range(p[2])) for p in plan[:i]] if recipe in SCOPED else None),
                            **{**SIMPLEX_CFG, **SIMPLEX_RECIPE_CFG.get(recipe, {})})
        else:
            P = gallery_prototypes(index, parent, 10)  # from the stored parent vectors
            pv = index.get_vectors(ids, version=parent)
            pt = pv if recipe == "oca+pairs" else None
            m = train_model(f"chain-{recipe}-{name}", s, data, method=method, classes=classes, d_out=d,
                            d_parent=plan[i - 1][3], prototypes=P, epochs=ep, group="chain", pair_targets=pt,
                            lineage=_digest(pv))
        index.register_version(name, parent, d, report={"recipe": recipe, "method": method, "classes": classes})
        index.backfill(ids, m["gallery"], version=name, raw=False)
        models.append(m)
        log(f"chain {recipe} {name}: classes<{classes}, {d}-d")
    index.close()
    names = [p[0] for p in plan]
    Tn = len(plan)
    M1 = np.full((Tn, Tn), np.nan)
    M5 = np.full((Tn, Tn), np.nan)
    MA = np.full((Tn, Tn), np.nan)
    qm = np.sort(np.random.default_rng(s.seed + 7).permutation(len(yq))[: N_MAP_QUERIES])
    for j in range(Tn):  # a gallery holding only version-j vectors; the whole lineage registered
        ix = fresh_index(f"chain-{recipe}-g{j}", s)
        ix.create_version(names[0], dim=plan[0][3])
        for i in range(1, Tn):
            ix.register_version(names[i], names[i - 1], plan[i][3])
        ix.add(ids, models[j]["gallery"], version=names[j], labels=yg, raw=False)
        for i in range(j, Tn):
            hit, _, _ = search_ids(ix, models[i]["query"], 5, version=names[i])
            c = cmc_from_hits(yg[hit], yq)
            M1[i, j], M5[i, j] = c["top1"], c["top5"]
            MA[i, j] = label_map(models[i]["query"][qm], models[j]["gallery"], yq[qm], yg)
            if (i, j) == (Tn - 1, 0):
                last_first_hits = hit
        ix.close()
    # brute-force cross-check of the cell across most generations (compatindex.evaluation; queries != gallery)
    nb = min(1000, len(yq))
    cross = {"brute_force": ev.cmc_map(models[-1]["query"][:nb], models[0]["gallery"], yq[:nb], yg, topk=(1,))["top1"],
             "index_search": cmc_from_hits(yg[last_first_hits[:nb]], yq[:nb], ks=(1,))["top1"], "n_queries": nb}
    out = {"versions": [{"name": n, "method": models[i].get("method", "independent"), "classes": f"0-{c - 1}",
                         "dim": d, "epochs": ep, "parent": names[i - 1] if i else None,
                         "ancestors_trained_against": (names[:i] if simplex else names[i - 1: i]),
                         "train_seconds": models[i]["train_seconds"], "cached": models[i].get("cached", False)}
                        for i, (n, m_, c, d, ep) in enumerate(plan)],
           "matrix_top1": M1, "matrix_top5": M5, "matrix_mAP": MA, "n_map_queries": int(len(qm)),
           "AC_top1": ev.average_compatibility(M1), "AM_top1": ev.average_accuracy(M1),
           "AC_top5": ev.average_compatibility(M5), "AM_top5": ev.average_accuracy(M5),
           "AC_mAP": ev.average_compatibility(MA), "AM_mAP": ev.average_accuracy(MA),
           "crosscheck_last_vs_first": cross}
    out["violations_top1"] = [{"query": names[i], "gallery": names[j], "M_ij": M1[i, j], "M_jj": M1[j, j]}
                              for i in range(Tn) for j in range(i) if not M1[i, j] > M1[j, j]]
    out["violations_mAP"] = [{"query": names[i], "gallery": names[j], "M_ij": MA[i, j], "M_jj": MA[j, j]}
                             for i in range(Tn) for j in range(i) if not MA[i, j] > MA[j, j]]
    out["AC_is_1"] = bool(out["AC_top1"] == 1.0)
    out["AC_mAP_is_1"] = bool(out["AC_mAP"] == 1.0)
    return out


def run(quick: bool = False, recipes: tuple[str, ...] = RECIPES) -> dict[str, Any]:
    s = setup(quick)
    T = Timer()
    data = load_data(s)
    plan = chain_plan(s)
    v1 = train_model("chain-v1", s, data, method="independent", classes=CLASSES[0], d_out=D_OLD,
                     epochs=s.epochs_old, group="chain")
    chains = {r: _chain(r, s, data, plan, v1) for r in recipes}
    res = {"scenario": "chain", "quick": quick, "command": command_line(), "machine": machine(),
           "setup": {"n_gallery": len(data["yg"]), "n_query": len(data["yq"]), "n_train": s.n_train or len(data["yg"]),
                     "metric": "top-1/top-5 (Index.search), mAP (full ranking, brute force, "
                               f"{N_MAP_QUERIES} queries)", "recipes": list(recipes),
                     "classes": [f"0-{c - 1}" for c in CLASSES]},
           "chains": chains, "goal_AC_is_1": {r: c["AC_is_1"] for r, c in chains.items()},
           "goal_AC_mAP_is_1": {r: c["AC_mAP_is_1"] for r, c in chains.items()}}
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


RECIPE_TEXT = {
    "oca": "`oca` (v1 independent, then the trainer's `train_backbone(method=\"oca\")` against the parent, "
           "prototypes of the parent's stored vectors)",
    "oca+pairs": "`oca+pairs` (benchmark-local: the same plus a per-item pair term against the parent's stored "
                 "vectors)",
    "simplex": "`simplex` (`train_backbone(method=\"simplex\")` for every version, each fine-tuned from its "
               "parent: a fixed d-simplex classifier over the 10 classes shared by all versions, plus an InfoNCE "
               "and a light cosine pin to the stored vectors of the same item in every ancestor version; trained "
               "on the images of the classes each version is given)",
    "simplex+gallery": "`simplex+gallery` (the same, with the pair terms also over the stored gallery's images of "
                       "the classes a version is not given, unlabelled: the new model sees those images, not "
                       "their labels; a different protocol from the class-incremental one)",
    "simplex+gallery+labels": "`simplex+gallery+labels` (`simplex+gallery` with the supervised ancestor InfoNCE of "
                              "`simplex+labels`; the unlabelled images have only their own stored vectors as "
                              "positives)",
    "simplex+gallery+ranking": "`simplex+gallery+ranking` (`simplex+gallery+labels` with "
                               "`unlabelled_targets=\"old_ranking\"`: an unlabelled image's target in the ancestor "
                               "InfoNCE is the ancestor model's own ranking of the batch, not its own stored vector "
                               "alone, so the classes a version has no labels for keep the ancestor's "
                               "neighbourhoods)",
    "simplex+gallery+scoped": "`simplex+gallery+scoped` (`simplex+gallery+ranking` where each version is also "
                              "told which classes every ancestor had labels for: in an ancestor's InfoNCE, an image "
                              "of a class that ancestor never had labels for targets the ancestor's own ranking of "
                              "the batch's same-label images instead of every same-label image alike, "
                              "`train_backbone(ancestor_classes=...)`)",
    "simplex+labels": "`simplex+labels` (`simplex` with `pair_negatives=\"same_labels\"`: the ancestor InfoNCE is "
                      "supervised, the stored ancestor vectors of every same-label image in the batch are "
                      "positives, so a version learns label retrieval in each older gallery rather than its own "
                      "item's old vector; class-incremental, as `simplex`)",
}


def _matrix_md(nm: list[str], M: np.ndarray) -> str:
    rows = [[nm[i]] + [fmt(M[i, j]) if j <= i else "" for j in range(len(nm))] for i in range(len(nm))]
    return md_table(["query \\ gallery"] + nm, rows)


def _violations_md(vs: list[dict[str, Any]]) -> str:
    return "; ".join(f"{v['query']}/{v['gallery']} {fmt(v['M_ij'])} <= {v['gallery']}/{v['gallery']} {fmt(v['M_jj'])}"
                     for v in vs)


def markdown(r: dict[str, Any], names: list[str] | None = None) -> str:
    st = r["setup"]
    out = [f"### Chains of versions on Fashion-MNIST\n\nGallery {st['n_gallery']} training images, "
           f"{st['n_query']} test queries, models trained on {st['n_train']} images; versions v1..v4 see classes "
           f"{', '.join(st.get('classes', []))}, each 16 dims wider than its parent. Recipes: "
           + "; ".join(RECIPE_TEXT[k] for k in r["chains"] if k in RECIPE_TEXT)
           + ". Compatibility matrices M[i][j] of version-i queries against a "
           "gallery holding only version-j vectors: top-1 (%) through `Index.search`, and mAP (%) over the full "
           f"ranking ({r['chains'][next(iter(r['chains']))].get('n_map_queries', '?')} seeded queries); "
           "v4 against v1 is zero padding across three generations.\n\n"]
    for recipe, c in r["chains"].items():
        nm = [v["name"] for v in c["versions"]]
        M = np.asarray(c["matrix_top1"], dtype=float)
        MA = np.asarray(c["matrix_mAP"], dtype=float)
        out.append(f"**{recipe}** ("
                   + ", ".join(f"{v['name']}: {v['method']}, classes {v['classes']}, {v['dim']}-d" for v in c["versions"])
                   + "). Top-1:\n\n" + _matrix_md(nm, M) + "\nmAP:\n\n" + _matrix_md(nm, MA)
                   + f"\nAC (top-1) = {c['AC_top1']:.2f}, AM (top-1) = {100 * c['AM_top1']:.1f}; "
                     f"AC (mAP) = {c['AC_mAP']:.2f}, AM (mAP) = {100 * c['AM_mAP']:.1f}; "
                     f"AC (top-5) = {c['AC_top5']:.2f}, AM (top-5) = {100 * c['AM_top5']:.1f}. "
                   + ("Every pair is compatible on top-1 and mAP.\n\n" if not c["violations_top1"] and not c["violations_mAP"]
                      else "".join([f"Violations (top-1): {_violations_md(c['violations_top1'])}. " if c["violations_top1"] else "",
                                    f"Violations (mAP): {_violations_md(c['violations_mAP'])}." if c["violations_mAP"] else ""])
                      + "\n\n"))
    cached = [f"{recipe}/{v['name']}" for recipe, c in r["chains"].items() for v in c["versions"] if v.get("cached")]
    if cached:
        out.append("Backbones loaded from the benchmark's model cache (trained by an earlier run with the same "
                   f"settings, recipe version and ancestors): {', '.join(cached)}.\n\n")
    out.append(f"![chain]({r['plot']})\n")
    return "".join(out)
