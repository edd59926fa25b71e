"""The payload index: in-memory columns of labels and metadata fields over internal ids.

Derived state, like the shards: the store holds the labels (``labels``), the metadata
(``attrs``) and the declared indexes (meta ``payload_schema``); this module keeps, per field,
a dictionary-encoded column (``codes[iid]`` -> a distinct value) so that a parsed filter
(:mod:`compatindex.core.filters`) evaluates with numpy over the whole gallery in milliseconds.

- Declared fields (``create_payload_index``) and the label (``$label``) get a column built on
  first use from one snapshot, then kept in step: the writer updates it from the values it just
  committed; any process catches up by reading the ids named in the op log's ``"p"`` entries
  (written by ``add`` with labels or metadata and by ``set_payload``) and re-reading their payload.
  A process whose columns fell behind the op log's truncation rebuilds them.
- A filter on a field that is not declared reads every item's metadata to build its column
  (correct, but seconds at a million items); the column is then kept in step like the others,
  for up to :data:`MAX_TRANSIENT` such fields.

Every evaluation returns a bool mask over internal ids of what *would* match if the item existed:
callers combine it with the items alive (the shards' held bits), so deleted items never match and
negations (``$ne``, ``$nin``, ``$not``) match items that lack the field, as
:func:`compatindex.core.filters.matches` says.
"""

from __future__ import annotations

import collections
import math
import numbers
import threading
from typing import Any, Iterable, Mapping, Sequence

import msgpack
import numpy as np

from ..core.filters import LABEL_FIELD, And, Cond, Filter, Not, Or, fields, values_of
from ..errors import CorruptIndexError
from .store import Reader

_OTHER = ("x",)  # a present value no filter can match (nested dicts and lists, NaN, huge ints)
MASK_CACHE = 16  # filter masks kept per payload generation
MAX_TRANSIENT = 8  # undeclared fields whose columns are kept


def value_key(v: Any) -> Any:
    """The typed-equality key of a stored value (``True`` never equals ``1``; ``2 == 2.0``), as
    :func:`compatindex.core.filters.value_equals` compares them."""
    t = type(v)
    if t is str:
        return v
    if t is int or t is float:
        try:
            f = float(v)
        except OverflowError:
            return _OTHER
        return f if math.isfinite(f) else _OTHER
    if t is bool or isinstance(v, bool):
        return ("b", bool(v))
    if isinstance(v, str):
        return str(v)
    if isinstance(v, numbers.Real):
        try:
            f = float(v)
        except (OverflowError, TypeError, ValueError):
            return _OTHER
        return f if math.isfinite(f) else _OTHER
    return _OTHER


def _values(m: Any, field: str) -> list[Any]:
    """``values_of(None, m, field)``, with a fast path for plain dicts."""
    if type(m) is not dict:
        return values_of(None, m, field)
    v = m.get(field)
    if v is None:
        return []
    if type(v) is list:
        return [x for x in v if x is not None]
    return [v]


class Column:
    """Dictionary-encoded values of one field.

    ``codes[iid]``: the code of the item's single value, -1 when it has none, -2 when it holds
    several (a list; their codes are in ``multi[iid]``). ``keys[code]`` is the value's
    :func:`value_key`; ``num[code]`` its number (NaN for strings, bools and others).
    """

    def __init__(self) -> None:
        self.codes = np.full(0, -1, dtype=np.int32)
        self.keys: list[Any] = []
        self.lookup: dict[Any, int] = {}
        self.multi: dict[int, np.ndarray] = {}
        self._num: np.ndarray | None = None
        self._pairs: tuple[np.ndarray, np.ndarray] | None = None

    def _code(self, key: Any) -> int:
        c = self.lookup.get(key)
        if c is None:
            c = len(self.keys)
            self.lookup[key] = c
            self.keys.append(key)
            self._num = None
        return c

    def _grow(self, size: int) -> None:
        if size > len(self.codes):
            grown = np.full(max(size, 2 * len(self.codes)), -1, dtype=np.int32)
            grown[: len(self.codes)] = self.codes
            self.codes = grown

    def assign(self, ids: np.ndarray | Sequence[int], values: Iterable[list[Any]]) -> None:
        """Give items ``ids`` the value lists ``values`` (``[]``: none; see ``values_of``)."""
        iids = np.asarray(ids, dtype=np.int64)
        if not len(iids):
            return
        self._grow(int(iids.max()) + 1)
        out = np.empty(len(iids), dtype=np.int32)
        code = self._code
        multi = self.multi
        for j, (iid, vals) in enumerate(zip(iids.tolist(), values)):
            if multi:
                if multi.pop(iid, None) is not None:
                    self._pairs = None
            if not vals:
                out[j] = -1
            elif len(vals) == 1:
                out[j] = code(value_key(vals[0]))
            else:
                cs = np.unique(np.array([code(value_key(v)) for v in vals], dtype=np.int32))
                if len(cs) == 1:
                    out[j] = cs[0]
                else:
                    out[j] = -2
                    multi[iid] = cs
                    self._pairs = None
        self.codes[iids] = out

    @property
    def num(self) -> np.ndarray:
        if self._num is None or len(self._num) != len(self.keys):
            self._num = np.array([k if type(k) is float else np.nan for k in self.keys], dtype=np.float64)
        return self._num

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(iids, codes)`` of the items holding several values, one pair per value."""
        if self._pairs is None:
            if self.multi:
                ii = np.concatenate([np.full(len(c), i, np.int64) for i, c in self.multi.items()])
                cc = np.concatenate(list(self.multi.values()))
            else:
                ii, cc = np.zeros(0, np.int64), np.zeros(0, np.int32)
            self._pairs = (ii, cc)
        return self._pairs

    def keys_of(self, iid: int) -> set[Any]:
        """The value keys item ``iid`` holds (for ``verify``)."""
        if iid >= len(self.codes) or self.codes[iid] == -1:
            return set()
        c = int(self.codes[iid])
        if c == -2:
            return {self.keys[int(x)] for x in self.multi[iid]}
        return {self.keys[c]}

    def table(self, cond: Cond) -> np.ndarray:
        """Bool over codes: which distinct values satisfy ``cond`` (two False slots appended, so
        that codes -1 and -2 index False)."""
        t = np.zeros(len(self.keys) + 2, dtype=bool)
        if cond.op in ("eq", "in"):
            wanted = [cond.value] if cond.op == "eq" else list(cond.value)
            for w in wanted:
                c = self.lookup.get(value_key(w))
                if c is not None:
                    t[c] = True
        elif cond.op == "range":
            gt, gte, lt, lte = cond.value
            x = self.num
            ok = ~np.isnan(x)
            if gt is not None:
                ok &= x > gt
            if gte is not None:
                ok &= x >= gte
            if lt is not None:
                ok &= x < lt
            if lte is not None:
                ok &= x <= lte
            t[: len(x)] = ok
        else:  # exists: any value at all
            t[: len(self.keys)] = True
        return t

    def mask(self, cond: Cond, size: int) -> np.ndarray:
        """Bool over internal ids ``[0, size)``: items with a value satisfying ``cond``."""
        t = self.table(cond)
        n = min(size, len(self.codes))
        out = np.zeros(size, dtype=bool)
        out[:n] = t[self.codes[:n]]
        if self.multi:
            ii, cc = self.pairs()
            hit = ii[t[cc] & (ii < size)]
            out[hit] = True
        return out


def _scan(r: Reader, db: str, field_list: list[str], size: int) -> dict[str, Column]:
    """Columns of ``field_list`` built from one snapshot's ``labels`` or ``attrs`` records."""
    cols = {f: Column() for f in field_list}
    for c in cols.values():
        c._grow(size)
    iids: list[int] = []
    recs: list[Any] = []
    with r.txn.cursor(db=r.s.db[db]) as cur:
        try:
            for k, v in cur.iternext():
                iids.append(int.from_bytes(k, "big", signed=True))
                recs.append(msgpack.unpackb(v, raw=False, strict_map_key=False))
        except Exception as exc:
            raise CorruptIndexError(f"damaged {'label' if db == 'labels' else 'metadata'} record in {r.s.file}: "
                                    f"{exc}") from None
    for f, col in cols.items():
        if db == "labels":
            col.assign(iids, (values_of(x, None, LABEL_FIELD) for x in recs))
        else:
            col.assign(iids, (_values(m, f) for m in recs))
    return cols


class PayloadIndex:
    """Columns of the label and of filtered fields, kept in step with the store (thread-safe).

    ``columns`` holds the label, the declared fields and up to :data:`MAX_TRANSIENT` undeclared
    fields a filter asked for (built by reading every item's metadata; the oldest is dropped).
    """

    def __init__(self) -> None:
        self.schema: dict[str, str] = {}
        self.columns: dict[str, Column] = {}
        self.seq = -1  # the store sequence number the columns reflect (-1: none built)
        self.gen = 0  # bumped at every payload change: keys the mask cache
        self.builds = 0
        self._masks: collections.OrderedDict[tuple[str, int, int], np.ndarray] = collections.OrderedDict()
        self._lock = threading.RLock()

    # -- keeping in step -------------------------------------------------------------------------
    def _changed(self) -> None:
        self.gen += 1
        self._masks.clear()

    def reset(self) -> None:
        """Forget every column (a compaction swapped the store; the op log was truncated past them)."""
        with self._lock:
            self.columns.clear()
            self.seq = -1
            self._changed()

    def committed(self, seq: int, iids: np.ndarray | None = None, labels: Sequence[Any] | None = None,
                  metadata: Sequence[Any] | None = None) -> None:
        """The writer committed write ``seq``, which gave ``iids`` these labels and/or metadata
        (None: unchanged); columns one write behind apply it directly, others sync on next use."""
        with self._lock:
            if self.seq < 0 or self.seq != seq - 1:
                return
            if iids is not None and len(iids) and (labels is not None or metadata is not None):
                self._update(np.asarray(iids, np.int64), labels, metadata)
            self.seq = seq

    def _update(self, iids: np.ndarray, labels: Sequence[Any] | None, metadata: Sequence[Any] | None) -> None:
        for f, col in self.columns.items():
            if f == LABEL_FIELD:
                if labels is not None:
                    col.assign(iids, (values_of(x, None, LABEL_FIELD) for x in labels))
            elif metadata is not None:
                col.assign(iids, (_values(m, f) for m in metadata))
        self._changed()

    def sync(self, store: Any, r: Reader) -> None:
        """Catch up with the snapshot ``r`` (op log ``"p"`` entries; a rebuild when truncated)."""
        top = r.seq()
        if self.seq == top:
            return
        self._load_schema(r)
        if self.seq < 0 or not self.columns or store.oplog_from(r) > self.seq + 1:
            if self.columns:
                self.columns.clear()
                self._changed()
            self.seq = top
            return
        touched: list[np.ndarray] = []
        for _, op in store.oplog_since(self.seq, reader=r):
            p = op.get("p")
            if p:
                touched.append(np.frombuffer(p, dtype=">i8").astype(np.int64))
        if touched:
            iids = np.unique(np.concatenate(touched))
            labels = r.labels(iids.tolist()) if LABEL_FIELD in self.columns else None
            metas = r.attrs(iids.tolist()) if any(f != LABEL_FIELD for f in self.columns) else None
            self._update(iids, labels, metas)
        self.seq = top

    def _load_schema(self, r: Reader) -> None:
        schema = r.meta("payload_schema") or {}
        if not isinstance(schema, dict):
            raise CorruptIndexError(f"damaged meta record 'payload_schema' in {r.s.file}")
        if schema != self.schema:
            self.schema = {str(k): str(v) for k, v in schema.items()}
            self._changed()

    def _ensure(self, store: Any, r: Reader, need: set[str], size: int) -> None:
        self.sync(store, r)
        missing = [f for f in need if f not in self.columns]
        if LABEL_FIELD in missing:
            self.columns.update(_scan(r, "labels", [LABEL_FIELD], size))
            self.builds += 1
        att = [f for f in missing if f != LABEL_FIELD]
        if att:
            self.columns.update(_scan(r, "attrs", att, size))
            self.builds += 1
            transient = [f for f in self.columns if f != LABEL_FIELD and f not in self.schema]
            for f in transient[: max(0, len(transient) - MAX_TRANSIENT)]:
                if f not in need:
                    del self.columns[f]
        self.seq = r.seq()

    def build(self, store: Any, need: set[str], size: int) -> None:
        """Build the columns of ``need`` now, from the current snapshot (a writer declaring an index:
        the first filtered search then costs no scan; later writes keep them in step)."""
        with self._lock, store.read() as r:
            self._load_schema(r)  # the writer's own declaration: its sequence number is already seen
            self._ensure(store, r, need, size)

    def mask_sync(self, store: Any, r: Reader) -> None:
        """Bring the built columns up to the snapshot ``r`` (``verify`` compares them with it)."""
        with self._lock:
            self.sync(store, r)

    # -- evaluation -------------------------------------------------------------------------------
    def mask(self, where: Filter, store: Any, size: int) -> np.ndarray:
        """Bool over internal ids ``[0, size)`` of the items ``where`` matches (alive or not; read-only).

        Fields with a payload index (and the label) are evaluated over in-memory columns. A field
        without one costs a read of every item's metadata the first time a filter names it (seconds
        at a million items); its column is then kept in step like the others, for up to
        :data:`MAX_TRANSIENT` such fields.
        """
        need = fields(where)
        with self._lock:
            with store.read() as r:
                if r.seq() != self.seq or not need <= set(self.columns):
                    self._ensure(store, r, need, size)
            key = (repr(where), size, self.gen)  # repr: True == 1 == 1.0 as dataclass fields, not as text
            out = self._masks.get(key)
            if out is None:
                out = self._eval(where, size)
                out.setflags(write=False)
                self._masks[key] = out
                while len(self._masks) > MASK_CACHE:
                    self._masks.popitem(last=False)
            return out

    def _eval(self, f: Filter, size: int) -> np.ndarray:
        if isinstance(f, Cond):
            return self.columns[f.field].mask(f, size)
        if isinstance(f, Not):
            return ~self._eval(f.part, size)
        parts = [self._eval(p, size) for p in f.parts]
        out = parts[0].copy()
        for p in parts[1:]:
            if isinstance(f, And):
                out &= p
            else:
                out |= p
        return out

    def describe(self) -> dict[str, Any]:
        """For ``stats()``: the declared schema and what is held in memory."""
        with self._lock:
            return {"schema": dict(self.schema), "columns": sorted(self.columns), "seq": self.seq,
                    "builds": self.builds,
                    "memory_bytes": int(sum(c.codes.nbytes for c in self.columns.values()))}


def check_columns(r: Reader, pidx: PayloadIndex, alive: np.ndarray, schema: Mapping[str, str]) -> list[str]:
    """``verify``: stored values of declared fields have their type; in-memory columns (when built and
    current) equal columns built afresh from the snapshot ``r``."""
    from ..core.filters import check_payload
    from ..errors import InvalidInputError

    problems: list[str] = []
    iids = np.flatnonzero(alive)
    if schema:
        metas = r.attrs(iids.tolist())
        for iid, m in zip(iids.tolist(), metas):
            try:
                check_payload([m], schema, param=f"metadata of internal id {iid}")
            except InvalidInputError as exc:
                problems.append(f"payload index: {exc}")
                break
    with pidx._lock:
        if pidx.seq != r.seq():
            return problems
        built = [f for f in pidx.columns]
        if not built:
            return problems
        lab = [f for f in built if f == LABEL_FIELD]
        att = [f for f in built if f != LABEL_FIELD]
        fresh: dict[str, Column] = {}
        if lab:
            fresh.update(_scan(r, "labels", lab, len(alive)))
        if att:
            fresh.update(_scan(r, "attrs", att, len(alive)))
        for f in built:
            mem, new = pidx.columns[f], fresh[f]
            for iid in iids.tolist():
                if mem.keys_of(iid) != new.keys_of(iid):
                    problems.append(f"payload index of field {f!r} disagrees with the stored metadata at "
                                    f"internal id {iid}")
                    break
    return problems
