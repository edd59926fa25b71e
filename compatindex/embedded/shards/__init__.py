"""Derived, rebuildable search shards (FAISS per version; GPU / torch mirrors)."""

from .faiss_shard import FaissShard as FaissShard
from .faiss_shard import ShardSpec as ShardSpec
from .shard_set import ShardSet as ShardSet

__all__ = ["FaissShard", "ShardSpec", "ShardSet"]
