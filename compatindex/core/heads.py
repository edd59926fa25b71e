"""Encoder heads: small maps stored with a version and applied in numpy on the ``raw=True`` path.

A head spec is a plain dict (msgpack-able once arrays are packed by the store):

- ``{"kind": "linear", "in_dim": i, "out_dim": o, "W": (o, i) array, "b": (o,) array | None}``
- ``{"kind": "mlp", "in_dim": i, "out_dim": o, "activation": "relu" | "gelu" | "tanh",
  "residual": bool, "layers": [{"W": ..., "b": ...}, ...]}`` (activation between layers;
  ``residual`` adds the input, which needs ``in_dim == out_dim``)
- ``{"kind": "normalize"}`` (L2-normalizes rows)
- ``{"kind": "chain", "steps": [spec, ...]}``
- ``{"kind": "sum", "branches": [spec, ...]}`` (adds the branches' outputs; a linear skip plus a
  residual MLP correction, the trainer's ``mlp`` adapter and ``oca`` mlp head)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidInputError

HeadSpec = dict[str, Any]

_KINDS = ("linear", "mlp", "normalize", "chain", "sum")


def _arr(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise InvalidInputError(f"head `{name}` holds NaN or inf")
    return a


def validate_head(spec: HeadSpec, *, param: str = "head") -> tuple[int | None, int | None]:
    """Check a head spec and return its ``(in_dim, out_dim)`` (None where the head keeps the dim).

    Raises
    ------
    InvalidInputError
        When the spec is malformed, naming the parameter and the offending field.
    """
    if not isinstance(spec, dict) or spec.get("kind") not in _KINDS:
        kind = spec.get("kind") if isinstance(spec, dict) else type(spec).__name__
        raise InvalidInputError(f"`{param}` must be a head spec with kind in {_KINDS}; got {kind!r}")
    kind = spec["kind"]
    if kind == "normalize":
        return None, None
    if kind == "sum":
        branches = spec.get("branches")
        if not isinstance(branches, list) or not branches:
            raise InvalidInputError(f"`{param}.branches` must be a non-empty list; got {branches!r}")
        dims = [validate_head(b, param=f"{param}.branches[{i}]") for i, b in enumerate(branches)]
        ins = {d[0] for d in dims if d[0] is not None}
        outs = {d[1] for d in dims if d[1] is not None}
        if len(ins) > 1 or len(outs) > 1:
            raise InvalidInputError(f"`{param}.branches` must share in/out dims; got {dims}")
        return (ins.pop() if ins else None), (outs.pop() if outs else None)
    if kind == "chain":
        steps = spec.get("steps")
        if not isinstance(steps, list) or not steps:
            raise InvalidInputError(f"`{param}.steps` must be a non-empty list; got {steps!r}")
        cur_in: int | None = None
        cur_out: int | None = None
        for i, s in enumerate(steps):
            si, so = validate_head(s, param=f"{param}.steps[{i}]")
            if si is not None and cur_out is not None and si != cur_out:
                raise InvalidInputError(f"`{param}.steps[{i}]` takes dim {si} but the step before gives {cur_out}")
            if cur_in is None and cur_out is None:
                cur_in = si
            cur_out = so if so is not None else cur_out
        return cur_in, cur_out
    layers = [spec] if kind == "linear" else spec.get("layers")
    if not isinstance(layers, list) or not layers:
        raise InvalidInputError(f"`{param}.layers` must be a non-empty list")
    prev = None
    for i, layer in enumerate(layers):
        W = _arr(layer.get("W"), f"{param}.W")
        if W.ndim != 2:
            raise InvalidInputError(f"`{param}` layer {i} W must be 2-D; got shape {W.shape}")
        if prev is not None and W.shape[1] != prev:
            raise InvalidInputError(f"`{param}` layer {i} takes dim {W.shape[1]}; the layer before gives {prev}")
        b = layer.get("b")
        if b is not None and _arr(b, f"{param}.b").shape != (W.shape[0],):
            raise InvalidInputError(f"`{param}` layer {i} b must have shape ({W.shape[0]},)")
        prev = W.shape[0]
    in_dim = _arr(layers[0]["W"], "W").shape[1]
    assert prev is not None  # layers is non-empty
    out_dim = prev
    if kind == "mlp" and spec.get("residual") and in_dim != out_dim:
        raise InvalidInputError(f"`{param}` is residual but maps {in_dim} -> {out_dim} dims")
    for key, val in (("in_dim", in_dim), ("out_dim", out_dim)):
        if key in spec and int(spec[key]) != val:
            raise InvalidInputError(f"`{param}.{key}` says {spec[key]} but the weights give {val}")
    return int(in_dim), int(out_dim)


def _act(name: str, x: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "tanh":
        return np.tanh(x)
    if name == "gelu":  # tanh approximation, the same formula torch uses with approximate="tanh"
        return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))
    raise InvalidInputError(f"head activation must be relu, gelu or tanh; got {name!r}")


def apply_head(spec: HeadSpec, x: np.ndarray) -> np.ndarray:
    """Apply a head to raw encoder outputs.

    Parameters
    ----------
    spec:
        A head spec (see the module docstring).
    x:
        ``(n, in_dim)`` float32 raw vectors.

    Returns
    -------
    np.ndarray
        ``(n, out_dim)`` float32.

    Examples
    --------
    >>> import numpy as np
    >>> apply_head({"kind": "linear", "W": np.eye(2) * 2, "b": None}, np.ones((1, 2), np.float32))
    array([[2., 2.]], dtype=float32)
    """
    kind = spec["kind"]
    x = np.asarray(x, dtype=np.float32)
    if kind == "normalize":
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return (x / np.maximum(n, 1e-12)).astype(np.float32)
    if kind == "sum":
        outs = [apply_head(b, x) for b in spec["branches"]]
        return np.ascontiguousarray(np.sum(outs, axis=0), dtype=np.float32)
    if kind == "chain":
        for s in spec["steps"]:
            x = apply_head(s, x)
        return x
    layers = [spec] if kind == "linear" else spec["layers"]
    h = x
    for i, layer in enumerate(layers):
        W = np.asarray(layer["W"], dtype=np.float32)
        h = h @ W.T
        if layer.get("b") is not None:
            h = h + np.asarray(layer["b"], dtype=np.float32)
        if kind == "mlp" and i < len(layers) - 1:
            h = _act(spec.get("activation", "relu"), h)
    if kind == "mlp" and spec.get("residual"):
        h = h + x
    return np.ascontiguousarray(h, dtype=np.float32)
