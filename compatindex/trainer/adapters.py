"""Torch heads trained on frozen new-encoder outputs, and their export to stored head specs.

- :class:`OrthogonalLayer` is OCA's ``T⊥`` (``torch.nn.utils.parametrizations.orthogonal`` on a
  square ``Linear`` with bias), used only in front of the training classifier.
- Heads map a raw (normalized) new vector ``h`` ``(B, d_h)`` to a v-space vector ``z``
  ``(B, d_v)`` whose first ``d_p`` dims live in the parent space:
  ``isometry`` (a semi-orthogonal ``Linear``, so ``<z1, z2> = <h1, h2>`` exactly; exported as
  the version's ``Q``), ``linear`` and ``mlp`` (a linear skip plus a residual MLP; exported as
  head specs followed by ``normalize``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from .closed_form import complete_orthogonal
from .config import TrainConfig, resolve_device
from .losses import GalleryRankLoss, OCALoss, PairAlignLoss
from .progress import Progress


PARAM_MAX_DIM = 128
"""``orth_impl="auto"`` uses ``parametrizations.orthogonal`` up to this dim, retraction above it
(matrix_exp / householder cost about a second per step at 432 dims on this 2-core machine)."""


class RetractedOrthonormal(nn.Module):
    """``x -> W x (+ b)`` with ``W`` ``(d_out, d_in)``, ``d_out >= d_in``, kept orthonormal by
    retraction: after each optimizer step one Newton-Schulz step ``W <- W (3I - W^T W) / 2`` pulls
    it back (two matmuls); :meth:`project_` snaps it exactly (polar factor) at the end."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool = False) -> None:
        super().__init__()
        W = torch.empty(d_out, d_in)
        nn.init.orthogonal_(W)
        self.weight = nn.Parameter(W)
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    @torch.no_grad()
    def retract_(self) -> None:
        W = self.weight
        W.copy_(1.5 * W - 0.5 * W @ (W.T @ W))

    @torch.no_grad()
    def project_(self) -> None:
        """Snap ``W`` to its polar factor: Newton-Schulz in float64 (a few matmuls; it converges
        quadratically from a retracted W), with an SVD when W has drifted too far for it."""
        W = self.weight.double()
        eye = torch.eye(W.shape[1], dtype=W.dtype, device=W.device)
        M = W.T @ W
        if float((M - eye).abs().max()) < 0.5:
            for _ in range(12):  # each Gram serves the convergence check and the next step
                W = 1.5 * W - 0.5 * W @ M
                M = W.T @ W
                if float((M - eye).abs().max()) < 1e-12:
                    break
        if float((M - eye).abs().max()) >= 1e-9:
            U, _, Vh = torch.linalg.svd(self.weight.double(), full_matrices=False)
            W = U @ Vh
        self.weight.copy_(W.to(self.weight.dtype))


def _orthonormal_linear(d_in: int, d_out: int, *, bias: bool, impl: str) -> nn.Module:
    if impl == "auto":
        impl = "param" if max(d_in, d_out) <= PARAM_MAX_DIM else "retract"
    if impl == "param":
        return orthogonal(nn.Linear(d_in, d_out, bias=bias))
    if impl == "retract":
        return RetractedOrthonormal(d_in, d_out, bias=bias)
    raise ValueError(f"orth_impl must be auto, param or retract; got {impl!r}")


RETRACT_EVERY = 5
"""Optimizer steps between retractions of the head's orthonormal weight. One Newton-Schulz step
costs two (d x d) products, more than a batch's forward and backward at 1280 dims; a few Adam
steps at the isometry head's scaled rate leave ``W^T W`` within about 1e-3 of the identity,
where one Newton-Schulz step still brings it back (it converges quadratically), so retracting
every step doubled the head's cost (the `auto` timing of docs/benchmarks.md, §5)."""


def retract_all(model: nn.Module) -> None:
    """Pull every retracted orthonormal weight of ``model`` back after an optimizer step."""
    for m in model.modules():
        if isinstance(m, RetractedOrthonormal):
            m.retract_()


def project_all(model: nn.Module) -> None:
    """Snap every retracted orthonormal weight to the exact polar factor (end of training)."""
    for m in model.modules():
        if isinstance(m, RetractedOrthonormal):
            m.project_()


class OrthogonalLayer(nn.Module):
    """OCA's ``T⊥``: ``x -> W x + b`` with ``W`` in O(d) (bias not orthogonal, as in OCA).

    ``impl="param"`` is ``torch.nn.utils.parametrizations.orthogonal`` (OCA's choice);
    ``"retract"`` a plain weight kept orthogonal only by a loop that calls :func:`retract_all`;
    ``"auto"`` picks by size (the trainer's loops retract).
    """

    def __init__(self, d: int, *, impl: str = "param") -> None:
        super().__init__()
        self.lin = _orthonormal_linear(d, d, bias=True, impl=impl)

    def forward(self, x: Tensor) -> Tensor:  # (B, d) -> (B, d)
        return self.lin(x)


class IsometryHead(nn.Module):
    """``h -> M h`` with ``M`` ``(d_v, d_h)``, ``M^T M = I`` kept by the parametrization (or by
    retraction for large dims)."""

    def __init__(self, d_h: int, d_v: int, init: np.ndarray | None = None, *, impl: str = "param") -> None:
        super().__init__()
        if d_v < d_h:
            raise ValueError(f"an isometry needs d_v >= d_h; got d_v={d_v}, d_h={d_h}")
        self.lin = _orthonormal_linear(d_h, d_v, bias=False, impl=impl)
        if init is not None:
            W0 = torch.as_tensor(np.asarray(init), dtype=torch.float32)
            with torch.no_grad():
                if isinstance(self.lin, RetractedOrthonormal):
                    self.lin.weight.copy_(W0)
                else:
                    self.lin.weight = W0  # right_inverse of the parametrization

    def forward(self, h: Tensor) -> Tensor:
        return self.lin(h)

    def matrix(self) -> np.ndarray:
        w = self.lin.weight
        assert isinstance(w, Tensor)  # nn.Module attributes type as Tensor | Module
        return w.detach().cpu().double().numpy()


class LinearHead(nn.Module):
    """``h -> W h + b``, initialized at ``init`` (``(W, b)`` or ``W``)."""

    def __init__(self, d_h: int, d_v: int, init: Any = None) -> None:
        super().__init__()
        self.lin = nn.Linear(d_h, d_v)
        _init_linear(self.lin, init)

    def forward(self, h: Tensor) -> Tensor:
        return self.lin(h)


class MLPHead(nn.Module):
    """``h -> W h + b + MLP(h)``: a linear skip (initialized at ``init``) plus a residual MLP whose
    last layer starts at zero, so training starts from the closed form (Drift-Adapter style)."""

    def __init__(self, d_h: int, d_v: int, hidden: int, init: Any = None) -> None:
        super().__init__()
        self.skip = nn.Linear(d_h, d_v)
        _init_linear(self.skip, init)
        self.fc1 = nn.Linear(d_h, hidden)
        self.fc2 = nn.Linear(hidden, d_v)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.skip(h) + self.fc2(F.relu(self.fc1(h)))


def _init_linear(lin: nn.Linear, init: Any) -> None:
    if init is None:
        return
    W, b = init if isinstance(init, tuple) else (init, None)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(np.asarray(W), dtype=torch.float32))
        lin.bias.copy_(torch.zeros(lin.out_features) if b is None
                       else torch.as_tensor(np.asarray(b), dtype=torch.float32))


class HeadModel(nn.Module):
    """A head plus (when labels are given) OCA's training-time ``T⊥`` and classifier."""

    def __init__(self, kind: str, d_h: int, d_v: int, *, n_classes: int = 0, hidden: int = 0,
                 init: Any = None, orth_impl: str = "auto") -> None:
        super().__init__()
        self.kind = kind
        if kind == "isometry":
            self.head: nn.Module = IsometryHead(d_h, d_v, None if init is None else
                                                (init[0] if isinstance(init, tuple) else init),
                                                impl=orth_impl)
        elif kind == "linear":
            self.head = LinearHead(d_h, d_v, init)
        elif kind == "mlp":
            self.head = MLPHead(d_h, d_v, hidden or 2 * max(d_h, d_v), init)
        else:
            raise ValueError(f"head kind must be isometry, linear or mlp; got {kind!r}")
        # No T⊥ here: in front of an unconstrained Linear classifier an orthogonal layer
        # constrains nothing (fc(T z) is just another Linear), and at 1440 dims it cost half of
        # each step. OCA's T⊥ lives in whole-model training (backbone.py), where it separates the
        # compatible features from the classifier.
        self.fc = nn.Linear(d_v, n_classes, bias=False) if n_classes else None

    def embed(self, h: Tensor) -> Tensor:  # (B, d_h) -> (B, d_v)
        z = self.head(h)
        return z if self.kind == "isometry" else F.normalize(z, dim=1)

    def forward(self, h: Tensor) -> tuple[Tensor | None, Tensor]:
        z = self.embed(h)
        logits = self.fc(z) if self.fc is not None else None
        return logits, z


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def export_head(model: HeadModel, *, normalize_input: bool = True) -> dict[str, Any]:
    """Turn a trained head into what :meth:`Index.register_version` stores.

    Returns
    -------
    dict
        ``{"extension": Q or None, "head": spec or None, "dim": d_v, "raw_dim": d_h}``.
    """
    pre = [{"kind": "normalize"}] if normalize_input else []
    h = model.head
    if isinstance(h, IsometryHead):
        M = h.matrix()
        d_v, d_h = M.shape
        Q = complete_orthogonal(M).astype(np.float32)
        return {"extension": Q, "head": pre[0] if pre else None, "dim": int(d_v), "raw_dim": int(d_h)}
    if isinstance(h, LinearHead):
        lin = {"kind": "linear", "in_dim": h.lin.in_features, "out_dim": h.lin.out_features,
               "W": _np(h.lin.weight), "b": _np(h.lin.bias)}
        body: dict[str, Any] = lin
        d_h, d_v = h.lin.in_features, h.lin.out_features
    elif isinstance(h, MLPHead):
        d_h, d_v = h.skip.in_features, h.skip.out_features
        body = {"kind": "sum", "branches": [
            {"kind": "linear", "in_dim": d_h, "out_dim": d_v, "W": _np(h.skip.weight), "b": _np(h.skip.bias)},
            {"kind": "mlp", "in_dim": d_h, "out_dim": d_v, "activation": "relu", "residual": False,
             "layers": [{"W": _np(h.fc1.weight), "b": _np(h.fc1.bias)},
                        {"W": _np(h.fc2.weight), "b": _np(h.fc2.bias)}]},
        ]}
    else:  # pragma: no cover
        raise TypeError(type(h))
    spec = {"kind": "chain", "steps": [*pre, body, {"kind": "normalize"}]}
    return {"extension": None, "head": spec, "dim": int(d_v), "raw_dim": int(d_h)}


def fit_head(kind: str, H: np.ndarray, G: np.ndarray, *, d_v: int, cfg: TrainConfig,
             labels: np.ndarray | None = None, prototypes: np.ndarray | None = None,
             init: Any = None, desc: str = "head", val: tuple[Any, ...] | None = None,
             score: str = "renorm", gallery: np.ndarray | None = None) -> tuple[HeadModel, dict[str, Any]]:
    """Train a head on pairs (and labels when given) with the OCA recipe plus pair alignment.

    Parameters
    ----------
    H, G:
        ``(n, d_h)`` raw new vectors (already normalized when ``cfg.normalize_input``) and
        ``(n, d_p)`` stored parent vectors of the same items.
    labels:
        ``(n,)`` int class indices, ``-1`` where unknown; with ``prototypes`` ``(C, d_p)`` (NaN
        rows for classes without one) this adds the OCA terms.
    init:
        Closed-form start (``M`` for isometry, ``(W, b)`` for linear/mlp).
    val:
        ``(H, G, labels)`` of a selection split: every ``cfg.eval_every`` steps the head is
        scored there (new/old top-1 then pair MRR with labels, else pair MRR then recall@10), the
        best state is kept, and the start itself (step 0) is a candidate, so training never ends
        below its closed-form start on that split.
    score:
        ``renorm`` (cosine) or ``pad`` (inner product), as the parent's metric compares.
    gallery:
        ``(m, d_p)`` stored parent vectors of other items: with ``cfg.w_rank > 0`` the head also
        learns to rank them as each pair's stored vector does (at most ``cfg.rank_gallery``
        rows, a fixed draw; :class:`~compatindex.trainer.losses.GalleryRankLoss`).

    Returns
    -------
    (model, history):
        The trained :class:`HeadModel` (on CPU, eval mode) and the last loss terms, plus
        ``best_step``, ``steps_run`` and ``val_start`` / ``val_best`` when ``val`` is given.
    """
    from .threads import limit_threads

    with limit_threads(cfg.threads):
        return _fit_head(kind, H, G, d_v=d_v, cfg=cfg, labels=labels, prototypes=prototypes, init=init,
                         desc=desc, val=val, score=score, gallery=gallery)


def _val_score(model: HeadModel, val: tuple[Any, ...], score: str,
               rank: GalleryRankLoss | None = None) -> tuple[float, float]:
    from .. import evaluation as ev

    Hv, Gv, yv = val[:3]
    D, dl = (val[3], val[4]) if len(val) >= 5 else (None, None)
    model.eval()
    with torch.no_grad():
        p = next(model.parameters())
        Z = model.embed(torch.as_tensor(Hv, device=p.device)).cpu().numpy()
    model.train()
    if not np.all(np.isfinite(Z)):
        return (-np.inf, -np.inf)
    pa = ev.pair_alignment(Z, Gv, score=score)
    if rank is not None and not (yv is not None and np.sum(yv >= 0) >= 2):
        # trained to rank the stored gallery as the old queries do: scored on that, on held-out pairs
        dev = next(model.parameters()).device
        with torch.no_grad():
            kl = float(rank(torch.as_tensor(Z, device=dev), torch.as_tensor(np.asarray(Gv, np.float32), device=dev)))
        return (-kl, pa["mrr"])
    if yv is not None and np.sum(yv >= 0) >= 2:
        m = yv >= 0
        # top-1 among the stored gallery (distractors included), as the index will serve it
        t1 = ev.label_retrieval(Z[m], Gv[m], yv[m], D, dl, score=score, ap_max_gallery=0)["top1"]
        return (float(np.nanmean(t1)), pa["mrr"])
    return (pa["mrr"], pa["recall@10"])


def _fit_head(kind: str, H: np.ndarray, G: np.ndarray, *, d_v: int, cfg: TrainConfig,
              labels: np.ndarray | None, prototypes: np.ndarray | None, init: Any, desc: str,
              val: tuple[Any, ...] | None, score: str,
              gallery: np.ndarray | None = None) -> tuple[HeadModel, dict[str, Any]]:
    import copy
    import time

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    d_h, d_p = H.shape[1], G.shape[1]
    use_labels = labels is not None and prototypes is not None and bool(np.any(labels >= 0))
    n_classes = int(prototypes.shape[0]) if use_labels else 0  # type: ignore[union-attr]
    model = HeadModel(kind, d_h, d_v, n_classes=n_classes, hidden=cfg.hidden, init=init,
                      orth_impl=cfg.orth_impl).to(device)
    pair_loss = PairAlignLoss(d_p, w_cos=cfg.w_pair, w_nce=cfg.w_nce, tau=cfg.temperature).to(device)
    rank_loss = None
    if cfg.w_rank > 0 and gallery is not None and len(gallery) >= 2:
        rows = np.asarray(gallery, dtype=np.float32)
        if len(rows) > cfg.rank_gallery:
            rows = rows[np.sort(np.random.default_rng(cfg.seed).choice(len(rows), cfg.rank_gallery, replace=False))]
        rank_loss = GalleryRankLoss(torch.as_tensor(rows), tau=cfg.rank_temperature, score=score).to(device)
    oca_loss = None
    if use_labels:
        P = np.nan_to_num(np.asarray(prototypes, dtype=np.float32))
        has = torch.as_tensor(~np.isnan(np.asarray(prototypes)).any(1))
        oca_loss = OCALoss(torch.as_tensor(P), has, w_ce=cfg.w_ce, w_bct=cfg.w_bct, w_cos=cfg.w_cos,
                           label_smoothing=cfg.label_smoothing, temperature=cfg.proto_temperature).to(device)
    Ht = torch.as_tensor(np.asarray(H, dtype=np.float32), device=device)
    Gt = torch.as_tensor(np.asarray(G, dtype=np.float32), device=device)
    Yt = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=device) if use_labels else None
    # Adam moves every entry by about lr; an orthonormal column's entries are about 1/sqrt(d_v),
    # so the isometry head's step is scaled to keep the relative change of 64 dims (at 1280 dims
    # the unscaled 3e-3 moved entries by 10% a step and training diverged to NaN).
    lr0 = cfg.lr / max(1.0, math.sqrt(d_v / 64.0)) if kind == "isometry" else cfg.lr
    opt = torch.optim.Adam(model.parameters(), lr=lr0, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = Ht.shape[0]
    bs = min(cfg.batch_size, n)
    parts: dict[str, float] = {}
    model.train()
    best = best0 = _val_score(model, val, score, rank_loss) if val is not None else None
    best_state, best_step, steps_run, stale = None, 0, 0, 0
    t_end = None if cfg.max_seconds is None else time.perf_counter() + cfg.max_seconds
    with Progress(cfg.steps, desc=desc, quiet=cfg.quiet) as bar:
        for step in range(cfg.steps):
            lr = lr0 * 0.5 * (1 + math.cos(math.pi * step / max(cfg.steps, 1)))
            for gr in opt.param_groups:
                gr["lr"] = lr
            idx = torch.randperm(n, generator=gen)[:bs].to(device)
            logits, z = model(Ht[idx])
            loss, parts = pair_loss(z, Gt[idx])
            if rank_loss is not None:
                rk = rank_loss(z, Gt[idx])
                loss = loss + cfg.w_rank * rk
                parts = {**parts, "gallery_rank": float(rk.detach())}
            if oca_loss is not None and logits is not None and Yt is not None:
                y = Yt[idx]
                m = y >= 0
                if bool(m.any()):
                    l2, p2 = oca_loss(logits[m], z[m], y[m])
                    loss = loss + l2
                    parts = {**parts, **p2}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            parts["loss"] = float(loss.detach())
            bar.update(1, loss=parts["loss"])
            steps_run = step + 1
            out_of_time = t_end is not None and time.perf_counter() > t_end
            score_now = val is not None and (steps_run % max(cfg.eval_every, 1) == 0 or steps_run == cfg.steps
                                             or out_of_time)
            if steps_run % RETRACT_EVERY == 0 or score_now or steps_run == cfg.steps or out_of_time:
                retract_all(model)
            if score_now and val is not None:
                sc = _val_score(model, val, score, rank_loss)  # retracted W: orthonormal to ~1e-4, snapped at the end
                if sc > best:  # type: ignore[operator]
                    best, best_step = sc, steps_run
                    best_state = copy.deepcopy(model.state_dict())
                    stale = 0
                else:
                    stale += 1
            if out_of_time or not np.isfinite(parts["loss"]) or (cfg.patience is not None and stale >= cfg.patience):
                break
    if val is not None:
        if best_state is None:  # nothing beat the closed-form start: return to it
            model = HeadModel(kind, H.shape[1], d_v, n_classes=model.fc.out_features if model.fc is not None else 0,
                              hidden=cfg.hidden, init=init, orth_impl=cfg.orth_impl).to(device)
        else:
            model.load_state_dict(best_state)
    project_all(model)
    model.eval()
    hist: dict[str, Any] = {k: round(v, 6) for k, v in parts.items()}
    hist.update(best_step=best_step, steps_run=steps_run, stopped_early=steps_run < cfg.steps)
    if cfg.w_rank > 0:  # rows the ranking term ranked (0: no stored gallery was given, the term was left out)
        hist["gallery_rank_rows"] = 0 if rank_loss is None else rank_loss.rows
    if best0 is not None and best is not None:  # scored on ``val``
        hist.update(val_start=[round(float(x), 6) for x in best0], val_best=[round(float(x), 6) for x in best])
    return model.cpu(), hist


@torch.no_grad()
def embed_numpy(model: HeadModel, H: np.ndarray) -> np.ndarray:
    """``(n, d_h)`` -> ``(n, d_v)`` float32 through a trained head (CPU)."""
    return _np(model.embed(torch.as_tensor(np.asarray(H, dtype=np.float32))))
