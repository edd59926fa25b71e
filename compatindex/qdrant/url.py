"""Parse the Qdrant URLs that :func:`compatindex.open` dispatches here.

- ``qdrant://HOST[:PORT]/COLLECTION[?https=1&grpc=1&exact=1&timeout=S&api_key_env=VAR&registry_ttl=S]``:
  a Qdrant server or cluster (REST port, 6333 by default; ``grpc=1`` uses gRPC on ``grpc_port``,
  6334 by default). The API key is read from the environment (``QDRANT_API_KEY`` unless
  ``api_key_env`` names another variable), never from the URL.
- ``qdrant+local://PATH[?collection=NAME]`` or ``qdrant+local://PATH#NAME``: qdrant-client's
  local mode (``QdrantClient(path=PATH)``), for tests and small experiments. ``PATH`` may be
  relative (``qdrant+local://idx``) or absolute (``qdrant+local:///srv/idx``);
  ``qdrant+local://:memory:`` keeps everything in memory until ``close()`` (tests).

The collection defaults to ``"compatindex"``; the version registry lives beside it in
``<COLLECTION>__registry``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote

from ..errors import InvalidInputError

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

DEFAULT_COLLECTION = "compatindex"
REGISTRY_SUFFIX = "__registry"
_COLLECTION_RE = re.compile(r"^[A-Za-z0-9_\-.]{1,200}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_KNOWN = {"collection", "https", "grpc", "grpc_port", "exact", "timeout", "api_key_env", "registry_ttl"}


@dataclasses.dataclass(frozen=True)
class Target:
    """Where an index lives: a local folder or a server, and its collection."""

    url: str
    collection: str
    path: str | None = None          # local mode
    host: str | None = None          # server
    port: int = 6333
    grpc_port: int = 6334
    https: bool = False
    prefer_grpc: bool = False
    exact: bool = False
    timeout: float = 10.0
    api_key_env: str = "QDRANT_API_KEY"
    registry_ttl: float = 2.0

    @property
    def local(self) -> bool:
        return self.path is not None

    @property
    def registry(self) -> str:
        return self.collection + REGISTRY_SUFFIX

    def client(self) -> QdrantClient:
        """A ``QdrantClient`` for this target (nothing is contacted yet for a server)."""
        from qdrant_client import QdrantClient

        if self.path == ":memory:":
            return QdrantClient(location=":memory:")
        if self.local:
            return QdrantClient(path=self.path)
        return QdrantClient(
            host=self.host, port=self.port, grpc_port=self.grpc_port, prefer_grpc=self.prefer_grpc,
            https=self.https, api_key=os.environ.get(self.api_key_env) or None, timeout=int(max(1, self.timeout)),
            check_compatibility=False,  # checked by us, with a clear error (see index.check_server)
        )


def _flag(opts: dict[str, str], key: str, default: bool, url: str) -> bool:
    if key not in opts:
        return default
    v = opts[key].lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise InvalidInputError(f"URL {url!r}: `{key}` must be 0 or 1; got {opts[key]!r}")


def _number(opts: dict[str, str], key: str, default: float, url: str, *, cast=float):
    if key not in opts:
        return default
    try:
        value = cast(opts[key])
    except ValueError:
        raise InvalidInputError(f"URL {url!r}: `{key}` must be a number; got {opts[key]!r}") from None
    if value < 0:
        raise InvalidInputError(f"URL {url!r}: `{key}` must be >= 0; got {opts[key]!r}")
    return value


def parse(url: str) -> Target:
    """Parse ``qdrant://...`` or ``qdrant+local://...`` (raises ``InvalidInputError``).

    Examples
    --------
    >>> parse("qdrant://db.internal:6333/faces").collection
    'faces'
    >>> t = parse("qdrant+local:///tmp/x#faces"); (t.path, t.collection)
    ('/tmp/x', 'faces')
    """
    if not isinstance(url, str):
        raise InvalidInputError(f"a Qdrant URL must be a string; got {type(url).__name__}")
    text, _, fragment = url.partition("#")
    text, _, query = text.partition("?")
    raw = parse_qs(query, keep_blank_values=True)
    opts = {k: v[-1] for k, v in raw.items()}
    unknown = sorted(set(opts) - _KNOWN)
    if unknown:
        raise InvalidInputError(f"URL {url!r}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(_KNOWN))})")
    common = dict(
        exact=_flag(opts, "exact", False, url),
        timeout=_number(opts, "timeout", 10.0, url),
        registry_ttl=_number(opts, "registry_ttl", 2.0, url),
        api_key_env=opts.get("api_key_env", "QDRANT_API_KEY"),
    )
    if text.startswith("qdrant+local://"):
        path = unquote(text[len("qdrant+local://"):])
        if not path:
            raise InvalidInputError(f"URL {url!r} names no folder", hint="write qdrant+local://PATH, e.g. qdrant+local:///srv/index")
        collection = fragment or opts.get("collection") or DEFAULT_COLLECTION
        _check_collection(collection, url)
        return Target(url=url, collection=collection, path=path, **common)
    if text.startswith("qdrant://"):
        rest = text[len("qdrant://"):]
        hostport, _, coll = rest.partition("/")
        coll = unquote(coll.strip("/")) or fragment or opts.get("collection") or DEFAULT_COLLECTION
        host, port = hostport, 6333
        m = re.fullmatch(r"(\[[^\]]+\]|[^:]+)(?::(\d+))?", hostport)
        if not hostport or m is None:
            raise InvalidInputError(f"URL {url!r} has no valid HOST[:PORT]", hint="write qdrant://HOST:6333/COLLECTION")
        host = m.group(1).strip("[]")
        if m.group(2):
            port = int(m.group(2))
        _check_collection(coll, url)
        return Target(url=url, collection=coll, host=host, port=port,
                      grpc_port=int(_number(opts, "grpc_port", 6334, url, cast=int)),
                      https=_flag(opts, "https", False, url), prefer_grpc=_flag(opts, "grpc", False, url), **common)
    raise InvalidInputError(f"not a Qdrant URL: {url!r}", hint="use qdrant://HOST:PORT/COLLECTION or qdrant+local://PATH")


def _check_collection(name: str, url: str) -> None:
    if not _COLLECTION_RE.match(name) or name.endswith(REGISTRY_SUFFIX):
        raise InvalidInputError(
            f"URL {url!r}: collection name {name!r} must be 1..200 of A-Z a-z 0-9 _ - . "
            f"and must not end with {REGISTRY_SUFFIX!r}"
        )
