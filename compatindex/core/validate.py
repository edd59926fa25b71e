"""Validation at the public boundary: every input is checked here, before anything is written.

Internals trust what comes out of these functions.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np

from ..errors import DimensionMismatchError, DuplicateIdError, InvalidInputError, UnknownIdError
from .scoring import Metric

MAX_ID_BYTES = 512  # a string id longer than this is almost surely a mistake (and LMDB keys are capped)
INT_ID_MIN, INT_ID_MAX = -(2**63), 2**63 - 1


def as_matrix(x: Any, *, dim: int | None, param: str = "vectors", allow_empty: bool = False,
              context: str = "") -> np.ndarray:
    """Check a batch of vectors and return it as a C-contiguous ``(n, dim)`` float32 array.

    Accepts float16/32/64 arrays (or nested lists of floats). Integer, bool, complex and object
    arrays are refused: they are far more often a mistake (ids or labels passed as vectors) than data.

    Raises
    ------
    InvalidInputError
        Wrong dtype, wrong rank, empty batch, NaN or inf, values that overflow float32.
    DimensionMismatchError
        The second axis is not ``dim``.
    """
    if isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(f"`{param}` is not an array of numbers: {exc}") from None
    if arr.dtype.kind not in "f":
        raise InvalidInputError(
            f"`{param}` must hold float16/32/64 values; got dtype {arr.dtype}",
            hint="convert with np.asarray(x, dtype=np.float32) if the values really are vectors",
        )
    if arr.ndim == 1 and dim is not None and arr.shape[0] == dim:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidInputError(f"`{param}` must be a 2-D array (n, d); got shape {arr.shape}")
    if arr.shape[0] == 0 and not allow_empty:
        raise InvalidInputError(f"`{param}` is an empty batch (shape {arr.shape})")
    if dim is not None and arr.shape[1] != dim:
        raise DimensionMismatchError(f"`{param}` must have dim {dim}{context}; got {arr.shape[1]}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if out.size and not np.isfinite(out).all():
        bad = np.argwhere(~np.isfinite(out))[0]
        raise InvalidInputError(
            f"`{param}` holds NaN or inf (first at row {int(bad[0])}, column {int(bad[1])})"
        )
    return out


def normalize_rows(x: np.ndarray, *, metric: Metric, param: str = "vectors") -> np.ndarray:
    """Unit-normalize rows under the cosine metric; refuse zero rows there.

    ``x`` is ``(n, d)`` float32; the result is a new array (the input is never modified).
    """
    if metric is not Metric.COSINE:
        return x
    # float32 math, but scaled by the row max first so that tiny or huge rows neither
    # underflow nor overflow when squared
    scale = np.abs(x).max(axis=1)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    y = x / safe[:, None]
    norms = np.sqrt(np.einsum("ij,ij->i", y, y)) * safe
    zero = np.flatnonzero((scale == 0) | (norms < 1e-30))
    if zero.size:
        raise InvalidInputError(
            f"`{param}` row {int(zero[0])} is a zero vector, which has no direction under the cosine metric"
        )
    return np.ascontiguousarray(y / (norms / safe)[:, None], dtype=np.float32)


def id_kind(value: Any) -> str:
    """``"int"`` or ``"str"`` for one external id; raises for anything else."""
    if isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"`ids` must be ints or strings; got bool {value!r}")
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, str):
        return "str"
    raise InvalidInputError(f"`ids` must be ints or strings; got {type(value).__name__} {value!r}")


def as_ids(ids: Any, *, n: int | None, param: str = "ids", unique: bool = True) -> tuple[list[Any], str]:
    """Check a batch of external ids.

    Returns
    -------
    (list, kind)
        Python ints or strs, and ``"int"`` or ``"str"``.
    """
    if isinstance(ids, (str, bytes)) or isinstance(ids, numbers.Integral):
        ids = [ids]
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise InvalidInputError(f"`{param}` must be 1-D; got shape {ids.shape}")
        if ids.dtype.kind in "iu" and len(ids):
            # fast path for big integer batches: checks run vectorized
            if ids.dtype == np.uint64 and int(ids.max()) > INT_ID_MAX:
                raise InvalidInputError(f"`{param}` int ids must fit in int64; got {int(ids.max())}")
            if n is not None and len(ids) != n:
                raise InvalidInputError(f"`{param}` has {len(ids)} entries but `vectors` has {n} rows")
            if unique:
                srt = np.sort(ids)
                dup = np.flatnonzero(srt[1:] == srt[:-1])
                if dup.size:
                    raise DuplicateIdError(f"`{param}` repeats id {int(srt[dup[0]])!r} within one batch")
            return ids.astype(np.int64).tolist(), "int"
        if ids.dtype.kind in "iu":
            out: list[Any] = [int(v) for v in ids.tolist()]
        elif ids.dtype.kind in "UO":
            out = ids.tolist()
        else:
            raise InvalidInputError(f"`{param}` must hold ints or strings; got dtype {ids.dtype}")
    else:
        try:
            out = list(ids)
        except TypeError:
            raise InvalidInputError(f"`{param}` must be a sequence of ids; got {type(ids).__name__}") from None
    if not out:
        raise InvalidInputError(f"`{param}` is empty")
    kinds = {id_kind(v) for v in out}
    if len(kinds) > 1:
        raise InvalidInputError(f"`{param}` mixes int and str ids; one index holds one kind")
    kind = kinds.pop()
    if kind == "int":
        out = [int(v) for v in out]
        lo, hi = min(out), max(out)
        if lo < INT_ID_MIN or hi > INT_ID_MAX:
            raise InvalidInputError(f"`{param}` int ids must fit in int64; got {lo if lo < INT_ID_MIN else hi}")
    else:
        for v in out:
            if not v or len(v.encode("utf-8")) > MAX_ID_BYTES:
                raise InvalidInputError(f"`{param}` string ids must be 1..{MAX_ID_BYTES} bytes; got {v!r:.60}")
    if n is not None and len(out) != n:
        raise InvalidInputError(f"`{param}` has {len(out)} entries but `vectors` has {n} rows")
    if unique and len(set(out)) != len(out):
        seen: set[Any] = set()
        dup = next(v for v in out if v in seen or seen.add(v))  # type: ignore[func-returns-value]
        raise DuplicateIdError(f"`{param}` repeats id {dup!r} within one batch")
    return out, kind


def as_labels(labels: Any, *, n: int, param: str = "labels") -> list[Any] | None:
    """Check per-item labels: ``n`` ints or strings (None entries allowed), or None."""
    if labels is None:
        return None
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1:
            raise InvalidInputError(f"`{param}` must be 1-D; got shape {labels.shape}")
        labels = labels.tolist()
    labels = list(labels)
    if len(labels) != n:
        raise InvalidInputError(f"`{param}` has {len(labels)} entries but `vectors` has {n} rows")
    out: list[int | str | None] = []
    for v in labels:
        if v is None or isinstance(v, str):
            out.append(v)
        elif isinstance(v, (bool, np.bool_)):
            raise InvalidInputError(f"`{param}` must hold ints or strings; got bool {v!r}")
        elif isinstance(v, numbers.Integral):
            out.append(int(v))
        else:
            raise InvalidInputError(f"`{param}` must hold ints or strings; got {type(v).__name__} {v!r}")
    return out


def as_metadata(metadata: Any, *, n: int, param: str = "metadata") -> list[Any] | None:
    """Check per-item metadata: ``n`` dicts of msgpack-able values, or None."""
    if metadata is None:
        return None
    metadata = list(metadata)
    if len(metadata) != n:
        raise InvalidInputError(f"`{param}` has {len(metadata)} entries but `vectors` has {n} rows")
    import msgpack

    for i, m in enumerate(metadata):
        if m is not None and not isinstance(m, dict):
            raise InvalidInputError(f"`{param}[{i}]` must be a dict or None; got {type(m).__name__}")
        try:
            msgpack.packb(m, use_bin_type=True)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"`{param}[{i}]` is not msgpack-serializable: {exc}") from None
    return metadata


def as_k(k: Any, *, param: str = "k", max_k: int = 1_000_000) -> int:
    """Check the number of neighbours."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise InvalidInputError(f"`{param}` must be an int >= 1; got {k!r}")
    k = int(k)
    if k < 1 or k > max_k:
        raise InvalidInputError(f"`{param}` must be between 1 and {max_k}; got {k}")
    return k


def as_name(name: Any, *, param: str = "name") -> str:
    """Check a version name: 1..64 printable characters, no '/'."""
    if not isinstance(name, str) or not (1 <= len(name) <= 64) or not name.isprintable() or "/" in name:
        raise InvalidInputError(f"`{param}` must be a 1..64 character printable string without '/'; got {name!r}")
    return name


def as_dim(dim: Any, *, param: str = "dim") -> int:
    """Check a dimension: an int in 1..65536."""
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, numbers.Integral) or not 1 <= int(dim) <= 65536:
        raise InvalidInputError(f"`{param}` must be an int between 1 and 65536; got {dim!r}")
    return int(dim)


def check_unique(values: Sequence[Any], *, param: str) -> None:
    if len(set(values)) != len(values):
        raise DuplicateIdError(f"`{param}` repeats values")


def as_sample(limit: Any, seed: Any) -> tuple[int | None, np.random.Generator]:
    """Check a random draw's ``limit`` (an int >= 1, or None for all) and ``seed``."""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise InvalidInputError(f"`limit` must be an int >= 1; got {limit!r}")
    try:
        rng = np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"`seed` must be None or an int >= 0; got {seed!r} ({exc})") from None
    return limit, rng


def sample_rows(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted row numbers of ``limit`` rows drawn from ``n``, or None when all ``n`` are kept."""
    if limit is None or limit >= n:
        return None
    return np.sort(rng.choice(n, size=limit, replace=False))


def check_id_kind(stored: str | None, kind: str) -> None:
    """Refuse ids of the other kind than the index holds (``stored`` None: the first write)."""
    if stored is not None and stored != kind:
        raise InvalidInputError(f"`ids` are {kind} but this index holds {stored} ids")


def unknown_ids(ids: Sequence[Any], known: np.ndarray) -> UnknownIdError | None:
    """The error for ids not in the index (``known``: ``(n,)`` bool), or None when all are known."""
    missing = np.flatnonzero(~np.asarray(known, dtype=bool))
    if not missing.size:
        return None
    shown = ", ".join(repr(ids[i]) for i in missing[:5])
    return UnknownIdError(f"`ids` not in the index: {shown}" + (" ..." if missing.size > 5 else "")
                          + f" ({missing.size} of {len(ids)})")


def duplicate_ids(ids: Sequence[Any], existed: np.ndarray) -> DuplicateIdError:
    """The error for an add whose ids already exist (``existed``: ``(n,)`` bool, some True)."""
    existed = np.asarray(existed, dtype=bool)
    first = ids[int(np.flatnonzero(existed)[0])]
    return DuplicateIdError(
        f"`ids` {first!r} is already in the index ({int(existed.sum())} of {len(ids)} ids exist)",
        hint="use backfill() to give existing items a vector of another version",
    )
