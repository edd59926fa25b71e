"""Similarity metrics and score conventions, carried as data rather than assumed."""

from __future__ import annotations

import enum

from ..errors import InvalidInputError


class Metric(str, enum.Enum):
    """How vectors of a lineage are compared. Both are 'higher is better'.

    ``cosine`` stores unit vectors and compares them by inner product; ``ip`` compares raw
    inner products.
    """

    COSINE = "cosine"
    IP = "ip"

    @property
    def higher_is_better(self) -> bool:
        return True


class Score(str, enum.Enum):
    """Score convention for cross-version comparisons (docs/concepts.md, "Score conventions").

    ``pad``: inner product of the zero-padded vectors. ``renorm``: the query's cut to the shared
    prefix is rescaled to the norm of the whole query (cosine inside the shared prefix for the
    cosine metric). Gallery vectors are never rescaled: they are stored at their native dims,
    and cutting a gallery vector is done by padding the query, which keeps every shard search
    exact.
    """

    PAD = "pad"
    RENORM = "renorm"
    CALIBRATED = "calibrated"
    """``pad`` scores mapped onto one scale per (query version, gallery version) by the positive
    affine calibration stored with the versions (docs/concepts.md, "Migration-time serving");
    identity where none is stored."""


_METRIC_ALIASES = {"cosine": Metric.COSINE, "cos": Metric.COSINE, "ip": Metric.IP,
                   "inner_product": Metric.IP, "dot": Metric.IP}


def normalize_metric(metric: str | Metric, *, param: str = "metric") -> Metric:
    """Turn a user's metric name into a :class:`Metric`.

    Examples
    --------
    >>> normalize_metric("cos")
    <Metric.COSINE: 'cosine'>
    """
    if isinstance(metric, Metric):
        return metric
    key = str(metric).strip().lower()
    if key not in _METRIC_ALIASES:
        raise InvalidInputError(f"`{param}` must be 'cosine' or 'ip'; got {metric!r}")
    return _METRIC_ALIASES[key]


def normalize_score(score: str | Score, *, param: str = "score") -> Score:
    """Turn a user's score-convention name into a :class:`Score`.

    Examples
    --------
    >>> normalize_score("pad")
    <Score.PAD: 'pad'>
    """
    if isinstance(score, Score):
        return score
    key = str(score).strip().lower()
    try:
        return Score(key)
    except ValueError:
        raise InvalidInputError(f"`{param}` must be 'pad', 'renorm' or 'calibrated'; got {score!r}") from None
