"""Core library speed: search, add, reopen and memory of the embedded index.

Measures, side by side in one run (these machines are noisy, so only ratios taken in the same
run are compared):

- search: 1,000 queries, k=10, over N vectors in 3 versions (dims 128/160/192, a lineage),
  queried with the newest version. compatindex ``Index.search`` vs the same FAISS shards
  searched and merged by hand (goal <= 1.10x) vs one FAISS flat index holding every vector
  zero-padded to 192 dims (goal: compatindex faster).
- add: N x 128 through ``Index.add`` (batches of 100k) vs writing the same bytes with LMDB
  ``putmulti`` plus a FAISS ``add`` (goal <= 2x).
- reopen: time to open the N-vector index (shards loaded, not rebuilt; goal <= 2 s).
- memory: peak RSS of a process that reopens the index and searches, vs the raw vector bytes.

Run with: ``.venv/bin/python bench/bench_core.py`` (``--n 1000000``, the default; ``--n 100000``
for a quick run). Writes ``bench/results/core.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import compatindex  # noqa: E402
from compatindex.embedded.faiss_import import faiss  # noqa: E402

DIMS = (128, 160, 192)
SHARE = (0.5, 0.3, 0.2)  # fraction of items stored in each version


def orth(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def timed(fn, repeat: int = 3) -> float:
    best = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best.append(time.perf_counter() - t)
    return float(np.median(best))


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def build(path: Path, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    data = {}
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=DIMS[0])
        ix.register_version("v2", "v1", DIMS[1], extension=orth(DIMS[1], rng))
        ix.register_version("v3", "v2", DIMS[2], extension=orth(DIMS[2], rng))
        start = 0
        for name, d, share in zip(("v1", "v2", "v3"), DIMS, SHARE):
            m = int(n * share)
            x = unit(rng.standard_normal((m, d)).astype(np.float32))
            for s in range(0, m, 100_000):
                ix.add(np.arange(start + s, start + min(s + 100_000, m)), x[s : s + 100_000], version=name, raw=False)
            data[name] = x
            start += m
    return data


def bench_search(path: Path, data: dict[str, np.ndarray], nq: int, k: int, rng) -> dict[str, float]:
    q = unit(rng.standard_normal((nq, DIMS[2])).astype(np.float32))
    out: dict[str, float] = {}
    with compatindex.open(path, readonly=True) as ix:
        ix.search(q[:10], k=k, version="v3", raw=False)  # warm caches
        out["compatindex_s"] = timed(lambda: ix.search(q, k=k, version="v3", score="pad", raw=False))
        shards = [(ix.backend.shards.shards[ix.version(v).code].index, d) for v, d in zip(("v1", "v2", "v3"), DIMS)]

        def by_hand():
            Ds, Is = [], []
            for index, d in shards:
                qq = np.ascontiguousarray(q[:, :d])
                D, I = index.search(qq, k)
                Ds.append(D)
                Is.append(I)
            D = np.concatenate(Ds, 1)
            I = np.concatenate(Is, 1)
            o = np.argsort(-D, axis=1)[:, :k]
            return np.take_along_axis(D, o, 1), np.take_along_axis(I, o, 1)

        out["faiss_by_hand_s"] = timed(by_hand)
        res = ix.search(q, k=k, version="v3", score="pad", raw=False)
        D_hand, _ = by_hand()
        out["max_score_diff_vs_by_hand"] = float(np.abs(res.scores - D_hand).max())
    padded = faiss.IndexFlatIP(DIMS[2])
    for x in data.values():
        xp = np.zeros((len(x), DIMS[2]), np.float32)
        xp[:, : x.shape[1]] = x
        padded.add(xp)
        del xp
    out["one_padded_index_s"] = timed(lambda: padded.search(q, k))
    out["ratio_vs_by_hand"] = out["compatindex_s"] / out["faiss_by_hand_s"]
    out["ratio_vs_padded"] = out["compatindex_s"] / out["one_padded_index_s"]
    out["qps_compatindex"] = nq / out["compatindex_s"]
    return out


def bench_add(n: int, rng, workdir: Path) -> dict[str, float]:
    import lmdb

    x = unit(rng.standard_normal((n, 128)).astype(np.float32))
    ids = np.arange(n)
    p1 = workdir / "add_ci"
    t = time.perf_counter()
    with compatindex.open(p1) as ix:
        ix.create_version("v1", dim=128)
        for s in range(0, n, 100_000):
            ix.add(ids[s : s + 100_000], x[s : s + 100_000])
    ci = time.perf_counter() - t

    p2 = workdir / "add_raw"
    p2.mkdir()
    t = time.perf_counter()
    env = lmdb.open(str(p2), map_size=1 << 34)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(128))
    for s in range(0, n, 100_000):
        xb = x[s : s + 100_000]
        with env.begin(write=True) as txn:
            # the same bytes: vectors in 1024-row chunks
            items = [((s + c).to_bytes(8, "big"), xb[c : c + 1024].tobytes()) for c in range(0, len(xb), 1024)]
            txn.cursor().putmulti(items, append=True)
        index.add_with_ids(xb, ids[s : s + 100_000])
    env.close()
    faiss.write_index(index, str(p2 / "index.faiss"))
    raw = time.perf_counter() - t
    return {"compatindex_add_s": ci, "lmdb_putmulti_plus_faiss_add_s": raw, "ratio": ci / raw,
            "vectors_per_s": n / ci}


CHILD = r"""
import sys, time, json, numpy as np
t = time.perf_counter()
import compatindex
t_import = time.perf_counter() - t
t = time.perf_counter()
ix = compatindex.open(sys.argv[1], readonly=True)
t_open = time.perf_counter() - t
rebuilt = any("rebuilt" in e for e in ix.backend.shards.events)
q = np.random.default_rng(0).standard_normal((100, 192)).astype(np.float32)
ix.search(q, k=10, version="v3", raw=False)
# VmHWM, not ru_maxrss: after fork+exec ru_maxrss keeps the parent's high-water mark on Linux.
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"reopen_s": t_open, "rebuilt": rebuilt, "peak_rss_bytes": hwm}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--out", default=str(HERE / "results" / "core.json"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="ci-bench-"))
    try:
        t = time.perf_counter()
        data = build(work / "ix", args.n, rng)
        build_s = time.perf_counter() - t
        search = bench_search(work / "ix", data, args.nq, args.k, rng)
        del data
        child = subprocess.run([sys.executable, "-c", CHILD, str(work / "ix")], capture_output=True, text=True, check=True)
        reopen = json.loads(child.stdout.strip().splitlines()[-1])
        raw_bytes = sum(int(args.n * s) * d * 4 for s, d in zip(SHARE, DIMS))
        reopen["raw_vector_bytes"] = raw_bytes
        reopen["peak_rss_over_raw"] = reopen["peak_rss_bytes"] / raw_bytes
        disk = sum(f.stat().st_size for f in (work / "ix").rglob("*") if f.is_file())
        add = bench_add(args.n, rng, work)
        result = {
            "command": "python bench/bench_core.py" + (f" --n {args.n}" if args.n != 1_000_000 else ""),
            "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{platform.python_implementation()} {platform.python_version()}, faiss {faiss.__version__}",
            "n": args.n, "nq": args.nq, "k": args.k, "dims": DIMS, "share": SHARE,
            "build_s": build_s, "disk_bytes": disk, "disk_over_raw": disk / raw_bytes,
            "search": search, "add": add, "reopen": reopen,
            "goals": {
                "search_vs_by_hand_<=1.10": search["ratio_vs_by_hand"] <= 1.10,
                "search_faster_than_padded": search["ratio_vs_padded"] < 1.0,
                "add_within_2x": add["ratio"] <= 2.0,
                "reopen_<=2s_not_rebuilt": reopen["reopen_s"] <= 2.0 and not reopen["rebuilt"],
            },
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
