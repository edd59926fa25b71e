"""HNSW replacement cost (issue 13, item 2): replacing 1,000 vectors of an N-vector HNSW shard
(``Index.backfill`` of existing items, same version: each gets a fresh graph node and its old node
a tombstone) against adding 1,000 new vectors, side by side in one run (goal: <= 2x).

Run with: ``.venv/bin/python bench/bench_hnsw.py`` (``--n 100000`` by default; the issue's figure
is ``--n 1000000``, which takes long to build on 2 cores). Writes ``bench/results/hnsw.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import compatindex  # noqa: E402
from compatindex.embedded.faiss_import import faiss  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "hnsw.json"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="ci-hnsw-"))
    spec = {"kind": "hnsw", "m": 32, "ef_construction": 200, "ef_search": 64}
    try:
        t0 = time.perf_counter()
        ix = compatindex.open(work / "ix", device="cpu", shard=spec)
        ix.create_version("v1", dim=args.dim)
        for s in range(0, args.n, 50_000):
            m = min(50_000, args.n - s)
            ix.add(np.arange(s, s + m), rng.standard_normal((m, args.dim)).astype(np.float32), version="v1")
        build_s = time.perf_counter() - t0
        add_t, rep_t, rebuilt = [], [], 0
        shard = ix.backend.shards.shards[ix.version("v1").code]
        nxt = args.n
        for r in range(args.repeat):
            x = rng.standard_normal((args.batch, args.dim)).astype(np.float32)
            ids = np.arange(nxt, nxt + args.batch)
            nxt += args.batch
            t = time.perf_counter()
            ix.add(ids, x, version="v1")
            add_t.append(time.perf_counter() - t)
            old = rng.choice(args.n, args.batch, replace=False)
            before = int(shard.index.ntotal) if shard is ix.backend.shards.shards[ix.version("v1").code] else -1
            t = time.perf_counter()
            ix.backfill(old, rng.standard_normal((args.batch, args.dim)).astype(np.float32), version="v1")
            rep_t.append(time.perf_counter() - t)
            shard = ix.backend.shards.shards[ix.version("v1").code]
            rebuilt += int(int(shard.index.ntotal) < before)
        ratio = float(np.median(np.array(rep_t) / np.array(add_t)))
        result = {
            "command": "python bench/bench_hnsw.py" + (f" --n {args.n}" if args.n != 100_000 else ""),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
                       f"{platform.python_version()}, faiss {faiss.__version__}, load average "
                       f"{os.getloadavg()[0]:.2f}",
            "n": args.n, "dim": args.dim, "batch": args.batch, "spec": spec, "build_s": build_s,
            "add_new_s": float(np.median(add_t)), "replace_s": float(np.median(rep_t)),
            "replace_over_add": ratio, "graph_rebuilds_during_replacements": rebuilt,
            "tombstones_after": len(shard.tombstones),
            "goals": {"replace_<=2x_add": ratio <= 2.0},
        }
        ix.close()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
