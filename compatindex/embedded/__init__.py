"""The embedded backend: an LMDB store (the source of truth), FAISS shards derived from it,
the writer lock and the consistency check (docs/architecture.md, docs/on-disk-format.md)."""
