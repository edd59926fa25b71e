"""Compatibility losses as ``nn.Module`` s, shapes in comments.

OCA: "Backward-Compatible Aligned Representations via an Orthogonal Transformation Layer"
(Ricci et al., 2024). BCT: "Towards Backward-Compatible Representation Learning" (Shen et al.,
CVPR 2020). How the trainer uses them: docs/trainer.md, "Methods".

``P`` is the prototype matrix ``(C, d_p)``: the mean stored parent vector of each label, BCT's
"old classifier" (not re-normalized, as in OCA's code). Classes without a prototype (labels the
gallery never saw) are left out of the prototype terms by ``has_proto``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PrototypeCE(nn.Module):
    """BCT influence loss: label-smoothed CE of ``normalize(h_bct) P^T / temperature`` against ``y``.

    Only samples whose class has a prototype count, and the logits run over those classes.
    ``temperature`` divides the logits: with 1 (OCA's and BCT's code) they stay in [-1, 1] and
    the softmax can barely separate classes; the frozen-encoder heads use a lower one.
    """

    P: Tensor  # buffers (register_buffer), declared for the type checker
    has: Tensor
    remap: Tensor

    def __init__(self, prototypes: Tensor, has_proto: Tensor | None = None, *,
                 label_smoothing: float = 0.1, temperature: float = 1.0) -> None:
        super().__init__()
        C = prototypes.shape[0]
        self.temperature = float(temperature)
        has = torch.ones(C, dtype=torch.bool) if has_proto is None else has_proto.to(torch.bool)
        remap = torch.full((C,), -1, dtype=torch.long)
        remap[has] = torch.arange(int(has.sum()))
        self.register_buffer("P", prototypes if prototypes.is_floating_point() else prototypes.float())  # (C, d_p)
        self.register_buffer("has", has)  # (C,)
        self.register_buffer("remap", remap)  # (C,) class -> column among prototype classes
        self.label_smoothing = label_smoothing

    def forward(self, h_bct: Tensor, y: Tensor) -> Tensor:
        keep = self.has[y]  # (B,)
        if not bool(keep.any()):
            return h_bct.sum() * 0.0
        hn = F.normalize(h_bct[keep], dim=1)  # (b, d_p)
        logits = hn @ self.P[self.has].T / self.temperature  # (b, C')
        return F.cross_entropy(logits, self.remap[y[keep]], label_smoothing=self.label_smoothing)


class PrototypeCosine(nn.Module):
    """Mean ``1 - cos(h_bct, P[y])`` over samples whose class has a prototype."""

    P: Tensor  # buffers (register_buffer), declared for the type checker
    has: Tensor

    def __init__(self, prototypes: Tensor, has_proto: Tensor | None = None) -> None:
        super().__init__()
        C = prototypes.shape[0]
        has = torch.ones(C, dtype=torch.bool) if has_proto is None else has_proto.to(torch.bool)
        self.register_buffer("P", prototypes if prototypes.is_floating_point() else prototypes.float())
        self.register_buffer("has", has)

    def forward(self, h_bct: Tensor, y: Tensor) -> Tensor:
        keep = self.has[y]
        if not bool(keep.any()):
            return h_bct.sum() * 0.0
        return (1.0 - F.cosine_similarity(h_bct[keep], self.P[y[keep]], dim=1)).mean()


class OCALoss(nn.Module):
    """OCA: ``w_ce CE(fc(T(h_new)), y) + w_bct CE(ĥ P^T, y) + w_cos (1 - cos(ĥ, P[y]))``.

    Weights default to the 5 / 10 / 5 hard-coded in z3n0e/OCA; ``ĥ`` is the normalized prefix
    ``h_new[:, :d_p]``. Returns ``(total, parts)`` with each unweighted term in ``parts``.
    """

    def __init__(self, prototypes: Tensor, has_proto: Tensor | None = None, *, w_ce: float = 5.0,
                 w_bct: float = 10.0, w_cos: float = 5.0, label_smoothing: float = 0.1,
                 temperature: float = 1.0) -> None:
        super().__init__()
        self.bct = PrototypeCE(prototypes, has_proto, label_smoothing=label_smoothing, temperature=temperature)
        self.cos = PrototypeCosine(prototypes, has_proto)
        self.w = (w_ce, w_bct, w_cos)
        self.label_smoothing = label_smoothing
        self.d_p = int(prototypes.shape[1])

    def forward(self, logits: Tensor, h_new: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        # logits (B, C) from the orthogonal-layer classifier; h_new (B, d_v); y (B,)
        h_bct = h_new[:, : self.d_p]
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        bct = self.bct(h_bct, y)
        cos = self.cos(h_bct, y)
        total = self.w[0] * ce + self.w[1] * bct + self.w[2] * cos
        return total, {"ce": float(ce.detach()), "bct": float(bct.detach()), "cos": float(cos.detach())}


class BCTLoss(nn.Module):
    """BCT as in the OCA/BT² repos: ``CE(logits, y) + alpha CE_ls(normalize(phi[:, :d_p]) P^T, y)``."""

    def __init__(self, prototypes: Tensor, has_proto: Tensor | None = None, *, alpha: float = 1.0,
                 label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.bct = PrototypeCE(prototypes, has_proto, label_smoothing=label_smoothing)
        self.alpha = alpha
        self.label_smoothing = label_smoothing
        self.d_p = int(prototypes.shape[1])

    def forward(self, logits: Tensor, h_new: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        bct = self.bct(h_new[:, : self.d_p], y)
        return ce + self.alpha * bct, {"ce": float(ce.detach()), "bct": float(bct.detach())}


class PairAlignLoss(nn.Module):
    """Pair alignment of the prefix with each item's stored parent vector.

    ``w_cos * mean(1 - cos(z[:, :d_p], g)) + w_nce * InfoNCE(z[:, :d_p], g)``: the InfoNCE term
    (in-batch negatives, temperature ``tau``) keeps the other items' old vectors away, which is
    what retrieval needs; the cosine term pins the absolute position.
    """

    def __init__(self, d_p: int, *, w_cos: float = 1.0, w_nce: float = 1.0, tau: float = 0.05) -> None:
        super().__init__()
        self.d_p, self.w_cos, self.w_nce, self.tau = int(d_p), w_cos, w_nce, tau

    def forward(self, z: Tensor, g: Tensor) -> tuple[Tensor, dict[str, float]]:
        zp = F.normalize(z[:, : self.d_p], dim=1)  # (B, d_p)
        gn = F.normalize(g, dim=1)  # (B, d_p)
        cos = (1.0 - (zp * gn).sum(1)).mean()
        logits = zp @ gn.T / self.tau  # (B, B)
        nce = F.cross_entropy(logits, torch.arange(z.shape[0], device=z.device))
        return self.w_cos * cos + self.w_nce * nce, {"pair_cos": float(cos.detach()), "pair_nce": float(nce.detach())}
