"""Training data read from the index: pairs (raw new vector, stored parent vector), labels,
class prototypes and a distractor gallery for the alignment gate."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..core.validate import as_matrix
from ..errors import DimensionMismatchError, InvalidInputError, UnknownIdError


@dataclass
class PairData:
    """Paired training data.

    Attributes
    ----------
    ids:
        ``n`` external ids.
    H:
        ``(n, d_h)`` float32 raw new-encoder vectors (as given: heads normalize them).
    G:
        ``(n, d_p)`` float32 stored parent vectors of the same items.
    labels:
        ``(n,)`` int64 class index (``-1`` where the item has no label), or None.
    classes:
        Label value of each class index.
    prototypes:
        ``(C, d_p)`` float32 mean stored parent vector per class (NaN rows for classes with no
        stored vector), or None.
    gallery:
        ``(m, d_p)`` float32 stored parent vectors of items outside the pairs (distractors for
        the alignment gate; may be empty).
    """

    ids: list[Any]
    H: np.ndarray
    G: np.ndarray
    labels: np.ndarray | None = None
    classes: list[Any] | None = None
    prototypes: np.ndarray | None = None
    gallery: np.ndarray | None = None
    gallery_labels: np.ndarray | None = None
    """``(m,)`` int64 class index of each gallery row (``-1``: unknown), or None."""
    metric: str = "cosine"
    """The parent's metric (``cosine`` or ``ip``): how the gate and the fits compare vectors."""

    @property
    def score(self) -> str:
        """The :mod:`compatindex.evaluation` score convention of :attr:`metric`."""
        return "pad" if self.metric == "ip" else "renorm"

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: np.ndarray) -> PairData:
        return replace(self, ids=[self.ids[i] for i in idx], H=self.H[idx], G=self.G[idx],
                       labels=None if self.labels is None else self.labels[idx])

    def shuffled(self, seed: int = 0) -> PairData:
        """The same data with ``H`` joined to the wrong items (the control for the gate)."""
        perm = np.random.default_rng(seed + 7919).permutation(len(self))
        return replace(self, H=self.H[perm])


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """``(n, d)`` rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def class_index(labels: list[Any]) -> tuple[np.ndarray, list[Any]]:
    """Map label values (ints or strings, None = unknown) to ``(n,)`` int64 indices and the class list.

    Examples
    --------
    >>> class_index(["b", None, "a", "b"])
    (array([ 1, -1,  0,  1]), ['a', 'b'])
    """
    values = sorted({lab for lab in labels if lab is not None}, key=lambda v: (type(v).__name__, v))
    pos = {v: i for i, v in enumerate(values)}
    return np.array([pos[lab] if lab is not None else -1 for lab in labels], dtype=np.int64), values


def prototypes_from_labels(vectors: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``(C, d)`` mean vector per class index (BCT's old classifier; NaN rows for empty classes).

    Examples
    --------
    >>> prototypes_from_labels(np.array([[1., 0.], [0., 1.], [1., 1.]]), np.array([0, 0, 1]), 3)[:2].tolist()
    [[0.5, 0.5], [1.0, 1.0]]
    """
    v = np.asarray(vectors, dtype=np.float64)
    lab = np.asarray(labels)
    P = np.full((n_classes, v.shape[1]), np.nan)
    ok = lab >= 0
    sums = np.zeros((n_classes, v.shape[1]))
    np.add.at(sums, lab[ok], v[ok])
    cnt = np.bincount(lab[ok], minlength=n_classes)
    P[cnt > 0] = sums[cnt > 0] / cnt[cnt > 0, None]
    return P.astype(np.float32)


def split(n: int, holdout: float, *, seed: int = 0, min_holdout: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Random train / held-out split of ``n`` rows: ``(train_idx, test_idx)``."""
    n_test = min(max(int(round(n * holdout)), min(min_holdout, n // 2)), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


@dataclass(frozen=True)
class ExtraPair:
    """The id of a pair that is not a stored item (``upgrade(extra_pairs=...)``): row ``k`` of them."""

    k: int


def add_extra_pairs(data: PairData, H: Any, G: Any) -> PairData:
    """``data`` with more pairs that are not stored items: texts or images embedded by both models.

    Parameters
    ----------
    data:
        Pairs of stored items (:func:`load_pairs`).
    H:
        ``(m, d_h)`` raw new-encoder vectors, the same ``d_h`` as ``data.H``.
    G:
        ``(m, d_p)`` parent-model vectors of the same inputs, as the parent's encoder emits them
        (L2-normalized here under the ``cosine`` metric, as stored vectors are).

    Their ids are :class:`ExtraPair` (never a stored id) and their labels -1 (unknown): they
    train and are held out like the others, and never reach what needs a stored item (the
    serving fit, prototypes, the label gate).
    """
    Hx = as_matrix(H, dim=data.H.shape[1], param="extra_pairs[0]", context=" (the new vectors' dim)")
    Gx = as_matrix(G, dim=data.G.shape[1], param="extra_pairs[1]", context=" (the parent's dim)")
    if len(Hx) != len(Gx):
        raise InvalidInputError(f"`extra_pairs` must hold the same number of new and old vectors; got "
                                f"{len(Hx)} and {len(Gx)}")
    if data.metric != "ip":
        Gx = normalize_rows(Gx)
    ids = list(data.ids) + [ExtraPair(k) for k in range(len(Hx))]
    labels = None if data.labels is None else np.concatenate([data.labels, np.full(len(Hx), -1, np.int64)])
    return replace(data, ids=ids, H=np.vstack([data.H, Hx]), G=np.vstack([data.G, Gx]), labels=labels)


def pairs_from_arrays(H: np.ndarray, G: np.ndarray, labels: list[Any] | np.ndarray | None = None, *,
                      gallery: np.ndarray | None = None, gallery_labels: Any = None,
                      ids: list[Any] | None = None, metric: str = "cosine") -> PairData:
    """Build :class:`PairData` without an index (tests, benchmarks).

    Prototypes come from ``G`` plus ``gallery`` (with ``gallery_labels``) when labels are given.
    """
    H = np.ascontiguousarray(H, dtype=np.float32)
    G = np.ascontiguousarray(G, dtype=np.float32)
    if H.shape[0] != G.shape[0]:
        raise InvalidInputError(f"`H` and `G` must have the same rows; got {H.shape[0]} and {G.shape[0]}")
    gal = np.zeros((0, G.shape[1]), np.float32) if gallery is None else np.asarray(gallery, np.float32)
    lab_arr = classes = P = gal_idx = None
    if labels is not None:
        all_labels = list(labels) + (list(gallery_labels) if gallery_labels is not None else [])
        idx, classes = class_index(all_labels)
        lab_arr = idx[: len(G)]
        vecs = G if gallery_labels is None else np.vstack([G, gal])
        P = prototypes_from_labels(vecs, idx, len(classes))
        if gallery_labels is not None:
            gal_idx = idx[len(G):]
    return PairData(ids=list(range(len(G))) if ids is None else list(ids), H=H, G=G, labels=lab_arr,
                    classes=classes, prototypes=P, gallery=gal, gallery_labels=gal_idx, metric=metric)


def load_pairs(index: Any, new_raw: np.ndarray, ids: list[Any], *, parent: str, use_labels: bool = True,
               gallery_limit: int = 100_000, seed: int = 0, explicit_parent: bool = True) -> PairData:
    """Join raw new vectors with the stored parent vectors (and labels) of the same items.

    Parameters
    ----------
    index:
        An open :class:`compatindex.Index`.
    new_raw:
        ``(n, d_h)`` raw new-encoder vectors of items ``ids``.
    ids:
        ``n`` external ids; each must hold a vector of ``parent``.
    parent:
        The version the new one must be compatible with.
    use_labels:
        Read the stored labels: prototypes = mean stored parent vector per label over the whole
        (fetched) gallery.
    gallery_limit:
        At most this many stored items are read for prototypes and distractors.
    explicit_parent:
        Whether the caller named ``parent`` (else it is the latest version: the error then says
        how to pick another).
    """
    H = np.ascontiguousarray(new_raw, dtype=np.float32)
    ids = list(ids)
    if H.ndim != 2 or H.shape[0] != len(ids):
        raise DimensionMismatchError(
            f"`vectors` must be (n, d) with one row per id; got shape {H.shape} for {len(ids)} ids",
            hint="pass one raw new-encoder vector per id, in the order of the ids")
    if len(set(ids)) != len(ids):
        raise InvalidInputError("`ids` holds duplicates; give each item one raw new vector")
    if not np.all(np.isfinite(H)):
        raise InvalidInputError("`vectors` holds NaN or inf")
    hint = "pairs must be items stored in the parent version"
    if not explicit_parent:
        hint = (f"the parent defaults to the latest version, {parent!r}: pass parent= / --parent with the "
                f"version these items are stored in, or backfill them into {parent!r} first")
    try:
        pairs = index.fetch(parent, ids=ids)
    except UnknownIdError as exc:
        if "hold no vector" not in str(exc):
            raise  # ids the index does not hold at all
        raise InvalidInputError(f"some of the {len(ids)} ids hold no vector of version {parent!r} ({exc})",
                                hint=hint) from None
    pos = {i: k for k, i in enumerate(pairs.ids)}
    missing = [i for i in ids if i not in pos]
    if missing:  # fetch may skip items without a parent vector
        raise InvalidInputError(f"{len(missing)} of {len(ids)} ids hold no vector of version {parent!r}, "
                                f"e.g. {missing[:3]}", hint=hint)
    order = np.array([pos[i] for i in ids], dtype=np.int64)
    G = np.ascontiguousarray(np.asarray(pairs.vectors, dtype=np.float32)[order])
    gal_batch = index.fetch(parent, limit=gallery_limit, seed=seed)
    pair_set = set(ids)
    keep = [k for k, i in enumerate(gal_batch.ids) if i not in pair_set]
    gallery = np.asarray(gal_batch.vectors, dtype=np.float32)[keep] if keep else \
        np.zeros((0, G.shape[1]), np.float32)
    labels = classes = P = gal_idx = None
    if use_labels:
        pair_labels = [pairs.labels[k] for k in order]
        gal_labels = [gal_batch.labels[k] for k in keep]
        if any(lab is not None for lab in pair_labels):
            idx, classes = class_index(pair_labels + gal_labels)
            labels = idx[: len(ids)]
            gal_idx = idx[len(ids):]
            P = prototypes_from_labels(np.vstack([G, gallery]), idx, len(classes))
    m = index.version(parent).metric
    metric = getattr(m, "value", m)
    return PairData(ids=ids, H=H, G=G, labels=labels, classes=classes, prototypes=P, gallery=gallery,
                    gallery_labels=gal_idx, metric=str(metric))
