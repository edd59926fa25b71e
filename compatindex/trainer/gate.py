"""The compatibility gate: held-out evidence that a trained version may be registered.

Two checks (design.md §4):

- **labels**: leave-one-out retrieval on the held-out items, old/old (stored parent vectors),
  new/old (new queries in v-space against the stored parent vectors) and new/new; BCT's
  empirical criterion M(new, old) > M(old, old) must hold (M = top-1 or mAP).
- **pairs**: each held-out item's new vector searched against the stored parent gallery (its
  own vector plus distractors): rank of its own old vector, recall@1/10, MRR, mean cosine;
  compared with two controls, the untransformed raw vectors and the same method fitted on
  shuffled pairs. A version whose held-out alignment is not clearly better than the shuffled
  control (pairs joined to the wrong ids, another modality) is refused, and so is one that
  aligns worse than doing nothing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import evaluation as ev

Z_MIN = 3.0
"""Sign-test z score the fitted map must reach against the shuffled control."""


def _ranks(Z: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """``(n,)`` rank (1 = first) of row i of ``gallery`` for query i (n first rows are the own items)."""
    S = ev.similarity(Z, gallery)
    own = S[np.arange(len(Z)), np.arange(len(Z))]
    return 1 + (S > own[:, None]).sum(1)


def alignment(Z: np.ndarray, G_own: np.ndarray, distractors: np.ndarray | None) -> dict[str, Any]:
    """Held-out alignment of v-space queries ``Z`` ``(n, d_v)`` with their own parent vectors.

    The gallery is ``G_own`` ``(n, d_p)`` stacked over ``distractors`` ``(m, d_p)``.
    """
    gal = G_own if distractors is None or len(distractors) == 0 else np.vstack([G_own, distractors])
    out = ev.pair_alignment(Z, gal)
    out["gallery_size"] = int(len(gal))
    return out


def sign_test(ranks_fit: np.ndarray, ranks_ctrl: np.ndarray) -> float:
    """z score of 'the fitted map ranks the own item higher than the control' (ties dropped)."""
    w = int(np.sum(ranks_fit < ranks_ctrl))
    lo = int(np.sum(ranks_fit > ranks_ctrl))
    return (w - lo) / math.sqrt(w + lo) if w + lo else 0.0


def pairs_gate(Z: np.ndarray, Z_shuffled: np.ndarray, H_raw: np.ndarray, G_own: np.ndarray,
               distractors: np.ndarray | None, *, margin: float = 0.01) -> dict[str, Any]:
    """Compare the fitted map's held-out alignment with the two controls.

    Parameters
    ----------
    Z, Z_shuffled:
        ``(n, d_v)`` held-out new vectors in v-space, through the fitted map and through the
        same method fitted on shuffled pairs.
    H_raw:
        ``(n, d_h)`` the same items' raw new vectors (untransformed control, cut to the prefix).
    G_own, distractors:
        Stored parent vectors of the held-out items, and of other items.
    """
    gal = G_own if distractors is None or len(distractors) == 0 else np.vstack([G_own, distractors])
    r_fit, r_shuf = _ranks(Z, gal), _ranks(Z_shuffled, gal)
    fit = alignment(Z, G_own, distractors)
    shuf = alignment(Z_shuffled, G_own, distractors)
    raw = alignment(H_raw, G_own, distractors)
    z_shuf = sign_test(r_fit, r_shuf)
    reasons = []
    # Absolute MRR is tiny when the gallery holds many near-duplicates of an item (class-trained
    # models, large galleries), so a clear relative win also counts; the sign test must agree.
    better = fit["mrr"] > shuf["mrr"] + margin or fit["mrr"] > 2.0 * shuf["mrr"] > 0
    if not (better and z_shuf >= Z_MIN):
        reasons.append(
            f"held-out alignment is no better than the same fit on shuffled pairs (MRR {fit['mrr']:.4f} vs "
            f"{shuf['mrr']:.4f}, sign-test z={z_shuf:.2f}; needed a margin of {margin} or twice the MRR, and "
            f"z >= {Z_MIN}): are the new vectors joined to the "
            "right ids, and do they embed the same items?")
    if fit["mrr"] + margin < raw["mrr"]:
        reasons.append(f"the fitted map aligns worse than the untransformed vectors (MRR {fit['mrr']:.4f} vs "
                       f"{raw['mrr']:.4f})")
    return {"passed": not reasons, "reasons": reasons, "fit": fit, "shuffled": shuf, "untransformed": raw,
            "z_vs_shuffled": round(z_shuf, 3)}


def label_gate(Z: np.ndarray, G: np.ndarray, labels: np.ndarray, *, H_new: np.ndarray | None = None,
               metric: str = "top1") -> dict[str, Any]:
    """old/old, new/old, new/new on held-out labelled items (leave-one-out) and BCT's criterion.

    Parameters
    ----------
    Z:
        ``(n, d_v)`` new vectors in v-space; ``G`` ``(n, d_p)`` their stored parent vectors;
        ``labels`` ``(n,)`` class indices (``-1``: unlabelled, left out).
    H_new:
        ``(n, d_h)`` raw (normalized) new vectors: the raw new model's new/new, for reference.
    """
    m = np.asarray(labels) >= 0
    Z, G, y = Z[m], G[m], np.asarray(labels)[m]
    if len(y) < 2:
        return {"passed": True, "skipped": "fewer than 2 labelled held-out items", "reasons": []}
    kw = {"leave_one_out": True}
    out: dict[str, Any] = {
        "old_old": ev.cmc_map(G, G, y, y, **kw),
        "new_old": ev.cmc_map(Z, G, y, y, **kw),
        "new_new": ev.cmc_map(Z, Z, y, y, **kw),
    }
    if H_new is not None:
        out["raw_new_new"] = ev.cmc_map(H_new[m], H_new[m], y, y, **kw)
    no, oo = out["new_old"][metric], out["old_old"][metric]
    out["metric"] = metric
    # a tie at a perfect score (an easy held-out set) is not a failure
    out["passed"] = ev.empirical_compatibility(no, oo) or (no >= 1.0 and oo >= 1.0)
    out["reasons"] = [] if out["passed"] else [
        f"M(new, old) <= M(old, old) on held-out labels ({metric} {no:.4f} <= {oo:.4f}): v2 queries "
        "would find old items worse than v1 queries do"]
    return out
