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

from .config import UNLABELLED_TARGETS


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
                 label_smoothing: float = 0.1, temperature: float = 1.0) -> None:
        super().__init__()
        self.bct = PrototypeCE(prototypes, has_proto, label_smoothing=label_smoothing, temperature=temperature)
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


class GalleryRankLoss(nn.Module):
    """Ranking distillation against the stored gallery: the new query ranks it as the old one did.

    For a pair (raw new vector mapped to ``z``, stored old vector ``g``) the old model's query for
    that text *is* ``g`` (one model embeds queries and gallery), so its ranking of the stored
    gallery ``D`` ``(m, d_p)`` is ``t = softmax(<g, D> / tau)``; the loss is
    ``KL(t || softmax(<z[:, :d_p], D> / tau))`` averaged over the batch, both queries unit-norm
    (a query's scale never changes its ranking). Unlike the pair terms, which only ask each
    mapped query to find its own old vector, this trains every position of the ranking that
    retrieval in the old gallery reads, on the stored items themselves (docs/trainer.md,
    "Ranking the stored gallery"). Zero, with zero gradient, where the mapped query ranks ``D``
    exactly as ``g`` does.

    ``score``: ``renorm`` compares unit vectors (``D`` normalized), ``pad`` inner products with the
    stored norms of ``D``, as the index scores the parent's gallery.
    """

    def __init__(self, gallery: Tensor, *, tau: float = 0.05, score: str = "renorm") -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"`tau` must be > 0; got {tau!r}")
        if score not in ("renorm", "pad"):
            raise ValueError(f"`score` must be 'renorm' or 'pad'; got {score!r}")
        self.register_buffer("D", F.normalize(gallery, dim=1) if score == "renorm" else gallery)  # (m, d_p)
        self.tau = float(tau)
        self.rows = int(gallery.shape[0])

    def forward(self, z: Tensor, g: Tensor) -> Tensor:
        D = self.D
        assert isinstance(D, Tensor)
        d = D.shape[1]
        with torch.no_grad():
            t_log = F.log_softmax(F.normalize(g, dim=1) @ D.T / self.tau, dim=1)  # (B, m)
        s_log = F.log_softmax(F.normalize(z[:, :d], dim=1) @ D.T / self.tau, dim=1)  # (B, m)
        return (t_log.exp() * (t_log - s_log)).sum(1).mean()


def dsimplex(num_classes: int) -> Tensor:
    """``(K, K-1)`` unit vertices of the regular simplex (iamcl2r's ``dsimplex``): pairwise cosine
    ``-1/(K-1)``, centred at the origin.

    ``t = [I_n ; ((1 - sqrt(1 + n)) / n) 1^T]`` with ``n = K - 1``, centred by its column means and
    row-normalized ("Stationary Representations: Optimally Approximating Compatibility and
    Implications for Improved Model Replacements", Biondi et al., CVPR 2024).
    """
    K = int(num_classes)
    if K < 2:
        raise ValueError(f"a simplex needs at least 2 classes; got {K}")
    n = K - 1
    t = torch.cat([torch.eye(n, dtype=torch.float64),
                   torch.full((1, n), (1.0 - (1.0 + n) ** 0.5) / n, dtype=torch.float64)])  # (K, n)
    t = t - t.mean(0, keepdim=True)
    return F.normalize(t, dim=1).float()


class SimplexCE(nn.Module):
    """CE of a fixed d-simplex classifier: ``CE_ls(scale * h[:, :K-1] W^T, y)``, ``W`` ``(K, K-1)``.

    ``h`` is the unit feature of any version: the vertices sit in its first ``K - 1`` dims, which
    every version shares (they lie inside the first version's prefix), so the class regions do
    not move from one version to the next. ``scale`` stands in for the feature norm (iamcl2r
    leaves the feature unnormalized; here ``h`` is a unit vector).
    """

    W: Tensor

    def __init__(self, num_classes: int, *, scale: float = 10.0, label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.register_buffer("W", dsimplex(num_classes))  # (K, K-1)
        self.scale, self.label_smoothing = float(scale), label_smoothing

    def logits(self, h: Tensor) -> Tensor:  # (B, d >= K-1) -> (B, K)
        return self.scale * h[:, : self.W.shape[1]] @ self.W.T

    def forward(self, h: Tensor, y: Tensor) -> Tensor:
        keep = y >= 0  # label -1: an unlabelled item (pair terms only)
        if not bool(keep.any()):
            return h.sum() * 0.0
        return F.cross_entropy(self.logits(h[keep]), y[keep], label_smoothing=self.label_smoothing)


class AncestorNCE(nn.Module):
    """InfoNCE between each new feature's prefix and the stored older vector of the same item.

    For an ancestor with ``d_j`` dims: ``z = normalize(h[:, :d_j])``, ``g = normalize(G_j)``,
    logits ``mu z g^T``; the positive is the item's own old vector and the negatives are the
    other items of the batch *with another label* (same-label items are neither: iamcl2r's HOC
    loss, ``-mu <o_i, n_i> + logsumexp_j(mu <o_i, n_j>, y_j != y_i)``); an unlabelled item
    (label -1) has every other item as a negative. The loss is the mean over
    ancestors, so a version trained against every stored ancestor weighs each one equally.

    ``unlabelled_targets="old_ranking"`` replaces an unlabelled item's one-hot target by the
    old model's own ranking of the batch (:func:`old_ranking_targets`).
    """

    def __init__(self, *, mu: float = 10.0, same_label_positives: bool = False,
                 unlabelled_targets: str = "own") -> None:
        super().__init__()
        self.mu = float(mu)
        self.same_label_positives = bool(same_label_positives)
        if unlabelled_targets not in UNLABELLED_TARGETS:
            raise ValueError(f"`unlabelled_targets` must be one of {UNLABELLED_TARGETS}; got {unlabelled_targets!r}")
        self.old_ranking = unlabelled_targets == "old_ranking"

    def one(self, h: Tensor, g: Tensor, y: Tensor, known: Tensor | None = None) -> Tensor:
        """The loss against one ancestor's stored vectors ``g`` (B, d_j), labels ``y`` (B,).

        ``known`` (C,) bool: the classes this ancestor was given labels for (None: all). A
        labelled item of another class targets :func:`ranked_positives` instead of its
        supervised or HOC row.
        """
        d = g.shape[1]
        z = F.normalize(h[:, :d], dim=1)  # (B, d_j)
        gn = F.normalize(g, dim=1)  # (B, d_j)
        logits = self.mu * z @ gn.T  # (B, B)
        if self.same_label_positives:  # supervised: same-label stored vectors are positives too
            rows = _label_nce_rows(logits, y)
        else:
            eye = torch.eye(len(y), dtype=torch.bool, device=h.device)
            same = (y[:, None] == y[None, :]) & (y[:, None] >= 0)  # label -1: unlabelled, every other item a negative
            rows = F.cross_entropy(logits.masked_fill(same & ~eye, float("-inf")),
                                   torch.arange(len(y), device=h.device), reduction="none")
        if self.old_ranking and bool((y < 0).any()):
            soft = -(old_ranking_targets(gn, self.mu) * F.log_softmax(logits, dim=1)).sum(1)
            rows = torch.where(y < 0, soft, rows)
        if known is not None:
            outside = (y >= 0) & ~known[y.clamp(min=0, max=len(known) - 1)] | (y >= len(known))
            if bool(outside.any()):
                soft = -(ranked_positives(gn, y, self.mu) * F.log_softmax(logits, dim=1)).sum(1)
                rows = torch.where(outside, soft, rows)
        return rows.mean()

    def forward(self, h: Tensor, ancestors: list[Tensor], y: Tensor,
                known: list[Tensor | None] | None = None) -> Tensor:
        """Mean over ancestors; ``known[j]`` (C,) bool marks the classes ancestor j was given
        labels for (None, or no ``known``: every class), see :meth:`one`."""
        if not ancestors:
            return h.sum() * 0.0
        ks = known if known is not None else [None] * len(ancestors)
        return torch.stack([self.one(h, g, y, k) for g, k in zip(ancestors, ks)]).mean()


def ranked_positives(gn: Tensor, y: Tensor, mu: float) -> Tensor:
    """The old model's ranking of the batch's same-label items as a target (B, B).

    ``softmax(mu g_i g^T)`` restricted to the items with label ``y_i`` (the item itself always
    included; an unlabelled row keeps the whole ranking) and renormalized. It is the target of
    an item whose class the ancestor never had labels for: that ancestor's stored vectors of
    the class sit wherever its features put them, often in several clumps, so the supervised
    positives (every same-label vector alike) pull the new prefix towards the middle of a
    spread-out cloud, nearest to other classes (measured on the 4-version Fashion-MNIST chain:
    v4 queries of bags, a class only v4 had labels for, fell from 96.6 to 73.9 top-1 in the v3
    gallery). Weighting the positives by the ancestor's own similarity aims the new query at
    the same-label items the old query ranks first; the one-hot or whole-ranking targets
    (``unlabelled_targets``) ignore the label the new version does have and lost 1 to 3 top-1
    points in the older galleries instead. A constant: no gradient flows into ``gn``.
    """
    with torch.no_grad():
        t = old_ranking_targets(gn, mu)
        eye = torch.eye(len(y), dtype=torch.bool, device=gn.device)
        pos = ((y[:, None] == y[None, :]) & (y[:, None] >= 0)) | eye | (y[:, None] < 0)
        t = t * pos
        return t / t.sum(1, keepdim=True)


def old_ranking_targets(gn: Tensor, mu: float) -> Tensor:
    """The old model's ranking of the batch as a target distribution, ``softmax(mu g g^T)`` (B, B).

    ``gn`` (B, d) holds the batch's stored old vectors, unit norm. Row i is how the old query of
    item i (its stored vector: one model embeds queries and gallery) spreads over the batch's
    stored vectors at the loss's own temperature: most mass on itself, the rest on its old
    neighbours. Matching it teaches the new query to rank the old gallery as the old query did,
    which holds M(new, old) near M(old, old) on classes whose labels the new version never
    sees; a one-hot target on the item's own vector pushes its old neighbours away, same-class
    ones included. A constant: no gradient flows into the stored vectors.
    """
    with torch.no_grad():
        return F.softmax(mu * gn @ gn.T, dim=1)


def _label_nce_rows(logits: Tensor, y: Tensor) -> Tensor:
    """Per-row supervised contrastive loss (B,) of :func:`gallery_label_nce`, from its logits (B, B)."""
    eye = torch.eye(len(y), dtype=torch.bool, device=logits.device)
    pos = ((y[:, None] == y[None, :]) & (y[:, None] >= 0)) | eye
    return torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~pos, float("-inf")), 1)


def gallery_label_nce(h: Tensor, g: Tensor, y: Tensor, *, mu: float) -> Tensor:
    """Supervised contrastive loss of each new prefix against the batch's stored old vectors.

    ``z = normalize(h[:, :d])``, ``g = normalize(G)``, logits ``mu z g^T`` (B, B); every stored
    vector with the item's label is a positive (its own vector always is; an unlabelled item,
    label -1, has only its own), every other one a negative:
    ``-log sum_{j in pos(i)} exp(l_ij) + log sum_j exp(l_ij)``. This is the loss of label
    retrieval of the new query in the old gallery, which is what M(new, old) measures: the
    item's own old vector (the HOC term of :class:`AncestorNCE`) only reproduces the old
    model's errors, and a class prototype pulls queries into regions where the old model mixes
    classes (docs/trainer.md, "Whole-model training").
    """
    d = g.shape[1]
    logits = mu * F.normalize(h[:, :d], dim=1) @ F.normalize(g, dim=1).T
    return _label_nce_rows(logits, y).mean()


class SimplexLoss(nn.Module):
    """d-Simplex-HOC for a chain: ``lam CE_simplex(h, y) + (1 - lam) mean_j InfoNCE(h[:, :d_j], G_j)``.

    ``lam = 0.1`` and ``mu = 10`` are iamcl2r's; with no ancestor (the first version) only the
    simplex CE is left. Optional ``w_proto`` adds, for each ancestor, a prototype CE (temperature
    ``proto_temperature``) of ``h[:, :d_j]`` against that ancestor's stored class means (BCT's
    influence loss on the old gallery); 0 (the default) leaves it out. Optional ``w_cos`` adds
    ``mean_j (1 - cos(h[:, :d_j], G_j))``. ``same_label_positives`` makes the ancestor InfoNCE
    supervised (:func:`gallery_label_nce`); ``unlabelled_targets`` is :class:`AncestorNCE`'s.
    """

    def __init__(self, num_classes: int, *, lam: float = 0.1, mu: float = 10.0, scale: float = 10.0,
                 label_smoothing: float = 0.1, ancestor_prototypes: list[Tensor] | None = None,
                 w_proto: float = 0.0, proto_temperature: float = 0.1, w_cos: float = 0.0,
                 same_label_positives: bool = False, unlabelled_targets: str = "own") -> None:
        super().__init__()
        self.w_cos = float(w_cos)
        self.ce = SimplexCE(num_classes, scale=scale, label_smoothing=label_smoothing)
        self.nce = AncestorNCE(mu=mu, same_label_positives=same_label_positives,
                               unlabelled_targets=unlabelled_targets)
        self.lam, self.w_proto = float(lam), float(w_proto)
        protos = ancestor_prototypes or []
        self.protos = nn.ModuleList(
            [PrototypeCE(torch.nan_to_num(P), ~torch.isnan(P).any(1), label_smoothing=label_smoothing,
                         temperature=proto_temperature) for P in protos]) if w_proto else nn.ModuleList()

    def forward(self, h: Tensor, ancestors: list[Tensor], y: Tensor,
                known: list[Tensor | None] | None = None) -> tuple[Tensor, dict[str, float]]:
        ce = self.ce(h, y)
        parts = {"simplex_ce": float(ce.detach())}
        if not ancestors:
            return ce, parts
        nce = self.nce(h, ancestors, y, known)
        total = self.lam * ce + (1.0 - self.lam) * nce
        parts["ancestor_nce"] = float(nce.detach())
        if self.w_cos:
            cs = torch.stack([(1.0 - F.cosine_similarity(h[:, : g.shape[1]], g, dim=1)).mean() for g in ancestors]).mean()
            total = total + self.w_cos * cs
            parts["ancestor_cos"] = float(cs.detach())
        if self.w_proto and len(self.protos):
            lab = y >= 0  # unlabelled items (-1) have no prototype
            pc = torch.stack([p(h[lab, : int(p.P.shape[1])], y[lab]) for p in self.protos
                              if isinstance(p, PrototypeCE)]).mean()
            total = total + self.w_proto * pc
            parts["ancestor_proto"] = float(pc.detach())
        return total, parts
