"""The backend-independent core: the version algebra, heads, record packing, input validation,
score conventions and the typed values of the public API (docs/architecture.md).

Nothing here imports a storage engine or a search library: both backends build on it.
"""
