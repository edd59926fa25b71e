"""Shared pieces of the CLI commands: options, error handling, progress, index opening.

Errors: every :class:`compatindex.errors.CompatIndexError` and every bad input file
(:class:`~compatindex_cli._io.InputFileError`) becomes one line ``error: ...`` on stderr and exit
code 1, with no traceback. Usage errors (unknown option, missing argument, a value outside its
range or choices) are Typer's and exit 2; so are the ones the commands detect themselves
(:class:`UsageError`: a ``--version`` left out on an index of several versions, a
``--raw/--no-raw`` left out for a version whose raw transform is not the identity), said in one
line ``error: ...``. Progress bars go to stderr so stdout stays machine-readable; ``--quiet``
turns them off.

Versions: a command that takes ``--version`` uses, when it is left out, the environment variable
``COMPATINDEX_VERSION`` (:data:`VERSION_ENV`; a pin for old clients after an upgrade), else (for
``add`` and ``search``) the only version of a one-version index.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

import compatindex
from compatindex.errors import CompatIndexError

from ._io import UserError, VectorSource

__all__ = [
    "Quiet",
    "Json",
    "BatchSize",
    "CliError",
    "UsageError",
    "VERSION_ENV",
    "RawOpt",
    "resolve_raw",
    "require_version",
    "IndexArg",
    "cli_errors",
    "progress",
    "open_index",
    "is_url",
    "resolve_version",
    "check_vectors",
    "metric_name",
    "fmt_ids",
    "to_jsonable",
    "say",
]

DEFAULT_BATCH = 65_536

VERSION_ENV = "COMPATINDEX_VERSION"
"""Environment variable that supplies the default ``--version`` of every command that takes one."""

def at_least_one(value: int | None) -> int | None:
    """Option callback: a count that must be >= 1 (a usage error, exit 2, otherwise)."""
    if value is not None and value < 1:
        raise typer.BadParameter(f"must be >= 1; got {value}")
    return value


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output on stderr.")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
BatchSize = Annotated[
    int,
    typer.Option("--batch-size", callback=at_least_one, help="Rows per batch streamed through the index.", show_default=True),
]
IndexArg = Annotated[
    str,
    typer.Argument(metavar="INDEX", help="Index folder, or a qdrant:// / qdrant+local:// URL.", show_default=False),
]
RawOpt = Annotated[
    bool | None,
    typer.Option("--raw/--no-raw", show_default=False,
                 help="--raw: the vectors are raw encoder outputs, mapped by the version's head and Q; --no-raw: "
                      "they already are version-space vectors. Required when the version has a head or a "
                      "non-identity Q."),
]
LockTimeout = Annotated[
    float,
    typer.Option("--lock-timeout", min=0.0, help="Seconds to wait for another writer to close the index."),
]


class CliError(UserError):
    """A user error the CLI itself detects (not a file and not a library error)."""


class UsageError(CliError):
    """A usage error the CLI detects itself (an option the call needs was left out): exit 2."""


def say(message: str) -> None:
    """One line on stdout."""
    typer.echo(message)


def _fail(message: str, code: int = 1) -> typer.Exit:
    # typer.echo: one plain line (a rich Console would wrap long messages at the terminal width).
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=code)


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Turn user errors into one line on stderr and exit 1 (no traceback).

    Set ``COMPATINDEX_DEBUG=1`` to let unexpected exceptions show their traceback.
    """
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except (CompatIndexError, UserError) as exc:
        raise _fail(str(exc).replace("\n", " "), 2 if isinstance(exc, UsageError) else 1) from None
    except KeyboardInterrupt:
        raise _fail("interrupted", 130) from None
    except MemoryError:
        raise _fail("out of memory; retry with a smaller --batch-size") from None
    except OSError as exc:
        where = f" '{exc.filename}'" if getattr(exc, "filename", None) else ""
        raise _fail(f"{exc.strerror or exc}{where}") from None
    except Exception as exc:  # a bug: say so in one line unless debugging
        if os.environ.get("COMPATINDEX_DEBUG"):
            raise
        raise _fail(
            f"unexpected {type(exc).__name__}: {exc} (this is a bug; rerun with COMPATINDEX_DEBUG=1 for the traceback)"
        ) from None


@contextlib.contextmanager
def progress(
    description: str, total: int, *, quiet: bool, transient: bool = False
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``. A no-op with ``quiet``.

    ``transient`` bars vanish when done (the check pass before a write).
    """
    if quiet or total <= 0:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,  # else a piped stderr (CI logs) gets the final state once
    )
    with bar:
        task = bar.add_task(description, total=total)
        try:
            yield lambda n: bar.advance(task, n)
        except BaseException:
            bar.update(task, visible=False)  # an error is the one line left on stderr
            raise


def is_url(index: str | Path) -> bool:
    """Whether INDEX names a server-backed index (``qdrant://``, ``qdrant+local://``) rather than a folder."""
    return compatindex.connect.is_url(str(index))


def open_index(
    path: str | Path, *, readonly: bool = False, lock_timeout: float = 0.0
) -> compatindex.Index:
    """Open an existing index folder (never creates one), or a ``qdrant://`` / ``qdrant+local://`` URL.

    Raises :class:`CliError` when ``path`` is missing or not a folder; ``compatindex.open`` raises
    ``NotAnIndexError`` for a folder that does not hold an index and ``IndexLockedError`` when
    another writer holds it.
    """
    if is_url(path):
        return compatindex.open(str(path), readonly=readonly, create=False)
    path = Path(path)
    if not path.exists():
        raise CliError(
            f"INDEX '{path}': no such folder",
            f"create an index with `compatindex init {path} --dim D`",
        )
    if not path.is_dir():
        raise CliError(f"INDEX '{path}' is a file, not an index folder")
    kwargs: dict[str, Any] = {"readonly": readonly, "create": False}
    if not readonly:
        kwargs["lock_timeout"] = lock_timeout
    return compatindex.open(str(path), **kwargs)


def pinned_version() -> str | None:
    """The default ``--version`` set by ``COMPATINDEX_VERSION`` (None when unset or empty)."""
    return os.environ.get(VERSION_ENV, "").strip() or None


def resolve_version(index: compatindex.Index, name: str | None, *, option: str = "--version") -> Any:
    """The version called ``name``; left out: ``COMPATINDEX_VERSION``, else the only version.

    Raises ``UnknownVersionError`` for a name the index does not hold, :class:`UsageError`
    (exit 2) when the index holds several versions and neither names one.
    """
    if name is not None:
        return index.version(name)
    pin = pinned_version()
    vs = index.versions()
    if pin is not None:
        if pin not in {v.name for v in vs}:
            known = ", ".join(repr(v.name) for v in vs) or "none"
            raise CliError(f"{VERSION_ENV}={pin!r} is not a version of this index (versions: {known})",
                           f"unset {VERSION_ENV} or set it to one of the versions; list them with "
                           "`compatindex versions INDEX`")
        return index.version(pin)
    if not vs:
        raise CliError("the index has no version yet", "create one with `compatindex init`")
    if len(vs) == 1:
        return vs[0]
    names = ", ".join(repr(v.name) for v in vs)
    raise UsageError(
        f"{option} is required: this index holds versions {names}; pass {option} {vs[-1].name} "
        f"(the version your vectors belong to), or set {VERSION_ENV}=NAME to pin a default"
    )


def require_version(index: str | Path, name: str | None, *, what: str, option: str = "--version") -> None:
    """For commands whose ``--version`` has no "only version" default (``backfill``, ``calibrate``):
    a :class:`UsageError` (exit 2), before any file is read, when neither ``--version`` nor
    ``COMPATINDEX_VERSION`` names one. The message lists the index's versions when it can read them."""
    if name is not None or pinned_version() is not None:
        return
    listing = ""
    with contextlib.suppress(Exception):
        with open_index(index, readonly=True) as ix:
            names = [v.name for v in ix.versions()]
        if names:
            listing = (f"; this index holds version{'s' if len(names) > 1 else ''} "
                       + ", ".join(repr(n) for n in names) + f", e.g. {option} {names[-1]}")
    raise UsageError(f"Missing option '{option}' ({what}){listing}; or set {VERSION_ENV}=NAME to pin a default")


def resolve_raw(version: Any, raw: bool | None) -> bool:
    """``--raw`` / ``--no-raw`` as given; left out: False for an identity version, else :class:`UsageError`."""
    if raw is not None:
        return bool(raw)
    from compatindex.core.versions import raw_transform

    what = raw_transform(version)
    if not what:
        return False
    raise UsageError(
        f"version '{version.name}' maps encoder outputs into its space with {' and '.join(what)}: "
        "pass --raw (encoder outputs) or --no-raw (version-space vectors)"
    )


def metric_name(version: Any) -> str:
    m = version.metric
    return str(getattr(m, "value", m)).lower()


def check_vectors(
    source: VectorSource,
    index: compatindex.Index,
    version: Any,
    *,
    raw: bool,
    batch_size: int,
    quiet: bool,
) -> None:
    """Check every vector of ``source`` before anything is written: dim, finite, non-zero (cosine).

    With ``raw``, the dim must be the version's ``raw_dim`` and the zero check is made on the
    vectors mapped into version space (``Index.to_version_space``).
    """
    expected = (version.raw_dim or version.dim) if raw else version.dim
    what = "raw dim" if raw else "dim"
    if source.n and source.dim != expected:
        hint = "" if raw or version.raw_dim in (None, version.dim) else (
            f"version '{version.name}' takes raw encoder outputs of dim {version.raw_dim} with --raw"
        )
        raise CliError(
            f"{source.param} '{source.path}' holds vectors of dim {source.dim}; version "
            f"'{version.name}' has {what} {expected}",
            hint or "pick the version with --version",
        )
    cosine = metric_name(version) == "cosine"
    with progress(f"checking {source.path.name}", source.n, quiet=quiet, transient=True) as advance:
        for start, x in source.batches(batch_size):
            source.check_finite(x, start)
            if cosine:
                y = index.to_version_space(x, version=version.name) if raw else x
                norms = np.einsum("ij,ij->i", y, y)
                zero = np.flatnonzero(norms == 0)
                if zero.size:
                    raise CliError(
                        f"{source.param} '{source.path}': row {start + int(zero[0])} is a zero vector"
                        f"{' once mapped to version space' if raw else ''}; version '{version.name}'"
                        " uses the cosine metric, which cannot normalize it"
                    )
            advance(len(x))


def fmt_ids(ids: Any, limit: int = 5) -> str:
    """A short list of ids for messages."""
    seq = list(ids[: limit + 1]) if not isinstance(ids, list) else ids[: limit + 1]
    shown = ", ".join(repr(to_jsonable(v)) for v in seq[:limit])
    return shown + (", ..." if len(seq) > limit else "")


def to_jsonable(v: Any) -> Any:
    """numpy scalars/arrays and other odd values -> JSON-friendly Python values."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): to_jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_jsonable(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def dumps(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), default=str, allow_nan=False)


def out_console() -> Any:
    """A rich Console on stdout, never wrapping lines in a pipe."""
    from rich.console import Console

    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def index_id_kind(index: compatindex.Index) -> str | None:
    """``"int"`` or ``"str"``: the kind of ids the index holds; None while it holds no item."""
    if not int(index.count):
        return None
    page = index.list_items(offset=0, limit=1)
    if not page.items:
        return None
    first = page.items[0].id
    return "int" if isinstance(first, (int, np.integer)) and not isinstance(first, bool) else "str"


def resolve_ids(keys: Any, index: compatindex.Index, *, int_ids: bool = False) -> Any:
    """Ids read as text (``_io.read_ids``) typed for ``index``: ints under ``--int-ids`` or when the
    index holds int ids, else text. ``--int-ids`` on an index of text ids is an error."""
    from ._io import coerce_ids

    kind = index_id_kind(index)
    if int_ids and kind == "str":
        raise CliError(f"--int-ids: INDEX '{index.path}' holds text ids", "leave out --int-ids")
    return coerce_ids(keys, int_ids=int_ids, index_kind=kind)


Where = Annotated[
    str | None,
    typer.Option("--where", metavar="JSON", show_default=False,
                 help='Filter on metadata and labels, as JSON: \'{"lang": "en", "year": {"$gte": 2020}}\' '
                      "(operators: docs/api.md, Filters)."),
]
WhereFile = Annotated[
    Path | None,
    typer.Option("--where-file", metavar="FILE", show_default=False, help="The --where filter read from a .json file."),
]


def parse_where(where: str | None, where_file: Path | None) -> Any:
    """The filter of ``--where``/``--where-file`` as Python data, checked by the library's filter
    parser before any index is opened (errors name the option and the filter path)."""
    if where is not None and where_file is not None:
        raise CliError("give the filter either as --where JSON or as --where-file FILE, not both")
    if where is None and where_file is None:
        return None
    if where_file is not None:
        param = f"--where-file '{where_file}'"
        if not where_file.exists():
            raise CliError(f"{param}: no such file")
        if where_file.is_dir():
            raise CliError(f"{param} is a folder, not a file")
        try:
            text = where_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CliError(f"{param} is not UTF-8 text: {exc.reason}") from None
    else:
        param, text = "--where", where or ""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{param} is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})",
                       'filters look like {"lang": "en", "year": {"$gte": 2020}}') from None
    from compatindex.core.filters import parse_filter
    from compatindex.errors import InvalidInputError

    try:
        parse_filter(obj)
    except InvalidInputError as exc:
        raise CliError(f"{param}: {exc.message}", exc.hint) from None
    return obj
