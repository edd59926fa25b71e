"""A readers-writer lock for the threads of one process (docs/reliability.md, "Threads").

Searches hold it shared; anything that changes the in-memory shards (applying a write, syncing
with the store, saving shards) holds it exclusively. Writers are preferred: a waiting writer
stops new readers, so a stream of searches cannot starve it. A thread that holds the lock
(either way) may take it again in shared mode, and a writer may take it again exclusively.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator


class RWLock:
    """Shared/exclusive lock (see the module docstring).

    Examples
    --------
    >>> lock = RWLock()
    >>> with lock.read():
    ...     with lock.read():  # re-entrant for the same thread
    ...         pass
    >>> with lock.write():
    ...     with lock.read():  # a writer may read
    ...         pass
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0
        self._waiting = 0
        self._mine = threading.local()

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        me = threading.get_ident()
        held = getattr(self._mine, "n", 0)
        if self._writer == me or held:
            self._mine.n = held + 1  # already inside: never wait on ourselves
            try:
                yield
            finally:
                self._mine.n -= 1
            return
        with self._cond:
            while self._writer is not None or self._waiting:
                self._cond.wait()
            self._readers += 1
        self._mine.n = 1
        try:
            yield
        finally:
            self._mine.n = 0
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        if getattr(self._mine, "n", 0) and self._writer != me:
            raise RuntimeError("a thread holding the index's read lock asked for its write lock")
        with self._cond:
            if self._writer == me:
                self._depth += 1
            else:
                self._waiting += 1
                try:
                    while self._writer is not None or self._readers:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
                self._writer = me
                self._depth = 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._writer = None
                    self._cond.notify_all()
