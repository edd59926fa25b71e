"""Orchestration: fit candidate versions on pairs read from the index, select, gate, register.

``upgrade(index, new_raw_vectors, ids)`` is the entry point behind ``Index``'s trainer and
``compatindex upgrade``; :func:`fit_upgrade` does the same on in-memory :class:`PairData`
(benchmarks, tests) and registers nothing.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from .. import evaluation as ev
from ..errors import IncompatibleVersionError, InvalidInputError, VersionExistsError
from ..core.heads import apply_head
from . import closed_form as cf
from .config import TrainConfig
from .data import PairData, load_pairs, normalize_rows, split
from .gate import label_gate, pairs_gate

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


def fit_method(method: str, data: PairData, cfg: TrainConfig, *, d_parent: int) -> dict[str, Any]:
    """Fit one method on ``data``; returns ``{"extension", "head", "dim", "raw_dim", "info"}``."""
    Hn = normalize_rows(data.H) if cfg.normalize_input else data.H
    G = data.G
    d_h = Hn.shape[1]
    pre = {"kind": "normalize"} if cfg.normalize_input else None
    e = cfg.extra_dims if cfg.extra_dims is not None else default_extra_dims(d_parent)
    if method == "isometric":
        Q, info = cf.fit_isometric(Hn, G, extra_dims=e, ridge=cfg.ridge, spectrum=cfg.spectrum)
        return {"extension": Q, "head": pre, "dim": info["dim"], "raw_dim": d_h, "info": info}
    if method == "procrustes":
        Q, info = cf.fit_procrustes(Hn, G)
        return {"extension": Q, "head": pre, "dim": info["dim"], "raw_dim": d_h, "info": info}
    if method == "affine":
        W, b = cf.fit_affine(Hn, G, ridge=cfg.ridge)
        lin = {"kind": "linear", "in_dim": d_h, "out_dim": d_parent, "W": W, "b": b}
        spec = {"kind": "chain", "steps": [s for s in (pre, lin, {"kind": "normalize"}) if s is not None]}
        return {"extension": None, "head": spec, "dim": d_parent, "raw_dim": d_h,
                "info": {"dim": d_parent, "note": "query adapter: no extra dims, new/new not preserved"}}
    from .adapters import export_head, fit_head  # torch only when needed

    if method == "mlp":
        W, b = cf.fit_affine(Hn, G, ridge=cfg.ridge)
        model, hist = fit_head("mlp", Hn, G, d_v=d_parent, cfg=replace(cfg, w_ce=0.0), init=(W, b), desc="mlp")
        out = export_head(model, normalize_input=cfg.normalize_input)
        out["info"] = {"dim": d_parent, "final_loss": hist}
        return out
    if method == "oca":
        Q0, info0 = cf.fit_isometric(Hn, G, extra_dims=e, ridge=cfg.ridge, spectrum=cfg.spectrum)
        d_v = info0["dim"]
        M0 = Q0[:, :d_h].astype(np.float64)
        init: Any = M0 if cfg.oca_head == "isometry" else (M0, None)
        model, hist = fit_head(cfg.oca_head, Hn, G, d_v=d_v, cfg=cfg, labels=data.labels,
                               prototypes=data.prototypes, init=init, desc="oca")
        out = export_head(model, normalize_input=cfg.normalize_input)
        out["info"] = {"dim": d_v, "head": cfg.oca_head, "labels": data.labels is not None, "final_loss": hist}
        return out
    raise InvalidInputError(f"`method` must be one of isometric, procrustes, oca, affine, mlp; got {method!r}")


def _evaluate(fit: dict[str, Any], test: PairData, gallery: np.ndarray | None) -> dict[str, Any]:
    Z = to_space(fit, test.H)
    out: dict[str, Any] = {"pairs": ev.pair_alignment(Z, test.G if gallery is None or not len(gallery)
                                                     else np.vstack([test.G, gallery]))}
    if test.labels is not None and np.sum(test.labels >= 0) >= 2:
        m = test.labels >= 0
        y = test.labels[m]
        out["new_old"] = ev.cmc_map(Z[m], test.G[m], y, y, leave_one_out=True)
        out["new_new"] = ev.cmc_map(Z[m], Z[m], y, y, leave_one_out=True)
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


def fit_upgrade(data: PairData, *, d_parent: int, config: TrainConfig | None = None,
                methods: list[str] | None = None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Fit candidates on a training split, keep the best on the held-out split, run the gate.

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

    Returns
    -------
    (fit, report):
        ``fit`` is ``{"extension", "head", "dim", "raw_dim", "info"}`` of the winner (None when
        nothing could be fitted); ``report["gate"]["passed"]`` says whether it may be registered.
    """
    cfg = config or TrainConfig()
    if data.G.shape[1] != d_parent:
        raise InvalidInputError(f"stored parent vectors have dim {data.G.shape[1]}; `d_parent` says {d_parent}")
    n = len(data)
    if n < 10:
        raise InvalidInputError(f"need at least 10 pairs to fit and hold out; got {n}",
                                hint="give raw new vectors for more stored items")
    tr_idx, te_idx = split(n, cfg.holdout, seed=cfg.seed, min_holdout=cfg.min_holdout)
    train, test = data.subset(tr_idx), data.subset(te_idx)
    cands = methods or (list(ISOMETRIC_FAMILY) if cfg.method == "auto" else [cfg.method])
    report: dict[str, Any] = {
        "method": cfg.method,
        "data": {"n_pairs": n, "n_train": len(train), "n_heldout": len(test), "raw_dim": int(data.H.shape[1]),
                 "parent_dim": int(d_parent), "labels": data.labels is not None,
                 "n_classes": len(data.classes or []), "n_distractors": 0 if data.gallery is None
                 else int(len(data.gallery))},
        "candidates": [],
    }
    fits: dict[str, dict[str, Any]] = {}
    for m in cands:
        t0 = time.perf_counter()
        fit = fit_method(m, train, cfg, d_parent=d_parent)
        dt = time.perf_counter() - t0
        e = _evaluate(fit, test, data.gallery)
        fits[m] = fit
        report["candidates"].append({"method": m, "dim": fit["dim"], "fit_seconds": dt, "heldout": e,
                                     "info": fit.get("info", {})})
    best = max(report["candidates"], key=lambda c: _score(c["heldout"], cfg.gate_metric))
    chosen = best["method"]
    report["chosen"] = chosen
    fit = fits[chosen]
    # gate: controls on the held-out split
    shuf_fit = fit_method(chosen, train.shuffled(cfg.seed), cfg, d_parent=d_parent)
    Z = to_space(fit, test.H)
    Z_shuf = to_space(shuf_fit, test.H)
    H_raw = normalize_rows(test.H)
    gate: dict[str, Any] = {"pairs": pairs_gate(Z, Z_shuf, H_raw, test.G, data.gallery, margin=cfg.gate_margin)}
    reasons = list(gate["pairs"]["reasons"])
    if test.labels is not None:
        gate["labels"] = label_gate(Z, test.G, test.labels, H_new=H_raw, metric=cfg.gate_metric)
        reasons += gate["labels"]["reasons"]
    gate["passed"] = not reasons
    gate["reasons"] = reasons
    report["gate"] = gate
    report["dim"] = fit["dim"]
    return fit, _clean(report)


def upgrade(index: Any, new_raw_vectors: np.ndarray, ids: list[Any], *, method: str = "auto",
            parent: str | None = None, name: str | None = None, extra_dims: int | None = None,
            use_labels: bool = True, force: bool = False, strict: bool = False,
            config: TrainConfig | None = None, **overrides: Any) -> tuple[Any, dict[str, Any]]:
    """Learn the next compatible version against the stored gallery and register it if it passes.

    Parameters
    ----------
    index:
        An open, writable :class:`compatindex.Index`.
    new_raw_vectors:
        ``(n, d_h)`` raw outputs of the new encoder for stored items ``ids``.
    ids:
        ``n`` external ids of items that hold a vector of ``parent``.
    method:
        ``auto`` (default: isometric, procrustes and oca, best on held-out pairs), ``isometric``,
        ``procrustes``, ``oca``, ``affine`` or ``mlp``. With ``config`` given, the default
        ``"auto"`` keeps ``config.method``.
    parent:
        Version to stay compatible with (default: the latest).
    name:
        Name of the new version (default: ``v{N+1}``).
    extra_dims:
        Budget of dims added to the parent's (default ``max(8, d_parent // 8)``).
    use_labels:
        Use the labels stored with gallery items (prototypes, label gate).
    force:
        Register even when the gate refuses.
    strict:
        Raise :class:`~compatindex.errors.IncompatibleVersionError` when the gate refuses
        (instead of returning ``(None, report)``).
    config, overrides:
        A :class:`TrainConfig`, and/or field overrides (``steps=...``, ``seed=...``).

    Returns
    -------
    (version, report):
        The registered :class:`compatindex.Version` (None when refused), and the report
        (candidates, gate, data), also stored with the version.
    """
    base = config or TrainConfig()
    if config is None or method != "auto":  # an explicit method wins over the config's
        overrides["method"] = method
    if extra_dims is not None:
        overrides["extra_dims"] = extra_dims
    cfg = replace(base, **overrides)
    parent_v = index.version(parent) if parent is not None else index.latest
    taken = {v.name for v in index.versions()}
    if name is None:
        k = len(taken) + 1
        while f"v{k}" in taken:
            k += 1
        name = f"v{k}"
    elif name in taken:  # fail before training, not after
        raise VersionExistsError(f"`name` {name!r} is already a version of this index",
                                 hint="pick another --name / name=")
    data = load_pairs(index, new_raw_vectors, ids, parent=parent_v.name, use_labels=use_labels, seed=cfg.seed)
    t0 = time.perf_counter()
    fit, report = fit_upgrade(data, d_parent=parent_v.dim, config=cfg)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report["parent"] = parent_v.name
    report["name"] = name
    passed = bool(report["gate"]["passed"])
    report["forced"] = bool(force and not passed)
    if not passed and not force:
        report["registered"] = False
        if strict:
            raise IncompatibleVersionError(
                f"version {name!r} failed the compatibility gate: " + "; ".join(report["gate"]["reasons"]),
                hint="check the pairs, or pass force=True / --force to register it anyway")
        return None, report
    assert fit is not None
    report["registered"] = True
    config_d = _clean({**cfg.to_dict(), "fit_info": fit.get("info", {}), "trainer": "compatindex.trainer.upgrade"})
    v = index.register_version(name, parent_v.name, fit["dim"], extension=fit["extension"], head=fit["head"],
                               raw_dim=fit["raw_dim"], report=report, config=config_d)
    return v, report
