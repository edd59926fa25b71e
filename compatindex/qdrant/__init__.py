"""The Qdrant backend: the same multi-version index, one named vector per version (docs/scaling.md).

Needs the optional extra ``qdrant`` (``pip install 'compatindex[qdrant]'``). Open an index with
``compatindex.open("qdrant://HOST:PORT/COLLECTION")`` or ``compatindex.open("qdrant+local://PATH")``
(:mod:`compatindex.connect` routes those schemes to :func:`open_backend`); copy an embedded index
into Qdrant with :func:`export_index` (``compatindex export INDEX --to URL``).
"""

from .backend import QdrantBackend, open_backend
from .errors import BackendError, BackendUnavailableError, BackendVersionError
from .export import export_index
from .items import point_id
from .url import parse as parse_url

__all__ = ["open_backend", "QdrantBackend", "export_index", "point_id", "parse_url",
           "BackendError", "BackendUnavailableError", "BackendVersionError"]
