"""Child process of test_compact_kills.py: compacts an index, dying (os._exit) at a named step,
or (mode "loop") writes and compacts in a loop, logging acknowledged writes, until SIGKILLed."""

import os
import sys

import numpy as np

import compatindex
from compatindex.embedded import backend as backend_mod
from compatindex.embedded import store as store_mod


def die_at(step: str) -> None:
    real_rename, real_write, real_copy = os.rename, backend_mod.write_durably, store_mod.LmdbStore.compact_copy
    renames = [0]

    def rename(a, b):
        real_rename(a, b)
        renames[0] += 1
        if (step, renames[0]) in (("after_first_rename", 1), ("after_second_rename", 2)):
            os._exit(9)

    def write(path, data):
        real_write(path, data)
        if step == "after_pending":
            os._exit(9)

    def copy(self, dest):
        if step == "before_copy":
            os._exit(9)
        size = real_copy(self, dest)
        if step == "mid_copy":  # a copy cut short: half a file, no marker
            with open(dest / "data.mdb", "rb+") as f:
                f.truncate(size // 2)
            os._exit(9)
        return size

    backend_mod.os.rename = rename
    backend_mod.write_durably = write
    store_mod.LmdbStore.compact_copy = copy
    real_unlink = backend_mod.Path.unlink

    def unlink(self, *a, **kw):
        real_unlink(self, *a, **kw)
        if step == "after_pending_removed" and self.name == backend_mod.COMPACT_PENDING:
            os._exit(9)

    backend_mod.Path.unlink = unlink


def vec(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(16).astype(np.float32)


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    if mode != "loop":
        die_at(mode)
        with compatindex.open(path, device="cpu") as ix:
            ix.backend.compact()
        return
    ack = sys.argv[3]
    fd = os.open(ack, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    ix = compatindex.open(path, device="cpu")
    rng = np.random.default_rng(int(sys.argv[4]))
    base = int(sys.argv[4]) * 100_000
    step = 0
    while True:
        ids = list(range(base + 50 * step, base + 50 * step + 50))
        ix.add(ids, np.stack([vec(i) for i in ids]), version="v1")
        os.write(fd, f"add {ids[0]}\n".encode())
        live = [i for i in ids[:25]]
        ix.backfill(live, np.stack([vec(i + 1) for i in live]), version="v1")  # replacements: dead rows
        os.write(fd, f"replace {ids[0]}\n".encode())
        os.fsync(fd)
        if rng.random() < 0.5:
            ix.backend.compact()
        step += 1


if __name__ == "__main__":
    main()
