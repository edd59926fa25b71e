"""Readers for the CLI's input files: vectors (``.npy``, ``.fvecs``, ``.parquet``, ``.jsonl``) and
ids/labels (``.npy``, ``.txt`` or a column of the parquet/jsonl vector input).

Everything here checks the file itself, before the index is opened, so that a bad input never
reaches the index. Every problem raises :class:`InputFileError`, whose message names the
parameter, the file and the offending value. Vectors stream in batches: a large ``.npy`` or
``.fvecs`` file is memory-mapped and a ``.parquet`` file is read batch by batch, so nothing is
loaded whole. ``.jsonl`` is parsed into memory (it is meant for small inputs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "InputFileError",
    "UserError",
    "VectorSource",
    "open_vectors",
    "read_keys",
    "read_ids",
    "coerce_ids",
    "read_metadata",
    "metadata_from_columns",
    "Ids",
    "check_unique",
    "VECTOR_SUFFIXES",
    "KEY_SUFFIXES",
]

VECTOR_SUFFIXES = (".npy", ".fvecs", ".parquet", ".jsonl")
KEY_SUFFIXES = (".npy", ".txt")
_INT_RE = re.compile(r"^[+-]?[0-9]+$")
_DEFAULT_VECTOR_COLUMNS = ("vector", "embedding", "emb", "vectors", "embeddings")


class UserError(Exception):
    """A user error the CLI detects itself; printed as one line, exit 1.

    Parameters
    ----------
    message:
        What is wrong, naming the parameter (``VECTORS``, ``--ids``, ...), the file and the value.
    hint:
        What to do about it (may be empty).
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class InputFileError(UserError):
    """An input file that cannot be used: missing, unreadable, of a bad format or content."""


def _check_file(path: Path, param: str, suffixes: tuple[str, ...]) -> str:
    """Return the lower-cased suffix of ``path`` after checking that it is a readable file."""
    if not path.exists():
        raise InputFileError(f"{param} '{path}': no such file")
    if path.is_dir():
        raise InputFileError(f"{param} '{path}' is a folder, not a file")
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise InputFileError(
            f"{param} '{path}': unsupported file type '{suffix or '(none)'}'",
            f"use one of {', '.join(suffixes)}",
        )
    return suffix


def _as_float_matrix(arr: np.ndarray, param: str, path: Path) -> None:
    """Check that ``arr``'s dtype holds real numbers (float16/32/64 or integers)."""
    if arr.dtype.kind not in "fiu" or arr.dtype.itemsize > 8:
        raise InputFileError(
            f"{param} '{path}': vectors must be float16, float32 or float64; got dtype {arr.dtype}",
            "save them with x.astype(np.float32)",
        )


class VectorSource:
    """A file of ``n`` vectors of dimension ``dim``, read in batches as float32.

    Attributes
    ----------
    path, param:
        The file and the command-line parameter it came from (used in messages).
    kind:
        ``"npy"``, ``"fvecs"``, ``"parquet"`` or ``"jsonl"``.
    n, dim:
        Number of vectors and their dimension.
    columns:
        Names of the other columns (parquet) or fields (jsonl) that ids/labels can come from.
    """

    def __init__(self, path: Path, param: str, kind: str, n: int, dim: int) -> None:
        self.path = path
        self.param = param
        self.kind = kind
        self.n = n
        self.dim = dim
        self.columns: list[str] = []

    # -- overridden per format -------------------------------------------------------------
    def _rows(self, start: int, stop: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, x)`` with ``x`` a C-contiguous ``(b, dim)`` float32 batch."""
        for start in range(0, self.n, batch_size):
            stop = min(self.n, start + batch_size)
            yield start, self._rows(start, stop)

    def column(self, name: str) -> list[Any] | np.ndarray:
        """The values of another column/field of the same file (ids or labels)."""
        raise InputFileError(f"'{name}' is not a file, and {self.param} '{self.path}' has no columns")

    def raw_values(self, name: str) -> list[Any]:
        """The plain values of another column/field (metadata): any JSON-like value, None where missing."""
        raise InputFileError(f"'{name}' is not a file, and {self.param} '{self.path}' has no columns")

    # -- shared checks ---------------------------------------------------------------------
    def check_finite(self, x: np.ndarray, start: int) -> None:
        """Raise on the first NaN or inf of the batch ``x`` that starts at row ``start``."""
        bad = ~np.isfinite(x)
        if bad.any():
            row, col = (int(v) for v in np.argwhere(bad)[0])
            raise InputFileError(
                f"{self.param} '{self.path}': row {start + row} holds {x[row, col]} at column {col};"
                " vectors must be finite (no NaN or inf)"
            )


def _cast(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


class _NpySource(VectorSource):
    def __init__(self, path: Path, param: str) -> None:
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # numpy raises ValueError / OSError / EOFError for a bad file
            raise InputFileError(f"{param} '{path}' is not a readable .npy file: {exc}") from None
        if isinstance(arr, np.lib.npyio.NpzFile):  # pragma: no cover - .npz renamed to .npy
            raise InputFileError(f"{param} '{path}' is an .npz archive, not an .npy array")
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2:
            raise InputFileError(
                f"{param} '{path}': expected a 2-d array (n, dim); got shape {tuple(arr.shape)}"
            )
        _as_float_matrix(arr, param, path)
        super().__init__(path, param, "npy", int(arr.shape[0]), int(arr.shape[1]))
        self._arr = arr

    def _rows(self, start: int, stop: int) -> np.ndarray:
        return _cast(self._arr[start:stop])


class _FvecsSource(VectorSource):
    def __init__(self, path: Path, param: str) -> None:
        size = path.stat().st_size
        if size == 0:
            super().__init__(path, param, "fvecs", 0, 0)
            self._rows_view = np.zeros((0, 1), dtype=np.float32)
            return
        if size < 4 or size % 4:
            raise InputFileError(f"{param} '{path}' is not an .fvecs file: its size {size} is not a multiple of 4")
        raw = np.memmap(path, dtype="<i4", mode="r")
        d = int(raw[0])
        if d <= 0 or size % (4 * (d + 1)):
            raise InputFileError(
                f"{param} '{path}' is not an .fvecs file: header dim {d} does not divide its size {size}"
            )
        view = raw.reshape(-1, d + 1)
        dims = view[:, 0]
        for s in range(0, len(dims), 1 << 20):  # headers: a strided read, done in slices
            chunk = np.asarray(dims[s : s + (1 << 20)])
            bad = np.flatnonzero(chunk != d)
            if bad.size:
                row = s + int(bad[0])
                raise InputFileError(
                    f"{param} '{path}': row {row} has dim header {int(chunk[bad[0]])}, expected {d}"
                )
        super().__init__(path, param, "fvecs", int(view.shape[0]), d)
        self._rows_view = view[:, 1:].view("<f4")

    def _rows(self, start: int, stop: int) -> np.ndarray:
        return _cast(self._rows_view[start:stop])


class _ParquetSource(VectorSource):
    def __init__(self, path: Path, param: str, column: str | None) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - pyarrow is the `io` extra
            raise InputFileError(
                f"{param} '{path}': reading .parquet needs pyarrow", "pip install 'compatindex[io]'"
            ) from None
        self._pa = pa
        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:
            raise InputFileError(f"{param} '{path}' is not a readable .parquet file: {exc}") from None
        schema = pf.schema_arrow
        names = list(schema.names)
        listy = [f.name for f in schema if _is_list_type(pa, f.type)]
        if column is None:
            picks = [c for c in _DEFAULT_VECTOR_COLUMNS if c in listy] or (listy if len(listy) == 1 else [])
            if not picks:
                raise InputFileError(
                    f"{param} '{path}': cannot tell which column holds the vectors (columns: {', '.join(names)})",
                    "name it with --column",
                )
            column = picks[0]
        if column not in names:
            raise InputFileError(
                f"--column '{column}': {param} '{path}' has no such column (columns: {', '.join(names)})"
            )
        ftype = schema.field(column).type
        if not _is_list_type(pa, ftype):
            raise InputFileError(
                f"--column '{column}' of {param} '{path}' has type {ftype}; expected a list of floats"
            )
        vtype = ftype.value_type
        if not (pa.types.is_floating(vtype) or pa.types.is_integer(vtype)):
            raise InputFileError(
                f"--column '{column}' of {param} '{path}' holds {vtype} values; expected floats"
            )
        self._pf = pf
        self._col = column
        n = int(pf.metadata.num_rows)
        if pa.types.is_fixed_size_list(ftype):
            dim = int(ftype.list_size)
        elif n == 0:
            dim = 0
        else:
            first = next(pf.iter_batches(batch_size=1, columns=[column])).column(0)
            dim = int(first.value_lengths()[0].as_py() or 0) if first.null_count == 0 else 0
        super().__init__(path, param, "parquet", n, dim)
        self.columns = [c for c in names if c != column]

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        pa = self._pa
        start = 0
        for rb in self._pf.iter_batches(batch_size=batch_size, columns=[self._col]):
            arr = rb.column(0)
            if arr.null_count:
                row = start + int(np.flatnonzero(np.asarray(arr.is_null()))[0])
                raise InputFileError(f"{self.param} '{self.path}': row {row} of column '{self._col}' is null")
            if not pa.types.is_fixed_size_list(arr.type):
                lengths = np.asarray(arr.value_lengths())
                bad = np.flatnonzero(lengths != self.dim)
                if bad.size:
                    row = start + int(bad[0])
                    raise InputFileError(
                        f"{self.param} '{self.path}': row {row} of column '{self._col}' has "
                        f"{int(lengths[bad[0]])} values, expected {self.dim} like row 0"
                    )
            values = arr.flatten()  # respects the slice offset of each batch
            if values.null_count:
                raise InputFileError(
                    f"{self.param} '{self.path}': column '{self._col}' holds null values inside vectors"
                )
            x = values.to_numpy(zero_copy_only=False).reshape(len(arr), self.dim)
            yield start, _cast(x)
            start += len(arr)

    def column(self, name: str) -> list[Any] | np.ndarray:
        if name not in self.columns:
            raise InputFileError(
                f"'{name}' is neither a file nor a column of {self.param} '{self.path}'"
                f" (columns: {', '.join(self.columns) or 'none'})"
            )
        table = self._pf.read(columns=[name])
        col = table.column(0)
        if col.null_count:
            raise InputFileError(f"column '{name}' of {self.param} '{self.path}' holds nulls")
        return _keys_from_values(col.to_pylist(), f"column '{name}' of {self.param} '{self.path}'")

    def raw_values(self, name: str) -> list[Any]:
        if name not in self.columns:
            raise InputFileError(
                f"--metadata-columns '{name}': {self.param} '{self.path}' has no such column"
                f" (columns: {', '.join(self.columns) or 'none'})"
            )
        values: list[Any] = []
        for rb in self._pf.iter_batches(batch_size=65_536, columns=[name]):
            values.extend(rb.column(0).to_pylist())
        return values


def _is_list_type(pa: Any, t: Any) -> bool:
    return bool(pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t))


class _JsonlSource(VectorSource):
    def __init__(self, path: Path, param: str, column: str | None) -> None:
        key = column or "vector"
        rows: list[dict[str, Any]] = []
        vectors: list[Any] = []
        try:
            with open(path, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InputFileError(
                            f"{param} '{path}': line {lineno} is not valid JSON ({exc.msg})"
                        ) from None
                    if not isinstance(obj, dict) or key not in obj:
                        raise InputFileError(
                            f"{param} '{path}': line {lineno} has no \"{key}\" field",
                            'each line must look like {"id": 1, "vector": [0.1, 0.2]}'
                            + ("" if column else "; name another field with --column"),
                        )
                    vec = obj.pop(key)
                    if not isinstance(vec, list) or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) for v in vec
                    ):
                        raise InputFileError(
                            f"{param} '{path}': line {lineno}: \"{key}\" must be a list of numbers"
                        )
                    if vectors and len(vec) != len(vectors[0]):
                        raise InputFileError(
                            f"{param} '{path}': line {lineno} has a vector of {len(vec)} values,"
                            f" expected {len(vectors[0])} like the first line"
                        )
                    vectors.append(vec)
                    rows.append(obj)
        except UnicodeDecodeError as exc:
            raise InputFileError(f"{param} '{path}' is not UTF-8 text: {exc.reason}") from None
        x = np.asarray(vectors, dtype=np.float64) if vectors else np.zeros((0, 0))
        super().__init__(path, param, "jsonl", int(x.shape[0]), int(x.shape[1]) if x.ndim == 2 else 0)
        self._x = x
        self._records = rows
        fields: list[str] = []
        for r in rows:
            for k in r:
                if k not in fields:
                    fields.append(k)
        self.columns = fields

    def _rows(self, start: int, stop: int) -> np.ndarray:
        return _cast(self._x[start:stop])

    def column(self, name: str) -> list[Any] | np.ndarray:
        what = f"field \"{name}\" of {self.param} '{self.path}'"
        if name not in self.columns:
            raise InputFileError(
                f"'{name}' is neither a file nor a field of {self.param} '{self.path}'"
                f" (fields: {', '.join(self.columns) or 'none'})"
            )
        values = []
        for i, r in enumerate(self._records):
            if name not in r or r[name] is None:
                raise InputFileError(f"{what}: record {i} has no value")
            values.append(r[name])
        return _keys_from_values(values, what)

    def raw_values(self, name: str) -> list[Any]:
        if name not in self.columns:
            raise InputFileError(
                f"--metadata-columns '{name}': {self.param} '{self.path}' has no such field"
                f" (fields: {', '.join(self.columns) or 'none'})"
            )
        return [r.get(name) for r in self._records]


def open_vectors(path: str | Path, *, param: str = "VECTORS", column: str | None = None) -> VectorSource:
    """Open a vector file by its extension and check its header/shape (not yet its values).

    Parameters
    ----------
    path:
        ``.npy`` (memory-mapped), ``.fvecs``, ``.parquet`` (streamed) or ``.jsonl``.
    param:
        The command-line name of the argument, used in messages.
    column:
        Parquet column / jsonl field holding the vectors (default: ``vector``, or the only list
        column of a parquet file).

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.npy")
    >>> np.save(p, np.ones((3, 4), dtype=np.float16))
    >>> src = open_vectors(p)
    >>> src.n, src.dim, next(src.batches(2))[1].dtype
    (3, 4, dtype('float32'))
    """
    path = Path(path)
    suffix = _check_file(path, param, VECTOR_SUFFIXES)
    if column is not None and suffix not in (".parquet", ".jsonl"):
        raise InputFileError(f"--column '{column}' applies to .parquet and .jsonl inputs; {param} is '{path}'")
    try:
        if suffix == ".npy":
            return _NpySource(path, param)
        if suffix == ".fvecs":
            return _FvecsSource(path, param)
        if suffix == ".parquet":
            return _ParquetSource(path, param, column)
        return _JsonlSource(path, param, column)
    except OSError as exc:
        raise InputFileError(f"{param} '{path}' cannot be read: {exc.strerror or exc}") from None


def _keys_from_values(values: list[Any], what: str) -> np.ndarray | list[str]:
    """Turn a list of ids/labels into an int64 array (all ints) or a list of str."""
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return _to_int64(values, what)
    if all(isinstance(v, str) for v in values):
        return list(values)
    bad = next(v for v in values if not isinstance(v, (str, int, np.integer)) or isinstance(v, bool))
    kinds = sorted({type(v).__name__ for v in values})
    raise InputFileError(
        f"{what}: values must be all integers or all strings; got {', '.join(kinds)} (e.g. {bad!r})"
    )


def _to_int64(values: list[Any], what: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.int64).reshape(-1)
    except OverflowError:
        big = next(v for v in values if not -(2**63) <= int(v) < 2**63)
        raise InputFileError(f"{what}: integer {big} does not fit in 64 bits") from None


def _text_lines(path: Path, what: str, *, empty_hint: str = "") -> list[str]:
    """The lines of a UTF-8 text file, trailing blank lines dropped; an empty line inside is an error."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise InputFileError(f"{what} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{what} is not UTF-8 text: {exc.reason}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            raise InputFileError(f"{what}: line {lineno} is empty", empty_hint)
    return lines


def read_keys(
    spec: str,
    *,
    param: str,
    source: VectorSource | None = None,
    text_ints: bool = True,
) -> np.ndarray | list[str]:
    """Read ids or labels: an ``.npy`` or ``.txt`` file, or a column of the vector input.

    ``.txt`` holds one value per line; with ``text_ints`` (labels) they are ints when every line
    parses as an int, else strings; without it (ids, see :func:`read_ids`) they stay strings. ``.npy`` holds an int or str array. When ``spec`` is not an existing file and the
    vector input (``source``) is a parquet/jsonl file, ``spec`` names one of its columns.

    Returns an ``(n,)`` int64 array or a list of ``n`` str.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "ids.txt")
    >>> _ = open(p, "w").write("7\\n8\\n9\\n")
    >>> read_keys(p, param="--ids").tolist()
    [7, 8, 9]
    """
    path = Path(spec)
    is_file = path.exists() or path.suffix.lower() in KEY_SUFFIXES
    if not is_file and source is not None and source.kind in ("parquet", "jsonl"):
        return source.column(spec)
    suffix = _check_file(path, param, KEY_SUFFIXES)
    what = f"{param} '{path}'"
    try:
        if suffix == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except ValueError as exc:
                raise InputFileError(
                    f"{what} is not a readable .npy array: {exc}",
                    "save ids as an int or fixed-width str array, e.g. np.array(ids, dtype=str)",
                ) from None
            arr = np.asarray(arr).reshape(-1) if arr.ndim <= 1 else arr
            if arr.ndim != 1:
                raise InputFileError(f"{what}: expected a 1-d array; got shape {tuple(arr.shape)}")
            if arr.dtype.kind in "iu":
                if arr.dtype == np.uint64 and arr.size and int(arr.max()) >= 2**63:
                    raise InputFileError(f"{what}: integer {int(arr.max())} does not fit in 64 bits")
                return arr.astype(np.int64)
            if arr.dtype.kind in "US":
                return [str(v) if arr.dtype.kind == "U" else v.decode("utf-8") for v in arr.tolist()]
            raise InputFileError(f"{what}: values must be integers or strings; got dtype {arr.dtype}")
    except OSError as exc:
        raise InputFileError(f"{what} cannot be read: {exc.strerror or exc}") from None
    lines = _text_lines(path, what)
    if text_ints and lines and all(_INT_RE.match(s.strip()) for s in lines):
        return _to_int64([int(s) for s in lines], what)
    return lines


class Ids(list):
    """Ids read as text (a ``.txt`` file, a comma list or a str column), with where they came from.

    ``what`` names the source in messages (``--ids 'ids.txt'``) and ``unit`` how a position is
    said (``line`` 3 of a file, ``value`` 3 of a comma list, ``row`` 3 of a column).
    """

    def __init__(self, values: list[str], *, what: str, unit: str, base: int = 1) -> None:
        super().__init__(values)
        self.what = what
        self.unit = unit
        self.base = base


def read_all(source: VectorSource) -> np.ndarray:
    """Every row of a vector source, each batch checked for NaN/inf (the error names the file and row)."""
    parts = []
    for start, x in source.batches(65_536):
        source.check_finite(x, start)
        parts.append(x)
    return np.concatenate(parts) if parts else np.zeros((0, source.dim), np.float32)


def read_ids(
    spec: str,
    *,
    param: str = "--ids",
    source: VectorSource | None = None,
    comma_list: bool = False,
) -> np.ndarray | Ids:
    """Read ids without guessing their type: an int ``.npy`` array or an int column gives ints;
    a ``.txt`` file, a str array/column (or, with ``comma_list``, ``a,b,c``) gives text.

    Text ids keep their text (``000042`` and ``42`` are two ids); :func:`coerce_ids` turns them
    into ints when the user asks (``--int-ids``) or the index already holds int ids.

    Examples
    --------
    >>> read_ids("000042,42", comma_list=True)
    ['000042', '42']
    """
    path = Path(spec)
    looks_like_file = path.exists() or path.suffix.lower() in KEY_SUFFIXES
    if comma_list and not looks_like_file and not (source is not None and spec in source.columns):
        values = [v.strip() for v in spec.split(",")]
        if spec.strip() == "" or any(v == "" for v in values):
            raise InputFileError(f"{param} {spec!r}: an empty id in the comma list",
                                 "give a .txt/.npy file or ids separated by commas, e.g. --ids a,b,c")
        return Ids(values, what=f"{param} {spec!r}", unit="value")
    keys = read_keys(spec, param=param, source=source, text_ints=False)
    if isinstance(keys, np.ndarray):
        return keys
    if looks_like_file or source is None or source.kind not in ("parquet", "jsonl"):
        return Ids(keys, what=f"{param} '{spec}'", unit="line")
    return Ids(keys, what=f"column '{spec}' of {source.param} '{source.path}'", unit="row", base=0)


def coerce_ids(keys: np.ndarray | list[str], *, int_ids: bool, index_kind: str | None) -> np.ndarray | list[str]:
    """Decide the type of ids read as text, once the index's id kind is known.

    Text ids become ints when ``int_ids`` (``--int-ids``) or when the index holds int ids
    (``index_kind == "int"``); a text id that is not an integer is then an error naming the file
    and the line. Otherwise they stay text. Int ids are returned as they are.
    """
    if isinstance(keys, np.ndarray) or not (int_ids or index_kind == "int"):
        return keys
    what = getattr(keys, "what", "--ids")
    unit = getattr(keys, "unit", "value")
    base = getattr(keys, "base", 1)
    for i, s in enumerate(keys):
        if not _INT_RE.match(str(s).strip()):
            if int_ids:
                raise InputFileError(f"{what}: {unit} {i + base} holds {s!r}, which is not an integer (--int-ids)",
                                     "leave out --int-ids to keep text ids")
            raise InputFileError(f"{what}: {unit} {i + base} holds the text id {s!r}, but INDEX holds integer ids",
                                 "ids are all integers or all text in one index")
    return _to_int64([int(str(s).strip()) for s in keys], what)


def read_metadata(spec: str, *, param: str = "--metadata", source: VectorSource | None = None) -> list[Any]:
    """Per-row metadata: a ``.jsonl`` file (one JSON object per line, ``{}`` or ``null`` for none),
    or a column/field of the ``.parquet``/``.jsonl`` vector input holding JSON objects (or JSON
    text, like the ``metadata`` column ``compatindex export --to FILE.parquet`` writes).

    Returns a list of dicts (None where a row has none). Errors name the file and the line.
    """
    path = Path(spec)
    looks_like_file = path.exists() or path.suffix.lower() in (".jsonl", ".json", ".ndjson")
    if not looks_like_file and source is not None and source.kind in ("parquet", "jsonl"):
        if spec not in source.columns:
            raise InputFileError(f"{param} '{spec}' is neither a file nor a column of {source.param} '{source.path}'"
                                 f" (columns: {', '.join(source.columns) or 'none'})")
        what = f"column '{spec}' of {source.param} '{source.path}'"
        out: list[Any] = []
        for i, v in enumerate(source.raw_values(spec)):
            if isinstance(v, str):
                try:
                    v = json.loads(v)
                except json.JSONDecodeError as exc:
                    raise InputFileError(f"{what}: row {i} is not valid JSON ({exc.msg})") from None
            if v is not None and not isinstance(v, dict):
                raise InputFileError(f"{what}: row {i} holds {type(v).__name__} {v!r}, not a JSON object")
            out.append(v)
        return out
    _check_file(path, param, (".jsonl",))
    what = f"{param} '{path}'"
    rows: list[Any] = []
    for lineno, line in enumerate(_text_lines(path, what, empty_hint="write {} for a row without metadata"), 1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputFileError(f"{what}: line {lineno} is not valid JSON ({exc.msg})") from None
        if obj is not None and not isinstance(obj, dict):
            raise InputFileError(f"{what}: line {lineno} holds a JSON {type(obj).__name__}, not an object",
                                 'each line is one object, e.g. {"lang": "en", "year": 2021}')
        rows.append(obj)
    return rows


def metadata_from_columns(source: VectorSource, names: list[str]) -> list[Any]:
    """Per-row metadata dicts built from columns/fields of the vector input (null values left out)."""
    if source.kind not in ("parquet", "jsonl"):
        raise InputFileError(f"--metadata-columns reads columns of a .parquet/.jsonl input; {source.param} is "
                             f"'{source.path}'", "give the metadata as a .jsonl file with --metadata")
    cols = {name: source.raw_values(name) for name in names}
    out: list[Any] = []
    for i in range(source.n):
        row = {name: vals[i] for name, vals in cols.items() if vals[i] is not None}
        out.append(row or None)
    return out


def check_unique(keys: np.ndarray | list[str], *, what: str) -> None:
    """Raise when ``keys`` repeats a value, naming a few of the duplicates."""
    if isinstance(keys, np.ndarray):
        uniq, counts = np.unique(keys, return_counts=True)
        dups = uniq[counts > 1].tolist()
    else:
        seen: set[str] = set()
        dup_set: dict[str, None] = {}
        for k in keys:
            if k in seen:
                dup_set[k] = None
            seen.add(k)
        dups = list(dup_set)
    if dups:
        shown = ", ".join(repr(d) for d in dups[:5]) + (", ..." if len(dups) > 5 else "")
        raise InputFileError(f"{what} repeats {len(dups)} id(s): {shown}", "each id may appear only once")
