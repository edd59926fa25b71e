"""Errors of the Qdrant backend, and the retry helper every call to Qdrant goes through.

Both new errors subclass :class:`compatindex.errors.CompatIndexError`, so the CLI turns them into
one ``error: ...`` line like every other library error.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, TypeVar

from ..errors import CompatIndexError, IndexLockedError

log = logging.getLogger("compatindex.qdrant")
T = TypeVar("T")

MIN_SERVER = (1, 18, 0)
"""Oldest Qdrant server accepted: ``create_vector_name`` (a new version on a live collection)
and ``has_vector`` filters are needed, and 1.18 is the first release with the former."""


class BackendUnavailableError(CompatIndexError, ConnectionError):
    """The Qdrant server cannot be reached (after retries)."""

    default_hint = "check that the server is up and that HOST:PORT (and ?https=1 / ?grpc=1) are right"


class BackendVersionError(CompatIndexError, RuntimeError):
    """The Qdrant server is too old for the multi-version mapping."""

    default_hint = f"upgrade the Qdrant server to {'.'.join(map(str, MIN_SERVER))} or later"


class BackendError(CompatIndexError, RuntimeError):
    """Qdrant refused a request that compatindex had validated (a bug, or a collection changed by hand)."""


_TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}


def classify(exc: BaseException) -> str:
    """``"transient"`` (retry), ``"unreachable"`` (retry, then BackendUnavailableError) or ``"fatal"``."""
    try:
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
    except ImportError:  # pragma: no cover
        return "fatal"
    if isinstance(exc, UnexpectedResponse):
        return "transient" if exc.status_code in _TRANSIENT_HTTP else "fatal"
    if isinstance(exc, ResponseHandlingException):
        src = getattr(exc, "source", None)
        import httpx

        if isinstance(src, (httpx.ConnectError, httpx.ConnectTimeout)):
            return "unreachable"
        if isinstance(src, (httpx.TransportError, httpx.TimeoutException)):
            return "transient"
        return "fatal"
    try:
        import grpc
    except ImportError:  # pragma: no cover
        pass
    else:
        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            code = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                return "unreachable"
            if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED):
                return "transient"
            return "fatal"
    if isinstance(exc, (ConnectionError, TimeoutError)) and not isinstance(exc, CompatIndexError):
        return "unreachable"
    return "fatal"


def retry(fn: Callable[[], T], *, what: str, where: str, attempts: int = 4, base_delay: float = 0.25,
          sleep: Callable[[float], Any] = time.sleep) -> T:
    """Run ``fn`` (an idempotent request), retrying transient failures with exponential backoff.

    Raises :class:`BackendUnavailableError` when the server stays unreachable, and
    :class:`BackendError` for a request Qdrant refuses; CompatIndexErrors pass through.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except CompatIndexError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            kind = classify(exc)
            if kind == "fatal":
                raise translate(exc, what=what, where=where) from None
            if attempt + 1 == attempts:
                if kind == "unreachable":
                    raise BackendUnavailableError(f"Qdrant at {where} is unreachable ({what}): {_short(exc)}") from None
                raise BackendError(f"{what} on {where} failed after {attempts} tries: {_short(exc)}") from None
            delay = base_delay * (2 ** attempt)
            log.info("%s on %s failed (%s); retrying in %.2fs", what, where, _short(exc), delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def translate(exc: BaseException, *, what: str, where: str) -> CompatIndexError:
    text = _short(exc)
    if "already accessed by another instance" in text:
        return IndexLockedError(f"{where}: the local Qdrant folder is open in another client ({text})",
                                hint="local mode allows one client per folder; close the other, or use a Qdrant server")
    return BackendError(f"{what} on {where} failed: {text}")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    src = getattr(exc, "source", None)
    if src is not None and not text:
        text = str(src)
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)


def parse_version(text: str) -> tuple[int, int, int]:
    """``"1.18.2"`` -> ``(1, 18, 2)``; unknown parts are 0 (``"dev"`` counts as new)."""
    parts = []
    for p in str(text).split("-")[0].split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 3:
        parts.append(0)
    return (parts[0], parts[1], parts[2])


def require_client() -> None:
    """Raise a clear error when the optional extra ``qdrant`` is not installed."""
    try:
        import qdrant_client  # noqa: F401
    except ImportError:
        raise CompatIndexError("the Qdrant backend needs qdrant-client, which is not installed",
                               hint="pip install 'compatindex[qdrant]'") from None
