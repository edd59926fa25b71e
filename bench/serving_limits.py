"""Why two targets of scenario 7 are missed: what a calibration and an old client's query map can reach.

Scenario 7 (``bench/serving.py``) misses two targets of migration-time serving on Fashion-MNIST:
the random-order backfill AUC under ``calibrated`` (below ``pad``'s) and the old-client curve
(v1 queries on a gallery backfilled with ``drop_old``, more than 0.5 points below old/old at
p = 1). This study measures, on the same cached models and evaluation queries, how far each
family of fixes can go, so the figures behind "out of reach" are reproducible:

1. **Every fixed merge rule.** At top-1 a calibrated merge of a mixed gallery only decides, per
   query, between the best backfilled item (new/new score ``s_n``) and the best not-yet-backfilled
   one (new/old score ``s_o``): with positive affine calibrations it picks the new one when
   ``s_n > r * s_o + c``. A grid over ``(r, c)`` gives every such rule's mean top-1 over the
   backfill in random and in uncertainty order: the frontier says what no fixed calibration can
   do in both.
2. **Calibrations refit at each backfill point** (as ``Index.calibrate`` does), by what they are
   fit on: the shipped fit (neighbours both models agree on, among backfilled items); label
   relevance with the backfilled items as queries and each score fit on the population it serves
   (new/new on backfilled items, new/old on the others); the same with queries drawn at random
   from the whole gallery (new vectors the backfilled items alone do not give: what
   ``Index.calibrate(reference=...)`` is handed); and the old model's neighbourhoods with those
   random queries (no labels).
3. **Old-client query maps** at p = 1 (every item holds only its new vector): the v1 query mapped
   into oca by least squares, by the mean of its k nearest pairs' new vectors (a k-NN map: it
   needs the pairs' old vectors kept), and by a two-hidden-layer MLP trained on the pairs to
   reproduce that k-NN map (the pairs' targets are the mean new vector of each pair's 5 nearest
   pairs in old space), against how many pairs each map is fit on.

Top-1 is over the first 3,000 of scenario 7's evaluation queries; mean top-1 over the backfill is
the mean over p = 0.1, ..., 0.9 (parts 1 and 2). Writes ``bench/results/serving-limits.json`` /
``.md`` / ``.png``; ``python -m bench.make_docs`` shows them under scenario 7.

Run: ``.venv/bin/python -m bench.serving_limits`` (about 16 min here; the models come from the
benchmark's cache, trained by ``bench.run fmnist`` / ``serving`` when absent).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import numpy as np

from compatindex.core.calibration import _logistic, relevance

from .backfill import uncertainty_order
from .common import RESULTS, Timer, command_line, log, machine, md_table, png_name, write_result
from .fmnist import D_OLD, DELTA, fresh_index, gallery_prototypes, load_data, setup, train_model

N_EVAL = 3000
PS_GRID = tuple(round(0.1 * i, 1) for i in range(1, 10))
PS_REFIT = (0.1, 0.3, 0.5, 0.7, 0.9)
SAMPLE = 2000  # what `Index.calibrate` draws by default


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _fit(S: np.ndarray, R: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """The shipped estimator (``core.calibration``'s logistic regression of relevance on the score)."""
    m = np.ones_like(R, dtype=bool) if mask is None else mask
    a, b, ok = _logistic(S[m].astype(np.float64), R[m].astype(np.float64))
    return (a, b) if ok and np.isfinite(a) and a > 1e-9 else (1.0, 0.0)


def _top_m(S: np.ndarray, m: int) -> np.ndarray:
    top = np.argpartition(-S, m - 1, axis=1)[:, :m]
    R = np.zeros(S.shape, dtype=bool)
    R[np.repeat(np.arange(len(S)), m), top.ravel()] = True
    return R


def run() -> dict[str, Any]:
    s = setup(False)
    T = Timer()
    data = load_data(s)
    yg, yq_all = data["yg"], data["yq"]
    ng = len(yg)
    qperm = np.random.default_rng(s.seed + 12).permutation(len(yq_all))
    eval_q = np.sort(qperm[2000:])[:N_EVAL]  # scenario 7's evaluation queries (the first 3,000)
    yq = yq_all[eval_q]
    old = train_model("old", s, data, method="independent", classes=5, d_out=D_OLD, epochs=s.epochs_old)
    ix = fresh_index("serving-limits", s)
    ix.create_version("v1", dim=D_OLD)
    ix.add(np.arange(ng), old["gallery"], labels=yg)
    P = gallery_prototypes(ix, "v1", 10)
    ix.close()
    oca = train_model("oca", s, data, method="oca", classes=10, d_out=D_OLD + DELTA, d_parent=D_OLD, prototypes=P)
    Go, Gn = old["gallery"].astype(np.float32), oca["gallery"].astype(np.float32)
    Q, Qo = oca["query"][eval_q].astype(np.float32), old["query"][eval_q].astype(np.float32)
    S_nn = Q @ Gn.T                          # new/new
    S_no = Q[:, :D_OLD] @ Go.T               # new/old, pad (the prefix as it is)
    S_nr = _unit(Q[:, :D_OLD]) @ Go.T        # new/old, renorm
    orders = {"random": np.random.default_rng(s.seed + 2).permutation(ng),
              "uncertainty": uncertainty_order(Go, yg, P)}
    masks = {(o, p): np.isin(np.arange(ng), order[: int(round(p * ng))])
             for o, order in orders.items() for p in sorted({*PS_GRID, *PS_REFIT})}

    def top1(o: str, p: float, a1: float, b1: float, a2: float, b2: float, S_old: np.ndarray = S_no) -> float:
        m = masks[o, p]
        best_n = np.where(m[None, :], a1 * S_nn + b1, -np.inf)
        best_o = np.where(m[None, :], -np.inf, a2 * S_old + b2)
        jn, jo = best_n.argmax(1), best_o.argmax(1)
        pick = best_n[np.arange(len(Q)), jn] > best_o[np.arange(len(Q)), jo]
        return float(100 * np.mean(np.where(pick, yg[jn], yg[jo]) == yq))

    # 1. every fixed rule s_n > r s_o + c, from each query's best new and best old candidate
    log("serving limits: the fixed-rule frontier")
    cand: dict[tuple[str, float], tuple[np.ndarray, ...]] = {}
    for o in orders:
        for p in PS_GRID:
            m = masks[o, p]
            A = np.where(m[None, :], S_nn, -np.inf)
            jn = A.argmax(1)
            bn = A[np.arange(len(Q)), jn]
            A = np.where(m[None, :], -np.inf, S_no)
            jo = A.argmax(1)
            bo = A[np.arange(len(Q)), jo]
            cand[o, p] = (bn, bo, yg[jn] == yq, yg[jo] == yq)
    rules = []
    for r in np.round(np.arange(0.6, 1.6001, 0.05), 2):
        for c in np.round(np.arange(-0.6, 0.6001, 0.02), 2):
            means = [float(np.mean([100 * np.mean(np.where(bn > r * bo + c, cn, co))
                                    for bn, bo, cn, co in (cand[o, p] for p in PS_GRID)])) for o in orders]
            rules.append([float(r), float(c), *means])
    R_ = np.asarray(rules)
    pad = R_[(R_[:, 0] == 1.0) & (R_[:, 1] == 0.0)][0].tolist()
    renorm = {o: float(np.mean([top1(o, p, 1, 0, 1, 0, S_nr) for p in PS_GRID])) for o in orders}
    frontier = []
    for t in (pad[2], pad[2] - 0.1, pad[2] - 0.2, pad[2] - 0.3, pad[2] - 0.5, pad[2] - 1.0):
        sel = R_[R_[:, 2] >= t - 1e-9]
        best = sel[np.argmax(sel[:, 3])]
        frontier.append({"random_at_least": round(float(t), 2), "r": best[0], "c": best[1],
                         "random": float(best[2]), "uncertainty": float(best[3])})

    # 2. calibrations refit at each backfill point
    log("serving limits: refit calibrations")
    rng0 = np.random.default_rng(0)
    fits: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[tuple[float, float], tuple[float, float]]]] = {}

    def shipped(m: np.ndarray, B: np.ndarray, NB: np.ndarray) -> Any:
        Zb, Gb = Gn[B].astype(np.float64), Go[B].astype(np.float64)
        R = relevance(Gb, Zb, None, neighbours=10)  # what Index.calibrate fits on
        off = ~np.eye(len(B), dtype=bool)
        return _fit(Zb @ Zb.T, R, off), _fit(Zb[:, :D_OLD] @ Gb.T, R, off)

    def served_labels(queries: np.ndarray, B: np.ndarray, NB: np.ndarray) -> Any:
        Zq = Gn[queries]
        Rn, Ro = yg[queries][:, None] == yg[B][None, :], yg[queries][:, None] == yg[NB][None, :]
        return (_fit(Zq @ Gn[B].T, Rn, queries[:, None] != B[None, :]),
                _fit(Zq[:, :D_OLD] @ Go[NB].T, Ro, queries[:, None] != NB[None, :]))

    def unbiased_old_neighbours(queries: np.ndarray, B: np.ndarray, NB: np.ndarray, p: float) -> Any:
        nb = int(round(p * SAMPLE))
        B, NB = B[:nb], NB[: SAMPLE - nb]  # the sample in the served proportions
        U = np.concatenate([B, NB])
        So = Go[queries] @ Go[U].T
        So[queries[:, None] == U[None, :]] = -np.inf
        R = _top_m(So, 50)
        Zq = Gn[queries]
        return (_fit(Zq @ Gn[B].T, R[:, : len(B)], queries[:, None] != B[None, :]),
                _fit(Zq[:, :D_OLD] @ Go[NB].T, R[:, len(B):], queries[:, None] != NB[None, :]))

    refit: dict[str, dict[str, list[float]]] = {}
    names = {"pad": "pad (identity)",
             "shipped": "shipped: both models' neighbours, backfilled items",
             "labels_backfilled_queries": "labels, backfilled items as queries, served populations",
             "labels_unbiased_queries": "labels, random gallery items as queries, served populations "
                                        "(what `calibrate(reference=...)` fits)",
             "old_neighbours_unbiased_queries": "old model's top-50, random queries, served populations"}
    for key in names:
        refit[key] = {}
        for o in orders:
            pts = []
            for p in PS_REFIT:
                m = masks[o, p]
                rng = np.random.default_rng(0)
                B = np.sort(rng.choice(np.flatnonzero(m), min(SAMPLE, int(m.sum())), replace=False))
                NB = np.sort(rng.choice(np.flatnonzero(~m), min(SAMPLE, int((~m).sum())), replace=False))
                unb = np.sort(rng0.choice(ng, 1000, replace=False))
                if key == "pad":
                    (a1, b1), (a2, b2) = (1.0, 0.0), (1.0, 0.0)
                elif key == "shipped":
                    (a1, b1), (a2, b2) = shipped(m, B, NB)
                elif key == "labels_backfilled_queries":
                    (a1, b1), (a2, b2) = served_labels(B, B, NB)
                elif key == "labels_unbiased_queries":
                    (a1, b1), (a2, b2) = served_labels(unb, B, NB)
                else:
                    (a1, b1), (a2, b2) = unbiased_old_neighbours(unb, B, NB, p)
                pts.append(top1(o, p, a1, b1, a2, b2))
            refit[key][o] = pts
            log(f"  {key} {o}: mean {np.mean(pts):.2f} {pts}")

    # 3. old-client query maps at p = 1
    log("serving limits: old-client query maps")
    old_old = float(100 * np.mean(yg[np.argmax(Qo @ Go.T, 1)] == yq))

    def t1(q: np.ndarray) -> float:
        return float(100 * np.mean(yg[np.argmax(_unit(q) @ Gn.T, 1)] == yq))

    perm = np.random.default_rng(0).permutation(ng)
    projection = t1(np.pad(Qo, ((0, 0), (0, DELTA))))  # the algebra's: the v1 query meets each oca prefix
    maps: dict[str, dict[str, float]] = {"least squares": {}, "k-NN (5)": {}, "MLP distilled from k-NN (5)": {}}
    for n in (2000, 6000, 20000, 30000, 60000):
        X, Y = Go[perm[:n]], Gn[perm[:n]]
        if n in (2000, 6000, 30000):
            W, *_ = np.linalg.lstsq(X, Y, rcond=None)
            maps["least squares"][str(n)] = t1(Qo @ W)
        if n >= 6000:
            nn = np.argpartition(-(Qo @ X.T), 5, axis=1)[:, :5]
            maps["k-NN (5)"][str(n)] = t1(Y[nn].mean(1))
        if n in (6000, 30000):
            maps["MLP distilled from k-NN (5)"][str(n)] = t1(_distilled_map(X, Y, Qo))
        log(f"  {n} pairs: " + ", ".join(f"{k} {v[str(n)]:.1f}" for k, v in maps.items() if str(n) in v))

    res = {"scenario": "serving-limits", "command": command_line(), "machine": machine(), "queries": N_EVAL,
           "ps_grid": list(PS_GRID), "ps_refit": list(PS_REFIT), "orders": list(orders),
           "rules": rules, "pad": {"random": pad[2], "uncertainty": pad[3]}, "renorm": renorm,
           "frontier": frontier, "refit": refit, "refit_names": names,
           "old_client": {"old_old": old_old, "projection": projection, "maps": maps}}
    res["seconds"] = T()
    _plot(res)
    write_result("serving-limits", res, markdown(res), quick=False)
    return res


def _distilled_map(X: np.ndarray, Y: np.ndarray, Qo: np.ndarray, *, k: int = 5, steps: int = 4000) -> np.ndarray:
    """Train an MLP on the pairs ``(X old, Y new)`` to reproduce the k-NN map; return the mapped ``Qo``."""
    import torch

    T_ = np.zeros_like(Y)
    for s0 in range(0, len(X), 4096):
        nn = np.argpartition(-(X[s0:s0 + 4096] @ X.T), k, axis=1)[:, :k]
        T_[s0:s0 + 4096] = _unit(Y[nn].mean(1))
    torch.manual_seed(0)
    d_in, d_out = X.shape[1], Y.shape[1]
    net = torch.nn.Sequential(torch.nn.Linear(d_in, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 1024),
                              torch.nn.GELU(), torch.nn.Linear(1024, d_out))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    Xt, Tt = torch.from_numpy(X), torch.from_numpy(T_)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        b = torch.randint(0, len(X), (512,), generator=gen)
        z = torch.nn.functional.normalize(net(Xt[b]), dim=1)
        loss = (1 - (z * Tt[b]).sum(1)).mean()  # cosine to the smoothed target
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return net(torch.from_numpy(Qo)).numpy()


def _plot(r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    R_ = np.asarray(r["rules"])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(R_[:, 2], R_[:, 3], s=4, c="0.75", label="fixed rules s_n > r s_o + c")
    ax.scatter([r["pad"]["random"]], [r["pad"]["uncertainty"]], marker="s", c="k", label="pad")
    ax.scatter([r["renorm"]["random"]], [r["renorm"]["uncertainty"]], marker="D", c="tab:gray", label="renorm")
    marks = {"shipped": "o", "labels_backfilled_queries": "v", "labels_unbiased_queries": "*",
             "old_neighbours_unbiased_queries": "^"}
    for key, mk in marks.items():
        ax.scatter([np.mean(r["refit"][key]["random"])], [np.mean(r["refit"][key]["uncertainty"])], marker=mk,
                   s=70, label=r["refit_names"][key])
    lo = min(R_[:, 2].max() - 6, r["pad"]["random"] - 3)
    ax.set_xlim(lo, R_[:, 2].max() + 0.5)
    ax.set_xlabel("mean top-1 over the backfill, random order (%)")
    ax.set_ylabel("mean top-1, uncertainty order (%)")
    ax.set_title("Merging a mixed gallery: what a calibration can reach")
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(RESULTS / png_name("serving-limits", False), dpi=120)
    plt.close(fig)


def markdown(r: dict[str, Any]) -> str:
    pad, ren = r["pad"], r["renorm"]
    out = [f"**What a calibration and a query map can reach** (`{r['command']}`, {r['machine'].get('date')}, "
           f"{r['seconds'] / 60:.1f} min; top-1 on {r['queries']:,} of the evaluation queries; the mean over "
           f"the backfill is over p = {r['ps_grid'][0]}..{r['ps_grid'][-1]}). "
           "At top-1, any positive affine calibration of a mixed gallery picks, per query, the best backfilled item "
           "(new/new score s_n) over the best other one (new/old score s_o) when s_n > r s_o + c. The best such "
           "fixed rule for the uncertainty order, given how close it stays to `pad` in random order:\n"]
    rows = [[f"{f['random_at_least']:.2f}", f"{f['r']:.2f}", f"{f['c']:+.2f}", f"{f['random']:.2f}",
             f"{f['uncertainty']:.2f}"] for f in r["frontier"]]
    out.append(md_table(["random order at least", "r", "c", "random", "uncertainty"], rows))
    out.append(f"\n`pad`: random {pad['random']:.2f}, uncertainty {pad['uncertainty']:.2f}; `renorm`: random "
               f"{ren['random']:.2f}, uncertainty {ren['uncertainty']:.2f}.\n\nCalibrations refit at each point "
               f"(p = {', '.join(str(p) for p in r['ps_refit'])}), top-1 per point and their mean:\n")
    rows = []
    for key, name in r["refit_names"].items():
        for o in r["orders"]:
            pts = r["refit"][key][o]
            rows.append([name, o, " / ".join(f"{x:.1f}" for x in pts), f"{np.mean(pts):.2f}"])
    out.append(md_table(["calibration", "order", "top-1 per p", "mean"], rows))
    oc = r["old_client"]
    ns = sorted({int(n) for v in oc["maps"].values() for n in v})
    rows = [[k] + [f"{v[str(n)]:.1f}" if str(n) in v else "–" for n in ns] for k, v in oc["maps"].items()]
    out.append(f"\nOld client at p = 1 (every item holds only its new vector), top-1 of v1 queries by how many "
               f"pairs the query map is fit on; old/old {oc['old_old']:.1f} (the target: at least "
               f"{oc['old_old'] - 0.5:.1f}), the algebra's projection without a map {oc['projection']:.1f}:\n")
    out.append(md_table(["query map"] + [f"{n:,} pairs" for n in ns], rows))
    out.append(f"\n![serving limits](../bench/results/{png_name('serving-limits', False)})\n")
    out.append("\n" + reading(r))
    return "\n".join(out)


def reading(r: dict[str, Any]) -> str:
    """What the figures say, computed from them."""
    f0, pad, ren = r["frontier"][0], r["pad"], r["renorm"]
    mean = {k: {o: float(np.mean(v[o])) for o in r["orders"]} for k, v in r["refit"].items()}
    orc, shp = mean["labels_unbiased_queries"], mean["shipped"]
    oc = r["old_client"]
    need = oc["old_old"] - 0.5
    first = {k: min((int(n) for n, x in v.items() if x >= need), default=None) for k, v in oc["maps"].items()}
    reach = "; ".join(f"{k}: {'never, up to ' + format(max(int(n) for n in v), ',') + ' pairs' if first[k] is None else 'from ' + format(first[k], ',') + ' pairs'}"
                      for k, v in oc["maps"].items())
    return (f"**Reading it.** No fixed rule keeps `pad`'s random-order top-1 ({pad['random']:.2f}) and beats "
            f"`renorm` in uncertainty order: the best that keeps it reaches {f0['uncertainty']:.2f} there, against "
            f"`renorm`'s {ren['uncertainty']:.2f}. A calibration must therefore tell the orders apart from what it is "
            f"fit on. The shipped fit does, partly ({shp['random']:.2f} random, {shp['uncertainty']:.2f} "
            f"uncertainty). Label relevance with random gallery items as queries, each score fit on the population "
            f"it serves, does both ({orc['random']:.2f} and {orc['uncertainty']:.2f}), but it needs what the "
            "backfilled items alone do not give: new vectors of items drawn from the whole gallery (in uncertainty "
            "order the backfilled items are the hard ones) and labels. `Index.calibrate(reference=...)` takes "
            "those (a random sample's new vectors; the stored labels), and scenario 7 draws its curve beside the "
            "others; with the backfilled items as "
            f"queries the same fit gives {mean['labels_backfilled_queries']['uncertainty']:.2f} in uncertainty "
            "order, and without labels (the old model's neighbourhoods) "
            f"{mean['old_neighbours_unbiased_queries']['random']:.2f} in random order. For old clients, the query "
            f"map reaches old/old minus 0.5 ({need:.1f}) as follows: {reach}. The maps that reach it need tens of "
            "thousands of pairs with their old vectors, which a `drop_old` backfill deletes as it goes, unless "
            "it keeps a sample of them (`keep_pairs`): scenario 7's retained-pairs curves serve old clients the "
            "k-nearest-pairs map of that sample.\n")


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    print(markdown(run()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
