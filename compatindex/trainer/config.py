"""Training configuration as dataclasses (fields described in docs/trainer.md).

Every field is a plain Python value, so ``asdict(config)`` is msgpack-able and stored with the
version it produced: a version can be rebuilt from the index alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import InvalidInputError

METHODS = ("auto", "isometric", "procrustes", "oca", "affine", "mlp")
"""Head-training methods accepted by :func:`compatindex.trainer.upgrade`."""

BACKBONE_METHODS = ("oca", "bct", "independent", "simplex")
"""Whole-model recipes accepted by :func:`compatindex.trainer.train_backbone`."""
PAIR_NEGATIVES = ("all", "other_labels", "same_labels")
"""Contrasts of the backbone's pair InfoNCE (``BackboneConfig.pair_negatives``)."""
UNLABELLED_TARGETS = ("own", "old_ranking")
"""Targets of an unlabelled item (label -1) in the InfoNCE against stored vectors
(``BackboneConfig.unlabelled_targets``)."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise InvalidInputError(msg)


class _DictMixin:
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (msgpack-able) of every field."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Rebuild from :meth:`to_dict` output; unknown keys are ignored (forward compatible)."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)


@dataclass
class TrainConfig(_DictMixin):
    """How :func:`~compatindex.trainer.upgrade` fits a head on frozen new-encoder outputs.

    Examples
    --------
    >>> TrainConfig(method="isometric", extra_dims=8).extra_dims
    8
    >>> TrainConfig.from_dict(TrainConfig(seed=3).to_dict()).seed
    3
    """

    method: str = "auto"
    """``auto`` fits every applicable method and keeps the best on the held-out split."""
    extra_dims: int | None = None
    """Budget of dims added to the parent's (``None``: ``max(8, d_parent // 8)``)."""
    holdout: float = 0.2
    """Fraction of the pairs held out for the gate (seen by nothing else)."""
    select_holdout: float = 0.2
    """Fraction of the remaining pairs held out for model selection and keep-best."""
    min_holdout: int = 20
    seed: int = 0
    normalize_input: bool | None = None
    """L2-normalize raw new vectors first (a ``normalize`` head step). ``None`` follows the
    parent's metric: normalized under ``cosine``, untouched under ``ip`` (where a norm is part
    of the score and normalizing would break an isometric upgrade)."""
    # closed forms
    ridge: float | str = "cv"
    """Ridge strength, relative to the mean eigenvalue of ``H^T H``; ``"cv"`` picks it from
    :data:`~compatindex.trainer.closed_form.RIDGE_GRID` by 3-fold cross-validation on the
    training split."""
    spectrum: str = "auto"
    """How the fitted map becomes a contraction: ``scale`` (divide by its top singular value
    when above 1), ``clip`` (clip every singular value at 1), or ``auto`` (the one that scores
    better in the same cross-validation)."""
    # torch heads (oca, mlp)
    steps: int = 400
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 3.0517578125e-5
    hidden: int = 0
    """Hidden width of the oca/mlp head; 0 means a linear oca head and ``2 * d`` for mlp."""
    oca_head: str = "isometry"
    """``isometry`` (semi-orthogonal map, new/new preserved exactly; stored as ``Q``),
    ``linear`` or ``mlp`` (stored as a head followed by ``normalize``)."""
    orth_impl: str = "auto"
    """Orthogonal layers: ``param`` (torch parametrizations.orthogonal), ``retract`` (Newton-Schulz
    retraction after each step, exact polar projection at the end) or ``auto`` (param up to 128 dims)."""
    w_ce: float = 1.0
    w_bct: float = 1.0
    w_cos: float = 1.0
    """Class terms of the head (CE of the training classifier, prototype CE, cosine to the
    prototype): 3 in all, balanced against the 3 of the pair terms below."""
    w_pair: float = 1.0
    w_nce: float = 2.0
    """Pair terms: cosine with the item's stored vector, and InfoNCE with in-batch negatives
    (contrastive beats MSE for post-hoc maps: "λ-orthogonality", NeurIPS 2025)."""
    temperature: float = 0.05
    """InfoNCE temperature of the pair term."""
    w_rank: float = 0.0
    """Weight of the gallery ranking term of the torch heads (:class:`~compatindex.trainer.losses.GalleryRankLoss`):
    each mapped query ranks the stored gallery as its item's stored old vector does. Needs the
    stored gallery (``upgrade`` always has it); 0 leaves it out."""
    rank_temperature: float = 0.05
    """Temperature of the gallery ranking term."""
    rank_gallery: int = 4096
    """Stored gallery rows the ranking term ranks (a fixed random draw when there are more)."""
    proto_temperature: float = 0.1
    """Temperature of the prototype CE (logits ``cos / T``)."""
    label_smoothing: float = 0.1
    device: str = "auto"
    threads: int | None = None
    """torch and BLAS threads while the trainer fits (None: the faster of 1 and all cores,
    measured once per process by :func:`compatindex.trainer.threads.best_threads`; on a busy
    2-core machine one thread was several times faster than two). Restored afterwards."""
    eval_every: int = 25
    """Torch heads score the selection split every this many steps and keep the best state."""
    patience: int | None = 4
    """Torch heads stop after this many selection-split scorings in a row without a gain (the
    best state is kept; None: train to ``steps`` or ``max_seconds``)."""
    max_seconds: float | None = 20.0
    """Wall-clock budget of one torch head's training (None: no limit); the best state so far
    is kept when it runs out, and the report says so."""
    quiet: bool = True
    # gate
    gate_metric: str = "top1"
    """Label gate: ``top1`` or ``mAP`` in M(new, old) > M(old, old)."""
    gate_margin: float = 0.01
    """Pairs gate: the gate split's MRR in the stored gallery must beat the shuffled-pairs
    control by this much (an absolute floor, not a ratio)."""

    def __post_init__(self) -> None:
        _check(self.method in METHODS, f"`method` must be one of {METHODS}; got {self.method!r}")
        _check(self.extra_dims is None or int(self.extra_dims) >= 0,
               f"`extra_dims` must be >= 0; got {self.extra_dims!r}")
        _check(0.0 < self.holdout < 1.0, f"`holdout` must be in (0, 1); got {self.holdout!r}")
        _check(0.0 < self.select_holdout < 1.0, f"`select_holdout` must be in (0, 1); got {self.select_holdout!r}")
        _check(self.spectrum in ("auto", "scale", "clip"),
               f"`spectrum` must be 'auto', 'scale' or 'clip'; got {self.spectrum!r}")
        _check(self.ridge == "cv" or (isinstance(self.ridge, (int, float)) and self.ridge >= 0),
               f"`ridge` must be 'cv' or a number >= 0; got {self.ridge!r}")
        _check(self.oca_head in ("isometry", "linear", "mlp"),
               f"`oca_head` must be 'isometry', 'linear' or 'mlp'; got {self.oca_head!r}")
        _check(self.gate_metric in ("top1", "mAP"), f"`gate_metric` must be 'top1' or 'mAP'; got {self.gate_metric!r}")
        _check(isinstance(self.w_rank, (int, float)) and math.isfinite(self.w_rank) and self.w_rank >= 0,
               f"`w_rank` must be a finite number >= 0; got {self.w_rank!r}")
        _check(isinstance(self.rank_temperature, (int, float)) and math.isfinite(self.rank_temperature)
               and self.rank_temperature > 0, f"`rank_temperature` must be a finite number > 0; got {self.rank_temperature!r}")
        _check(isinstance(self.rank_gallery, int) and not isinstance(self.rank_gallery, bool) and self.rank_gallery >= 2,
               f"`rank_gallery` must be an integer >= 2; got {self.rank_gallery!r}")
        _check(self.steps >= 0, f"`steps` must be >= 0; got {self.steps!r}")
        _check(self.batch_size >= 2, f"`batch_size` must be >= 2; got {self.batch_size!r}")
        _check(self.patience is None or (isinstance(self.patience, int) and not isinstance(self.patience, bool)
                                         and self.patience >= 1),
               f"`patience` must be None or an integer >= 1; got {self.patience!r}")


@dataclass
class BackboneConfig(_DictMixin):
    """Whole-model training (:func:`~compatindex.trainer.train_backbone`), OCA's recipe by default.

    OCA: Adam, lr 1e-3, wd 2^-15, label smoothing 0.1, loss weights 5 / 10 / 5, as in the code
    released with "Backward-Compatible Aligned Representations via an Orthogonal Transformation
    Layer" (Ricci et al., 2024); docs/trainer.md, "Whole-model training".
    """

    method: str = "oca"
    d_parent: int = 0
    """Prefix dims compared with the parent (the backbone emits ``d_parent + delta``)."""
    num_classes: int = 0
    epochs: int = 30
    max_steps: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 3.0517578125e-5
    warmup_steps: int | None = None
    """Linear warm-up steps before the cosine decay (None: 5% of the run, OCA's 5 of 100 epochs)."""
    label_smoothing: float = 0.1
    w_ce: float = 5.0
    w_bct: float = 10.0
    w_cos: float = 5.0
    w_pair: float = 5.0
    """Pair term weights, used only when ``old_vectors`` are given to ``train_backbone``."""
    w_nce: float = 1.0
    temperature: float = 0.05
    pair_negatives: str = "all"
    """Contrast of the pair InfoNCE: ``all`` (every other item of the batch is a negative),
    ``other_labels`` (items with another label only, iamcl2r's HOC: same-class neighbours are
    not pushed away) or ``same_labels`` (same-label items' stored vectors are positives too: a
    supervised contrastive loss against the stored gallery, the loss of new/old label
    retrieval itself)."""
    unlabelled_targets: str = "own"
    """Target of an unlabelled item (label -1) in the InfoNCE against stored vectors (the pair
    term of ``oca`` with ``pair_negatives`` other than ``all``, and ``simplex``'s ancestor term):
    ``own`` (its own stored vector, one-hot) or ``old_ranking`` (the old model's ranking of the
    batch, ``softmax(mu g_i g^T)``: the new query learns to rank the old gallery as the old query
    did, so classes the new version has no labels for keep the old model's neighbourhoods)."""
    w_ancestor_cos: float = 0.0
    """``simplex``: weight of ``1 - cos(h[:, :d_j], G_j)`` per ancestor (pins the absolute
    position, as BT²'s ``1 - <phi_old, h_bct>``); 0 leaves it out."""
    bct_alpha: float = 1.0
    """Weight of the influence loss in the BCT recipe (CE + alpha * CE(phi P^T))."""
    proto_temperature: float = 1.0
    """Temperature of the prototype CE of ``oca`` and ``bct`` (logits ``cos / T``); 1, OCA's and
    BCT's released code, leaves the logits in [-1, 1]."""
    simplex_scale: float = 10.0
    """``simplex``: the fixed d-simplex classifier's logits are ``scale * <h, vertex>``."""
    simplex_lambda: float = 0.1
    """``simplex``: ``lam CE_simplex + (1 - lam) InfoNCE to the ancestors`` (iamcl2r: 0.1)."""
    hoc_mu: float = 10.0
    """``simplex``: inverse temperature of the InfoNCE to the stored ancestor vectors (iamcl2r: 10)."""
    w_ancestor_proto: float = 0.0
    """``simplex``: weight of an optional prototype CE against each ancestor's stored class means
    (temperature ``ancestor_proto_temperature``); 0 leaves it out."""
    ancestor_proto_temperature: float = 0.1
    seed: int = 0
    device: str = "auto"
    quiet: bool = False
    orth_impl: str = "auto"
    """OCA's ``T⊥``: ``param``, ``retract`` or ``auto`` (see :class:`TrainConfig`)."""
    checkpoint_every: int = 0
    """Save a checkpoint every N steps (0: only at the end), when a path is given."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.method in BACKBONE_METHODS,
               f"`method` must be one of {BACKBONE_METHODS}; got {self.method!r}")
        _check(self.batch_size >= 2, f"`batch_size` must be >= 2; got {self.batch_size!r}")
        _check(self.epochs >= 0, f"`epochs` must be >= 0; got {self.epochs!r}")
        _check(self.pair_negatives in PAIR_NEGATIVES,
               f"`pair_negatives` must be one of {PAIR_NEGATIVES}; got {self.pair_negatives!r}")
        _check(self.unlabelled_targets in UNLABELLED_TARGETS,
               f"`unlabelled_targets` must be one of {UNLABELLED_TARGETS}; got {self.unlabelled_targets!r}")


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``."""
    if name != "auto":
        return name
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - closed forms need no torch
        return "cpu"
