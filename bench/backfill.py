"""Scenario 3: backfill curves on Fashion-MNIST.

The backfill curve and its area follow "FastFill: Efficient Compatible Model Update" (Jaeckle et
al., ICLR 2023); negative flips during a backfill are the concern of "Hot-Refresh Model Upgrades
with Regression-Free Compatible Training in Image Retrieval" (Zhang et al., ICLR 2022). The
results: docs/benchmarks.md §3.

The gallery starts with the old model's vectors (``v1``); the OCA version (scenario 1's model)
is registered and a growing fraction p of the items is re-embedded with it through
``Index.backfill`` (old vectors kept), in two orders:

- ``random``;
- ``uncertainty``: the items whose stored old vector is least certain first. The uncertainty is
  computed from what the index holds, before any new embedding is made: the margin between the
  cosine of the item's old vector to its own class prototype and to the nearest other class
  prototype (prototypes = class means of the stored old vectors; a negative margin means the old
  vector sits in another class's region). Smallest margin first. Where items carry no labels
  the same score without the own-class term (top-2 prototype margin) applies.
- ``uncertainty-stratified``: the same ranking interleaved across labels, so that at every p
  each class has the same fraction backfilled (its most uncertain items first). Plain
  uncertainty order concentrates the first backfills in a few confusable classes, and their
  new vectors (new/new scores run higher than new/old ones) crowd the other classes' queries.
- ``confident-first``: the reverse (largest margin first, stratified), as the control that tells
  whether uncertain items are the right ones to backfill first.

At each p the new queries search the mixed gallery with both score conventions (``pad``,
``renorm``) through ``Index.search``. Reported: top-1/top-5 (all queries), mAP (brute force over
the same mixed gallery, on a query subset), the area under each curve (trapezoid over p) and the
negative-flip rate against old/old (queries old/old got right at top-1 and the mixed system
gets wrong).

Run: ``.venv/bin/python -m bench.run backfill [--quick]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .common import (RESULTS, Timer, cmc_from_hits, command_line, fmt, log, machine, md_table, mean_ap, mixed_similarity,
                     png_name, search_ids, write_result)
from .fmnist import D_OLD, DELTA, fresh_index, gallery_prototypes, load_data, setup, train_model


def uncertainty_order(G_old: np.ndarray, labels: np.ndarray | None, P: np.ndarray) -> np.ndarray:
    """Item order, most uncertain first (prototype margin of the stored old vector)."""
    Pn = P / np.maximum(np.linalg.norm(P, axis=1, keepdims=True), 1e-12)
    C = G_old @ Pn.T  # (n, C)
    if labels is not None:
        own = C[np.arange(len(C)), labels]
        C2 = C.copy()
        C2[np.arange(len(C)), labels] = -np.inf
        margin = own - C2.max(1)
    else:
        top2 = np.sort(C, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
    return np.argsort(margin, kind="stable")


def stratified_order(order: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Interleave an order across labels: each label's items keep their relative order, and the
    backfilled set stays class-balanced (rank within the label / label size, ties by label)."""
    pos = np.empty(len(order), np.int64)
    pos[order] = np.arange(len(order))
    frac = np.empty(len(order))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        r = np.argsort(np.argsort(pos[idx], kind="stable"), kind="stable")
        frac[idx] = (r + 0.5) / len(idx)
    return np.lexsort((labels, frac))


def run(quick: bool = False) -> dict[str, Any]:
    s = setup(quick)
    T = Timer()
    data = load_data(s)
    yg, yq = data["yg"], data["yq"]
    ng = len(yg)
    ids = np.arange(ng)
    old = train_model("old", s, data, method="independent", classes=5, d_out=D_OLD, epochs=s.epochs_old)
    ix0 = fresh_index("backfill-proto", s)
    ix0.create_version("v1", dim=D_OLD)
    ix0.add(ids, old["gallery"], labels=yg)
    P = gallery_prototypes(ix0, "v1", 10)
    ix0.close()
    new = train_model("oca", s, data, method="oca", classes=10, d_out=D_OLD + DELTA, d_parent=D_OLD, prototypes=P)
    ps = np.array([0.0, 0.25, 0.5, 0.75, 1.0] if quick else np.round(np.linspace(0.0, 1.0, 11), 1))
    n_map = min(len(yq), 500 if quick else 1000)
    ends: dict[tuple[float, str], dict[str, float]] = {}  # p = 0 and p = 1 are the same in every order
    rng = np.random.default_rng(s.seed + 2)
    unc = uncertainty_order(old["gallery"], yg, P)
    orders = {"random": rng.permutation(ng), "uncertainty": unc, "uncertainty-stratified": stratified_order(unc, yg),
              "confident-first": stratified_order(unc[::-1], yg)}
    # old/old reference
    ix = fresh_index("backfill", s)
    ix.create_version("v1", dim=D_OLD)
    ix.add(ids, old["gallery"], labels=yg)
    oo_hits, _, _ = search_ids(ix, old["query"], 5, version="v1")
    ix.close()
    oo = cmc_from_hits(yg[oo_hits], yq)
    oo_ok = yg[oo_hits[:, 0]] == yq
    curves: dict[str, Any] = {}
    for oname, order in orders.items():
        ix = fresh_index(f"backfill-{oname}", s)
        ix.create_version("v1", dim=D_OLD)
        ix.add(ids, old["gallery"], labels=yg)
        ix.register_version("oca", "v1", D_OLD + DELTA, report={"trainer": "train_backbone", "method": "oca"})
        done = 0
        pts: dict[str, list[dict[str, float]]] = {"pad": [], "renorm": []}
        for p in ps:
            upto = int(round(p * ng))
            if upto > done:
                sel = order[done:upto]
                ix.backfill(sel, new["gallery"][sel], version="oca")
                done = upto
            mask = np.zeros(ng, bool)
            mask[order[:done]] = True
            for score in ("pad", "renorm"):
                if (float(p), score) in ends:
                    pts[score].append(dict(ends[(float(p), score)]))
                    continue
                hits, vers, secs = search_ids(ix, new["query"], 5, version="oca", score=score)
                c = cmc_from_hits(yg[hits], yq)
                ok = yg[hits[:, 0]] == yq
                S = mixed_similarity(new["query"][:n_map], old["gallery"], new["gallery"], mask, score=score)
                c["mAP"] = float(np.nanmean(mean_ap(S, yq[:n_map, None] == yg[None, :])))
                c["nfr"] = float(np.mean(oo_ok & ~ok))
                c["share_new_hits_top5"] = float(np.mean(vers == "oca"))
                c["p"] = float(p)
                pts[score].append(c)
                if p in (0.0, 1.0):
                    ends[(float(p), score)] = c
            log(f"backfill {oname} p={p:.2f}: pad top1 {pts['pad'][-1]['top1']:.3f} renorm top1 "
                f"{pts['renorm'][-1]['top1']:.3f}")
        ix.close()
        curves[oname] = pts
    auc: dict[str, Any] = {}
    for oname, pts in curves.items():
        for score, lst in pts.items():
            x = np.array([d["p"] for d in lst])
            auc[f"{oname}/{score}"] = {m: float(np.trapezoid([d[m] for d in lst], x)) for m in ("top1", "top5", "mAP")}
            auc[f"{oname}/{score}"]["max_nfr"] = max(d["nfr"] for d in lst)
            auc[f"{oname}/{score}"]["mean_nfr"] = float(np.mean([d["nfr"] for d in lst]))
    res = {"scenario": "backfill", "quick": quick, "command": command_line(), "machine": machine(),
           "setup": {"n_gallery": ng, "n_query": len(yq), "n_query_mAP": n_map, "new_version": "oca (scenario 1)",
                     "p": ps, "orders": list(orders), "scores": ["pad", "renorm"]},
           "old_old": oo, "curves": curves, "auc": auc}
    res["seconds"] = T()
    res["plot"] = plot(res, quick)
    write_result("backfill", res, markdown(res), quick=quick)
    return res


def plot(r: dict[str, Any], quick: bool) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, metric in zip(axes, ("top1", "mAP", "nfr")):
        for oname, pts in r["curves"].items():
            for score, lst in pts.items():
                ax.plot([d["p"] for d in lst], [d[metric] for d in lst], marker="o", ms=3,
                        ls={"random": "--", "uncertainty": ":", "confident-first": "-."}.get(oname, "-"), label=f"{oname}, {score}")
        if metric != "nfr":
            ax.axhline(r["old_old"][metric] if metric in r["old_old"] else np.nan, color="k", lw=1, ls=":",
                       label="old/old")
        ax.set_xlabel("fraction p of the gallery backfilled")
        ax.set_title({"top1": "top-1", "mAP": "mAP", "nfr": "negative-flip rate vs old/old"}[metric])
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    name = png_name("backfill", quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / name, dpi=90)
    plt.close(fig)
    return name


def markdown(r: dict[str, Any]) -> str:
    rows = []
    ps = [float(p) for p in r["setup"]["p"]]
    mid = int(np.argmin([abs(p - 0.5) for p in ps]))
    for key, a in r["auc"].items():
        oname, score = key.split("/")
        lst = r["curves"][oname][score]
        rows.append([oname, score, fmt(a["top1"]), fmt(a["top5"]), fmt(a["mAP"]), fmt(lst[0]["top1"]),
                     fmt(lst[mid]["top1"]), fmt(lst[-1]["top1"]), fmt(a["mean_nfr"]), fmt(a["max_nfr"])])
    s = r["setup"]
    return ("### Backfill curves (Fashion-MNIST, old gallery backfilled with the OCA version)\n\n"
            f"Gallery {s['n_gallery']}, {s['n_query']} queries (mAP on {s['n_query_mAP']}); p = "
            f"{', '.join(str(p) for p in s['p'])}. old/old top-1 {fmt(r['old_old']['top1'])}. AUC = area under "
            "the curve over p in [0, 1] (%).\n\n"
            + md_table(["order", "score", "AUC top-1", "AUC top-5", "AUC mAP", "top-1 p=0", f"top-1 p={ps[mid]:g}",
                        "top-1 p=1", "mean NFR", "max NFR"], rows)
            + f"\n![backfill curves]({r['plot']})\n")
