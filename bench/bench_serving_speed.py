"""Speed of migration-time serving: a query given in two versions (fused) against the same query
in one version, on the same index, side by side in one run (these machines are noisy).

The gallery: N vectors of v1 (dim 128); v2 (dim 160, orthogonal extension) registered and 20% of
the items backfilled (old vectors kept), so both shards are searched and v1's shard has shadowed
items. 1,000 queries, k=10:

- ``single``: ``Index.search(q2, version="v2", raw=False)``;
- ``fused``: ``Index.search({"v2": q2, "v1": q1}, raw=False)`` with equal weights;
- ``fused_calibrated``: the same with ``score="calibrated"`` and a stored calibration.

Goal (issue "Migration-time serving"): fused within 1.05x of single at 1M vectors. Every fused
term is linear in the query, so each shard is still searched once; the extra cost is composing
one vector per shard.

Run with: ``.venv/bin/python bench/bench_serving_speed.py`` (``--n 1000000`` the default;
``--n 100000`` for a quick run). Writes ``bench/results/serving_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import compatindex  # noqa: E402
from compatindex.embedded.faiss_import import faiss  # noqa: E402


def orth(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "serving_speed.json"))
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n, nb = args.n, args.n // 5
    with tempfile.TemporaryDirectory(prefix="serving-speed-") as tmp:
        t0 = time.perf_counter()
        with compatindex.open(Path(tmp) / "ix") as ix:
            ix.create_version("v1", dim=128)
            ix.register_version("v2", "v1", 160, extension=orth(160, rng))
            for lo in range(0, n, 200_000):
                hi = min(n, lo + 200_000)
                ix.add(np.arange(lo, hi), rng.standard_normal((hi - lo, 128)).astype(np.float32), version="v1")
            ix.backfill(np.arange(nb), rng.standard_normal((nb, 160)).astype(np.float32), version="v2", raw=False)
            ix.set_serving("v2", calibration=[("v2", "v1", 1.3, -0.05), ("v1", "v2", 1.1, 0.02)])
            build_s = time.perf_counter() - t0
            q2 = rng.standard_normal((args.nq, 160)).astype(np.float32)
            q1 = rng.standard_normal((args.nq, 128)).astype(np.float32)
            calls = {
                "single": lambda: ix.search(q2, 10, version="v2", raw=False),
                "fused": lambda: ix.search({"v2": q2, "v1": q1}, 10, raw=False),
                "fused_calibrated": lambda: ix.search({"v2": q2, "v1": q1}, 10, score="calibrated", raw=False),
            }
            for fn in calls.values():  # warm-up: bitmaps, caches
                fn()
            times: dict[str, list[float]] = {k: [] for k in calls}
            for _ in range(args.rounds):  # interleaved rounds: the same machine load for each kind
                for name, fn in calls.items():
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    ratios = [f / s for f, s in zip(times["fused"], times["single"])]
    out = {
        "command": "bench/bench_serving_speed.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "faiss": faiss.__version__, "threads": args.threads},
        "n": n, "backfilled": nb, "nq": args.nq, "k": 10, "rounds": args.rounds, "build_s": round(build_s, 2),
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "fused_over_single": round(med["fused"] / med["single"], 4),
        "fused_calibrated_over_single": round(med["fused_calibrated"] / med["single"], 4),
        "fused_over_single_per_round": [round(r, 4) for r in ratios],
        "goal": "fused <= 1.05x single",
    }
    out["met"] = out["fused_over_single"] <= 1.05
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
