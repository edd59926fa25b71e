"""The compatibility gate: held-out evidence that a trained version may be registered.

The gate looks only at the *gate split*, which neither fitting nor model selection has seen
(docs/trainer.md, "The compatibility gate"). Two checks:

- **pairs** (always): each held-out item's new vector, in v-space, is searched against the
  stored parent gallery (its own vector plus up to 100k other stored items). Three rules, all of
  which must hold:

  1. *permutation test*: among the held-out items, the mean reciprocal rank of each item's own
     vector must beat the same statistic with the items' targets permuted, at ``p <= alpha``
     (999 permutations);
  2. *absolute floor*: the MRR in the stored gallery must exceed that of the same method
     fitted on shuffled pairs by ``margin`` (an effect size, not a ratio: with 100k distractors
     the shuffled MRR is about 1e-4, and twice that is still junk), and a sign test over
     per-item ranks (fit vs shuffled) must reach ``z >= 3``. When labels are stored, gallery
     items of the item's own label count as ties: a class-trained parent (Fashion-MNIST) puts a
     class's items almost on top of each other, and no map can order what the parent itself
     does not tell apart;
  3. *same-space control*: when the raw new vectors already live in the parent's space (their
     own alignment passes the permutation test, e.g. a fine-tune of the parent model), the fit
     must not align worse than leaving them untransformed.

- **labels** (when the gallery has them): leave-one-out retrieval on the held-out items,
  old/old, new/old and new/new; BCT's criterion M(new, old) > M(old, old) must hold, and a
  paired bootstrap interval of M(new, old) - M(old, old) over the queries must exclude a loss
  larger than ``tolerance`` (a non-inferiority bound: a handful of held-out items cannot pass).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import evaluation as ev

Z_MIN = 3.0
"""Sign-test z score the fitted map must reach against the shuffled control."""
ALPHA = 1e-3
"""Permutation-test level of the pairs rule (999 permutations: the smallest p is 0.001)."""
N_PERM = 999
N_BOOT = 1000
LABEL_TOLERANCE = 0.05
"""Non-inferiority bound of the label rule: the 95% bootstrap interval of M(new, old) -
M(old, old) must lie above ``-LABEL_TOLERANCE``."""


def _rank_matrix(S: np.ndarray) -> np.ndarray:
    """``R[i, j]``: rank (1 = first) of gallery item j in query i's ranking (ties: optimistic last)."""
    order = np.argsort(-S, axis=1, kind="stable")
    R = np.empty_like(order)
    rows = np.arange(S.shape[0])[:, None]
    R[rows, order] = np.arange(1, S.shape[1] + 1)[None, :]
    return R


def _own_ranks(S: np.ndarray) -> np.ndarray:
    own = np.diagonal(S)
    return 1 + (S > own[:, None]).sum(1)


def permutation_test(S: np.ndarray, *, n_perm: int = N_PERM, seed: int = 0) -> dict[str, float]:
    """Is each query's own item (the diagonal of ``S``) ranked better than a random other item?

    Parameters
    ----------
    S:
        ``(n, n)`` similarities of n queries with the n items they belong to (row i's own item
        is column i).

    Returns
    -------
    dict
        ``mrr`` (observed), ``null_mrr`` (mean over permutations), ``p`` (one-sided, with the
        ``+1`` correction, so never below ``1 / (n_perm + 1)``).

    Examples
    --------
    >>> round(permutation_test(np.eye(50), n_perm=99)["p"], 3)
    0.01
    """
    n = S.shape[0]
    obs = float(np.mean(1.0 / _own_ranks(S)))
    if n < 2:
        return {"mrr": obs, "null_mrr": obs, "p": 1.0}
    inv = 1.0 / _rank_matrix(S)
    rng = np.random.default_rng(seed + 31337)
    rows = np.arange(n)
    null = np.array([inv[rows, rng.permutation(n)].mean() for _ in range(n_perm)])
    return {"mrr": obs, "null_mrr": float(null.mean()), "p": float((1 + np.sum(null >= obs)) / (n_perm + 1))}


def alignment(Z: np.ndarray, G_own: np.ndarray, distractors: np.ndarray | None, *,
              score: str = "renorm") -> dict[str, Any]:
    """Held-out alignment of v-space queries ``Z`` ``(n, d_v)`` with their own parent vectors.

    The gallery is ``G_own`` ``(n, d_p)`` stacked over ``distractors`` ``(m, d_p)``.
    """
    gal = G_own if distractors is None or len(distractors) == 0 else np.vstack([G_own, distractors])
    out = ev.pair_alignment(Z, gal, score=score)
    out["gallery_size"] = int(len(gal))
    return out


def sign_test(ranks_fit: np.ndarray, ranks_ctrl: np.ndarray) -> float:
    """z score of 'the fitted map ranks the own item higher than the control' (ties dropped)."""
    w = int(np.sum(ranks_fit < ranks_ctrl))
    lo = int(np.sum(ranks_fit > ranks_ctrl))
    return (w - lo) / math.sqrt(w + lo) if w + lo else 0.0


def gallery_ranks(Z: np.ndarray, gallery: np.ndarray, *, labels: np.ndarray | None = None,
                  gallery_labels: np.ndarray | None = None, score: str = "renorm") -> np.ndarray:
    """``(n,)`` rank (1 = first) of gallery row i for query i (the first n rows are the own items).

    With ``labels`` (of the queries) and ``gallery_labels`` (``-1``: unknown), gallery items
    sharing the query's label do not count against it: a class-trained parent puts the items of
    a class almost on top of each other, and no map can be asked to order what the parent itself
    does not tell apart.
    """
    n = len(Z)
    ranks = np.empty(n, dtype=np.int64)
    gp = ev.gallery_prefix(gallery, Z.shape[1], score)
    for start in range(0, n, 256):
        sl = slice(start, min(n, start + 256))
        S = ev.prefix_similarity(Z[sl], gp, score)
        rows = np.arange(S.shape[0])
        own = S[rows, rows + start]
        beats = S > own[:, None]
        if labels is not None and gallery_labels is not None:
            same = (gallery_labels[None, :] == labels[sl, None]) & (labels[sl, None] >= 0)
            beats &= ~same
        ranks[sl] = 1 + beats.sum(1)
    return ranks


def pairs_gate(Z: np.ndarray, Z_shuffled: np.ndarray, H_raw: np.ndarray | None, G_own: np.ndarray,
               distractors: np.ndarray | None = None, *, margin: float = 0.01, alpha: float = ALPHA,
               score: str = "renorm", seed: int = 0, version: str = "the new version",
               labels: np.ndarray | None = None, gallery_labels: np.ndarray | None = None) -> dict[str, Any]:
    """The pairs rules on the gate split (module docstring).

    Parameters
    ----------
    Z, Z_shuffled:
        ``(n, d_v)`` held-out new vectors in v-space, through the fitted map and through the
        same method fitted on shuffled pairs.
    H_raw:
        ``(n, d_h)`` the same items' raw (normalized) new vectors: the same-space control
        (None: skipped).
    G_own, distractors:
        Stored parent vectors of the held-out items, and ``(m, d_p)`` of other stored items:
        the gallery the own vector is ranked in.
    labels, gallery_labels:
        ``(n,)`` and ``(m,)`` class indices (``-1``: unknown) of the held-out items and of the
        distractors: with them, same-label competitors are ties (:func:`gallery_ranks`).
    version:
        Name of the version being made, for the messages.
    """
    gal = G_own if distractors is None or len(distractors) == 0 else np.vstack([G_own, distractors])
    glab = None
    if labels is not None and gallery_labels is not None and len(gallery_labels) == len(gal) - len(G_own):
        glab = np.concatenate([np.asarray(labels), np.asarray(gallery_labels)])
    elif labels is not None and len(gal) == len(G_own):
        glab = np.asarray(labels)
    lab = None if glab is None else np.asarray(labels)
    r_fit = gallery_ranks(Z, gal, labels=lab, gallery_labels=glab, score=score)
    r_shuf = gallery_ranks(Z_shuffled, gal, labels=lab, gallery_labels=glab, score=score)
    mrr, mrr_shuf = float(np.mean(1.0 / r_fit)), float(np.mean(1.0 / r_shuf))
    perm = permutation_test(ev.similarity(Z, G_own, score=score), seed=seed)
    z_shuf = sign_test(r_fit, r_shuf)
    where = f"among {len(gal)} stored items" + (" (same-label items count as ties)" if glab is not None else "")
    reasons = []
    if perm["p"] > alpha:
        reasons.append(
            f"{version}: held-out new vectors do not find their own stored vectors better than chance "
            f"(MRR {perm['mrr']:.4f} among the {len(G_own)} held-out items vs {perm['null_mrr']:.4f} with the "
            f"items permuted, p={perm['p']:.3g} > {alpha:g}): are the new vectors joined to the right ids, "
            "and do they embed the same items?")
    if not (mrr > mrr_shuf + margin and z_shuf >= Z_MIN):
        reasons.append(
            f"{version}: held-out alignment is not clearly better than the same fit on shuffled pairs "
            f"(MRR {mrr:.4f} vs {mrr_shuf:.4f} {where}, sign-test z={z_shuf:.2f}; needs a margin of "
            f"{margin:g} and z >= {Z_MIN:g}): are the new vectors joined to the right ids, and do they "
            "embed the same items?")
    out: dict[str, Any] = {"mrr": mrr, "mrr_shuffled": mrr_shuf, "label_ties": glab is not None,
                           "heldout_mrr": perm["mrr"], "heldout_mrr_permuted": perm["null_mrr"],
                           "p_permutation": perm["p"], "z_vs_shuffled": round(z_shuf, 3), "margin": margin,
                           "alpha": alpha}
    if H_raw is not None and H_raw.shape[1] == G_own.shape[1]:
        raw_perm = permutation_test(ev.similarity(H_raw, G_own, score=score), seed=seed + 1)
        same = raw_perm["p"] <= alpha
        out["same_space"] = bool(same)
        out["heldout_mrr_untransformed"] = raw_perm["mrr"]
        if same and perm["mrr"] + margin < raw_perm["mrr"]:
            reasons.append(
                f"{version}: the raw new vectors already live in the parent's space (held-out MRR "
                f"{raw_perm['mrr']:.4f} untransformed) and the fitted map aligns worse ({perm['mrr']:.4f})")
    else:
        out["same_space"] = False  # another model's coordinates: no untransformed control
    out["fit"] = alignment(Z, G_own, distractors, score=score)
    out["shuffled"] = alignment(Z_shuffled, G_own, distractors, score=score)
    out["passed"] = not reasons
    out["reasons"] = reasons
    return out


def bootstrap_diff(a: np.ndarray, b: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(a) - mean(b)`` for paired per-query values."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed + 4099)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def label_gate(Z: np.ndarray, G: np.ndarray, labels: np.ndarray, *, H_new: np.ndarray | None = None,
               metric: str = "top1", tolerance: float = LABEL_TOLERANCE, score: str = "renorm",
               seed: int = 0, version: str = "the new version", parent: str = "the parent",
               distractors: np.ndarray | None = None, distractor_labels: np.ndarray | None = None
               ) -> dict[str, Any]:
    """old/old, new/old, new/new on held-out labelled items (leave-one-out) and BCT's criterion.

    old/old and new/old are measured as the index serves them: each held-out item (its stored
    parent vector, or its new vector) searches the held-out items' stored vectors (itself left
    out) plus ``distractors``, the other stored items, with their labels. A map judged among a
    thousand held-out items only can pass there and lose in the full gallery.

    Parameters
    ----------
    Z:
        ``(n, d_v)`` new vectors in v-space; ``G`` ``(n, d_p)`` their stored parent vectors;
        ``labels`` ``(n,)`` class indices (``-1``: unlabelled, left out).
    H_new:
        ``(n, d_h)`` raw (normalized) new vectors: the raw new model's new/new, for reference.
    tolerance:
        The 95% paired-bootstrap interval of M(new, old) - M(old, old) must lie above
        ``-tolerance``.
    distractors, distractor_labels:
        ``(m, d_p)`` other stored parent vectors and their ``(m,)`` label indices (``-1``:
        unknown), searched beside the held-out items' own.
    """
    m = np.asarray(labels) >= 0
    Z, G, y = Z[m], G[m], np.asarray(labels)[m]
    if len(y) < 2:
        return {"passed": True, "skipped": "fewer than 2 labelled held-out items", "reasons": []}
    if distractors is not None and (distractor_labels is None or len(distractor_labels) != len(distractors)):
        distractors = distractor_labels = None  # unlabelled distractors cannot be judged: held-out only
    # top-1/top-5 among every stored item given; AP (whole rankings) over the first 10,000
    pq_new = ev.label_retrieval(Z, G, y, distractors, distractor_labels, score=score, ap_max_gallery=10_000)
    pq_old = ev.label_retrieval(G, G, y, distractors, distractor_labels, score=score, ap_max_gallery=10_000)
    out: dict[str, Any] = {
        "old_old": ev.summarize_label_retrieval(pq_old),
        "new_old": ev.summarize_label_retrieval(pq_new),
        "new_new": ev.cmc_map(Z, Z, y, y, leave_one_out=True, score=score),
        "gallery_size": int(len(G) + (0 if distractors is None else len(distractors))),
    }
    if H_new is not None:
        out["raw_new_new"] = ev.cmc_map(H_new[m], H_new[m], y, y, leave_one_out=True, score=score)
    no, oo = out["new_old"][metric], out["old_old"][metric]
    key = "top1" if metric == "top1" else "ap"
    lo, hi = bootstrap_diff(pq_new[key], pq_old[key], seed=seed)
    out["metric"] = metric
    out["interval"] = [round(lo, 6), round(hi, 6)]
    out["tolerance"] = tolerance
    out["n"] = int(len(y))
    perfect = no >= 1.0 and oo >= 1.0  # a tie at a perfect score (an easy held-out set) is not a failure
    reasons = []
    if not (ev.empirical_compatibility(no, oo) or perfect):
        reasons.append(
            f"M(new, old) <= M(old, old) on held-out labels ({metric} {no:.4f} <= {oo:.4f}): {version} queries "
            f"would find {parent} items worse than {parent} queries do")
    elif lo < -tolerance and not perfect:
        reasons.append(
            f"M(new, old) > M(old, old) on held-out labels ({metric} {no:.4f} vs {oo:.4f}) is not established: "
            f"the 95% bootstrap interval of the difference is [{lo:+.4f}, {hi:+.4f}] over {len(y)} items, "
            f"below -{tolerance:g}; give more labelled pairs")
    out["passed"] = not reasons
    out["reasons"] = reasons
    return out
