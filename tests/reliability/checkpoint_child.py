"""Child process of test_checkpoint_kills.py: writes to an index with automatic checkpoints
every 3 writes, logging each acknowledged call (fsynced) until it is SIGKILLed."""

import os
import sys

import numpy as np

import compatindex


def vec(i: int, version: str, dim: int = 16) -> np.ndarray:
    return np.random.default_rng(i * 7 + (version == "v2")).standard_normal(dim).astype(np.float32)


def main(path: str, ack: str, start: int) -> None:
    ix = compatindex.open(path, device="cpu")
    if "v1" not in [v.name for v in ix.versions()]:
        ix.create_version("v1", dim=16)
        ix.register_version("v2", "v1", 16)
    ix.backend.checkpoint_ops = 3
    fd = os.open(ack, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    i = start
    step = 0
    while True:
        ids = list(range(i, i + 20))
        ver = "v1" if step % 2 == 0 else "v2"
        ix.add(ids, np.stack([vec(j, ver) for j in ids]), version=ver, raw=False)
        os.write(fd, f"add {ver} {i}\n".encode())
        os.fsync(fd)
        if step % 3 == 2:  # backfill the v1 items of the previous add pair into v2
            back = list(range(i - 20, i))
            ix.backfill(back, np.stack([vec(j, "v2") for j in back]), version="v2", raw=False)
            os.write(fd, f"backfill v2 {i - 20}\n".encode())
            os.fsync(fd)
        i += 20
        step += 1


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
