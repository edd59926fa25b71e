"""Source-of-truth storage (LMDB)."""

from .base import Store as Store
from .lmdb_store import FORMAT_VERSION as FORMAT_VERSION
from .lmdb_store import LmdbStore as LmdbStore

__all__ = ["Store", "LmdbStore", "FORMAT_VERSION"]
