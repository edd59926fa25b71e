"""Scenario 6: migration-time serving on Fashion-MNIST (docs/concepts.md, "Migration-time serving").

During a migration the old encoder still runs, so each query can be embedded by both models and
searched as ``{new: q_new, v1: q_old}``. This scenario measures, side by side in one run:

- day one (nothing backfilled), for each new-model recipe: old/old; new/old through the version
  algebra alone (``renorm`` and ``calibrated``); and the fused query with the weights and
  calibration that ``Index.fit_serving`` stored, fit without relevance data from 2,000 queries
  embedded by both encoders (what a service running both during a migration has for free; those
  queries are left out of the evaluation, which uses the others). For comparison, the same fit
  from a held-out 5% of the gallery re-embedded by the new model, with the gallery's labels:
  both models here were trained on the gallery images, so that sample flatters them. Recipes: the
  trainer's OCA backbone, and an independent new model made compatible post hoc by ``upgrade``;
- backfill curves of the OCA version under ``pad``, ``renorm`` and ``calibrated`` (calibration
  refit by ``Index.calibrate`` from the items backfilled so far), and ``calibrated (reference)``
  (refit by ``Index.calibrate(reference=...)`` with 2,000 gallery items drawn at random, whatever
  the order, embedded by the new model, and the stored labels), random and uncertainty orders,
  with their areas;
- the old-client curve: v1 queries while the gallery is backfilled with ``drop_old`` (the
  backfilled items keep only their new vector), under ``renorm`` and ``calibrated``, served with
  the query map v1 -> oca that ``fit_serving`` (query pairs) and ``calibrate`` (backfilled items)
  fit, and beside it without a map (the algebra's projection, calibrated on its own scores); and
  the same backfill with ``keep_pairs=32768``: a uniform sample of the dropped items keeps both
  vectors, and old clients are served the neighbour map of those pairs (core/neighbour_map.py).

top-1/top-5 come from ``Index.search`` hits; mAP from a brute force of the same scores over the
whole gallery (day one: the composed query of the v1 shard against every stored v1 vector).

Run: ``.venv/bin/python -m bench.run serving [--quick]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backfill import uncertainty_order
from .common import RESULTS, Timer, cmc_from_hits, command_line, fmt, log, machine, md_table, mean_ap, png_name, \
    write_result
from .fmnist import D_OLD, DELTA, fresh_index, gallery_prototypes, load_data, setup, train_model

SCORES = ("pad", "renorm", "calibrated")
REFERENCE = "calibrated (reference)"
"""The backfill curve calibrated by ``Index.calibrate(reference=...)`` (labels, a random reference sample)."""
CURVES = (*SCORES, REFERENCE)
CURVE_SCORE = {REFERENCE: "calibrated"}
KEEP_PAIRS = 32768
"""``backfill(..., drop_old=True, keep_pairs=KEEP_PAIRS)`` of the retained-pairs old-client curves
(``compatindex.core.neighbour_map.CAPACITY``)."""
RETAINED = f" (retained pairs, keep_pairs={KEEP_PAIRS})"


def _hits(index: Any, queries: Any, k: int, *, version: str | None = None, score: str = "renorm",
          raw: bool | None = None, batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """``Index.search`` in batches (single- or multi-version queries); ``(ids (nq,k), versions (nq,k))``."""
    multi = isinstance(queries, dict)
    n = len(next(iter(queries.values()))) if multi else len(queries)
    ids, vers = [], []
    for s in range(0, n, batch):
        q = {kk: v[s:s + batch] for kk, v in queries.items()} if multi else queries[s:s + batch]
        r = index.search(q, k, score=score, raw=raw) if multi else index.search(q, k, version=version, score=score, raw=raw)
        ids.append(np.array([[(-1 if x is None else x) for x in row] for row in r.ids], dtype=np.int64))
        vers.append(r.versions)
    return np.vstack(ids), np.vstack(vers)


def _map(q: np.ndarray, gallery: np.ndarray, yq: np.ndarray, yg: np.ndarray, n: int) -> float:
    """mAP over the full ranking of ``q @ gallery.T`` (first ``n`` queries)."""
    S = q[:n].astype(np.float32) @ gallery.T
    return float(np.nanmean(mean_ap(S, yq[:n, None] == yg[None, :])))


def _composed_v1(index: Any, parts: dict[str, np.ndarray], score: str) -> np.ndarray:
    """The query the v1 shard is searched with (the fused day-one ranking, on an all-old gallery)."""
    queries: Any = parts if len(parts) > 1 else next(iter(parts.values()))
    version = None if len(parts) > 1 else next(iter(parts))
    return index.composed_queries(queries, version=version, score=score, raw=False)["v1"][0]  # version space


def _fused(index: Any, version: str, q_new: np.ndarray, q_old: np.ndarray, G_old: np.ndarray, yq, yg, n_map: int,
           *, raw: bool, oo: dict[str, float]) -> dict[str, Any]:
    """The fused day-one search with the serving parameters stored now."""
    parts = {version: index.to_version_space(q_new, version=version) if raw else q_new, "v1": q_old}
    ids, _ = _hits(index, parts, 5, score="calibrated", raw=False)  # parts are in version space
    c = cmc_from_hits(yg[ids], yq)
    c["mAP"] = _map(_composed_v1(index, parts, "calibrated"), G_old, yq, yg, n_map)
    c["fusion"] = index.version(version).serving.get("fusion")
    c["beats_old_old"] = {m: bool(c[m] > oo[m]) for m in ("top1", "mAP")}
    return c


def _day_one(index: Any, version: str, new: dict[str, np.ndarray], old: dict[str, np.ndarray], yq, yg, n_map: int,
             fit_q: np.ndarray, eval_q: np.ndarray, serve_ids: np.ndarray, *, raw: bool,
             oo: dict[str, float]) -> dict[str, Any]:
    """new/old alone, then fused with parameters fit from query pairs, then from a labelled gallery sample."""
    G_old, q_new, q_old, ye = old["gallery"], new["query"][eval_q], old["query"][eval_q], yq[eval_q]
    out: dict[str, Any] = {}
    fit = index.fit_serving(version, new["query"][fit_q], old_vectors=old["query"][fit_q], raw=raw)
    out["serving_fit"] = _fit_summary(fit)
    served = _serving_state(index, version)
    for score in ("renorm", "calibrated"):
        ids, _ = _hits(index, q_new, 5, version=version, score=score, raw=raw)
        c = cmc_from_hits(yg[ids], ye)
        qv = index.to_version_space(q_new, version=version) if raw else q_new
        c["mAP"] = _map(_composed_v1(index, {version: qv}, score), G_old, ye, yg, n_map)
        out[f"new_old_{score}"] = c
    out["fused"] = _fused(index, version, q_new, q_old, G_old, ye, yg, n_map, raw=raw, oo=oo)
    # the same fit from a labelled 5% of the gallery (flattering: the models trained on those images)
    fit_g = index.fit_serving(version, new["gallery"][serve_ids], serve_ids.tolist(), raw=raw,
                              labels=yg[serve_ids].tolist())
    out["fused_gallery_fit"] = {**_fused(index, version, q_new, q_old, G_old, ye, yg, n_map, raw=raw, oo=oo),
                                "serving_fit": _fit_summary(fit_g)}
    # leave the query-pair parameters stored
    _set_state(index, version, served)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    from compatindex.trainer import upgrade

    s = setup(quick)
    T = Timer()
    data = load_data(s)
    yg, yq_all = data["yg"], data["yq"]
    ng = len(yg)
    ids = np.arange(ng)
    n_fit = 300 if quick else 2000
    qperm = np.random.default_rng(s.seed + 12).permutation(len(yq_all))
    fit_q, eval_q = np.sort(qperm[:n_fit]), np.sort(qperm[n_fit:])  # serving-fit queries / evaluation queries
    yq = yq_all[eval_q]
    n_map = min(len(yq), 500 if quick else 2000)
    rng = np.random.default_rng(s.seed + 11)
    perm = rng.permutation(ng)
    pair_ids = np.sort(perm[: ng // 10])                        # the post-hoc fit's pairs (10%)
    serve_ids = np.sort(perm[ng // 10: ng // 10 + ng // 20])    # a labelled gallery sample (5%), for comparison
    old = train_model("old", s, data, method="independent", classes=5, d_out=D_OLD, epochs=s.epochs_old)
    G_old = old["gallery"]
    index = fresh_index("serving", s)
    index.create_version("v1", dim=D_OLD)
    index.add(ids, G_old, labels=yg)
    P = gallery_prototypes(index, "v1", 10)
    oca = train_model("oca", s, data, method="oca", classes=10, d_out=D_OLD + DELTA, d_parent=D_OLD, prototypes=P)
    ind = train_model("independent", s, data, method="independent", classes=10, d_out=D_OLD + DELTA)
    oo_ids, _ = _hits(index, old["query"][eval_q], 5, version="v1")
    oo = cmc_from_hits(yg[oo_ids], yq)
    oo["mAP"] = _map(old["query"][eval_q], G_old, yq, yg, n_map)
    oo_ok = yg[oo_ids[:, 0]] == yq
    log(f"serving: old/old top1 {oo['top1']:.3f} mAP {oo['mAP']:.3f}")

    day_one: dict[str, Any] = {}
    # recipe 1: the trainer's OCA backbone (its outputs are v2-space vectors)
    index.register_version("oca", "v1", D_OLD + DELTA, report={"trainer": "train_backbone", "method": "oca"})
    day_one["oca"] = _day_one(index, "oca", oca, old, yq_all, yg, n_map, fit_q, eval_q, serve_ids, raw=False, oo=oo)
    # recipe 2: an independent model made compatible after the fact by the trainer (default method)
    t = Timer()
    v, rep = upgrade(index, ind["gallery"][pair_ids], pair_ids.tolist(), name="posthoc", parent="v1", force=True,
                     steps=50 if quick else 300)
    day_one["independent+upgrade"] = {**_day_one(index, "posthoc", ind, old, yq_all, yg, n_map, fit_q, eval_q,
                                                 serve_ids, raw=True, oo=oo),
                                      "upgrade_seconds": t(), "method": rep.get("method")}
    for name, r in day_one.items():
        log(f"day one {name}: new/old {r['new_old_renorm']['top1']:.3f}, calibrated {r['new_old_calibrated']['top1']:.3f},"
            f" fused {r['fused']['top1']:.3f} (w={r['fused']['fusion']}), fused from a gallery fit "
            f"{r['fused_gallery_fit']['top1']:.3f} (w={r['fused_gallery_fit']['fusion']})")
    index.close()

    # backfill curves of the OCA version
    ps = np.array([0.0, 0.25, 0.5, 0.75, 1.0] if quick else np.round(np.linspace(0.0, 1.0, 11), 1))
    orders = {"random": np.random.default_rng(s.seed + 2).permutation(ng),
              "uncertainty": uncertainty_order(G_old, yg, P)}
    curves: dict[str, Any] = {}
    # the reference sample of `calibrate(reference=...)`: gallery items drawn at random, whatever the
    # backfill order, embedded by the new model (not written to the index: p = 0 stays all-old)
    ref_ids = np.sort(np.random.default_rng(s.seed + 13).choice(ng, 300 if quick else 2000, replace=False))
    for oname, order in orders.items():
        ix = fresh_index(f"serving-{oname}", s)
        ix.create_version("v1", dim=D_OLD)
        ix.add(ids, G_old, labels=yg)
        ix.register_version("oca", "v1", D_OLD + DELTA)
        ix.fit_serving("oca", oca["query"][fit_q], old_vectors=old["query"][fit_q])
        done = 0
        pts: dict[str, list[dict[str, float]]] = {sc: [] for sc in CURVES}
        states = {"calibrated": _serving_state(ix, "oca")}
        states[REFERENCE] = states["calibrated"]
        for p in ps:
            upto = int(round(p * ng))
            if upto > done:
                sel = order[done:upto]
                ix.backfill(sel, oca["gallery"][sel], version="oca")
                done = upto
                ix.calibrate("oca")  # the backfilled items are exact pairs
                states["calibrated"] = _serving_state(ix, "oca")
                ix.calibrate("oca", reference=(ref_ids.tolist(), oca["gallery"][ref_ids]))
                states[REFERENCE] = _serving_state(ix, "oca")
            for sc in CURVES:
                if sc in states:
                    _set_state(ix, "oca", states[sc])
                hits, vers = _hits(ix, oca["query"][eval_q], 5, version="oca", score=CURVE_SCORE.get(sc, sc))
                c = cmc_from_hits(yg[hits], yq)
                c["nfr"] = float(np.mean(oo_ok & (yg[hits[:, 0]] != yq)))
                c["share_new_hits_top5"] = float(np.mean(vers == "oca"))
                c["p"] = float(p)
                pts[sc].append(c)
            log(f"backfill {oname} p={p:.2f}: " + ", ".join(f"{sc} {pts[sc][-1]['top1']:.3f}" for sc in CURVES))
        ix.close()
        curves[oname] = pts
    # the old client: v1 queries while the gallery is backfilled with drop_old, served with the query
    # map v1 -> oca that fit_serving / calibrate fit and stored, and beside it without one (the
    # algebra's projection, calibrated on its own scores): the two serving states are swapped in
    # on the same index at every p
    ix = _old_client_index("serving-oldclient", s, ids, G_old, yg, oca["query"][fit_q], old["query"][fit_q],
                           query_map=False)
    states = {"no_map": _serving_state(ix, "oca")}
    map_fits: dict[str, Any] = {}
    fit = ix.fit_serving("oca", oca["query"][fit_q], old_vectors=old["query"][fit_q])
    map_fits["fit_serving (query pairs)"] = fit["query_map"]
    states["map"] = _serving_state(ix, "oca")
    order = orders["random"]
    labels_of = {"map": "", "no_map": " (no query map)"}
    old_client: dict[str, list[dict[str, float]]] = {f"{sc}{labels_of[st]}": [] for st in states
                                                     for sc in ("renorm", "calibrated")}
    for p, sel, first in _drop_steps(ps, order):
        if sel is not None:
            if first:
                # keep the calibration pairs: calibrate from the items' vectors before they are dropped
                ix.backfill(sel, oca["gallery"][sel], version="oca")
                _set_state(ix, "oca", states["no_map"])
                ix.calibrate("oca", query_map=False)
                states["no_map"] = _serving_state(ix, "oca")
                _set_state(ix, "oca", states["map"])
                map_fits["calibrate (backfilled items)"] = ix.calibrate("oca")["query_map"]
                states["map"] = _serving_state(ix, "oca")
            ix.backfill(sel, oca["gallery"][sel], version="oca", drop_old=True)
        for st, state in states.items():
            _set_state(ix, "oca", state)
            for sc in ("renorm", "calibrated"):
                old_client[f"{sc}{labels_of[st]}"].append(_old_client_point(ix, old["query"][eval_q], sc, yg, yq, p))
        log(f"old client p={p:.2f}: " + ", ".join(f"{k} {v[-1]['top1']:.3f}" for k, v in old_client.items()))
    _set_state(ix, "oca", states["map"])
    ix.close()
    # the same backfill with `keep_pairs`: a uniform sample of the dropped items keeps both vectors,
    # and old clients are served the neighbour map of those pairs once its gate passes
    ix = _old_client_index("serving-oldclient-retained", s, ids, G_old, yg, oca["query"][fit_q], old["query"][fit_q])
    retained: list[dict[str, Any]] = []
    for sc in ("renorm", "calibrated"):
        old_client[f"{sc}{RETAINED}"] = []
    for p, sel, first in _drop_steps(ps, order):
        if sel is not None:
            if first:
                ix.backfill(sel, oca["gallery"][sel], version="oca")
                ix.calibrate("oca")  # as above: the first batch's pairs fit the linear map and calibration
            ix.backfill(sel, oca["gallery"][sel], version="oca", drop_old=True, keep_pairs=KEEP_PAIRS)
        entry = ((ix.version("oca").serving or {}).get("pairs") or {}).get("v1") or {}
        retained.append({"p": float(p), "pairs": len(entry.get("ids") or []), "k": entry.get("k"),
                         "v1_vectors": int(ix.stats()["versions"]["v1"]["vectors"]), "fit": entry.get("fit")})
        for sc in ("renorm", "calibrated"):
            old_client[f"{sc}{RETAINED}"].append(_old_client_point(ix, old["query"][eval_q], sc, yg, yq, p))
        log(f"old client, retained pairs p={p:.2f}: pairs {retained[-1]['pairs']}, k {retained[-1]['k']}: "
            + ", ".join(f"{sc} {old_client[sc + RETAINED][-1]['top1']:.3f}" for sc in ("renorm", "calibrated")))
    ix.close()

    auc = {f"{o}/{sc}": float(np.trapezoid([d["top1"] for d in lst], [d["p"] for d in lst]))
           for o, pts in curves.items() for sc, lst in pts.items()}
    goals: dict[str, Any] = {"day_one_fused_above_old_old": {n: r["fused"]["beats_old_old"] for n, r in day_one.items()}}
    for o, pts in curves.items():
        for sc in ("calibrated", REFERENCE):
            cal = pts[sc]
            worst_drop = max(cal[0]["top1"] - d["top1"] for d in cal)
            goals[f"{sc}_{o}"] = {
                "curve": sc, "order": o,
                "worst_drop_below_p0_points": 100 * worst_drop, "drop_met": bool(100 * worst_drop <= 0.5),
                "auc": auc[f"{o}/{sc}"], "best_other_auc": max(auc[f"{o}/pad"], auc[f"{o}/renorm"]),
                "auc_met": bool(auc[f"{o}/{sc}"] >= max(auc[f"{o}/pad"], auc[f"{o}/renorm"]) - 1e-12)}
    for sc, lst in old_client.items():
        worst = max(oo["top1"] - d["top1"] for d in lst)
        goals[f"old_client_{sc}"] = {"worst_below_old_old_points": 100 * worst, "met": bool(100 * worst <= 0.5)}
    res = {"scenario": "serving", "quick": quick, "command": command_line(), "machine": machine(),
           "setup": {"n_gallery": ng, "n_query": len(yq), "n_query_mAP": n_map, "pairs_fraction": 0.1,
                     "serving_fit_queries": int(n_fit), "eval_queries": int(len(eval_q)), "gallery_fit_fraction": 0.05, "p": ps, "orders": list(orders)},
           "old_old": oo, "day_one": day_one, "curves": curves, "old_client": old_client,
           "old_client_query_map": {k: _map_fit_summary(f) for k, f in map_fits.items()},
           "old_client_retained": retained, "auc_top1": auc,
           "goals": goals}
    res["seconds"] = T()
    res["plot"] = plot(res, quick)
    write_result("serving", res, markdown(res), quick=quick)
    return res


def _drop_steps(ps: np.ndarray, order: np.ndarray) -> Any:
    """``(p, ids to backfill now or None, first)`` per backfill point: ``first`` marks the first
    batch of a partial backfill, whose pairs calibrate before their old vectors are dropped."""
    done, n = 0, len(order)
    for p in ps:
        upto = int(round(p * n))
        if upto > done:
            yield p, order[done:upto], done == 0 and upto < n
            done = upto
        else:
            yield p, None, False


def _old_client_index(name: str, s: Any, ids: np.ndarray, G_old: np.ndarray, yg: np.ndarray, new_q: np.ndarray,
                      old_q: np.ndarray, **fit: Any) -> Any:
    """A fresh index of the v1 gallery with oca registered and its serving fit on the query pairs."""
    ix = fresh_index(name, s)
    ix.create_version("v1", dim=D_OLD)
    ix.add(ids, G_old, labels=yg)
    ix.register_version("oca", "v1", D_OLD + DELTA)
    ix.fit_serving("oca", new_q, old_vectors=old_q, **fit)
    return ix


def _old_client_point(ix: Any, queries: np.ndarray, score: str, yg: np.ndarray, yq: np.ndarray, p: float) -> dict[str, float]:
    """CMC of v1 queries (top-5 hits) at backfill point ``p``."""
    hits, _ = _hits(ix, queries, 5, version="v1", score=score)
    c = cmc_from_hits(yg[hits], yq)
    c["p"] = float(p)
    return c


def _serving_state(index: Any, version: str) -> dict[str, Any]:
    """A copy of the serving parameters stored with ``version``."""
    return dict(index.version(version).serving or {})


def _set_state(index: Any, version: str, state: dict[str, Any]) -> None:
    """Store a copy made by :func:`_serving_state` back (query maps included: none removes them)."""
    index.set_serving(version, fusion=state.get("fusion"),
                      calibration=[tuple(r) for r in state.get("calibration") or []],
                      query_maps=state.get("query_maps") or {})


def _map_fit_summary(fit: dict[str, Any] | None) -> dict[str, Any] | None:
    if fit is None:
        return None
    return {k: fit.get(k) for k in ("stored", "reason", "pairs", "held_out", "ridge", "mapped", "projection", "stored_map")}


def _fit_summary(fit: dict[str, Any]) -> dict[str, Any]:
    f = fit.get("fusion") or {}
    return {"calibration": {k: {"a": v["a"], "b": v["b"], "fallback": v["fallback"]} for k, v in fit["calibration"].items()},
            "fusion": f.get("fusion"), "proxy_score": f.get("score"), "proxy_old_only": f.get("old_only_score"),
            "proxy_gain": f.get("gain"), "query_map": _map_fit_summary(fit.get("query_map"))}


def plot(r: dict[str, Any], quick: bool) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    for oname, pts in r["curves"].items():
        for sc, lst in pts.items():
            ax.plot([d["p"] for d in lst], [d["top1"] for d in lst], marker="o", ms=3,
                    ls="-" if sc.startswith("calibrated") else ":", label=f"{oname} / {sc}")
    ax.axhline(r["old_old"]["top1"], color="grey", lw=0.8, ls="--", label="old/old")
    ax.set_xlabel("fraction of the gallery backfilled (p)")
    ax.set_ylabel("top-1, new queries")
    ax.set_title("backfill curves (OCA version)")
    ax.legend(fontsize=7)
    ax = axes[1]
    for sc, lst in r["old_client"].items():
        ax.plot([d["p"] for d in lst], [d["top1"] for d in lst], marker="o", ms=3, label=f"v1 queries / {sc}")
    ax.axhline(r["old_old"]["top1"], color="grey", lw=0.8, ls="--", label="old/old")
    ax.set_xlabel("fraction backfilled with drop_old (p)")
    ax.set_ylabel("top-1, old client")
    ax.set_title("old clients during the backfill")
    ax.legend(fontsize=7)
    fig.tight_layout()
    name = png_name("serving", quick)
    fig.savefig(RESULTS / name, dpi=120)
    plt.close(fig)
    return name


def markdown(r: dict[str, Any]) -> str:
    oo = r["old_old"]
    rows = [["old/old (no upgrade)", "–", fmt(oo["top1"]), fmt(oo["mAP"])]]
    for name, d in r["day_one"].items():
        rows.append([f"{name}: new/old renorm", "–", fmt(d["new_old_renorm"]["top1"]), fmt(d["new_old_renorm"]["mAP"])])
        rows.append([f"{name}: new/old calibrated", "–", fmt(d["new_old_calibrated"]["top1"]),
                     fmt(d["new_old_calibrated"]["mAP"])])
        for key, label in (("fused", "fused, fit on query pairs"), ("fused_gallery_fit", "fused, fit on a labelled gallery sample")):
            w = d[key]["fusion"] or {}
            rows.append([f"{name}: {label}", ", ".join(f"{k}={v:g}" for k, v in w.items()),
                         fmt(d[key]["top1"]), fmt(d[key]["mAP"])])
    out = [f"Gallery {r['setup']['n_gallery']}, {r['setup']['eval_queries']} evaluation queries (another "
           f"{r['setup']['serving_fit_queries']} embedded by both encoders fit the serving parameters); mAP on "
           f"{r['setup']['n_query_mAP']} queries. Day one (nothing backfilled):\n",
           md_table(["setting", "fusion weights", "top-1", "mAP"], rows)]
    auc_rows = [[k, f"{v:.4f}"] for k, v in r["auc_top1"].items()]
    out += ["\nArea under the top-1 backfill curve:\n", md_table(["order / score", "AUC top-1"], auc_rows)]
    oc = r["old_client"]
    keys = list(oc)
    oc_rows = [[f"{d['p']:g}", fmt(oo["top1"])] + [fmt(oc[k][j]["top1"]) for k in keys]
               for j, d in enumerate(oc[keys[0]])]
    out += ["\nOld client (v1 queries, gallery backfilled in random order with `drop_old`), top-1; "
            "the query map v1 -> oca is the one `fit_serving`/`calibrate` stored; the retained-pairs columns "
            "backfill with `keep_pairs`:\n",
            md_table(["p", "old/old"] + keys, oc_rows)]
    map_rows = [[k, str(f.get("stored")), f"{(f.get('mapped') or {}).get('MRR', float('nan')):.4f}",
                 f"{(f.get('projection') or {}).get('MRR', float('nan')):.4f}",
                 f"{(f.get('mapped') or {}).get('R@1', float('nan')):.4f}",
                 f"{(f.get('projection') or {}).get('R@1', float('nan')):.4f}", str(f.get("reason"))]
                for k, f in (r.get("old_client_query_map") or {}).items() if f]
    ret = r.get("old_client_retained") or []
    if ret:
        out += ["\nRetained pairs of the `keep_pairs` curves (the neighbour map's `k` as its gate chose it at "
                "each point; None: not served):\n",
                md_table(["p", "pairs retained", "v1 vectors stored", "k", "MRR neighbours", "MRR baseline"],
                         [[f"{d['p']:g}", str(d["pairs"]), str(d["v1_vectors"]), str(d["k"]),
                           f"{(d.get('fit') or {}).get('neighbours_MRR', float('nan')):.4f}",
                           f"{(d.get('fit') or {}).get('baseline_MRR', float('nan')):.4f}"] for d in ret])]
    if map_rows:
        out += ["\nQuery map fits (held-out pairs: each old vector must rank its own new vector first):\n",
                md_table(["fit", "stored", "MRR mapped", "MRR projection", "R@1 mapped", "R@1 projection", "reason"],
                         map_rows)]
    goal_rows = [[k, str(v)] for k, v in r["goals"].items()]
    out += ["\nGoals:\n", md_table(["goal", "result"], goal_rows), f"\n![serving]({r['plot']})\n"]
    return "".join(out)
