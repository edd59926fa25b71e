"""A small progress bar on stderr (rich when available), silenced by ``quiet``."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """Context manager: ``with Progress(total, desc=..., quiet=False) as bar: bar.update(1, loss=x)``."""

    def __init__(self, total: int, *, desc: str = "train", quiet: bool = False) -> None:
        self.total, self.desc, self.quiet = total, desc, quiet
        self._p: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if not self.quiet and self.total > 0:
            try:
                from rich.console import Console
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RP,
                                           TextColumn, TimeRemainingColumn)

                self._p = RP(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                             console=Console(file=sys.stderr), transient=False)
                self._p.start()
                self._task = self._p.add_task(self.desc, total=self.total, info="")
            except ImportError:  # pragma: no cover
                self._p = None
        return self

    def update(self, n: int = 1, **info: float) -> None:
        if self._p is not None:
            text = " ".join(f"{k}={v:.4f}" for k, v in info.items())
            self._p.update(self._task, advance=n, info=text)

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()
