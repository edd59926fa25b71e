"""msgpack-safe packing of heads, reports and configs (numpy arrays become tagged bytes).

Nothing in an index folder is ever unpickled or executed: arrays round-trip as
``{"__nd__": dtype, "shape": [...], "data": bytes}`` with a whitelist of dtypes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CorruptIndexError, InvalidInputError

_DTYPES = {"<f4", "<f8", "<f2", "<i4", "<i8", "|u1", "|b1"}


def pack_tree(obj: Any, *, path: str = "value") -> Any:
    """Turn numpy arrays and scalars inside dicts/lists into msgpack-able values."""
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        arr = arr.astype(dt)
        if arr.dtype.str not in _DTYPES:
            raise InvalidInputError(f"`{path}` holds an array of dtype {arr.dtype}, which cannot be stored")
        return {"__nd__": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): pack_tree(v, path=f"{path}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [pack_tree(v, path=f"{path}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    raise InvalidInputError(f"`{path}` holds a {type(obj).__name__}, which cannot be stored (use numbers, strings, lists, dicts, arrays)")


def unpack_tree(obj: Any) -> Any:
    """Inverse of :func:`pack_tree` (arrays come back as read-write copies)."""
    if isinstance(obj, dict):
        if "__nd__" in obj:
            dt = obj["__nd__"]
            if dt not in _DTYPES:
                raise CorruptIndexError(f"stored array has unexpected dtype {dt!r}")
            shape = tuple(int(s) for s in obj["shape"])
            data = obj["data"]
            if len(data) != int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize:
                raise CorruptIndexError("stored array has the wrong number of bytes")
            return np.frombuffer(data, dtype=dt).reshape(shape).copy()
        return {k: unpack_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack_tree(v) for v in obj]
    return obj


def pack_head(head: dict[str, Any] | None) -> Any:
    return None if head is None else pack_tree(head, path="head")


def unpack_head(packed: Any) -> dict[str, Any] | None:
    return None if packed is None else unpack_tree(packed)
