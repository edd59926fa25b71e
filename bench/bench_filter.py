"""Filtered search on the embedded index against FAISS's ``IDSelectorBitmap`` built by hand (issue 14).

One run, side by side: ``--n`` items (default 1M) of ``--dim`` dims in one version (flat shard,
CPU), each with metadata ``{"bucket": uniform integer in [0, 1000), "lang": one of 5 keywords}``,
both fields declared as payload indexes before the add. Filters ``{"bucket": {"$lt": 500}}``
(50%), ``{"bucket": {"$lt": 50}}`` (5%) and ``{"bucket": 0}`` (0.1%). For each, a batch of
``--nq`` queries and single queries (one at a time, per-query time), k=10:

- ``unfiltered``: ``Index.search`` without a filter;
- ``filtered``: ``Index.search(..., where=...)``;
- ``hand``: a bare ``faiss.IndexFlatIP`` holding the same vectors (row = internal id), searched
  with ``SearchParameters(sel=IDSelectorBitmap)`` over the same matching ids (bitmap built
  outside the timing).

Each timing is the best of ``--repeat`` runs, the three taken in turn. The filtered results are
checked against the hand-built ones (same scores). Also measured: the add with metadata, the
cost of metadata and of declaring an index over stored items (on 100,000 items, each way), and the
first filtered search. Goals: ``filtered <= 1.2x hand`` per
selectivity (batch and single), and the 0.1% filter faster than the unfiltered search.

Run with: ``.venv/bin/python bench/bench_filter.py`` (``--n 200000`` for a quick run). Writes
``bench/results/filter.json``.
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

FILTERS = (("50pct", {"bucket": {"$lt": 500}}, lambda b: b < 500),
           ("5pct", {"bucket": {"$lt": 50}}, lambda b: b < 50),
           ("0.1pct", {"bucket": 0}, lambda b: b == 0))
LANGS = np.array(["en", "de", "fr", "es", "it"])


def best_of(fns: dict, repeat: int) -> dict[str, float]:
    """Best seconds of each function over ``repeat`` rounds, the functions run in turn."""
    out = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[name] = min(out[name], time.perf_counter() - t0)
    return out


def same_scores(a: np.ndarray, b: np.ndarray) -> bool:
    fa, fb = np.isfinite(a), np.isfinite(b)
    return bool(np.array_equal(fa, fb) and np.allclose(a[fa], b[fb], atol=1e-4))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--nq", type=int, default=100)
    ap.add_argument("--singles", type=int, default=20)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batch-add", type=int, default=50_000)
    ap.add_argument("--out", default=str(HERE / "results" / "filter.json"))
    args = ap.parse_args()
    n, d, k = args.n, args.dim, args.k
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="ci-filter-"))
    load0 = os.getloadavg()[0]
    t_all = time.perf_counter()
    try:
        X = rng.standard_normal((n, d), dtype=np.float32)
        bucket = rng.integers(0, 1000, n)
        lang = LANGS[rng.integers(0, len(LANGS), n)]
        ix = compatindex.open(work / "ix", device="cpu")
        ix.create_version("v1", dim=d, metric="ip")
        ix.create_payload_index("bucket", "integer")
        ix.create_payload_index("lang", "keyword")
        t0 = time.perf_counter()
        meta_s = 0.0
        for s in range(0, n, args.batch_add):
            e = min(n, s + args.batch_add)
            tm = time.perf_counter()
            meta = [{"bucket": int(b), "lang": str(g)} for b, g in zip(bucket[s:e].tolist(), lang[s:e].tolist())]
            meta_s += time.perf_counter() - tm
            ix.add(np.arange(s, e), X[s:e], version="v1", raw=False, metadata=meta)
        add_s = time.perf_counter() - t0 - meta_s
        ix.flush()
        # the cost of metadata on the add, and of declaring an index over stored items, on a subset
        sub = min(n, 100_000)
        sub_meta = [{"bucket": int(b), "lang": str(g)} for b, g in zip(bucket[:sub].tolist(), lang[:sub].tolist())]
        cost = {}
        for name, with_meta in (("without_metadata", False), ("with_metadata", True)):
            side = compatindex.open(work / f"side-{name}", device="cpu")
            side.create_version("v1", dim=d, metric="ip")
            if with_meta:
                side.create_payload_index("bucket", "integer")
            t1 = time.perf_counter()
            for s in range(0, sub, args.batch_add):
                e = min(sub, s + args.batch_add)
                side.add(np.arange(s, e), X[s:e], version="v1", raw=False,
                         metadata=sub_meta[s:e] if with_meta else None)
            cost[name] = time.perf_counter() - t1
            if with_meta:
                t1 = time.perf_counter()
                side.create_payload_index("lang", "keyword")
                cost["declare_after_add"] = time.perf_counter() - t1
            side.close()
        Q = rng.standard_normal((args.nq, d), dtype=np.float32)
        singles = Q[: args.singles]
        hand = faiss.IndexFlatIP(d)
        hand.add(X)
        ix.search(Q[:2], k, version="v1", raw=False)  # warm the id cache
        t0 = time.perf_counter()
        ix.search(Q[:1], k, version="v1", raw=False, where=FILTERS[0][1])
        first_filtered_s = time.perf_counter() - t0

        def per_query(fn):
            def run():
                for i in range(len(singles)):
                    fn(singles[i : i + 1])
            return run

        res: dict = {}
        goals: dict = {}
        flat: dict = {}
        unf = best_of({"batch": lambda: ix.search(Q, k, version="v1", raw=False),
                       "single": per_query(lambda q: ix.search(q, k, version="v1", raw=False))}, args.repeat)
        unf["single"] /= len(singles)
        res["unfiltered"] = unf
        flat["unfiltered_batch_s"] = round(unf["batch"], 5)
        flat["unfiltered_single_ms"] = round(unf["single"] * 1e3, 3)
        for name, where, pick in FILTERS:
            bits = np.packbits(pick(bucket), bitorder="little")
            sel = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
            params = faiss.SearchParameters(sel=sel)
            got = ix.search(Q, k, version="v1", raw=False, where=where)
            D, _ = hand.search(Q, k, params=params)
            agree = same_scores(got.scores, D)
            t = best_of({
                "filtered_batch": lambda: ix.search(Q, k, version="v1", raw=False, where=where),
                "hand_batch": lambda: hand.search(Q, k, params=params),
                "filtered_single": per_query(lambda q: ix.search(q, k, version="v1", raw=False, where=where)),
                "hand_single": per_query(lambda q: hand.search(q, k, params=params)),
            }, args.repeat)
            t["filtered_single"] /= len(singles)
            t["hand_single"] /= len(singles)
            r = {**t, "selected": int(pick(bucket).sum()), "same_scores_as_hand": agree,
                 "batch_ratio": t["filtered_batch"] / t["hand_batch"],
                 "single_ratio": t["filtered_single"] / t["hand_single"]}
            res[name] = r
            flat[f"{name}_batch_filtered_s"] = round(t["filtered_batch"], 5)
            flat[f"{name}_batch_hand_s"] = round(t["hand_batch"], 5)
            flat[f"{name}_single_filtered_ms"] = round(t["filtered_single"] * 1e3, 3)
            flat[f"{name}_single_hand_ms"] = round(t["hand_single"] * 1e3, 3)
            goals[f"within_1.2x_of_hand_selector_{name}_batch"] = bool(r["batch_ratio"] <= 1.2)
            goals[f"within_1.2x_of_hand_selector_{name}_single"] = bool(r["single_ratio"] <= 1.2)
            goals[f"same_results_as_hand_{name}"] = agree
            print(name, json.dumps(r), flush=True)
        goals["0.1pct_faster_than_unfiltered_batch"] = bool(res["0.1pct"]["filtered_batch"] < unf["batch"])
        goals["0.1pct_faster_than_unfiltered_single"] = bool(res["0.1pct"]["filtered_single"] < unf["single"])
        ix.close()
        cmd = "python bench/bench_filter.py" + "".join(
            f" --{a.replace('_', '-')} {getattr(args, a)}" for a in ("n", "dim", "nq", "singles", "repeat")
            if getattr(args, a) != ap.get_default(a))
        result = {
            "command": cmd, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
                       f"{platform.python_version()}, faiss {faiss.__version__}, load average "
                       f"{load0:.2f} at start, {os.getloadavg()[0]:.2f} at end",
            "seconds": round(time.perf_counter() - t_all, 1),
            "n": n, "dim": d, "nq": args.nq, "k": k,
            "add_with_metadata_s": round(add_s, 2),
            "add_items_per_s": round(n / add_s),
            "first_filtered_search_s": round(first_filtered_s, 3),
            f"add_{min(n, 100_000)}_without_metadata_s": round(cost["without_metadata"], 2),
            f"add_{min(n, 100_000)}_with_metadata_s": round(cost["with_metadata"], 2),
            f"declare_keyword_index_over_{min(n, 100_000)}_items_s": round(cost["declare_after_add"], 2),
            **flat,
            "results": res,
            "goals": goals,
        }
        if n != ap.get_default("n"):
            result["reduced"] = True
            result["full_command"] = "python bench/bench_filter.py"
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
