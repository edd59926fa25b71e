"""Whole-model training of any ``nn.Module`` backbone that emits ``d_parent + delta`` features.

Recipes (docs/trainer.md, "Whole-model training"): ``oca`` (CE through OCA's orthogonal layer +
BCT CE on prototypes + cosine to prototype), ``bct`` (CE + alpha BCT CE), ``independent`` (CE
only, the baseline) and ``simplex`` (a fixed d-simplex classifier shared by every version + an
InfoNCE to the stored vectors of the same items in every ancestor version, for chains). OCA is
"Backward-Compatible Aligned Representations via an Orthogonal Transformation Layer" (Ricci et
al., 2024); BCT is "Towards Backward-Compatible Representation Learning" (Shen et al., CVPR
2020); ``simplex`` follows d-Simplex-HOC of "Stationary Representations: Optimally
Approximating Compatibility and Implications for Improved Model Replacements" (Biondi et al.,
CVPR 2024).

The stored vector is the normalized backbone output ``h_new``; its first ``d_parent`` dims are
compared with the parent (``Q = I``: the orthogonal layer is a training-time device).

Checkpoints hold ``{"model", "optimizer", "model_args", "config", "step", "rng", "history"}``;
training resumes from one exactly, and a seed makes a run repeatable. CPU by default, CUDA when
present (``device="auto"``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidInputError
from .adapters import OrthogonalLayer, retract_all
from .config import BackboneConfig, resolve_device
from .losses import AncestorNCE, BCTLoss, OCALoss, PairAlignLoss, SimplexCE, SimplexLoss
from .progress import Progress

RECIPE_VERSION = {"oca": 1, "bct": 1, "independent": 1, "simplex": 1}
"""Bumped whenever a recipe's training changes, so caches of trained models (the benchmarks')
can key on it and retrain."""


class CompatModel(nn.Module):
    """``backbone -> f (B, d_out) -> h_new = normalize(f) -> [T⊥] -> classifier``."""

    def __init__(self, backbone: nn.Module, d_out: int, num_classes: int, method: str, *,
                 orth_impl: str = "param", simplex_scale: float = 10.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.d_out, self.num_classes, self.method = int(d_out), int(num_classes), method
        self.orth_impl = orth_impl
        self.simplex_scale = float(simplex_scale)
        self.orth = OrthogonalLayer(d_out, impl=orth_impl) if method == "oca" else None
        self.fc: nn.Module
        if method == "simplex":  # fixed classifier (a buffer): the same for every version
            if self.num_classes - 1 > self.d_out:
                raise InvalidInputError(f"method 'simplex' needs d_out >= num_classes - 1 = {self.num_classes - 1}; "
                                        f"got d_out {self.d_out}")
            self.fc = SimplexCE(self.num_classes, scale=simplex_scale)
        else:
            self.fc = nn.Linear(d_out, num_classes, bias=False)

    def embed(self, x: Tensor) -> Tensor:  # (B, ...) -> (B, d_out), unit rows
        f = self.backbone(x)
        if f.ndim != 2 or f.shape[1] != self.d_out:
            raise InvalidInputError(f"the backbone must emit (B, {self.d_out}) features; got {tuple(f.shape)}")
        return F.normalize(f, dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.embed(x)
        if isinstance(self.fc, SimplexCE):
            return self.fc.logits(h), h
        logits = self.fc(self.orth(h) if self.orth is not None else h)  # (B, C)
        return logits, h


@dataclass
class TrainResult:
    """What :func:`train_backbone` returns."""

    model: CompatModel
    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: str | None = None

    def embed(self, X: Any, *, batch_size: int = 1024) -> np.ndarray:
        """``(n, d_out)`` float32 unit vectors for inputs ``X``."""
        return embed(self.model, X, batch_size=batch_size)


def _tensor(x: Any, dtype: torch.dtype | None = None) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(dtype) if dtype is not None else t


@torch.no_grad()
def embed(model: CompatModel | Callable[[Tensor], Tensor], X: Any, *, batch_size: int = 1024,
          normalize: bool = True) -> np.ndarray:
    """Run a model (a :class:`CompatModel` or any backbone callable) over ``X`` in batches.

    Returns ``(n, d)`` float32 (unit rows when ``normalize``).
    """
    Xt = _tensor(X, torch.float32)
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
        dev = next(model.parameters()).device
    else:
        dev = torch.device("cpu")
    outs = []
    for s in range(0, len(Xt), batch_size):
        xb = Xt[s: s + batch_size].to(dev)
        z = model.embed(xb) if isinstance(model, CompatModel) else model(xb)
        outs.append(F.normalize(z, dim=1) if normalize else z)
    if isinstance(model, nn.Module) and was_training:
        model.train()
    return torch.cat(outs).cpu().numpy().astype(np.float32) if outs else np.zeros((0, 0), np.float32)


def prototypes_from_model(old_model: Callable[[Tensor], Tensor], X: Any, y: Any, num_classes: int) -> np.ndarray:
    """``(C, d_old)`` class means of the old model's normalized features (BCT's synthesized
    classifier; NaN rows for classes absent from ``y``)."""
    from .data import prototypes_from_labels

    feats = embed(old_model, X)
    return prototypes_from_labels(feats, np.asarray(y, dtype=np.int64), num_classes)


def grow_output(parent: nn.Module, d_new: int, *, scale: float = 0.1, seed: int = 0) -> nn.Module:
    """A copy of the backbone ``parent`` whose last ``nn.Linear`` emits ``d_new >= d_old`` features.

    The first ``d_old`` output rows (weight and bias) are the parent's, so the copy starts out
    emitting the parent's features in its prefix; the new rows are small random ones (``scale``
    times the parent rows' std: exactly zero rows would get no gradient through the
    normalization). This is the continual protocol of iamcl2r (each version fine-tuned from the
    previous one) for a backbone whose output widens; ``train_backbone`` then trains the copy.
    """
    import copy

    child = copy.deepcopy(parent)
    last_name, last = None, None
    for name, mod in child.named_modules():
        if isinstance(mod, nn.Linear):
            last_name, last = name, mod
    if last is None or last_name is None:
        raise InvalidInputError("grow_output needs a backbone whose output layer is an nn.Linear")
    d_old = last.out_features
    if d_new < d_old:
        raise InvalidInputError(f"grow_output: d_new {d_new} < the parent's {d_old}")
    new = nn.Linear(last.in_features, d_new, bias=last.bias is not None).to(last.weight.device)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        std = float(last.weight.std())
        new.weight.copy_(torch.randn(d_new, last.in_features, generator=g).to(new.weight) * scale * std)
        new.weight[:d_old] = last.weight
        if last.bias is not None:
            new.bias.zero_()
            new.bias[:d_old] = last.bias
    owner = child
    *path, leaf = last_name.split(".")
    for p_ in path:
        owner = getattr(owner, p_)
    setattr(owner, leaf, new)
    return child


def _lr(cfg: BackboneConfig, step: int, total: int) -> float:
    """Linear warm-up, then a cosine decay to 0 (OCA: 5 warm-up epochs of 100)."""
    w = int(round(0.05 * total)) if cfg.warmup_steps is None else int(cfg.warmup_steps)
    if w and step < w:
        return cfg.lr * (step + 1) / w
    t = (step - w) / max(1, total - w)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def save_checkpoint(path: str | os.PathLike[str], model: CompatModel, opt: torch.optim.Optimizer,
                    cfg: BackboneConfig, step: int, history: list[dict[str, float]]) -> None:
    """Write the checkpoint atomically (temp file + rename)."""
    ck = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "model_args": {"d_out": model.d_out, "num_classes": model.num_classes, "method": model.method,
                       "orth_impl": model.orth_impl, "d_parent": cfg.d_parent,
                       "simplex_scale": model.simplex_scale, "recipe_version": RECIPE_VERSION.get(model.method),
                       "backbone": f"{type(model.backbone).__module__}.{type(model.backbone).__qualname__}"},
        "config": cfg.to_dict(),
        "step": step,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "history": history,
    }
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    torch.save(ck, tmp)
    os.replace(tmp, p)


def load_checkpoint(path: str | os.PathLike[str], backbone: nn.Module, *, map_location: str = "cpu"
                    ) -> tuple[CompatModel, dict[str, Any]]:
    """Rebuild a :class:`CompatModel` around ``backbone`` from a checkpoint (its own config)."""
    ck = torch.load(path, map_location=map_location, weights_only=False)
    a = ck["model_args"]
    model = CompatModel(backbone, a["d_out"], a["num_classes"], a["method"], orth_impl=a.get("orth_impl", "param"),
                        simplex_scale=a.get("simplex_scale", 10.0))
    model.load_state_dict(ck["model"])
    model.eval()
    return model, ck


def _ancestor_known(classes: list[Sequence[int] | None] | None, n_anc: int, C: int) -> list[Tensor | None]:
    """``train_backbone``'s ``ancestor_classes`` as one (C,) bool mask per ancestor (None: every class)."""
    if classes is None:
        return [None] * n_anc
    if len(classes) != n_anc:
        raise InvalidInputError(f"`ancestor_classes` needs one entry per ancestor ({n_anc}); got {len(classes)}")
    out: list[Tensor | None] = []
    for j, cl in enumerate(classes):
        if cl is None:
            out.append(None)
            continue
        ids = np.asarray(list(cl))
        if ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= C):
            raise InvalidInputError(f"`ancestor_classes[{j}]` must hold class ids in [0, {C}); got {list(cl)!r}")
        mask = torch.zeros(C, dtype=torch.bool)
        mask[torch.as_tensor(ids, dtype=torch.long)] = True
        out.append(mask)
    return out


def train_backbone(backbone: nn.Module, X: Any, y: Any, *, config: BackboneConfig,
                   prototypes: np.ndarray | None = None, old_vectors: np.ndarray | None = None,
                   ancestor_vectors: list[np.ndarray] | None = None,
                   ancestor_prototypes: list[np.ndarray] | None = None,
                   ancestor_classes: list[Sequence[int] | None] | None = None,
                   d_out: int | None = None,
                   checkpoint: str | os.PathLike[str] | None = None, resume: bool = True,
                   stop_at: int | None = None) -> TrainResult:
    """Train ``backbone`` (emitting ``(B, d_out)`` features, ``d_out = d_parent + delta``).

    Parameters
    ----------
    backbone:
        Any module mapping a batch of ``X`` to features.
    X, y:
        Training inputs ``(n, ...)`` and int labels ``(n,)`` in ``[0, num_classes)``.
    config:
        :class:`BackboneConfig` (``method``, ``d_parent``, ``num_classes``, ``epochs``, ...).
    prototypes:
        ``(C, d_parent)`` old-space class prototypes (stored-gallery class means, or
        :func:`prototypes_from_model`); NaN rows for classes without one. Needed by oca/bct.
    old_vectors:
        ``(n, d_parent)`` stored parent vectors of the training items themselves (when the
        training set is the stored gallery): adds the pair term ``w_pair (1 - cos) + w_nce
        InfoNCE`` between each prefix ``h[:, :d_parent]`` and its own old vector (BT²'s
        ``1 - <phi_old(x), h_bct>`` plus in-batch negatives). Not used by ``simplex``.
    ancestor_vectors:
        ``simplex`` only: one ``(n, d_j)`` array per stored ancestor version (oldest first, any
        ``d_j <= d_out``), the stored vectors of the training items themselves; the InfoNCE
        term pulls ``h[:, :d_j]`` to each. None or empty: the first version (simplex CE only).
    ancestor_prototypes:
        ``simplex`` only, with ``config.w_ancestor_proto > 0``: ``(C, d_j)`` class means of each
        ancestor's stored vectors (NaN rows for classes without one).
    ancestor_classes:
        ``simplex`` only: one entry per ancestor, the class ids that ancestor was trained with
        labels for (None: every class). In an ancestor's InfoNCE term an item of another class
        targets that ancestor's own ranking of the batch's same-label items
        (:func:`compatindex.trainer.losses.ranked_positives`) rather than every same-label
        vector alike: the ancestor's space does not group a class it never had labels for.
    d_out:
        The backbone's output dim (default: probed with one batch).
    checkpoint:
        Path of the checkpoint: written every ``config.checkpoint_every`` steps and at the end;
        when it exists and ``resume``, training continues from it.
    stop_at:
        Stop after this global step (simulates an interruption; the checkpoint is written).

    Returns
    -------
    TrainResult
    """
    cfg = config
    device = resolve_device(cfg.device)
    Xt = _tensor(X, torch.float32) if not isinstance(X, Tensor) else X
    yt = _tensor(y, torch.long)
    n = len(yt)
    C = cfg.num_classes or int(yt.max()) + 1
    if cfg.method in ("oca", "bct"):
        if prototypes is None:
            raise InvalidInputError(f"method {cfg.method!r} needs `prototypes` (C, d_parent)",
                                    hint="use the stored gallery's class means or prototypes_from_model()")
        P = np.asarray(prototypes, dtype=np.float32)
        if P.shape[0] != C or (cfg.d_parent and P.shape[1] != cfg.d_parent):
            raise InvalidInputError(f"`prototypes` must be ({C}, {cfg.d_parent or 'd_parent'}); got {P.shape}")
    torch.manual_seed(cfg.seed)
    if d_out is None:
        with torch.no_grad():
            d_out = int(backbone(Xt[:2]).shape[1])
    model = CompatModel(backbone, d_out, C, cfg.method, orth_impl=cfg.orth_impl,
                        simplex_scale=cfg.simplex_scale).to(device)
    loss_fn: nn.Module | None = None
    if cfg.method == "oca":
        has = torch.as_tensor(~np.isnan(P).any(1))
        loss_fn = OCALoss(torch.as_tensor(np.nan_to_num(P)), has, w_ce=cfg.w_ce, w_bct=cfg.w_bct,
                          w_cos=cfg.w_cos, label_smoothing=cfg.label_smoothing,
                          temperature=cfg.proto_temperature).to(device)
    elif cfg.method == "bct":
        has = torch.as_tensor(~np.isnan(P).any(1))
        loss_fn = BCTLoss(torch.as_tensor(np.nan_to_num(P)), has, alpha=cfg.bct_alpha,
                          label_smoothing=cfg.label_smoothing, temperature=cfg.proto_temperature).to(device)
    anc: list[Tensor] = []
    known: list[Tensor | None] = []
    if cfg.method == "simplex":
        for j, A in enumerate(ancestor_vectors or []):
            At = torch.as_tensor(np.asarray(A, dtype=np.float32))
            if At.ndim != 2 or len(At) != n or At.shape[1] > d_out:
                raise InvalidInputError(f"`ancestor_vectors[{j}]` must be ({n}, d_j <= {d_out}); got {tuple(At.shape)}")
            anc.append(At)
        known = [None if k is None else k.to(device) for k in _ancestor_known(ancestor_classes, len(anc), C)]
        aps = [torch.as_tensor(np.asarray(P_, dtype=np.float32)) for P_ in (ancestor_prototypes or [])]
        if cfg.w_ancestor_proto and len(aps) != len(anc):
            raise InvalidInputError("`ancestor_prototypes` needs one (C, d_j) array per ancestor")
        loss_fn = SimplexLoss(C, lam=cfg.simplex_lambda, mu=cfg.hoc_mu, scale=cfg.simplex_scale,
                              w_cos=cfg.w_ancestor_cos,
                              label_smoothing=cfg.label_smoothing, ancestor_prototypes=aps,
                              w_proto=cfg.w_ancestor_proto,
                              proto_temperature=cfg.ancestor_proto_temperature,
                              same_label_positives=cfg.pair_negatives == "same_labels",
                              unlabelled_targets=cfg.unlabelled_targets).to(device)
    elif ancestor_vectors or ancestor_classes:
        raise InvalidInputError("`ancestor_vectors` and `ancestor_classes` are for method 'simplex'")
    pair_fn: PairAlignLoss | None = None
    Gt: Tensor | None = None
    label_nce: AncestorNCE | None = None
    if old_vectors is not None:
        Gt = torch.as_tensor(np.asarray(old_vectors, dtype=np.float32))
        if Gt.ndim != 2 or len(Gt) != n or (cfg.d_parent and Gt.shape[1] != cfg.d_parent):
            raise InvalidInputError(f"`old_vectors` must be ({n}, {cfg.d_parent or 'd_parent'}); got {tuple(Gt.shape)}")
        pair_fn = PairAlignLoss(Gt.shape[1], w_cos=cfg.w_pair, w_nce=cfg.w_nce, tau=cfg.temperature).to(device)
        label_nce = AncestorNCE(mu=1.0 / cfg.temperature, same_label_positives=cfg.pair_negatives == "same_labels",
                                unlabelled_targets=cfg.unlabelled_targets) \
            if cfg.pair_negatives != "all" else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    bs = min(cfg.batch_size, n)
    per_epoch = math.ceil(n / bs)
    total = per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    step, history = 0, []
    if checkpoint is not None and resume and Path(checkpoint).exists():
        ck = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, history = int(ck["step"]), list(ck["history"])
        torch.set_rng_state(ck["rng"]["torch"])
        if ck["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
    end = total if stop_at is None else min(total, stop_at)
    model.train()
    with Progress(end - step, desc=f"train {cfg.method}", quiet=cfg.quiet) as bar:
        while step < end:
            epoch, k = divmod(step, per_epoch)
            # the batch order depends only on (seed, epoch): a resumed run sees the same batches
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
            idx = perm[k * bs: (k + 1) * bs]
            xb, yb = Xt[idx].to(device), yt[idx].to(device)
            for gr in opt.param_groups:
                gr["lr"] = _lr(cfg, step, total)
            logits, h = model(xb)
            if isinstance(loss_fn, SimplexLoss):
                loss, parts = loss_fn(h, [A[idx].to(device) for A in anc], yb, known)
            elif loss_fn is None:
                loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
                parts = {"ce": float(loss.detach())}
            else:
                loss, parts = loss_fn(logits, h, yb)
            if pair_fn is not None and Gt is not None:
                gb = Gt[idx].to(device)
                if label_nce is not None:  # HOC-style (only other-label items are negatives) or supervised
                    lc = (1.0 - F.cosine_similarity(h[:, : gb.shape[1]], gb, dim=1)).mean()
                    ln = label_nce.one(h, gb, yb)
                    lp = cfg.w_pair * lc + cfg.w_nce * ln
                    pp = {"pair_cos": float(lc.detach()), "pair_nce": float(ln.detach())}
                else:
                    lp, pp = pair_fn(h, gb)
                loss = loss + lp
                parts = {**parts, **pp}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            retract_all(model)
            step += 1
            rec = {"step": step, "loss": float(loss.detach()), **parts}
            history.append(rec)
            bar.update(1, loss=rec["loss"])
            if checkpoint is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save_checkpoint(checkpoint, model, opt, cfg, step, history)
    if checkpoint is not None:
        save_checkpoint(checkpoint, model, opt, cfg, step, history)
    model.eval()
    return TrainResult(model=model, step=step, history=history,
                       checkpoint=None if checkpoint is None else str(checkpoint))
