"""The filter language of ``Index.search(..., where=...)`` and ``Index.list_items(where=...)``.

A filter is plain Python data in the Mongo/Chroma form (docs/api.md, "Filters"), chosen because
it is what users of document stores already write, it serializes as JSON for the CLI
(``--where``), and it maps one to one onto Qdrant's ``must``/``should``/``must_not``::

    {"lang": "en"}                                   equality
    {"lang": {"$in": ["en", "de"]}}                  membership ($nin: not in)
    {"year": {"$gte": 2020, "$lt": 2024}}            numeric range ($gt, $gte, $lt, $lte)
    {"year": {"$ne": 2021}}                          not equal (also matches items without the field)
    {"draft": {"$exists": False}}                    field existence
    {"$and": [f, ...]}, {"$or": [f, ...]}, {"$not": f}
    {"lang": "en", "year": {"$gte": 2020}}           several keys: all must hold
    {"$label": 3}                                    the item's label (``labels=`` of ``add``)

Semantics, shared by every backend (the congruence tests check them):

- A field is a top-level metadata key. A stored list value matches when any element does.
- Equality is typed: ``True`` never equals ``1``; ``2`` equals ``2.0``.
- A range matches finite numbers only (never strings or bools).
- ``$exists: True`` means present, not null and not an empty list.
- Negations (``$ne``, ``$nin``, ``$not``) match items that lack the field.

:func:`parse_filter` validates a filter once, before any backend sees it; errors name the
filter path (``where["$and"][1]["year"]["$gte"]``). A backend evaluates the parsed tree: the
reference is :func:`matches`; the embedded backend evaluates it over payload-index columns, the
Qdrant backend translates it to a native ``Filter``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping, Union

from ..errors import InvalidInputError

#: Deepest nesting of ``$and``/``$or``/``$not`` a filter may have.
MAX_DEPTH = 8
#: Most values a ``$in``/``$nin`` list may hold.
MAX_IN = 10_000
#: The pseudo-field that addresses an item's label.
LABEL_FIELD = "$label"
#: Types a payload index can be declared with (as Qdrant names them).
SCHEMAS = ("keyword", "integer", "float", "bool")

_RANGE_OPS = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}
_FIELD_OPS = ("$eq", "$ne", "$in", "$nin", "$exists", *_RANGE_OPS)
_LOGIC_OPS = ("$and", "$or", "$not")

Scalar = Union[str, int, float, bool]


@dataclasses.dataclass(frozen=True)
class Cond:
    """One condition on one field.

    Attributes
    ----------
    field:
        A metadata key, or :data:`LABEL_FIELD`.
    op:
        ``"eq"`` (``value`` a scalar), ``"in"`` (a tuple of scalars), ``"range"`` (a
        ``(gt, gte, lt, lte)`` tuple, None where unbounded) or ``"exists"`` (``value`` is None).
    path:
        Where the condition was written, for messages.
    """

    field: str
    op: str
    value: Any
    path: str


@dataclasses.dataclass(frozen=True)
class And:
    parts: tuple["Filter", ...]


@dataclasses.dataclass(frozen=True)
class Or:
    parts: tuple["Filter", ...]


@dataclasses.dataclass(frozen=True)
class Not:
    part: "Filter"


Filter = Union[Cond, And, Or, Not]


def filter_error(path: str, msg: str) -> InvalidInputError:
    """The error of a filter that cannot be served, naming its path (``where[...]``)."""
    return InvalidInputError(f"filter `{path}`: {msg}",
                             hint='filters look like {"lang": "en", "year": {"$gte": 2020}} (docs/api.md, "Filters")')


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _scalar(v: Any, path: str) -> Scalar:
    if isinstance(v, bool) or isinstance(v, str):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        f = float(v)
        if not math.isfinite(f):
            raise filter_error(path, f"{v!r} is not a finite number")
        return f
    if v is None:
        raise filter_error(path, 'cannot match null; use {"$exists": false}')
    if isinstance(v, (list, tuple)):
        raise filter_error(path, f'a list {v!r} is not a value; use {{"$in": [...]}}')
    raise filter_error(path, f"expected a string, number or bool; got {type(v).__name__} {v!r}")


def _check_schema(field: str, kind: str, values: tuple[Scalar, ...], schema: Mapping[str, str], path: str) -> None:
    want = schema.get(field)
    if want is None:
        return
    for v in values:
        ok = {"keyword": isinstance(v, str), "bool": isinstance(v, bool),
              "integer": _is_number(v), "float": _is_number(v)}[want]
        if not ok:
            raise filter_error(path, f"field {field!r} is indexed as {want!r}; {type(v).__name__} {v!r} can never match it")
    if kind == "range" and want in ("keyword", "bool"):
        raise filter_error(path, f"a range on {want} field {field!r}; ranges apply to numbers")


def _field(name: Any, body: Any, path: str, schema: Mapping[str, str]) -> Filter:
    if not isinstance(name, str) or not name:
        raise filter_error(path, f"field names are non-empty strings; got {name!r}")
    if name.startswith("$") and name != LABEL_FIELD:
        raise filter_error(path, f"unknown operator {name!r}; logical operators are {', '.join(_LOGIC_OPS)} "
                         f"and {LABEL_FIELD!r} addresses the label")
    if not isinstance(body, Mapping):
        v = _scalar(body, path)
        _check_schema(name, "eq", (v,), schema, path)
        return Cond(name, "eq", v, path)
    if not body:
        raise filter_error(path, "an empty operator dict")
    parts: list[Filter] = []
    bounds: dict[str, float] = {}
    for op, arg in body.items():
        p = f"{path}[{op!r}]"
        if op not in _FIELD_OPS:
            raise filter_error(p, f"unknown operator {op!r}; field operators are {', '.join(_FIELD_OPS)}")
        if op in ("$eq", "$ne"):
            v = _scalar(arg, p)
            _check_schema(name, "eq", (v,), schema, p)
            c: Filter = Cond(name, "eq", v, p)
            parts.append(c if op == "$eq" else Not(c))
        elif op in ("$in", "$nin"):
            if not isinstance(arg, (list, tuple)) or not arg:
                raise filter_error(p, f"{op} takes a non-empty list of values; got {arg!r}")
            if len(arg) > MAX_IN:
                raise filter_error(p, f"{op} takes at most {MAX_IN} values; got {len(arg)}")
            vals = tuple(_scalar(x, f"{p}[{i}]") for i, x in enumerate(arg))
            _check_schema(name, "in", vals, schema, p)
            c = Cond(name, "in", vals, p)
            parts.append(c if op == "$in" else Not(c))
        elif op == "$exists":
            if not isinstance(arg, bool):
                raise filter_error(p, f"$exists takes true or false; got {arg!r}")
            c = Cond(name, "exists", None, p)
            parts.append(c if arg else Not(c))
        else:
            if not _is_number(arg) or not math.isfinite(float(arg)):
                raise filter_error(p, f"a range on {type(arg).__name__} {arg!r}; {op} takes a finite number")
            _check_schema(name, "range", (), schema, p)
            bounds[_RANGE_OPS[op]] = float(arg)
    if bounds:
        rng = (bounds.get("gt"), bounds.get("gte"), bounds.get("lt"), bounds.get("lte"))
        parts.append(Cond(name, "range", rng, path))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _node(where: Any, path: str, depth: int, schema: Mapping[str, str]) -> Filter | None:
    if depth > MAX_DEPTH:
        raise filter_error(path, f"nested deeper than {MAX_DEPTH} levels of $and/$or/$not")
    if not isinstance(where, Mapping):
        raise filter_error(path, f"a filter is a dict; got {type(where).__name__} {where!r}")
    parts: list[Filter] = []
    for key, body in where.items():
        p = f"{path}[{key!r}]"
        if key in ("$and", "$or"):
            if not isinstance(body, (list, tuple)) or not body:
                raise filter_error(p, f"{key} takes a non-empty list of filters; got {body!r}")
            subs = [_node(b, f"{p}[{i}]", depth + 1, schema) for i, b in enumerate(body)]
            if key == "$and":
                parts.extend(s for s in subs if s is not None)
            elif any(s is None for s in subs):
                continue  # an empty branch matches everything, so the $or does too
            else:
                parts.append(Or(tuple(s for s in subs if s is not None)))
        elif key == "$not":
            sub = _node(body, p, depth + 1, schema)
            if sub is None:
                raise filter_error(p, "$not of an empty filter matches nothing; leave the filter out instead")
            parts.append(Not(sub))
        else:
            parts.append(_field(key, body, p, schema))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def parse_filter(where: Any, *, schema: Mapping[str, str] | None = None, param: str = "where") -> Filter | None:
    """Validate a filter and return its tree, or None for "no filter" (None or ``{}``).

    Parameters
    ----------
    where:
        The filter, as documented in this module.
    schema:
        Declared payload indexes ``{field: one of SCHEMAS}``: a condition that can never match a
        declared type (a range on a keyword field, a string against an integer field) is an error.
    param:
        The name used in messages.

    Raises
    ------
    InvalidInputError
        Naming the filter path: an unknown operator, a value of the wrong type, a range on a
        string, nesting past :data:`MAX_DEPTH`.
    """
    if where is None:
        return None
    return _node(where, param, 0, schema or {})


def fields(f: Filter | None) -> set[str]:
    """The fields a filter reads (:data:`LABEL_FIELD` included when it reads the label)."""
    if f is None:
        return set()
    if isinstance(f, Cond):
        return {f.field}
    if isinstance(f, Not):
        return fields(f.part)
    out: set[str] = set()
    for p in f.parts:
        out |= fields(p)
    return out


def values_of(label: Any, metadata: Mapping[str, Any] | None, field: str) -> list[Any]:
    """The values an item holds for ``field``: ``[]`` when missing or null, a list's elements."""
    v = label if field == LABEL_FIELD else (metadata.get(field) if isinstance(metadata, Mapping) else None)
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [x for x in v if x is not None]
    return [v]


def value_equals(stored: Any, wanted: Scalar) -> bool:
    """Typed equality: bools only equal bools, numbers compare by value, strings by text."""
    if isinstance(wanted, bool) or isinstance(stored, bool):
        return isinstance(wanted, bool) and isinstance(stored, bool) and stored == wanted
    if _is_number(wanted):
        return _is_number(stored) and float(stored) == float(wanted)
    return isinstance(stored, str) and stored == wanted


def in_range(stored: Any, rng: tuple[float | None, float | None, float | None, float | None]) -> bool:
    """Whether ``stored`` is a finite number inside ``(gt, gte, lt, lte)``."""
    if not _is_number(stored):
        return False
    x = float(stored)
    if not math.isfinite(x):
        return False
    gt, gte, lt, lte = rng
    return ((gt is None or x > gt) and (gte is None or x >= gte)
            and (lt is None or x < lt) and (lte is None or x <= lte))


def matches(f: Filter | None, label: Any, metadata: Mapping[str, Any] | None) -> bool:
    """The reference evaluation of a parsed filter on one item's label and metadata."""
    if f is None:
        return True
    if isinstance(f, Cond):
        vals = values_of(label, metadata, f.field)
        if f.op == "exists":
            return bool(vals)
        if f.op == "eq":
            return any(value_equals(x, f.value) for x in vals)
        if f.op == "in":
            return any(value_equals(x, w) for x in vals for w in f.value)
        return any(in_range(x, f.value) for x in vals)
    if isinstance(f, Not):
        return not matches(f.part, label, metadata)
    if isinstance(f, And):
        return all(matches(p, label, metadata) for p in f.parts)
    return any(matches(p, label, metadata) for p in f.parts)


def check_schema_name(field: Any, schema: Any) -> tuple[str, str]:
    """Validate a payload-index declaration ``(field, schema)``."""
    if not isinstance(field, str) or not field or field.startswith("$"):
        raise InvalidInputError(f"`field` must be a non-empty metadata key not starting with '$'; got {field!r}")
    if schema not in SCHEMAS:
        raise InvalidInputError(f"`schema` must be one of {', '.join(SCHEMAS)}; got {schema!r}")
    return field, schema


_EXACT = {"keyword": (str,), "bool": (bool,), "integer": (int,), "float": (int, float)}


def check_payload(metadata: list[Any], schema: Mapping[str, str], *, param: str = "metadata") -> None:
    """Refuse metadata whose value for a declared indexed field has another type.

    A declared field's values (or a list's elements) must be of the declared type, so that the
    payload index and the filter agree; null and a missing key are allowed.
    """
    if not schema:
        return
    fields = list(schema.items())
    for i, m in enumerate(metadata):
        if type(m) is dict:  # fast path: a scalar of exactly the declared type (most values)
            if all((v := m.get(f)) is None or type(v) in _EXACT[want] for f, want in fields):
                continue
        elif not isinstance(m, Mapping):
            continue
        for field, want in fields:
            for v in values_of(None, m, field):
                ok = {"keyword": isinstance(v, str), "bool": isinstance(v, bool),
                      "integer": isinstance(v, numbers.Integral) and not isinstance(v, bool),
                      "float": _is_number(v)}[want]
                if not ok:
                    raise InvalidInputError(f"`{param}[{i}][{field!r}]` is {type(v).__name__} {v!r}, but field "
                                            f"{field!r} is indexed as {want!r}")
