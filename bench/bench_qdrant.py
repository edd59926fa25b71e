"""Qdrant backend speed, in qdrant-client's LOCAL MODE, beside the embedded index on the same data.

Informational only: local mode is qdrant-client's in-process, numpy brute-force engine (one
process, testing-grade). A Qdrant server answers from HNSW (or exact scans) in Rust across the
network, so its numbers differ in both directions; measure a server with the same script by
passing ``--url qdrant://HOST:PORT/bench_collection``.

Data: N items in a lineage v1 (64) -> v2 (96, orthogonal Q); 30% of the items backfilled to v2
(they keep their v1 vector), plus 10% added natively in v2; cosine metric, renorm scores.
Queries of v2 search both versions (two requests per query on Qdrant, one batch call).

- latency: ``--nq`` single-query searches (k=10), p50/p95 in ms, for each backend;
- throughput: the same queries as one batch (queries per second);
- agreement: fraction of identical top-10 ids between the backends (should be 1.0).

Run: ``.venv/bin/python bench/bench_qdrant.py --n 5000``. Writes ``bench/results/qdrant.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import compatindex  # noqa: E402


def orth(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def build(ix, n: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    ix.create_version("v1", dim=64)
    ix.register_version("v2", "v1", 96, extension=orth(96, rng))
    ix.add(np.arange(n), rng.standard_normal((n, 64)).astype(np.float32), version="v1")
    nb = int(0.3 * n)
    ix.backfill(np.arange(nb), rng.standard_normal((nb, 96)).astype(np.float32), version="v2", raw=False)
    na = int(0.1 * n)
    ix.add(np.arange(n, n + na), rng.standard_normal((na, 96)).astype(np.float32), version="v2", raw=False)
    return time.perf_counter() - t


def measure(ix, Q: np.ndarray, k: int) -> dict:
    ix.search(Q[:2], k, version="v2", raw=False)  # warm up
    lat = []
    for q in Q:
        t = time.perf_counter()
        ix.search(q[None, :], k, version="v2", raw=False)
        lat.append((time.perf_counter() - t) * 1e3)
    t = time.perf_counter()
    res = ix.search(Q, k, version="v2", raw=False)
    batch_s = time.perf_counter() - t
    return {"p50_ms": round(float(np.percentile(lat, 50)), 3), "p95_ms": round(float(np.percentile(lat, 95)), 3),
            "batch_qps": round(len(Q) / batch_s, 1), "_res": res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="items in v1 (default 5000)")
    ap.add_argument("--nq", type=int, default=100, help="queries (default 100)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--url", default="qdrant+local://:memory:",
                    help="Qdrant URL (default: local mode in memory; qdrant+local://PATH on disk builds slower, "
                         "searches the same)")
    ap.add_argument("--out", default=str(HERE / "results" / "qdrant.json"))
    args = ap.parse_args()
    Q = np.random.default_rng(1).standard_normal((args.nq, 96)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        emb = compatindex.open(Path(tmp) / "e", device="cpu")
        build_e = build(emb, args.n, 0)
        e = measure(emb, Q, args.k)
        qd = compatindex.open(args.url)
        build_q = build(qd, args.n, 0)
        q = measure(qd, Q, args.k)
        agree = float(np.mean([set(a) == set(b) for a, b in zip(e.pop("_res").ids, q.pop("_res").ids)]))
        items = emb.count
        qd.close()
        emb.close()
    local = args.url.startswith("qdrant+local://")
    out = {
        "what": "search latency/throughput, Qdrant backend vs embedded index, same data",
        "label": ("Qdrant LOCAL MODE (qdrant-client in-process numpy brute force; testing-grade, not a server)"
                  if local else "Qdrant server"),
        "url": args.url, "items": items, "versions": {"v1": 64, "v2": 96}, "k": args.k, "nq": args.nq,
        "embedded": {**e, "build_s": round(build_e, 2)},
        "qdrant": {**q, "build_s": round(build_q, 2)},
        "top10_agreement": agree,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "qdrant_client": metadata.version("qdrant-client"), "numpy": np.__version__},
        "command": "bench/bench_qdrant.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
