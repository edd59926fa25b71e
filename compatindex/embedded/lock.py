"""The writer lock of an index folder: one writer process at a time, readers never lock."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from ..errors import IndexLockedError


class WriterLock:
    """An exclusive ``flock`` on ``<index>/.lock``, released on close or process death.

    Parameters
    ----------
    path:
        The lock file.
    timeout:
        Seconds to wait for another writer to let go; 0 fails at once.
    """

    def __init__(self, path: Path, *, timeout: float = 0.0) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._holder()
                    os.close(self.fd)
                    raise IndexLockedError(
                        f"index {path.parent} is open for writing by another process{holder}; "
                        f"waited {timeout:g} s for it (lock_timeout)"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def _holder(self) -> str:
        try:
            pid = os.pread(self.fd, 32, 0).decode().strip()
            return f" (pid {pid})" if pid else ""
        except OSError:
            return ""

    def release(self) -> None:
        if self.fd >= 0:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = -1
