"""Parts of scenario 4 (text) for issues 11 and 12, run by :func:`bench.text.run`.

**In-domain protocol (issue 12).** What users do: re-embed a fraction of the gallery with the new
model. 1%, 2%, 5% and 10% of the BBC articles (nested, a fixed draw) have their *lead* embedded by
both models (e5 passage vectors, H; MiniLM vectors, G): in-domain pairs, used alone and added to
the WordNet gloss pairs, beside WordNet alone. Fitted on each pair set: the trainer as a user runs
it (``fit_upgrade`` with default options; ``upgrade()`` on the index for in-domain pairs alone,
whose pairs are stored items) and its closed forms (isometric, affine), plus two baselines outside
the trainer: orthogonal Procrustes (``scipy.linalg.orthogonal_procrustes``) and Drift-Adapter's
residual MLP adapter ``x + MLP(x)`` (torch, cosine loss, early stop on 20% of the pairs). Every fit
is registered as a version of an index holding the MiniLM gallery and searched with raw e5
*headline* queries through ``Index.search``. The evaluation queries are the headlines of the
articles none of whose copies had its lead re-embedded at the largest fraction (the same queries
for every fraction), so no evaluation text is fitted on.

**Migration-time serving (issue 11).** Day one, nothing backfilled: the query is embedded by both
models and searched as ``{"v2": e5 vectors, "v1": MiniLM vectors}`` with ``raw=True`` and
``score="calibrated"``; the fusion weights and calibration are learned by ``Index.fit_serving``
from pairs only (WordNet glosses, the re-embedded leads, or both; never BBC headlines), side by
side with old/old (MiniLM headlines), v2 queries alone on the old gallery, and the full re-embed
(e5 on e5).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .common import RESULTS, Timer, fmt, log, md_table, png_name

FRACTIONS = (0.01, 0.02, 0.05, 0.1)
TRAINER_METHODS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("trainer auto", "auto", {}), ("trainer isometric", "isometric", {}),
    ("trainer isometric+192", "isometric", {"extra_dims": 192}), ("trainer affine", "affine", {}),
    ("trainer mlp", "mlp", {}))
"""The trainer's default (``auto``), its closed forms (isometric with the default 48 extra dims and
with 192, the best of the WordNet sweep; affine) and its affine + residual-MLP head."""
RANK_METHOD: tuple[str, str, dict[str, Any]] = (
    "trainer linear + gallery rank", "oca",
    {"oca_head": "linear", "extra_dims": 192, "w_rank": 5.0, "steps": 2000, "max_seconds": 300.0, "patience": None})
"""The trainer's torch head with the gallery ranking term (``TrainConfig.w_rank``; docs/trainer.md,
"Ranking the stored gallery"): a linear head from the isometric+192 start that learns to rank the
stored gallery as each pair's old vector does, kept at its best on the selection split's ranking.
Two to four minutes a fit on this machine, so it runs on the pair sets of :func:`rank_pair_sets` only."""


def rank_pair_sets() -> set[str]:
    """The pair sets :data:`RANK_METHOD` is fitted on: WordNet alone, and WordNet plus each set of the
    largest fraction (the goal's)."""
    f = max(FRACTIONS)
    return {"wordnet"} | {pair_set_name(f, True, sent, spans) for sent, spans in
                          ((False, False), (True, False), (True, True))}
TRAINER_MIN_PAIRS = 30  # fit_upgrade refuses fewer


# -- metrics --------------------------------------------------------------------------------------
def trec_metrics(ids: np.ndarray, rel: list[set[int]], *, k: int = 10) -> dict[str, float]:
    """R@1, R@10 (success: any relevant copy in the top k) and MRR by trec_eval (``pytrec_eval``),
    cross-checked against :mod:`compatindex.evaluation` and the bench's own hit counting."""
    from compatindex import evaluation as ev

    ours = {"recall@1": hit_at(ids, rel, 1), "recall@10": hit_at(ids, rel, 10), "mrr": ev.mrr(ids[:, :k], rel)}
    try:
        import pytrec_eval
    except ImportError:  # a dev dependency; the bench then reports its own figures
        return {**ours, "library": "compatindex.evaluation (pytrec_eval not installed)"}
    run = {f"q{i}": {f"d{int(d)}": float(k - r) for r, d in enumerate(ids[i, :k]) if d >= 0} for i in range(len(ids))}
    qrels = {f"q{i}": {f"d{int(d)}": 1 for d in rel[i]} for i in range(len(ids))}
    res = pytrec_eval.RelevanceEvaluator(qrels, {"success.1,10", "recip_rank"}).evaluate(run)
    lib = {"recall@1": float(np.mean([res[q]["success_1"] for q in qrels])),
           "recall@10": float(np.mean([res[q]["success_10"] for q in qrels])),
           "mrr": float(np.mean([res[q]["recip_rank"] for q in qrels]))}
    for m in lib:
        if abs(lib[m] - ours[m]) > 1e-9:
            raise AssertionError(f"{m}: trec_eval {lib[m]} vs compatindex.evaluation/bench {ours[m]}")
    return {**lib, "library": "pytrec_eval (trec_eval success@1/10, recip_rank), cross-checked"}


def hit_at(ids: np.ndarray, rel: list[set[int]], k: int) -> float:
    """Fraction of queries with a relevant item (any copy) in the top k."""
    return float(np.mean([bool(rel[i].intersection(ids[i, :k].tolist())) for i in range(len(rel))]))


def _search(index: Any, queries: Any, k: int, *, version: str | None, raw: bool, score: str = "renorm") -> np.ndarray:
    out = []
    multi = isinstance(queries, dict)
    n = len(next(iter(queries.values()))) if multi else len(queries)
    for s in range(0, n, 2048):
        if multi:
            r = index.search({kk: v[s:s + 2048] for kk, v in queries.items()}, k, raw=raw, score=score)
        else:
            r = index.search(queries[s:s + 2048], k, version=version, raw=raw, score=score)
        out.append(np.array([[(-1 if x is None else x) for x in row] for row in r.ids], dtype=np.int64))
    return np.vstack(out)


def _search_fused(index: Any, q_new: np.ndarray, q_old: np.ndarray, fusion: dict[str, float]) -> np.ndarray:
    r = index.search({"v2": q_new, "v1": q_old}, 10, raw=True, score="calibrated", fusion=fusion)
    return np.array([[(-1 if x is None else x) for x in row] for row in r.ids], dtype=np.int64)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# -- baselines outside the trainer ------------------------------------------------------------------
def procrustes_scipy(H: np.ndarray, G: np.ndarray, *, centre: bool = False) -> dict[str, Any]:
    """Orthogonal Procrustes in closed form: ``R = argmin ||unit(H) R - G||`` over orthogonal R.

    ``centre``: subtract the mean of the (unit) new vectors and of the old ones first, and renormalize
    (the new side's mean is part of the stored head; the old side's shifts every gallery score of a
    query by the same amount, so the gallery is searched as stored).
    """
    from scipy.linalg import orthogonal_procrustes

    Hu, Gd = _unit(H), np.asarray(G, np.float64)
    if not centre:
        R, _ = orthogonal_procrustes(Hu, Gd)
        return {"extension": np.ascontiguousarray(R.T, np.float32), "head": {"kind": "normalize"},
                "dim": int(G.shape[1]), "raw_dim": int(H.shape[1])}
    mu = Hu.mean(0)
    R, _ = orthogonal_procrustes(_unit(Hu - mu), _unit(Gd - Gd.mean(0)))
    d = H.shape[1]
    shift = {"kind": "linear", "in_dim": d, "out_dim": d, "W": np.eye(d, dtype=np.float32), "b": (-mu).astype(np.float32)}
    return {"extension": np.ascontiguousarray(R.T, np.float32),
            "head": {"kind": "chain", "steps": [{"kind": "normalize"}, shift, {"kind": "normalize"}]},
            "dim": int(G.shape[1]), "raw_dim": int(d)}


def residual_mlp(H: np.ndarray, G: np.ndarray, *, hidden: int = 256, seed: int = 0, lr: float = 1e-3,
                 weight_decay: float = 1e-5, batch: int = 128, max_epochs: int = 300, patience: int = 15,
                 max_seconds: float = 40.0) -> dict[str, Any]:
    """Drift-Adapter's residual MLP adapter ``x + MLP(x)`` on unit-normalized new vectors.

    One hidden layer (``hidden``, GELU), trained with Adam on the cosine loss ``1 - cos(f(x), g)``;
    early stop on 20% of the pairs (patience in epochs), best state kept. Stored as a head
    ``normalize -> mlp(residual) -> normalize`` (applied by ``Index.search(raw=True)``).
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    X = torch.as_tensor(_unit(H), dtype=torch.float32)
    Y = torch.as_tensor(_unit(G), dtype=torch.float32)
    n = len(X)
    perm = np.random.default_rng(seed).permutation(n)
    n_va = max(1, int(round(0.2 * n)))
    va, tr = perm[:n_va], perm[n_va:]
    d = X.shape[1]
    fc1, fc2 = nn.Linear(d, hidden), nn.Linear(hidden, Y.shape[1])
    model = nn.Sequential(fc1, nn.GELU(), fc2)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)

    def loss_of(idx: np.ndarray) -> torch.Tensor:
        x = X[idx]
        return (1 - nn.functional.cosine_similarity(x + model(x), Y[idx], dim=1)).mean()

    best, best_state, bad, epochs = float("inf"), None, 0, 0
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed + 1)
    for epochs in range(1, max_epochs + 1):
        model.train()
        order = rng.permutation(tr)
        for s in range(0, len(order), batch):
            opt.zero_grad()
            loss_of(order[s:s + batch]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            v = float(loss_of(va))
        if v < best - 1e-5:
            best, bad = v, 0
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        else:
            bad += 1
        if bad >= patience or time.perf_counter() - t0 > max_seconds:
            break
    assert best_state is not None
    model.load_state_dict(best_state)

    def np_(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float32)

    mlp = {"kind": "mlp", "in_dim": d, "out_dim": int(Y.shape[1]), "activation": "gelu", "residual": True,
           "layers": [{"W": np_(fc1.weight), "b": np_(fc1.bias)}, {"W": np_(fc2.weight), "b": np_(fc2.bias)}]}
    return {"extension": None, "head": {"kind": "chain", "steps": [{"kind": "normalize"}, mlp, {"kind": "normalize"}]},
            "dim": int(Y.shape[1]), "raw_dim": int(d),
            "info": {"hidden": hidden, "epochs": epochs, "val_cosine_loss": best, "n_train": len(tr), "n_val": len(va)}}


# -- the in-domain protocol -------------------------------------------------------------------------
def _register(index: Any, name: str, fit: dict[str, Any], report: dict[str, Any] | None = None) -> None:
    index.register_version(name, "v1", fit["dim"], extension=fit["extension"], head=fit["head"],
                           raw_dim=fit["raw_dim"], report=report or {})


def setup_queries(n_art: int, rel: list[set[int]], seed: int = 7) -> dict[str, Any]:
    """The re-embedding order (nested fractions) and the evaluation queries (no copy re-embedded)."""
    order = np.random.default_rng(seed).permutation(n_art)
    top = set(order[: int(round(max(FRACTIONS) * n_art))].tolist())
    eval_q = np.array([i for i in range(n_art) if not (rel[i] | {i}) & top], dtype=np.int64)
    return {"order": order, "eval_q": eval_q}


def indomain(ctx: dict[str, Any], *, quick: bool) -> dict[str, Any]:
    """Issue 12: every pair set x every method, new/old R@10 on the evaluation headlines."""
    import compatindex
    from compatindex.trainer import TrainConfig, fit_upgrade, pairs_from_arrays, upgrade

    T = Timer()
    G, Pn, Qn = ctx["G_lead"], ctx["P_new"], ctx["Q_new"]
    Wn, Wo = ctx["W_new"], ctx["W_old"]
    rel, n_art = ctx["rel"], len(ctx["G_lead"])
    order, eval_q = ctx["order"], ctx["eval_q"]
    rel_e = [rel[i] for i in eval_q]
    ids = list(range(n_art))
    def gallery_index() -> Any:  # one per pair set: an index holds at most 64 versions
        ix = compatindex.open(":memory:")
        ix.create_version("v1", dim=384)
        ix.add(ids, G, version="v1", raw=False)
        return ix

    index = gallery_index()
    ref = {"old_old": trec_metrics(_search(index, ctx["Q_old"][eval_q], 10, version="v1", raw=False), rel_e)}
    index.close()
    ix2 = compatindex.open(":memory:")
    ix2.create_version("e5", dim=384)
    ix2.add(ids, Pn, version="e5")
    ref["new_new_e5"] = trec_metrics(_search(ix2, Qn[eval_q], 10, version="e5", raw=False), rel_e)
    ix2.close()
    steps = 50 if quick else 200
    top_articles = np.sort(order[: int(round(max(FRACTIONS) * n_art))])
    S_new, S_old, s_owner = sentence_vectors(ctx, top_articles)
    X_new, X_old, x_owner = span_vectors(ctx, top_articles)
    pair_sets: list[tuple[str, float, bool, bool, bool]] = [("wordnet", 0.0, True, False, False)]
    for f in FRACTIONS:
        for sent, spans in ((False, False), (True, False)) + (((True, True),) if f == max(FRACTIONS) else ()):
            pair_sets += [(pair_set_name(f, wn, sent, spans), f, wn, sent, spans) for wn in (False, True)]
    rows: dict[str, Any] = {}
    with_rank = rank_pair_sets()
    for ps_name, f, with_wn, sent, spans in pair_sets:
        index = gallery_index()
        m = int(round(f * n_art))
        sel = np.sort(order[:m])
        own = np.isin(s_owner, sel) if sent else np.zeros(len(s_owner), bool)
        own_x = np.isin(x_owner, sel) if spans else np.zeros(len(x_owner), bool)
        H = np.vstack(([Wn] if with_wn else []) + [Pn[sel], S_new[own], X_new[own_x]])
        Gp = np.vstack(([Wo] if with_wn else []) + [G[sel], S_old[own], X_old[own_x]])
        rest = np.setdiff1d(np.arange(n_art), sel)
        out: dict[str, Any] = {"fraction": f, "wordnet": with_wn, "sentences": sent, "spans": spans,
                               "n_in_domain": int(m), "n_sentences": int(own.sum()), "n_spans": int(own_x.sum()),
                               "n_pairs": int(len(H)), "methods": {}}
        fits: dict[str, tuple[dict[str, Any] | None, dict[str, Any]]] = {}
        t = Timer()
        if len(H) >= TRAINER_MIN_PAIRS:
            data = pairs_from_arrays(H, Gp, gallery=G[rest])
            for label, meth, kw in TRAINER_METHODS + ((RANK_METHOD,) if ps_name in with_rank else ()):
                t = Timer()
                kw = {"steps": steps, **kw}
                if quick:  # a smoke run: every head trains briefly
                    kw["steps"], kw["max_seconds"] = min(kw["steps"], steps), 20.0
                fit, rep = fit_upgrade(data, d_parent=384, config=TrainConfig(method=meth, **kw))
                fl = (fit or {}).get("info", {}).get("final_loss") or {}
                fits[label] = (fit, {"gate_passed": rep["gate"]["passed"], "chosen": rep.get("chosen"),
                                     "ridge": rep["resolved"]["ridge"], "seconds": t(),
                                     **({"best_step": fl.get("best_step"), "steps_run": fl.get("steps_run")}
                                        if "w_rank" in kw else {})})
        else:
            for label, _, _ in TRAINER_METHODS:
                fits[label] = (None, {"refused": f"fewer than {TRAINER_MIN_PAIRS} pairs"})
        t = Timer()
        fits["procrustes (scipy)"] = (procrustes_scipy(H, Gp), {"seconds": t()})
        t = Timer()
        fits["procrustes, centred (scipy)"] = (procrustes_scipy(H, Gp, centre=True), {"seconds": t()})
        t = Timer()
        rm = residual_mlp(H, Gp)
        fits["residual MLP"] = (rm, {"seconds": t(), **rm["info"]})
        for meth, (fit, info) in fits.items():
            if fit is None:
                out["methods"][meth] = {**info, "new_old": None}
                continue
            vname = f"v{len(index.versions()) + 1}"
            _register(index, vname, fit, {"pairs": ps_name, "method": meth})
            hits = _search(index, Qn[eval_q], 10, version=vname, raw=True)
            out["methods"][meth] = {**info, "dim": fit["dim"], "new_old": trec_metrics(hits, rel_e)}
        if not with_wn and not sent and m >= TRAINER_MIN_PAIRS and f == max(FRACTIONS):
            # the user path: upgrade() on the index itself, pairs = the re-embedded stored items
            t = Timer()
            v, rep = upgrade(index, Pn[sel], sel.tolist(), name=f"v{len(index.versions()) + 1}", parent="v1", force=True,
                             use_labels=False, steps=steps)
            hits = _search(index, Qn[eval_q], 10, version=v.name, raw=True)
            out["methods"]["trainer upgrade() on the index"] = {
                "gate_passed": rep["gate"]["passed"], "chosen": rep.get("chosen"), "seconds": t(),
                "dim": v.dim, "new_old": trec_metrics(hits, rel_e)}
        index.close()
        rows[ps_name] = out
        log(f"text in-domain {ps_name}: " + ", ".join(
            f"{k} {v['new_old']['recall@10']:.3f}" for k, v in out["methods"].items() if v.get("new_old")))
    e5 = ref["new_new_e5"]["recall@10"]
    wn_best = max(v["new_old"]["recall@10"] for v in rows["wordnet"]["methods"].values() if v.get("new_old"))

    def goal_of(key: str) -> dict[str, Any]:
        cand = {k: v["new_old"]["recall@10"] for k, v in rows[key]["methods"].items() if v.get("new_old")}
        best = max(cand, key=lambda k: cand[k])
        trainer_default = rows[key]["methods"]["trainer auto"]["new_old"]["recall@10"]
        return {"pair_set": key, "best_method": best, "best_new_old_recall@10": cand[best], "e5_recall@10": e5,
                "share_of_e5": cand[best] / e5, "met": bool(cand[best] >= 0.9 * e5),
                "trainer_default_share_of_e5": trainer_default / e5,
                "trainer_default_met": bool(trainer_default >= 0.9 * e5),
                "wordnet_alone_best_share_of_e5": wn_best / e5}

    goal = goal_of(pair_set_name(max(FRACTIONS), True, False))
    goal["with_sentences"] = goal_of(pair_set_name(max(FRACTIONS), True, True))
    goal["with_spans"] = goal_of(pair_set_name(max(FRACTIONS), True, True, True))
    goal["met"] = bool(goal["met"] or goal["with_sentences"]["met"] or goal["with_spans"]["met"])
    return {"reference": ref, "n_eval_queries": int(len(eval_q)), "fractions": list(FRACTIONS),
            "n_sentences_top": int(len(s_owner)), "n_spans_top": int(len(x_owner)),
            "pair_sets": rows, "goal_10pct_plus_wordnet_ge_90pct_of_e5": goal,
            "extended": extended(ctx, gallery_index), "seconds": T()}


def pair_set_name(fraction: float, wordnet: bool, sentences: bool, spans: bool = False) -> str:
    """The name of an in-domain pair set, e.g. ``wordnet + in-domain 10% + sentences``."""
    return (f"{'wordnet + ' if wordnet else ''}in-domain {100 * fraction:g}%{' + sentences' if sentences else ''}"
            f"{' + spans' if spans else ''}")


def sentence_vectors(ctx: dict[str, Any], articles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """More in-domain pairs from the same re-embedded articles: every sentence of each article
    (headline and body) embedded by both models, e5 in query mode since the new model's queries
    are what search the old gallery. ``(S_new, S_old, owner)``: (n, 384) twice and the article (n,)."""
    from .textdata import article_sentences, embed_cached

    texts, owner = article_sentences(ctx["paras"], articles)
    return embed_cached("e5q", "bbc-sent", texts), embed_cached("minilm", "bbc-sent", texts), owner


def span_vectors(ctx: dict[str, Any], articles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Headline-length views of the same sentences (:func:`bench.textdata.sentence_spans`: 9-word
    windows every 5 words) embedded by both models, e5 in query mode: short texts like the queries
    the new model will send. ``(X_new, X_old, owner)``: (n, 384) twice and the article (n,)."""
    from .textdata import article_sentences, embed_cached, sentence_spans

    texts, owner = sentence_spans(*article_sentences(ctx["paras"], articles))
    return embed_cached("e5q", "bbc-span", texts), embed_cached("minilm", "bbc-span", texts), owner


EXTENDED = (0.1, 0.2, 0.3, 0.5)


def extended(ctx: dict[str, Any], gallery_index: Any) -> dict[str, Any]:
    """Larger re-embedded fractions (same nested draw), the trainer's closed forms only, evaluated on
    the headlines of the articles outside the largest (50%) fraction, with the e5 re-embed on them."""
    from compatindex.trainer import TrainConfig, fit_upgrade, pairs_from_arrays

    G, Pn, Qn, rel, order = ctx["G_lead"], ctx["P_new"], ctx["Q_new"], ctx["rel"], ctx["order"]
    n_art = len(G)
    top = set(order[: int(round(max(EXTENDED) * n_art))].tolist())
    eq = np.array([i for i in range(n_art) if not (rel[i] | {i}) & top], dtype=np.int64)
    rel_e = [rel[i] for i in eq]
    import compatindex

    ix2 = compatindex.open(":memory:")
    ix2.create_version("e5", dim=384)
    ix2.add(list(range(n_art)), Pn, version="e5", raw=False)
    e5 = trec_metrics(_search(ix2, Qn[eq], 10, version="e5", raw=False), rel_e)
    ix2.close()
    rows: dict[str, Any] = {}
    for f in EXTENDED:
        sel = np.sort(order[: int(round(f * n_art))])
        for with_wn in (False, True):
            if len(sel) + (len(ctx["W_new"]) if with_wn else 0) < TRAINER_MIN_PAIRS:
                continue
            H = np.vstack(([ctx["W_new"]] if with_wn else []) + [Pn[sel]])
            Gp = np.vstack(([ctx["W_old"]] if with_wn else []) + [G[sel]])
            data = pairs_from_arrays(H, Gp, gallery=G[np.setdiff1d(np.arange(n_art), sel)])
            index = gallery_index()
            res: dict[str, Any] = {}
            for label, meth, kw in (("trainer isometric+192", "isometric", {"extra_dims": 192}),
                                    ("trainer affine", "affine", {})):
                fit, _ = fit_upgrade(data, d_parent=384, config=TrainConfig(method=meth, **kw))
                _register(index, label.replace(" ", "-").replace("+", "p"), fit)
                hits = _search(index, Qn[eq], 10, version=label.replace(" ", "-").replace("+", "p"), raw=True)
                res[label] = trec_metrics(hits, rel_e)
            index.close()
            name = pair_set_name(f, with_wn, False)
            rows[name] = {"fraction": f, "wordnet": with_wn, "n_in_domain": int(len(sel)), "new_old": res}
            log(f"text extended {name}: " + ", ".join(f"{k} {v['recall@10']:.3f}" for k, v in res.items()))
    best = max((v["recall@10"], k, m) for k, r in rows.items() for m, v in r["new_old"].items())
    return {"n_eval_queries": int(len(eq)), "new_new_e5": e5, "pair_sets": rows,
            "best": {"new_old_recall@10": best[0], "pair_set": best[1], "method": best[2],
                     "share_of_e5": best[0] / e5["recall@10"]}}


# -- migration-time serving ---------------------------------------------------------------------------
def serving(ctx: dict[str, Any], *, quick: bool) -> dict[str, Any]:
    """Issue 11: day-one fused search against old/old, single-version search and the full re-embed."""
    import compatindex
    from compatindex.trainer import TrainConfig, fit_upgrade, pairs_from_arrays

    T = Timer()
    G, Pn, Qn, Qo = ctx["G_lead"], ctx["P_new"], ctx["Q_new"], ctx["Q_old"]
    Wn, Wo = ctx["W_new"], ctx["W_old"]
    rel, n_art = ctx["rel"], len(G)
    order, eval_q = ctx["order"], ctx["eval_q"]
    rel_e = [rel[i] for i in eval_q]
    ids = list(range(n_art))
    m = int(round(max(FRACTIONS) * n_art))
    sel = np.sort(order[:m])
    steps = 50 if quick else 200
    ix2 = compatindex.open(":memory:")
    ix2.create_version("e5", dim=384)
    ix2.add(ids, Pn, version="e5", raw=False)
    out: dict[str, Any] = {"new_new_e5": trec_metrics(_search(ix2, Qn[eval_q], 10, version="e5", raw=False), rel_e)}
    ix2.close()
    # The serving parameters are fit on pairs the version was not trained on (the held-out pairs of
    # an upgrade): 20% of the WordNet pairs and 20% of the re-embedded leads are kept out of v2's fit.
    rng = np.random.default_rng(11)
    wperm = rng.permutation(len(Wn))
    w_hold, w_fit = np.sort(wperm[: len(Wn) // 5]), np.sort(wperm[len(Wn) // 5:])
    iperm = rng.permutation(sel)
    i_hold, i_fit = np.sort(iperm[: max(1, m // 5)]), np.sort(iperm[max(1, m // 5):])
    out["setup"] = {"wordnet_fit": int(len(w_fit)), "wordnet_held_out": int(len(w_hold)),
                    "in_domain_fit": int(len(i_fit)), "in_domain_held_out": int(len(i_hold))}
    # the new version (v2) as the trainer fits it by default, from WordNet pairs alone (day one
    # before anything is re-embedded) and with the re-embedded leads added
    trained = {"wordnet": (Wn[w_fit], Wo[w_fit], sel),
               pair_set_name(max(FRACTIONS), True, False):
               (np.vstack([Wn[w_fit], Pn[i_fit]]), np.vstack([Wo[w_fit], G[i_fit]]), i_fit)}
    fit_sets = {f"held-out WordNet pairs ({len(w_hold)})": ("vectors", Wn[w_hold], Wo[w_hold]),
                f"held-out re-embedded leads ({len(i_hold)})": ("ids", Pn[i_hold], i_hold),
                "both held-out sets": ("vectors", np.vstack([Wn[w_hold], Pn[i_hold]]), np.vstack([Wo[w_hold], G[i_hold]]))}
    versions: dict[str, Any] = {}
    for vset, (H, Gp, used) in trained.items():
        rest = np.setdiff1d(np.arange(n_art), used)
        fit, rep = fit_upgrade(pairs_from_arrays(H, Gp, gallery=G[rest]), d_parent=384,
                               config=TrainConfig(steps=steps))
        assert fit is not None
        index = compatindex.open(":memory:")
        index.create_version("v1", dim=384)
        index.add(ids, G, version="v1", raw=False)
        index.register_version("v2", "v1", fit["dim"], extension=fit["extension"], head=fit["head"],
                               raw_dim=fit["raw_dim"], report={"pairs": vset})
        oo = trec_metrics(_search(index, Qo[eval_q], 10, version="v1", raw=False), rel_e)
        r: dict[str, Any] = {"method": rep.get("chosen"), "gate_passed": rep["gate"]["passed"], "dim": fit["dim"],
                             "old_old": oo, "fits": {}}
        for fname, (kind, H_f, other) in fit_sets.items():
            t = Timer()
            if kind == "ids":
                sfit = index.fit_serving("v2", H_f, other.tolist(), raw=True)
            else:
                sfit = index.fit_serving("v2", H_f, old_vectors=other, raw=True)
            fu = sfit["fusion"] or {}
            row: dict[str, Any] = {"n_pairs": int(len(H_f)), "fusion": fu.get("fusion"),
                                   "proxy_gain": fu.get("gain"), "proxy_gains": fu.get("gains"),
                                   "calibration": {k: {"a": v["a"], "b": v["b"]} for k, v in sfit["calibration"].items()},
                                   "fit_seconds": t()}
            for score in ("renorm", "calibrated"):
                row[f"single_v2_{score}"] = trec_metrics(
                    _search(index, Qn[eval_q], 10, version="v2", raw=True, score=score), rel_e)
            fused = _search(index, {"v2": Qn[eval_q], "v1": Qo[eval_q]}, 10, version=None, raw=True, score="calibrated")
            row["fused"] = trec_metrics(fused, rel_e)
            row["heldout_gain"] = {k: row["fused"][k] - oo[k] for k in ("recall@1", "recall@10", "mrr")}
            row["met"] = bool(row["fused"]["recall@10"] >= oo["recall@10"] and row["fused"]["mrr"] >= oo["mrr"])
            r["fits"][fname] = row
            log(f"text serving v2<-{vset}, fit on {fname}: w={row['fusion']}, fused R@10 {row['fused']['recall@10']:.3f}"
                f" MRR {row['fused']['mrr']:.3f} vs old/old {oo['recall@10']:.3f} / {oo['mrr']:.3f}")
        # diagnostic only (chooses nothing): fused figures at fixed weights, on the evaluation headlines
        r["fixed_weight_curve"] = {}
        for w in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
            hits = _search_fused(index, Qn[eval_q], Qo[eval_q], {"v2": w, "v1": 1.0 - w})
            r["fixed_weight_curve"][str(w)] = trec_metrics(hits, rel_e)
        index.close()
        versions[vset] = r
    out["versions"] = versions
    out["upgrade_path"] = _upgrade_path(ctx, sel, steps, eval_q, rel_e)
    out["seconds"] = T()
    out["goal_fused_ge_old_old"] = {f"{v}/{f}": d["met"] for v, r in versions.items() for f, d in r["fits"].items()}
    return out


def _upgrade_path(ctx: dict[str, Any], sel: np.ndarray, steps: int, eval_q: np.ndarray,
                  rel_e: list[set[int]]) -> dict[str, Any]:
    """What a user runs: ``upgrade()`` on the index from the re-embedded leads (no labels, default
    options; the CLI's ``compatindex upgrade``), which also fits and stores the serving parameters
    on its gate split; then a search with both queries and no ``fusion=`` (the stored weights,
    as ``compatindex search --query v2=... --query v1=...`` does)."""
    import compatindex
    from compatindex.errors import IncompatibleVersionError
    from compatindex.trainer import upgrade

    G, Pn, Qn, Qo = ctx["G_lead"], ctx["P_new"], ctx["Q_new"], ctx["Q_old"]
    t = Timer()
    index = compatindex.open(":memory:")
    index.create_version("v1", dim=384)
    index.add(list(range(len(G))), G, version="v1", raw=False)
    oo = trec_metrics(_search(index, Qo[eval_q], 10, version="v1", raw=False), rel_e)
    try:
        v, rep = upgrade(index, Pn[sel], sel.tolist(), name="v2", parent="v1", steps=steps)
    except IncompatibleVersionError as exc:
        index.close()
        return {"registered": False, "reason": str(exc), "old_old": oo, "met": True,
                "note": "refused: nothing registered, the old model keeps serving (old/old)"}
    srv = rep.get("serving") or {}
    fused = trec_metrics(_search(index, {"v2": Qn[eval_q], "v1": Qo[eval_q]}, 10, version=None, raw=True,
                                 score="calibrated"), rel_e)
    single = trec_metrics(_search(index, Qn[eval_q], 10, version="v2", raw=True), rel_e)
    index.close()
    gain = {k: fused[k] - oo[k] for k in ("recall@1", "recall@10", "mrr")}
    return {"registered": True, "chosen": rep.get("chosen"), "n_pairs": int(len(sel)),
            "n_serving_pairs": srv.get("pairs"), "fusion": srv.get("fusion"), "proxy_gain": srv.get("gain"),
            "serving_reason": srv.get("reason"), "old_old": oo, "single_v2": single, "fused": fused,
            "heldout_gain": gain, "seconds": t(),
            "met": bool(fused["recall@10"] >= oo["recall@10"] and fused["mrr"] >= oo["mrr"])}


# -- output --------------------------------------------------------------------------------------------
def plot(r: dict[str, Any], quick: bool) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = r["indomain"]
    fr = d["fractions"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2), sharey=True)
    e5 = d["reference"]["new_new_e5"]["recall@10"]
    for ax, with_wn in zip(axes, (False, True)):
        meths = list(d["pair_sets"]["wordnet"]["methods"])
        # solid: leads only; dashed: + the same articles' sentences; star: + their spans (the trainer's fits only)
        for sent in (False, True):
            for c, meth in enumerate(meths):
                if sent and not meth.startswith("trainer"):
                    continue
                xs, ys = [], []
                if with_wn:
                    v = d["pair_sets"]["wordnet"]["methods"][meth].get("new_old")
                    if v:
                        xs.append(0.0)
                        ys.append(v["recall@10"])
                for f in fr:
                    v = d["pair_sets"].get(pair_set_name(f, with_wn, sent), {}).get("methods", {}).get(meth, {}).get("new_old")
                    if v:
                        xs.append(100 * f)
                        ys.append(v["recall@10"])
                if xs:
                    ax.plot(xs, ys, marker="o", ms=3, color=f"C{c}", ls="--" if sent else "-",
                            label=f"{meth} + sentences" if sent else meth)
                if sent:  # + spans: the largest fraction only, a star
                    v = d["pair_sets"].get(pair_set_name(max(fr), with_wn, True, True), {}).get(
                        "methods", {}).get(meth, {}).get("new_old")
                    if v:
                        ax.plot([100 * max(fr)], [v["recall@10"]], marker="*", ms=9, color=f"C{c}", ls="none",
                                label=f"{meth} + sentences + spans")
        ax.axhline(d["reference"]["old_old"]["recall@10"], color="k", ls=":", lw=1, label="old/old (MiniLM)")
        ax.axhline(e5, color="gray", ls="--", lw=1, label="e5 re-embed")
        ax.axhline(0.9 * e5, color="red", ls="-.", lw=0.8, label="90% of e5 re-embed")
        ax.set_xlabel("% of the gallery re-embedded (pairs)")
        ax.set_title("in-domain pairs + WordNet" if with_wn else "in-domain pairs alone")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("new/old recall@10 (e5 headlines, MiniLM leads)")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    name = png_name("text-indomain", quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / name, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return name


def _m(x: dict[str, float] | None, key: str) -> str:
    return "–" if not x else fmt(x[key])


def markdown(r: dict[str, Any]) -> str:
    d = r["indomain"]
    e5 = d["reference"]["new_new_e5"]
    oo = d["reference"]["old_old"]
    meths: list[str] = []
    for ps in d["pair_sets"].values():
        meths += [k for k in ps["methods"] if k not in meths]
    out = ["\n### In-domain pairs: part of the gallery re-embedded (issue 12)\n\n",
           f"Pairs: leads of a fraction of the gallery embedded by both models (e5 passage / MiniLM), alone "
           f"and added to the WordNet pairs; `+ sentences` adds every sentence of the same articles (headline and "
           f"body, {d.get('n_sentences_top', '?')} at the largest fraction) embedded by both models, e5 in query mode "
           f"(more views of the items that were re-embedded anyway); `+ spans` (largest fraction only) adds every "
           f"9-word window, every 5 words, of those sentences ({d.get('n_spans_top', '?')}): headline-length views. "
           f"`{RANK_METHOD[0]}` is the trainer's linear head with the gallery ranking term (`w_rank`), fitted on "
           f"WordNet alone and WordNet plus the largest fraction's sets only. Evaluation: {d['n_eval_queries']} headlines none of whose copies "
           f"was re-embedded; on them old/old R@10 {fmt(oo['recall@10'])}, e5 re-embed R@10 {fmt(e5['recall@10'])} "
           f"(MRR {fmt(e5['mrr'])}). new/old R@10 (%), e5 headline queries against the MiniLM gallery "
           "through `Index.search(raw=True)`; metrics by trec_eval (pytrec_eval), cross-checked against "
           "compatindex.evaluation:\n\n"]
    rows = []
    for ps_name, ps in d["pair_sets"].items():
        rows.append([ps_name, ps["n_pairs"]] + [_m(ps["methods"].get(mm, {}).get("new_old"), "recall@10") for mm in meths])
    out.append(md_table(["pairs", "n"] + meths, rows))
    g = d["goal_10pct_plus_wordnet_ge_90pct_of_e5"]
    gs = g.get("with_sentences")
    out.append(f"\nGoal (10% of the gallery re-embedded + WordNet: best new/old R@10 >= 90% of the e5 re-embed): "
               f"**{'met' if g['met'] else 'missed'}**. {g['pair_set']}: best {g['best_method']} "
               f"{fmt(g['best_new_old_recall@10'])} = {100 * g['share_of_e5']:.2f}% of {fmt(g['e5_recall@10'])}, the "
               f"trainer's default (auto) {100 * g['trainer_default_share_of_e5']:.2f}%"
               + "".join(f"; {x['pair_set']}: best {x['best_method']} {fmt(x['best_new_old_recall@10'])} = "
                         f"{100 * x['share_of_e5']:.2f}%, the trainer's default {100 * x['trainer_default_share_of_e5']:.2f}%"
                         for x in (gs, g.get("with_spans")) if x)
               + f"; WordNet alone, best {100 * g['wordnet_alone_best_share_of_e5']:.1f}%.\n")
    x = d.get("extended")
    if x:
        meths_x = list(next(iter(x["pair_sets"].values()))["new_old"])
        out.append(f"\nLarger fractions (the same draw; the trainer's closed forms), evaluated on the "
                   f"{x['n_eval_queries']} headlines outside the 50% fraction, where the e5 re-embed scores R@10 "
                   f"{fmt(x['new_new_e5']['recall@10'])}:\n\n")
        out.append(md_table(["pairs", "in-domain pairs"] + [f"{mm} R@10" for mm in meths_x],
                            [[k, v["n_in_domain"]] + [fmt(v["new_old"][mm]["recall@10"]) for mm in meths_x]
                             for k, v in x["pair_sets"].items()]))
        b = x["best"]
        out.append(f"\nBest: {b['pair_set']}, {b['method']}: {fmt(b['new_old_recall@10'])} = "
                   f"{100 * b['share_of_e5']:.1f}% of the e5 re-embed on these queries.\n")
    out.append(f"\n![text in-domain]({r['plot_indomain']})\n")
    s = r["serving"]
    out.append("\n### Migration-time serving on day one (issue 11)\n\n"
               "Nothing backfilled; each headline embedded by both models. Fused = `Index.search({'v2': e5, "
               "'v1': MiniLM}, raw=True, score='calibrated')` with the weights and calibration learned by "
               "`Index.fit_serving` from the pairs named (no BBC headline is used to fit); single = e5 "
               "queries alone on the old gallery. Same evaluation headlines as above.\n\n")
    rows = []
    for vset, v in s["versions"].items():
        rows.append([f"v2 from {vset}", "old/old (MiniLM headlines)", "–", fmt(v["old_old"]["recall@1"]),
                     fmt(v["old_old"]["recall@10"]), fmt(v["old_old"]["mrr"]), ""])
        for j, (fname, f) in enumerate(v["fits"].items()):
            w = ", ".join(f"{k}={x:g}" for k, x in (f["fusion"] or {}).items())
            x = f["single_v2_renorm"]
            if j == 0:  # renorm uses no fitted parameter
                rows.append([f"v2 from {vset}", "single v2 (e5 queries alone), renorm", "", fmt(x["recall@1"]),
                             fmt(x["recall@10"]), fmt(x["mrr"]), ""])
            for key, label in (("single_v2_calibrated", "single v2, calibrated"), ("fused", "fused")):
                x = f[key]
                gain = (f"{100 * f['heldout_gain']['recall@10']:+.1f} / {100 * f['heldout_gain']['mrr']:+.1f}"
                        if key == "fused" else "")
                rows.append([f"v2 from {vset}", f"{label}, fit on {fname}", w if key == "fused" else "",
                             fmt(x["recall@1"]), fmt(x["recall@10"]), fmt(x["mrr"]), gain])
    rows.append(["e5 re-embed (full backfill)", "new/new", "–", fmt(s["new_new_e5"]["recall@1"]),
                 fmt(s["new_new_e5"]["recall@10"]), fmt(s["new_new_e5"]["mrr"]), ""])
    out.append(md_table(["version", "setting", "fusion weights", "R@1", "R@10", "MRR",
                         "held-out gain R@10 / MRR (pts)"], rows))
    out.append("\nDiagnostic, not used to choose anything: fused R@10 / MRR at fixed v2 weights on the same "
               "evaluation headlines:\n\n")
    ws = list(next(iter(s["versions"].values()))["fixed_weight_curve"])
    out.append(md_table(["version"] + [f"w(v2) = {w}" for w in ws],
                        [[f"v2 from {vset}"] + [f"{fmt(v['fixed_weight_curve'][w]['recall@10'])} / "
                                               f"{fmt(v['fixed_weight_curve'][w]['mrr'])}" for w in ws]
                         for vset, v in s["versions"].items()]))
    met = [k for k, v in s["goal_fused_ge_old_old"].items() if v]
    out.append(f"\nGoal (fused day-one R@10 and MRR >= old/old): **{'met' if met else 'missed'}** "
               f"({len(met)} of {len(s['goal_fused_ge_old_old'])} fits: {', '.join(met) or 'none'}).\n")
    u = s.get("upgrade_path")
    if u:
        out.append("\n**The user path.** `upgrade(index, e5 leads, ids)` on the index with default options (the "
                   f"{100 * max(FRACTIONS):g}% re-embedded leads, no labels: what `compatindex upgrade` runs), which "
                   "fits and stores the serving parameters on its own gate split; then `search({'v2': e5, 'v1': "
                   "MiniLM}, raw=True, score='calibrated')` with no `fusion=`, as `compatindex search --query "
                   "v2=... --query v1=...` does:\n\n")
        if not u["registered"]:
            out.append(f"refused by the gate ({u['reason']}); the old model keeps serving.\n")
        else:
            w = ", ".join(f"{k}={x:g}" for k, x in (u["fusion"] or {}).items())
            out.append(md_table(["setting", "fusion weights", "R@1", "R@10", "MRR"], [
                ["old/old (MiniLM headlines)", "–"] + [fmt(u["old_old"][k]) for k in ("recall@1", "recall@10", "mrr")],
                ["single v2 (e5 queries alone)", "–"] + [fmt(u["single_v2"][k]) for k in ("recall@1", "recall@10", "mrr")],
                [f"fused, weights stored by upgrade ({u['n_serving_pairs']} held-out pairs)", w]
                + [fmt(u["fused"][k]) for k in ("recall@1", "recall@10", "mrr")]]))
            out.append(f"\nUser path (fused R@10 and MRR >= old/old): **{'met' if u['met'] else 'missed'}** "
                       f"(R@10 {100 * u['heldout_gain']['recall@10']:+.1f}, MRR {100 * u['heldout_gain']['mrr']:+.1f} "
                       "pts).\n")
    return "".join(out)
