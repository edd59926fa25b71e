"""Orchestration: fit candidate versions on pairs read from the index, select, gate, register.

``upgrade(index, new_raw_vectors, ids)`` is the entry point behind ``Index``'s trainer and
``compatindex upgrade``; :func:`fit_upgrade` does the same on in-memory :class:`PairData`
(benchmarks, tests) and registers nothing.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import evaluation as ev
from ..errors import IncompatibleVersionError, InvalidInputError, VersionExistsError
from ..core.heads import apply_head
from . import closed_form as cf
from .config import TrainConfig
from .data import ExtraPair, PairData, add_extra_pairs, load_pairs, normalize_rows, split
from .gate import label_gate, pairs_gate

if TYPE_CHECKING:  # the trainer sits below the facade: typed against it, never imports it
    from ..core.datatypes import Version
    from ..index import Index

ISOMETRIC_FAMILY = ("isometric", "procrustes", "oca")
"""What ``auto`` chooses among: every one maps the raw new space isometrically (with the default
``oca_head="isometry"``), so new/new retrieval equals the raw new model's and selection only
has to look at new/old."""


def to_space(fit: dict[str, Any], H_raw: np.ndarray) -> np.ndarray:
    """Apply a fitted version (head, then ``Q [h; 0]``) to ``(n, raw_dim)`` raw vectors -> ``(n, dim)``.

    Mirrors ``Index.to_version_space``.
    """
    h = np.asarray(H_raw, dtype=np.float32)
    if fit.get("head") is not None:
        h = apply_head(fit["head"], h)
    Q = fit.get("extension")
    if Q is not None:
        return np.ascontiguousarray(h @ np.asarray(Q, np.float32)[:, : h.shape[1]].T)
    if h.shape[1] < fit["dim"]:
        h = np.hstack([h, np.zeros((h.shape[0], fit["dim"] - h.shape[1]), np.float32)])
    return np.ascontiguousarray(h, dtype=np.float32)


def default_extra_dims(d_parent: int) -> int:
    """``max(8, d_parent // 8)``: OCA added 32 dims to 128."""
    return max(8, d_parent // 8)


def ridge_family(method: str) -> str:
    """Which map a method builds from the ridge fit: ``isometric`` (dilated to an isometry:
    ``isometric``, ``oca``'s start, ``auto``) or ``plain`` (used as fitted: ``affine``, ``mlp``'s
    skip). With labels, cross-validation scores the map the method stores, so the two may get
    different strengths."""
    return "plain" if method in ("affine", "mlp") else "isometric"


def resolve_config(cfg: TrainConfig, data: PairData, *, family: str = "isometric"
                   ) -> tuple[TrainConfig, dict[str, Any]]:
    """Settle the data-dependent fields of ``cfg`` on ``data`` (a training split).

    ``normalize_input=None`` follows the parent's metric (normalize under cosine, not under
    ip); ``ridge="cv"`` and ``spectrum="auto"`` are chosen by
    :func:`~compatindex.trainer.closed_form.select_ridge` (cross-validation on ``data`` only;
    with labels, by label retrieval of the map of ``family``, :func:`ridge_family`).

    Returns
    -------
    (config, selection):
        A config with plain values, and the cross-validation record (empty when nothing was
        chosen).
    """
    norm = cfg.normalize_input if cfg.normalize_input is not None else data.metric != "ip"
    cfg = replace(cfg, normalize_input=bool(norm))
    sel: dict[str, Any] = {}
    if cfg.ridge == "cv" or cfg.spectrum == "auto":
        Hn = normalize_rows(data.H) if norm else data.H
        grid = cf.RIDGE_GRID if cfg.ridge == "cv" else (float(cfg.ridge),)
        spectra = ("scale", "clip") if cfg.spectrum == "auto" else (cfg.spectrum,)
        sel = cf.select_ridge(Hn, data.G, grid=grid, spectra=spectra, seed=cfg.seed, score=data.score,
                              labels=data.labels, gallery=data.gallery, gallery_labels=data.gallery_labels,
                              max_gallery=selection_gallery_rows(data.G.shape[1]),
                              extra_dims=None if family == "plain" else cfg.extra_dims if cfg.extra_dims is not None
                              else default_extra_dims(data.G.shape[1]))
        cfg = replace(cfg, ridge=sel["ridge"], spectrum=sel["spectrum"])
    return cfg, sel


def _resolved(cfg: TrainConfig) -> bool:
    return cfg.normalize_input is not None and cfg.ridge != "cv" and cfg.spectrum != "auto"


def fit_method(method: str, data: PairData, cfg: TrainConfig, *, d_parent: int,
               val: PairData | None = None,
               starts: dict[str, tuple[dict[str, Any], dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Fit one method on ``data``; returns ``{"extension", "head", "dim", "raw_dim", "info"}``.

    Data-dependent fields of ``cfg`` (``ridge="cv"``, ``spectrum="auto"``,
    ``normalize_input=None``) are settled on ``data`` first (:func:`resolve_config`). ``val``
    (a selection split) lets torch heads keep their best state and fall back to their
    closed-form start. ``starts`` (``{"isometric": (fit, heldout), "procrustes": ...}``: closed
    forms already fitted on ``data`` with ``cfg`` and scored on ``val`` by :func:`_evaluate`)
    saves the ``oca`` head refitting and rescoring them (at 1280 dims, seconds each).
    """
    if not _resolved(cfg):
        cfg, _ = resolve_config(cfg, data, family=ridge_family(method))
    ridge, normalize_input = float(cfg.ridge), bool(cfg.normalize_input)  # resolved: a number, a bool
    Hn = normalize_rows(data.H) if cfg.normalize_input else data.H
    G = data.G
    d_h = Hn.shape[1]
    pre = {"kind": "normalize"} if cfg.normalize_input else None
    e = cfg.extra_dims if cfg.extra_dims is not None else default_extra_dims(d_parent)
    if method == "isometric":
        Q, info = cf.fit_isometric(Hn, G, extra_dims=e, ridge=ridge, spectrum=cfg.spectrum)
        return {"extension": Q, "head": pre, "dim": info["dim"], "raw_dim": d_h, "info": info}
    if method == "procrustes":
        Q, info = cf.fit_procrustes(Hn, G)
        return {"extension": Q, "head": pre, "dim": info["dim"], "raw_dim": d_h, "info": info}
    if method == "affine":
        W, b = cf.fit_affine(Hn, G, ridge=ridge)
        lin = {"kind": "linear", "in_dim": d_h, "out_dim": d_parent, "W": W, "b": b}
        spec = {"kind": "chain", "steps": [s for s in (pre, lin, {"kind": "normalize"}) if s is not None]}
        return {"extension": None, "head": spec, "dim": d_parent, "raw_dim": d_h,
                "info": {"dim": d_parent, "note": "query adapter: no extra dims, new/new not preserved"}}
    from .adapters import export_head, fit_head  # torch only when needed

    if method == "mlp":
        W, b = cf.fit_affine(Hn, G, ridge=ridge)
        model, hist = fit_head("mlp", Hn, G, d_v=d_parent, cfg=replace(cfg, w_ce=0.0), init=(W, b), desc="mlp",
                               val=_val_arrays(val, cfg), score=data.score, gallery=data.gallery)
        out = export_head(model, normalize_input=normalize_input)
        out["info"] = {"dim": d_parent, "final_loss": hist}
        return out
    if method == "oca":
        # start from the better closed form on the selection split (keep-best then guarantees the
        # head never ends below it there): the ones upgrade already fitted and scored, else fitted here
        need = ["isometric"] + (["procrustes"] if val is not None and len(val) and cfg.oca_head == "isometry" else [])
        starts = dict(starts or {})
        for m in need:
            if m not in starts:
                f = fit_method(m, data, cfg, d_parent=d_parent)
                starts[m] = (f, _evaluate(f, val, None) if len(need) > 1 and val is not None else {})
        start = max(need, key=lambda m: (_score(starts[m][1], cfg.gate_metric), m == "isometric")) \
            if len(need) > 1 else "isometric"
        Q0, info0 = starts[start][0]["extension"], starts[start][0]["info"]
        d_v = info0["dim"]
        M0 = Q0[:, :d_h].astype(np.float64)
        init: Any = M0 if cfg.oca_head == "isometry" else (M0, None)
        model, hist = fit_head(cfg.oca_head, Hn, G, d_v=d_v, cfg=cfg, labels=data.labels,
                               prototypes=data.prototypes, init=init, desc="oca", val=_val_arrays(val, cfg),
                               score=data.score, gallery=data.gallery)
        out = export_head(model, normalize_input=normalize_input)
        out["info"] = {"dim": d_v, "head": cfg.oca_head, "start": start, "labels": data.labels is not None,
                       "final_loss": hist}
        return out
    raise InvalidInputError(f"`method` must be one of isometric, procrustes, oca, affine, mlp; got {method!r}")


SELECTION_GALLERY = 20_000
"""Model selection, keep-best and label cross-validation search the held-out rows' own vectors
plus at most this many other stored items at 128 dims or fewer (a random draw: the fetch behind
:func:`load_pairs` is seeded): enough competitors to judge a fit as the index will serve it, at
a fraction of the cost. Wider parents get proportionally fewer (:func:`selection_gallery_rows`,
at least 2,000): a 1280-d search costs ten times a 128-d one. The gate searches all of them."""


def selection_gallery_rows(dim: int) -> int:
    """Distractors searched while selecting: ``SELECTION_GALLERY * 128 / dim``, within [2000, SELECTION_GALLERY].

    Examples
    --------
    >>> selection_gallery_rows(64), selection_gallery_rows(384), selection_gallery_rows(1280)
    (20000, 6666, 2000)
    """
    return int(min(SELECTION_GALLERY, max(2000, SELECTION_GALLERY * 128 // max(int(dim), 1))))


def _selection_gallery(split_: PairData) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The distractors (and their labels) a split's labelled queries search while selecting."""
    k = selection_gallery_rows(split_.G.shape[1])
    return (None if split_.gallery is None else split_.gallery[:k],
            None if split_.gallery_labels is None else split_.gallery_labels[:k])


def _val_arrays(val: PairData | None, cfg: TrainConfig) -> tuple[Any, ...] | None:
    """``(H, G, labels, distractors, distractor_labels)`` of a selection split as the heads see
    them (normalized like training), with the stored gallery its labelled queries search."""
    if val is None or len(val) == 0:
        return None
    H = normalize_rows(val.H) if cfg.normalize_input else np.asarray(val.H, np.float32)
    return (H, np.asarray(val.G, np.float32), val.labels, *_selection_gallery(val))


def _evaluate(fit: dict[str, Any], test: PairData, gallery: np.ndarray | None) -> dict[str, Any]:
    Z = to_space(fit, test.H)
    sc = test.score
    out: dict[str, Any] = {"pairs": ev.pair_alignment(Z, test.G if gallery is None or not len(gallery)
                                                     else np.vstack([test.G, gallery]), score=sc)}
    if test.labels is not None and np.sum(test.labels >= 0) >= 2:
        m = test.labels >= 0
        y = test.labels[m]
        # new/old as the index will serve it: each held-out item searches the stored gallery
        # (the held-out items' own vectors, itself left out, plus the other stored items)
        # (mAP, which needs whole rankings, over the first 5,000 of them: selection only)
        gal, gal_y = _selection_gallery(test)
        out["new_old"] = ev.summarize_label_retrieval(ev.label_retrieval(
            Z[m], test.G[m], y, gal, gal_y, score=sc, ap_max_gallery=5_000))
        out["new_new"] = ev.cmc_map(Z[m], Z[m], y, y, leave_one_out=True, score=sc)
    return out


def _score(ev_: dict[str, Any], metric: str) -> tuple[float, float]:
    if "new_old" in ev_:
        return (ev_["new_old"][metric], ev_["pairs"]["mrr"])
    return (ev_["pairs"]["mrr"], ev_["pairs"]["recall@10"])


def _clean(x: Any) -> Any:
    """Make a report msgpack-able (numpy scalars -> Python numbers, tuples -> lists)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float):
        return round(x, 6)
    return x


CLOSED_FORMS = ("isometric", "procrustes", "affine")
"""Methods fitted in closed form (seconds); the others train a torch head from a closed-form start."""
CONTROL_OF = {"oca": "isometric", "mlp": "affine"}
"""The shuffled-pairs control of a torch method: its closed-form start fitted on shuffled pairs
(retraining the head on junk would cost its whole training time and could only do worse)."""


def _gate(fit: dict[str, Any], method: str, train: PairData, test: PairData, cfg: TrainConfig, *,
          d_parent: int, gallery: np.ndarray | None, version: str, parent: str,
          gallery_labels: np.ndarray | None = None, label_rule: bool = True,
          controls: dict[tuple[Any, ...], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Every gate rule on the gate split ``test`` for a fit of ``method`` trained on ``train``
    (``label_rule=False``: the pairs rule only, as the closed-form gate before torch training).
    ``controls`` keeps the shuffled-pairs control fits of one upgrade, keyed by method, training
    split and settings: the closed-form gate and the final gate often need the same one."""
    ctrl = CONTROL_OF.get(method, method)
    key = (ctrl, id(train), cfg.ridge, cfg.spectrum, cfg.extra_dims, cfg.seed, cfg.normalize_input, d_parent)
    shuf_fit = None if controls is None else controls.get(key)
    if shuf_fit is None:
        shuf_fit = fit_method(ctrl, train.shuffled(cfg.seed), cfg, d_parent=d_parent)
        if controls is not None:  # the caller holds its splits alive for the upgrade: ids stay unique
            controls[key] = shuf_fit
    Z = to_space(fit, test.H)
    Z_shuf = to_space(shuf_fit, test.H)
    H_raw = normalize_rows(test.H) if cfg.normalize_input else np.asarray(test.H, np.float32)
    gate: dict[str, Any] = {"pairs": pairs_gate(Z, Z_shuf, H_raw, test.G, gallery, margin=cfg.gate_margin,
                                                score=test.score, seed=cfg.seed, version=f"version {version!r}",
                                                labels=test.labels, gallery_labels=gallery_labels)}
    gate["pairs"]["control_method"] = ctrl
    reasons = list(gate["pairs"]["reasons"])
    if test.labels is not None and label_rule:
        gate["labels"] = label_gate(Z, test.G, test.labels, H_new=H_raw, metric=cfg.gate_metric, score=test.score,
                                    seed=cfg.seed, version=f"{version!r}", parent=f"{parent!r}",
                                    distractors=gallery, distractor_labels=gallery_labels)
        reasons += gate["labels"]["reasons"]
    gate["passed"] = not reasons
    gate["reasons"] = reasons
    return gate


def _merge(a: PairData, b: PairData) -> PairData:
    return replace(a, ids=list(a.ids) + list(b.ids), H=np.vstack([a.H, b.H]), G=np.vstack([a.G, b.G]),
                   labels=None if a.labels is None else np.concatenate([a.labels, b.labels]))


def fit_upgrade(data: PairData, *, d_parent: int, config: TrainConfig | None = None,
                methods: list[str] | None = None, name: str = "new", parent: str = "parent"
                ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Fit candidates, select on a validation split, run the gate on a third, unseen split.

    The pairs are split three ways: the *gate split* (``holdout``, at least ``min_holdout``
    items) is seen only by the gate; the rest is split again into a *training split* and a
    *selection split* (``select_holdout`` of it). Ridge strength and spectrum are
    cross-validated inside the training split. Closed forms are fitted first and gated on the
    pairs rule: when their best already fails it (pairs joined to the wrong ids, another
    modality), the upgrade is refused without training any torch head. Torch heads start at the
    closed form, keep their best state on the selection split and fall back to the start when
    training does not beat it. A closed-form winner is refitted on training + selection splits.

    Parameters
    ----------
    data:
        Pairs (and labels/prototypes) from :func:`~compatindex.trainer.data.load_pairs` or
        :func:`~compatindex.trainer.data.pairs_from_arrays`.
    d_parent:
        Dim of the parent version.
    config:
        :class:`TrainConfig` (``method="auto"`` tries :data:`ISOMETRIC_FAMILY`).
    methods:
        Override the candidate list.
    name, parent:
        Names of the version being made and of its parent, for the gate's messages.

    Returns
    -------
    (fit, report):
        ``fit`` is ``{"extension", "head", "dim", "raw_dim", "info"}`` of the winner;
        ``report["gate"]["passed"]`` says whether it may be registered.
    """
    cfg = config or TrainConfig()
    if data.G.shape[1] != d_parent:
        raise InvalidInputError(f"stored parent vectors have dim {data.G.shape[1]}; `d_parent` says {d_parent}")
    from .threads import limit_threads

    with limit_threads(cfg.threads) as k:
        fit, report = _fit_upgrade(data, d_parent=d_parent, cfg=cfg, config=config, methods=methods, name=name,
                                   parent=parent)
    report["threads"] = k
    return fit, report


def _fit_upgrade(data: PairData, *, d_parent: int, cfg: TrainConfig, config: TrainConfig | None,
                 methods: list[str] | None, name: str, parent: str) -> tuple[dict[str, Any], dict[str, Any]]:
    n = len(data)
    if n < 30:
        raise InvalidInputError(f"need at least 30 pairs to fit, select and hold out; got {n}",
                                hint="give raw new vectors for more stored items")
    tr_all, te_idx = split(n, cfg.holdout, seed=cfg.seed, min_holdout=cfg.min_holdout)
    sub_tr, sub_va = split(len(tr_all), cfg.select_holdout, seed=cfg.seed + 1, min_holdout=min(cfg.min_holdout, 10))
    train, val, test = data.subset(tr_all[sub_tr]), data.subset(tr_all[sub_va]), data.subset(te_idx)
    t0 = time.perf_counter()
    cands = methods or (list(ISOMETRIC_FAMILY) if cfg.method == "auto" else [cfg.method])
    # without labels both families get the identity cross-validation: resolve it once
    families = sorted({ridge_family(m) for m in cands}) if data.labels is not None else ["isometric"]
    resolved = {fam: resolve_config(cfg, train, family=fam) for fam in families}
    controls: dict[tuple[Any, ...], dict[str, Any]] = {}

    def family_of(m: str) -> str:
        return ridge_family(m) if ridge_family(m) in resolved else families[0]

    def cfg_of(m: str) -> TrainConfig:
        return resolved[family_of(m)][0]

    cfg, selection = resolved[family_of(cands[0])]
    report: dict[str, Any] = {
        "method": config.method if config is not None else "auto",
        "data": {"n_pairs": n, "n_train": len(train), "n_select": len(val), "n_heldout": len(test),
                 "raw_dim": int(data.H.shape[1]), "parent_dim": int(d_parent), "labels": data.labels is not None,
                 "n_classes": len(data.classes or []), "metric": data.metric,
                 "n_distractors": 0 if data.gallery is None else int(len(data.gallery))},
        "resolved": {"ridge": cfg.ridge, "spectrum": cfg.spectrum, "normalize_input": cfg.normalize_input},
        "selection": {**selection, "seconds": round(time.perf_counter() - t0, 3)},
        "candidates": [],
    }
    fits: dict[str, dict[str, Any]] = {}

    def run(m: str) -> None:
        t = time.perf_counter()
        starts = {c["method"]: (fits[c["method"]], c["heldout"]) for c in report["candidates"]
                  if c["method"] in ("isometric", "procrustes") and cfg_of(c["method"]) == cfg_of(m)}
        fit = fit_method(m, train, cfg_of(m), d_parent=d_parent, val=val, starts=starts or None)
        dt = time.perf_counter() - t
        fits[m] = fit
        report["candidates"].append({"method": m, "dim": fit["dim"], "fit_seconds": dt,
                                     "heldout": _evaluate(fit, val, data.gallery), "info": fit.get("info", {})})

    closed = [m for m in cands if m in CLOSED_FORMS]
    for m in closed:
        run(m)
    if closed and len(closed) < len(cands):  # the closed-form gate, before any torch training
        best = max(report["candidates"], key=lambda c: _score(c["heldout"], cfg.gate_metric))
        pre = _gate(fits[best["method"]], best["method"], train, test, cfg_of(best["method"]), d_parent=d_parent,
                    gallery=data.gallery, version=name, parent=parent,
                    gallery_labels=data.gallery_labels, label_rule=False, controls=controls)
        report["closed_form_gate"] = {"method": best["method"], "passed": pre["pairs"]["passed"],
                                      "reasons": pre["pairs"]["reasons"]}
        if not pre["pairs"]["passed"]:
            report["skipped"] = [m for m in cands if m not in closed]
            report["chosen"] = best["method"]
            report["gate"] = pre
            report["dim"] = fits[best["method"]]["dim"]
            return fits[best["method"]], _clean(report)
    for m in cands:
        if m not in closed:
            run(m)
    best = max(report["candidates"], key=lambda c: _score(c["heldout"], cfg.gate_metric))
    chosen = best["method"]
    report["chosen"] = chosen
    cfg = cfg_of(chosen)
    fam = family_of(chosen)
    report["resolved"] = {"ridge": cfg.ridge, "spectrum": cfg.spectrum, "normalize_input": cfg.normalize_input}
    report["selection"] = {**resolved[fam][1], "family": fam, "seconds": report["selection"]["seconds"]}
    if len(resolved) > 1:
        report["selection"]["other_families"] = {f: {"ridge": c.ridge, "spectrum": c.spectrum}
                                                 for f, (c, _) in resolved.items() if f != fam}
    fit_train = train
    info = fits[chosen].get("info", {})
    # a torch head that never beat its closed-form start returns that start: it then is the
    # closed form, and is refit like one (else it would serve a start fit on fewer pairs than
    # the closed-form version itself, and land below it)
    kept = chosen not in CLOSED_FORMS and info.get("start") in CLOSED_FORMS \
        and (info.get("final_loss") or {}).get("best_step") == 0
    if chosen in CLOSED_FORMS or kept:  # refit on everything the gate does not see
        fit_train = _merge(train, val)
        refit = fit_method(chosen if chosen in CLOSED_FORMS else info["start"], fit_train, cfg, d_parent=d_parent)
        if kept:
            refit["info"] = {**refit["info"], "head": info.get("head"), "start": info["start"], "start_kept": True,
                             "labels": info.get("labels"), "final_loss": info.get("final_loss")}
            report["start_kept"] = info["start"]
        fits[chosen] = refit
    fit = fits[chosen]
    report["gate"] = _gate(fit, chosen, fit_train, test, cfg, d_parent=d_parent, gallery=data.gallery,
                           version=name, parent=parent, gallery_labels=data.gallery_labels, controls=controls)
    report["dim"] = fit["dim"]
    fit["heldout_rows"] = te_idx  # the gate split: what upgrade() fits the serving parameters on
    return fit, _clean(report)


def _next_name(index: Any) -> str:
    taken = {v.name for v in index.versions()}
    k = len(taken) + 1
    while f"v{k}" in taken:
        k += 1
    return f"v{k}"


def _dry_run_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What a user needs to decide whether the upgrade is worth doing (gate split figures)."""
    g = report["gate"]
    out: dict[str, Any] = {"would_register": bool(g["passed"]), "reasons": list(g["reasons"]),
                           "pairs": {"mrr": g["pairs"]["mrr"], "mrr_shuffled": g["pairs"]["mrr_shuffled"],
                                     "recall@10_in_gallery": g["pairs"]["fit"]["recall@10"],
                                     "gallery_size": g["pairs"]["fit"]["gallery_size"]}}
    lab = g.get("labels")
    if lab and "old_old" in lab:
        m = lab["metric"]
        day1, oo = lab["new_old"], lab["old_old"]
        full = lab.get("raw_new_new", lab["new_new"])
        out["labels"] = {
            "metric": m, "old_old": oo[m], "day_one_new_old": day1[m], "after_backfill_new_new": full[m],
            "day_one_gain": round(day1[m] - oo[m], 6), "backfill_benefit": round(full[m] - day1[m], 6),
            "mAP": {"old_old": oo["mAP"], "day_one_new_old": day1["mAP"], "after_backfill_new_new": full["mAP"]},
            "interval_new_old_minus_old_old": lab.get("interval")}
    return out


def _register(index: Any, name: str, parent: Any, fit: dict[str, Any], report: dict[str, Any],
              cfg: TrainConfig) -> Any:
    """Register the fitted version with its report and config (the last step of :func:`upgrade`)."""
    config_d = _clean({**cfg.to_dict(), "fit_info": fit.get("info", {}), "trainer": "compatindex.trainer.upgrade",
                       "resolved": report.get("resolved", {})})
    return index.register_version(name, parent.name, fit["dim"], extension=fit["extension"], head=fit["head"],
                                  raw_dim=fit["raw_dim"], report=report, config=config_d)


def upgrade(index: Any, new_raw_vectors: np.ndarray, ids: list[Any], *, method: str = "auto",
            parent: str | None = None, name: str | None = None, extra_dims: int | None = None,
            use_labels: bool = True, force: bool = False, strict: bool = True, dry_run: bool = False,
            serving: bool = True, config: TrainConfig | None = None,
            extra_pairs: tuple[np.ndarray, np.ndarray] | None = None, **overrides: Any
            ) -> tuple[Any, dict[str, Any]]:
    """Learn the next compatible version against the stored gallery and register it if it passes.

    Parameters
    ----------
    index:
        An open, writable :class:`compatindex.Index`.
    new_raw_vectors:
        ``(n, d_h)`` raw outputs of the new encoder for stored items ``ids``.
    ids:
        ``n`` external ids, each holding a vector of the parent version.
    method:
        ``auto`` (default) or one of ``isometric``, ``procrustes``, ``oca``, ``affine``, ``mlp``.
    parent:
        Version to stay compatible with (default: the latest).
    name:
        Name of the new version (default ``v{N+1}``).
    extra_dims:
        Budget of dims above the parent's (default ``max(8, d_parent // 8)``).
    use_labels:
        Use the labels stored with gallery items (prototypes, label gate).
    force:
        Register even when the gate refuses (a warning says so; the report says ``forced``).
    strict:
        When the gate refuses: raise :class:`~compatindex.errors.IncompatibleVersionError`
        (default), or with ``strict=False`` warn and return ``(None, report)``.
    dry_run:
        Fit and gate, register nothing: returns ``(None, report)`` with
        ``report["dry_run"]`` holding the expected day-one new/old against old/old and the
        backfill benefit, on the gate split. A refusal is reported there, not raised.
    serving:
        After registering, fit the migration-time serving parameters (docs/serving.md) on the
        gate split, pairs no fit or selection has seen: the fusion weights of a query given in
        both the new version and the parent (never below the parent-only weights on those
        pairs), the score calibration and, when it helps, the parent's query map. The report's
        ``serving`` entry holds the chosen weights and their held-out gain. When the fit cannot
        be made, the parent-only weights are stored (a query given in both versions then
        searches exactly as the parent's query alone), and the report says why.
    config, overrides:
        A :class:`TrainConfig`, and/or field overrides (``steps=...``, ``seed=...``).
    extra_pairs:
        ``(new_raw (m, d_h), old (m, d_parent))``: more pairs that are not stored items, inputs
        embedded by both encoders (e.g. the sentences or short spans of the re-embedded
        documents, which look like the queries the new model will send). They train and are
        held out like the stored pairs; the serving fit uses stored items only
        (:func:`~compatindex.trainer.data.add_extra_pairs`; docs/trainer.md, "Ranking the
        stored gallery").

    Returns
    -------
    (version, report):
        The registered :class:`compatindex.Version` (None when refused or on a dry run), and
        the report (candidates, gate, data), also stored with the version.
    """
    import warnings

    base = config or TrainConfig()
    if config is None or method != "auto":  # an explicit method wins over the config's
        overrides["method"] = method
    if extra_dims is not None:
        overrides["extra_dims"] = extra_dims
    cfg = replace(base, **overrides)
    parent_v = index.version(parent) if parent is not None else index.latest
    if name is None:
        name = _next_name(index)
    elif name in {v.name for v in index.versions()}:  # fail before training, not after
        raise VersionExistsError(f"`name` {name!r} is already a version of this index",
                                 hint="pick another --name / name=")
    data = load_pairs(index, new_raw_vectors, ids, parent=parent_v.name, use_labels=use_labels, seed=cfg.seed,
                      explicit_parent=parent is not None)
    if extra_pairs is not None:
        if not isinstance(extra_pairs, (tuple, list)) or len(extra_pairs) != 2:
            raise InvalidInputError("`extra_pairs` must be a (new_raw_vectors, old_vectors) pair of arrays")
        data = add_extra_pairs(data, extra_pairs[0], extra_pairs[1])
    t0 = time.perf_counter()
    fit, report = fit_upgrade(data, d_parent=parent_v.dim, config=cfg, name=name, parent=parent_v.name)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report["data"]["n_extra_pairs"] = sum(isinstance(i, ExtraPair) for i in data.ids)
    report["parent"] = parent_v.name
    report["name"] = name
    passed = bool(report["gate"]["passed"])
    if dry_run:
        report["registered"] = False
        report["dry_run"] = _dry_run_summary(report)
        return None, report
    report["forced"] = bool(force and not passed)
    if not passed and not force:
        report["registered"] = False
        msg = (f"version {name!r} (parent {parent_v.name!r}) failed the compatibility gate and was not "
               "registered: " + "; ".join(report["gate"]["reasons"]))
        if strict:
            raise IncompatibleVersionError(
                msg, hint="check the pairs, run with dry_run=True / --dry-run to see the figures, or pass "
                          "force=True / --force to register it anyway")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return None, report
    if report["forced"]:
        warnings.warn(f"version {name!r} failed the compatibility gate and is registered anyway (force=True): "
                      + "; ".join(report["gate"]["reasons"]), RuntimeWarning, stacklevel=2)
    assert fit is not None
    report["registered"] = True
    cfg_resolved = replace(cfg, **{k: v for k, v in report.get("resolved", {}).items() if v is not None})
    v = _register(index, name, parent_v, fit, report, cfg_resolved)
    if serving:
        report["serving"] = _fit_serving(index, name, parent_v.name, data, fit.get("heldout_rows"))
        v = index.version(name)
    return v, report


def _fit_serving(index: Any, name: str, parent: str, data: PairData, rows: Any) -> dict[str, Any]:
    """Fit and store the serving parameters of the new version on the gate split's pairs.

    Returns the report entry: ``{"pairs", "fusion", "gain", "old_only", "query_map", "calibration"}``,
    or ``{"fusion": parent-only, "reason"}`` when no fit could be made.
    """
    from ..errors import CompatIndexError

    old_only = {name: 0.0, parent: 1.0}
    rows = np.asarray([] if rows is None else rows, dtype=np.int64)
    rows = rows[[not isinstance(data.ids[i], ExtraPair) for i in rows.tolist()]]  # stored items only
    if len(rows) < 3:
        index.set_serving(name, fusion=old_only)
        return {"fusion": old_only, "reason": "fewer than 3 held-out pairs of stored items: parent-only weights stored"}
    ids = [data.ids[i] for i in rows.tolist()]
    labels = None
    if data.labels is not None and data.classes is not None and bool(np.all(data.labels[rows] >= 0)):
        labels = [data.classes[i] for i in data.labels[rows].tolist()]  # the stored label values
    try:
        res = index.fit_serving(name, data.H[rows], ids=ids, raw=True, labels=labels)
    except CompatIndexError as exc:  # e.g. no neighbour both models agree on: serve the parent alone
        index.set_serving(name, fusion=old_only)
        return {"fusion": old_only, "pairs": int(len(rows)), "reason": f"{exc} (parent-only weights stored)"}
    fus = res.get("fusion") or {}
    qm = res.get("query_map") or {}
    out: dict[str, Any] = _clean({
        "pairs": int(len(rows)), "labels": labels is not None, "fusion": fus.get("fusion"), "gain": fus.get("gain"),
        "gains": fus.get("gains"), "old_only": fus.get("old_only"),
        "query_map": {"stored": qm.get("stored"), "reason": qm.get("reason")} if qm else None,
        "calibration": {str(k): {"a": c.get("a"), "b": c.get("b")} for k, c in (res.get("calibration") or {}).items()}})
    return out
