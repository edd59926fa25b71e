"""compatindex: an embedded, on-disk, multi-version vector index with backward-compatible upgrades.

>>> import numpy as np, compatindex
>>> ix = compatindex.open(":memory:")
>>> ix.create_version("v1", dim=3).dim
3
>>> ix.close()
"""

from importlib.metadata import PackageNotFoundError as _PNF
from importlib.metadata import version as _version

from . import connect as connect
from . import errors as errors
from .backend import Backend as Backend
from .connect import open as open
from .core.datatypes import AddResult as AddResult
from .core.datatypes import Hit as Hit
from .core.datatypes import IndexStats as IndexStats
from .core.datatypes import Item as Item
from .core.datatypes import ItemBatch as ItemBatch
from .core.datatypes import ItemPage as ItemPage
from .core.datatypes import SearchResult as SearchResult
from .core.datatypes import Version as Version
from .core.scoring import Metric as Metric
from .embedded import faiss_import as _faiss_import  # noqa: F401  (import-time packaging checks)
from .embedded.shards import ShardSpec as ShardSpec
from .errors import CompatIndexError as CompatIndexError
from .errors import RawRequiredError as RawRequiredError
from .errors import VersionRequiredError as VersionRequiredError
from .index import Index as Index

try:
    __version__ = _version("compatindex")
except _PNF:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+src"

__all__ = [
    "open", "Index", "Backend", "Version", "SearchResult", "AddResult", "ItemBatch", "Item", "ItemPage", "IndexStats",
    "Hit", "Metric", "ShardSpec", "CompatIndexError",
    "VersionRequiredError", "RawRequiredError", "errors", "connect", "__version__",
]
