"""Loss modules against plain-loop references of the OCA and BCT losses (docs/trainer.md, "Methods")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compatindex.trainer.losses import (AncestorNCE, BCTLoss, GalleryRankLoss, OCALoss, PairAlignLoss, PrototypeCE,
                                       gallery_label_nce)


def _ce_ls(logits: list[float], target: int, eps: float) -> float:
    """Label-smoothed CE of one sample, written out: (1-eps) * nll + eps * mean_c(-log p_c)."""
    m = max(logits)
    lse = m + math.log(sum(math.exp(v - m) for v in logits))
    logp = [v - lse for v in logits]
    return (1 - eps) * -logp[target] + eps * -sum(logp) / len(logp)


def _norm(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    B, C, d_p, d_v = 7, 5, 4, 6
    logits = torch.randn(B, C, generator=g, dtype=torch.float64)
    h = torch.nn.functional.normalize(torch.randn(B, d_v, generator=g, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 1, 2, 3, 4, 1, 3])
    P = torch.randn(C, d_p, generator=g, dtype=torch.float64) * 0.5
    return logits, h, y, P


def test_oca_loss_matches_loop(batch):
    logits, h, y, P = batch
    loss, parts = OCALoss(P, w_ce=5, w_bct=10, w_cos=5, label_smoothing=0.1).double()(logits, h, y)
    ce = bct = cos = 0.0
    for i in range(len(y)):
        yi = int(y[i])
        ce += _ce_ls(logits[i].tolist(), yi, 0.1)
        hb = _norm(h[i, :4].tolist())
        bct += _ce_ls([_dot(hb, P[c].tolist()) for c in range(P.shape[0])], yi, 0.1)
        cos += 1 - _dot(hb, _norm(P[yi].tolist()))
    n = len(y)
    ref = 5 * ce / n + 10 * bct / n + 5 * cos / n
    assert float(loss) == pytest.approx(ref, rel=1e-9)
    assert parts["ce"] == pytest.approx(ce / n) and parts["cos"] == pytest.approx(cos / n)


def test_prototype_terms_skip_classes_without_prototype(batch):
    logits, h, y, P = batch
    has = torch.tensor([True, True, False, True, False])
    got = PrototypeCE(P, has, label_smoothing=0.0).double()(h[:, :4], y)
    keep = [i for i in range(len(y)) if bool(has[int(y[i])])]
    cols = [c for c in range(5) if bool(has[c])]
    ref = 0.0
    for i in keep:
        hb = _norm(h[i, :4].tolist())
        ref += _ce_ls([_dot(hb, P[c].tolist()) for c in cols], cols.index(int(y[i])), 0.0)
    assert float(got) == pytest.approx(ref / len(keep), rel=1e-9)


def test_bct_loss_matches_loop(batch):
    logits, h, y, P = batch
    loss, _ = BCTLoss(P, alpha=2.0, label_smoothing=0.1).double()(logits, h, y)
    ref = 0.0
    for i in range(len(y)):
        yi = int(y[i])
        hb = _norm(h[i, :4].tolist())
        ref += _ce_ls(logits[i].tolist(), yi, 0.1) + 2.0 * _ce_ls([_dot(hb, P[c].tolist()) for c in range(5)], yi, 0.1)
    assert float(loss) == pytest.approx(ref / len(y), rel=1e-9)


def test_pair_align_loss_matches_loop():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 5, generator=g, dtype=torch.float64)
    old = torch.randn(6, 3, generator=g, dtype=torch.float64)
    loss, _ = PairAlignLoss(3, w_cos=2.0, w_nce=0.5, tau=0.1)(z, old)
    cos = nce = 0.0
    for i in range(6):
        zi = _norm(z[i, :3].tolist())
        sims = [_dot(zi, _norm(old[j].tolist())) for j in range(6)]
        cos += 1 - sims[i]
        nce += _ce_ls([s / 0.1 for s in sims], i, 0.0)
    assert float(loss) == pytest.approx(2.0 * cos / 6 + 0.5 * nce / 6, rel=1e-9)


def test_losses_backpropagate(batch):
    logits, h, y, P = batch
    h = h.clone().requires_grad_(True)
    loss, _ = OCALoss(P).double()(logits, h, y)
    loss.backward()
    assert h.grad is not None and torch.isfinite(h.grad).all() and h.grad[:, :4].abs().sum() > 0
    assert np.allclose(h.grad[:, 4:].numpy(), 0.0)  # prototype terms see only the prefix


def test_prototype_ce_temperature_divides_the_logits():
    import torch.nn.functional as F

    torch.manual_seed(0)
    P = torch.randn(3, 4, dtype=torch.float64)
    h = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    got = PrototypeCE(P, label_smoothing=0.0, temperature=0.1).double()(h, y)
    want = F.cross_entropy(F.normalize(h, dim=1) @ P.T / 0.1, y)
    assert float(got) == pytest.approx(float(want), rel=1e-12)


def _label_nce_loop(h, g, y, mu, *, old_ranking=False, known=None):
    """The supervised contrastive loss written out: -log(sum_pos e^l / sum_all e^l), mean over rows.

    ``old_ranking``: an unlabelled row is instead -sum_j p_ij log q_ij with p = softmax(mu g_i.g_j)
    and q = softmax(mu z_i.g_j) (``unlabelled_targets="old_ranking"``). ``known``: a set of
    classes; a labelled row of another class uses the same p restricted to its same-label
    columns and renormalized (``ancestor_classes``).
    """
    B, d = len(y), g.shape[1]
    z = [_norm(h[i, :d].tolist()) for i in range(B)]
    gn = [_norm(g[j].tolist()) for j in range(B)]
    tot = 0.0
    for i in range(B):
        logits = [mu * _dot(z[i], gn[j]) for j in range(B)]
        lse = math.log(sum(math.exp(v) for v in logits))
        if known is not None and y[i] >= 0 and y[i] not in known:
            cols = [j for j in range(B) if y[j] == y[i]]
            w = {j: math.exp(mu * _dot(gn[i], gn[j])) for j in cols}
            tot += -sum(w[j] / sum(w.values()) * (logits[j] - lse) for j in cols)
        elif old_ranking and y[i] < 0:
            t = [mu * _dot(gn[i], gn[j]) for j in range(B)]
            tl = math.log(sum(math.exp(v) for v in t))
            tot += -sum(math.exp(t[j] - tl) * (logits[j] - lse) for j in range(B))
        else:
            pos = [j for j in range(B) if j == i or (y[i] >= 0 and y[j] == y[i])]
            tot += -math.log(sum(math.exp(logits[j]) for j in pos)) + lse
    return tot / B


def test_gallery_label_nce_matches_loop():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(9, 6, generator=g, dtype=torch.float64)
    G = torch.randn(9, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 2, -1, 1, -1, 0, 2])
    got = float(gallery_label_nce(h, G, y, mu=5.0))
    assert got == pytest.approx(_label_nce_loop(h, G, y.tolist(), 5.0), rel=1e-10)
    # the AncestorNCE switch computes the same loss
    assert float(AncestorNCE(mu=5.0, same_label_positives=True).one(h, G, y)) == pytest.approx(got, rel=1e-12)


def test_gallery_label_nce_with_distinct_labels_is_plain_infonce():
    """No two items share a label: the only positive is the own vector, as in InfoNCE."""
    g = torch.Generator().manual_seed(4)
    h = torch.randn(6, 5, generator=g, dtype=torch.float64)
    G = torch.randn(6, 5, generator=g, dtype=torch.float64)
    logits = 7.0 * torch.nn.functional.normalize(h, dim=1) @ torch.nn.functional.normalize(G, dim=1).T
    ref = float(torch.nn.functional.cross_entropy(logits, torch.arange(6)))
    assert float(gallery_label_nce(h, G, torch.arange(6), mu=7.0)) == pytest.approx(ref, rel=1e-12)
    assert float(gallery_label_nce(h, G, torch.full((6,), -1), mu=7.0)) == pytest.approx(ref, rel=1e-12)


def test_old_ranking_targets_match_loop():
    g = torch.Generator().manual_seed(6)
    h = torch.randn(9, 6, generator=g, dtype=torch.float64)
    G = torch.randn(9, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, -1, 0, 2, -1, 1, -1, 0, 2])
    loss = AncestorNCE(mu=5.0, same_label_positives=True, unlabelled_targets="old_ranking")
    assert float(loss.one(h, G, y)) == pytest.approx(_label_nce_loop(h, G, y.tolist(), 5.0, old_ranking=True), rel=1e-10)
    # with every item labelled the option changes nothing
    yl = torch.tensor([0, 1, 0, 2, 3, 1, 3, 0, 2])
    assert float(loss.one(h, G, yl)) == pytest.approx(float(gallery_label_nce(h, G, yl, mu=5.0)), rel=1e-12)


@pytest.mark.parametrize("old_ranking", [False, True])
def test_ancestor_classes_rows_match_loop(old_ranking):
    """A labelled item of a class the ancestor never had labels for targets the ancestor's own
    ranking of the batch's same-label items; rows of known classes and unlabelled rows keep
    their loss."""
    g = torch.Generator().manual_seed(8)
    h = torch.randn(10, 6, generator=g, dtype=torch.float64)
    G = torch.randn(10, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 0, 2, -1, 3, 1, 2, 3, 0])
    loss = AncestorNCE(mu=5.0, same_label_positives=True,
                       unlabelled_targets="old_ranking" if old_ranking else "own")
    known = torch.tensor([True, True, False, False])  # the ancestor had labels for classes 0 and 1
    got = float(loss.one(h, G, y, known))
    assert got == pytest.approx(_label_nce_loop(h, G, y.tolist(), 5.0, old_ranking=old_ranking, known={0, 1}),
                                rel=1e-10)
    # every class known: the plain loss; through forward, one mask per ancestor
    assert float(loss.one(h, G, y, torch.ones(4, dtype=torch.bool))) == pytest.approx(float(loss.one(h, G, y)),
                                                                                      rel=1e-12)
    assert got != pytest.approx(float(loss.one(h, G, y)), rel=1e-3)
    both = float(loss(h, [G, G], y, [known, None]))
    assert both == pytest.approx((got + float(loss.one(h, G, y))) / 2, rel=1e-12)


def test_ranked_positives_put_no_mass_on_other_labels():
    from compatindex.trainer.losses import old_ranking_targets, ranked_positives

    g = torch.Generator().manual_seed(9)
    G = torch.nn.functional.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=1)
    y = torch.tensor([1, 1, 2, -1, 1, 2, 0])
    t = ranked_positives(G, y, 4.0)
    assert torch.allclose(t.sum(1), torch.ones(7, dtype=torch.float64))
    same = (y[:, None] == y[None, :]) | torch.eye(7, dtype=torch.bool)
    labelled = (y >= 0)[:, None]
    assert float(t[labelled.expand(-1, 7) & ~same].abs().max()) == 0.0
    # an unlabelled row keeps the whole ranking; a single-item class puts all mass on itself
    assert torch.allclose(t[3], old_ranking_targets(G, 4.0)[3])
    assert float(t[6, 6]) == pytest.approx(1.0)


def test_old_ranking_is_stationary_where_the_new_prefix_equals_the_old_vector():
    """A new query that ranks the old batch exactly as the old query did gets no gradient from
    the soft target, while the one-hot target still pushes it off its old neighbours."""
    g = torch.Generator().manual_seed(7)
    G = torch.randn(8, 5, generator=g, dtype=torch.float64)
    y = torch.full((8,), -1)
    grads = {}
    for t in ("own", "old_ranking"):
        h = torch.cat([G, torch.randn(8, 3, generator=g, dtype=torch.float64)], 1).requires_grad_(True)
        AncestorNCE(mu=5.0, unlabelled_targets=t)(h, [G], y).backward()
        grads[t] = float(h.grad.abs().max())
    assert grads["old_ranking"] < 1e-12
    assert grads["own"] > 1e-3


def test_unknown_unlabelled_targets_is_refused():
    from compatindex.errors import InvalidInputError
    from compatindex.trainer.config import BackboneConfig

    with pytest.raises(ValueError, match="unlabelled_targets"):
        AncestorNCE(unlabelled_targets="neighbours")
    with pytest.raises(InvalidInputError, match="unlabelled_targets.*'x'"):
        BackboneConfig(unlabelled_targets="x")


def test_simplex_loss_with_same_label_positives_uses_the_supervised_ancestor_term():
    """``pair_negatives="same_labels"`` reaches simplex's ancestor InfoNCE: per ancestor the
    supervised loss of :func:`gallery_label_nce`, averaged over ancestors."""
    from compatindex.trainer.losses import SimplexLoss

    g = torch.Generator().manual_seed(5)
    h = torch.randn(8, 12, generator=g, dtype=torch.float64)
    anc = [torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 9, generator=g, dtype=torch.float64)]
    y = torch.tensor([0, 1, 0, 2, 1, 3, 0, 2])
    sup = SimplexLoss(4, same_label_positives=True).double()
    _, parts = sup(h, anc, y)
    ref = sum(float(gallery_label_nce(h, a, y, mu=10.0)) for a in anc) / 2
    assert parts["ancestor_nce"] == pytest.approx(ref, rel=1e-9)
    _, plain = SimplexLoss(4).double()(h, anc, y)
    assert plain["ancestor_nce"] != pytest.approx(ref, rel=1e-3)  # the HOC term is another loss


def _softmax(v: list[float]) -> list[float]:
    m = max(v)
    e = [math.exp(x - m) for x in v]
    return [x / sum(e) for x in e]


@pytest.mark.parametrize("score", ["renorm", "pad"])
def test_gallery_rank_loss_matches_loop(score):
    """KL(old query's softmax over the stored gallery || new query's), written out; under ``pad`` the
    gallery keeps its stored norms, under ``renorm`` it is compared as unit vectors."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(5, 6, generator=g, dtype=torch.float64)
    old = torch.randn(5, 4, generator=g, dtype=torch.float64)
    D = torch.randn(9, 4, generator=g, dtype=torch.float64) * 1.7
    loss = GalleryRankLoss(D, tau=0.2, score=score)(z, old)
    rows = [_norm(r) for r in D.tolist()] if score == "renorm" else D.tolist()
    ref = 0.0
    for i in range(5):
        t = _softmax([_dot(_norm(old[i].tolist()), r) / 0.2 for r in rows])
        s = _softmax([_dot(_norm(z[i, :4].tolist()), r) / 0.2 for r in rows])
        ref += sum(ti * (math.log(ti) - math.log(si)) for ti, si in zip(t, s))
    assert float(loss) == pytest.approx(ref / 5, rel=1e-9)


def test_gallery_rank_loss_is_zero_and_stationary_where_the_new_query_ranks_like_the_old():
    """A new prefix pointing where the old vector points (any scale: a query's scale never changes
    its ranking) costs nothing and gets no gradient; the dims past the prefix are not read."""
    g = torch.Generator().manual_seed(4)
    old = torch.randn(6, 4, generator=g, dtype=torch.float64)
    D = torch.randn(20, 4, generator=g, dtype=torch.float64)
    rank = GalleryRankLoss(D, tau=0.1)
    z = torch.cat([2.5 * old, torch.randn(6, 3, generator=g, dtype=torch.float64)], 1).requires_grad_(True)
    loss = rank(z, old)
    loss.backward()
    assert abs(float(loss.detach())) < 1e-12 and float(z.grad.abs().max()) < 1e-12
    moved = torch.cat([old + 0.5 * torch.randn(6, 4, generator=g, dtype=torch.float64), z[:, 4:].detach()], 1)
    assert float(rank(moved, old)) > 1e-3


def test_gallery_rank_loss_refuses_bad_settings():
    with pytest.raises(ValueError, match="tau"):
        GalleryRankLoss(torch.zeros(3, 2), tau=0.0)
    with pytest.raises(ValueError, match="score.*'cosine'"):
        GalleryRankLoss(torch.zeros(3, 2), score="cosine")
