"""compatindex: an embedded, on-disk, multi-version vector index with backward-compatible upgrades.

>>> import numpy as np, compatindex
>>> ix = compatindex.open(":memory:")
>>> ix.create_version("v1", dim=3).dim
3
>>> ix.close()
"""

from importlib.metadata import PackageNotFoundError as _PNF
from importlib.metadata import version as _version

from . import errors as errors
from .embedded.faiss_import import faiss as _faiss_module  # noqa: F401  (import-time packaging checks)
from .errors import CompatIndexError as CompatIndexError
from .index import Index as Index
from .index import open as open
from .core.scoring import Metric as Metric
from .embedded.shards import ShardSpec as ShardSpec
from .core.datatypes import AddResult as AddResult
from .core.datatypes import Hit as Hit
from .core.datatypes import ItemBatch as ItemBatch
from .core.datatypes import SearchResult as SearchResult
from .core.datatypes import Version as Version

try:
    __version__ = _version("compatindex")
except _PNF:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+src"

__all__ = [
    "open", "Index", "Version", "SearchResult", "AddResult", "ItemBatch", "Hit", "Metric",
    "ShardSpec", "CompatIndexError", "errors", "__version__",
]
