"""Filters on a Qdrant-backed index: the parsed filter tree as a native ``models.Filter``.

The filter language and its semantics are :mod:`compatindex.core.filters` (the reference is
:func:`~compatindex.core.filters.matches`). Here every node becomes one Qdrant condition that
matches exactly the items the reference matches, so the tree composes exactly:

=====================  ===============================================================
parsed node            Qdrant condition
=====================  ===============================================================
``And(parts)``         ``Filter(must=[parts])``
``Or(parts)``          ``Filter(should=[parts])``
``Not(part)``          ``Filter(must_not=[part])`` (matches items lacking the field)
``eq`` str             ``FieldCondition(match=MatchValue(value=s))``
``eq`` bool            ``FieldCondition(match=MatchValue(value=b))`` (typed: never 1)
``eq`` number          ``FieldCondition(range=Range(gte=v, lte=v))``: ``MatchValue`` with an
                       int never matches a float payload (2 must equal 2.0), and a range
                       matches ints and floats, never bools
``in`` values          ``Filter(should=[...])`` of: one ``MatchAny`` of the strings, one
                       ``MatchValue`` per bool, one ``Range(gte=v, lte=v)`` per number
``range``              ``FieldCondition(range=Range(gt, gte, lt, lte))``
``exists``             ``Filter(must_not=[IsEmptyCondition(key)])`` (IsEmpty: missing, null
                       or ``[]``)
=====================  ===============================================================

A metadata field ``f`` is the payload key ``meta.f`` (quoted, ``meta."a.b"``, when ``f`` is not
a plain identifier; a field holding ``"`` cannot be addressed and is refused); ``$label`` is the
top-level ``label``. Item payloads are namespaced (:mod:`compatindex.qdrant.items`), so user keys
never meet the internal ones (``ext``, ``t``, ``label``, ``meta``, ``meta_mp``).

Qdrant reads every list element one level deep and compares types the way the reference does,
except for values the reference treats as "present but never equal" while Qdrant would look
inside them or call them empty: ``None`` inside a list, nested lists, non-finite floats, ints
past 64 bits, bytes. Items holding such values are stored with a *filter view* under ``meta``
(:func:`filter_view`) next to the exact metadata (``meta_mp``), which makes the translation
exact for them too.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..core.filters import LABEL_FIELD, And, Cond, Filter, Not, Or, filter_error

META = "meta"
"""The payload key under which an item's metadata (or its filter view) lives."""

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_I64 = 2 ** 63


def payload_key(field: str, *, path: str = "where") -> str:
    """The Qdrant payload key (JSON path) of a filter field."""
    if field == LABEL_FIELD:
        return "label"
    if _PLAIN_KEY.match(field):
        return f"{META}.{field}"
    if '"' in field:
        raise filter_error(path, f"field {field!r} holds a double quote, which a Qdrant payload key cannot address")
    return f'{META}."{field}"'


def _json_safe(v: Any) -> bool:
    try:
        return bool(json.loads(json.dumps(v, allow_nan=False)) == v)
    except (TypeError, ValueError):
        return False


_OPAQUE: dict[str, Any] = {}
"""Stands for a value that exists but equals nothing (Qdrant: not empty, matches no condition)."""


def _element(x: Any) -> Any:
    """One filterable value: scalars as they are, anything else an opaque stand-in."""
    if isinstance(x, (str, bool)):
        return x
    if isinstance(x, int):
        return x if -_I64 <= x < _I64 else float(x)  # the reference compares numbers as floats
    if isinstance(x, float):
        return x if math.isfinite(x) else dict(_OPAQUE)
    if isinstance(x, dict) and _json_safe(x):
        return x  # Qdrant never looks inside: a field names a top-level key
    return dict(_OPAQUE)


def filter_view(meta: dict[Any, Any]) -> dict[str, Any]:
    """The metadata Qdrant filters see: for each string key, what ``core.filters.values_of``
    yields (null and ``None`` list elements dropped, one list level), each value a scalar or an
    opaque stand-in. Equal to ``meta`` for plain JSON metadata."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if not isinstance(k, str) or v is None:
            continue
        if isinstance(v, (list, tuple)):
            vals = [_element(x) if not isinstance(x, (list, tuple)) else dict(_OPAQUE) for x in v if x is not None]
            if vals or not v:
                out[k] = vals
        else:
            out[k] = _element(v)
    return out


def is_filter_exact(meta: Any) -> bool:
    """Whether ``meta`` can be stored as it is: plain JSON that Qdrant filters read like the reference."""
    if not isinstance(meta, dict) or not _json_safe(meta):
        return False
    return _typed_equal(filter_view(meta), {k: v for k, v in meta.items() if v is not None})


def _typed_equal(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_typed_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_typed_equal(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _number(v: float | int) -> Any:
    from qdrant_client import models as m

    return m.Range(gte=v, lte=v)


def _cond(c: Cond) -> Any:
    from qdrant_client import models as m

    key = payload_key(c.field, path=c.path)
    if c.op == "exists":
        return m.Filter(must_not=[m.IsEmptyCondition(is_empty=m.PayloadField(key=key))])
    if c.op == "range":
        gt, gte, lt, lte = c.value
        return m.FieldCondition(key=key, range=m.Range(gt=gt, gte=gte, lt=lt, lte=lte))
    values = (c.value,) if c.op == "eq" else tuple(c.value)
    strs = sorted({v for v in values if isinstance(v, str)})
    bools = sorted({v for v in values if isinstance(v, bool)})
    nums = sorted({float(v) for v in values if not isinstance(v, (str, bool))})
    parts: list[Any] = []
    if strs:
        parts.append(m.FieldCondition(key=key, match=m.MatchValue(value=strs[0]) if len(strs) == 1
                                      else m.MatchAny(any=strs)))
    parts.extend(m.FieldCondition(key=key, match=m.MatchValue(value=b)) for b in bools)
    parts.extend(m.FieldCondition(key=key, range=_number(x)) for x in nums)
    return parts[0] if len(parts) == 1 else m.Filter(should=parts)


def condition(f: Filter) -> Any:
    """The Qdrant condition (a ``FieldCondition`` or a nested ``Filter``) of a parsed filter."""
    from qdrant_client import models as m

    if isinstance(f, Cond):
        return _cond(f)
    if isinstance(f, Not):
        return m.Filter(must_not=[condition(f.part)])
    if isinstance(f, And):
        return m.Filter(must=[condition(p) for p in f.parts])
    if isinstance(f, Or):
        return m.Filter(should=[condition(p) for p in f.parts])
    raise TypeError(f"not a parsed filter: {f!r}")


def native(where: Filter | None) -> Any:
    """The Qdrant condition of ``where`` (None for no filter)."""
    return None if where is None else condition(where)


def require(base: Any, extra: Any) -> Any:
    """``base`` (a ``models.Filter`` or None) with the condition ``extra`` (None: nothing) also required."""
    from qdrant_client import models as m

    if extra is None:
        return base
    if base is None:
        return extra if isinstance(extra, m.Filter) else m.Filter(must=[extra])
    return m.Filter(must=[*(base.must or []), extra], must_not=base.must_not, should=base.should,
                    min_should=base.min_should)
