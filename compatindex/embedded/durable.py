"""Durable file writes of the embedded backend: what survives a power cut once these return.

One copy for the store (compacting copies), the shards (index files and manifests) and the
backend (backups, the compaction marker), so that every path makes data durable the same way:
the file's bytes are fsynced, then the folder that names it (docs/reliability.md).
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: the names it holds, after a create, rename or unlink)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write ``path`` in place, then fsync it and its folder."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(path.parent)


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Replace ``path`` whole or not at all: write a sibling ``.tmp``, fsync, rename, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)
