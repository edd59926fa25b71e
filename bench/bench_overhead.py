"""Search overhead of the embedded index over bare FAISS (issue 13, item 7).

Measured side by side in one run (only ratios taken in the same run are compared; each timing is
the median of interleaved repeats):

- ``chain``: a 6-version chain (same dim, orthogonal extensions), N items added in v1, half of
  them backfilled along the whole chain (old vectors kept), so v1's shard has half its items
  shadowed for a v6 query and v2..v5 are wholly shadowed. A batch of ``--nq`` queries, k=10,
  ``Index.search`` (version v6) vs the same shards searched and merged by hand: each shard that
  represents any item searched bare (no selector) for k / (represented fraction) x 1.25 + 16
  candidates (the count the index's first pass uses), shadowed hits dropped after
  the search, top-k merged with numpy (the floor; goal <= 1.3x). Checked: the hand merge equals
  the index's exact answer.
- ``unbatched``: one query at a time on an N x dim single-version index vs bare ``IndexFlatIP``
  holding the same vectors (goal: <= 1.2x bare + 50 us).
- ``batch``: a batch of ``--nq`` queries on the single-version index vs the same shard searched
  by hand, in the writer process right after an add (each repeat adds 100 items first) and in a
  read-only reopen (goal <= 1.05x).

Run with: ``.venv/bin/python bench/bench_overhead.py`` (``--n 200000 --dim 128`` by default;
``--n 50000`` for a quick run). Writes ``bench/results/overhead.json``.
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

CHAIN = ("v1", "v2", "v3", "v4", "v5", "v6")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def orth(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def interleaved(fns: dict[str, callable], repeat: int, before=None) -> dict[str, float]:
    """Median seconds of each function, the functions run in turn ``repeat`` times (the order
    alternating), and ``ratio``: the median of the per-repeat ratios of the first to the second
    (paired, so that load drifting on a shared machine hits both sides of each ratio alike)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeat):
        if before is not None:
            before()
        for name in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    out = {k: float(np.median(v)) for k, v in times.items()}
    out["ratio"] = float(np.median(np.array(times[names[0]]) / np.array(times[names[1]])))
    return out


def facade_steps(ix, q: np.ndarray, k: int, qv: str):
    """The per-version queries the facade hands the backend for this search (recorded once)."""
    be = ix.backend
    seen = []
    real = be.search

    def spy(steps, kk):
        seen.append(list(steps))
        return real(steps, kk)

    be.search = spy
    try:
        ix.search(q, k=k, version=qv, score="pad", raw=False)
    finally:
        del be.search
    return seen[-1]


def hand_merge_fn(ix, q: np.ndarray, k: int, qv: str):
    """The floor: the index's own shards, searched bare and merged by hand (masks precomputed)."""
    be = ix.backend
    steps = facade_steps(ix, q, k, qv)
    codes = [ix.version(s.version).code for s in steps]
    view = be.shards.view(codes)
    parts = []
    for s, vc in zip(steps, codes):
        shard = be.shards.shards[vc]
        shadowed = view.shadowed.get(vc, 0)
        if shard.ntotal == 0 or shadowed >= shard.ntotal:
            continue  # holds nothing this query can return
        drop = None if shadowed == 0 else (view.rep != vc)
        # the same candidate count as the index's first pass: k / represented fraction + margin
        kk = k if shadowed == 0 else min(shard.ntotal, int(k * shard.ntotal / (shard.ntotal - shadowed) * 1.25) + 16)
        parts.append((shard.index, np.ascontiguousarray(s.queries), drop, kk))

    def run():
        Ds, Is = [], []
        for index, qq, drop, kk in parts:
            if drop is None:
                D, I = index.search(qq, k)
            else:
                D, I = index.search(qq, kk)
                bad = drop[np.where(I >= 0, I, 0)] | (I < 0)
                D = np.where(bad, -np.inf, D)
            Ds.append(D)
            Is.append(I)
        D = np.concatenate(Ds, 1)
        I = np.concatenate(Is, 1)
        o = np.argsort(-D, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(D, o, 1), np.take_along_axis(I, o, 1)

    return run


def bench_chain(work: Path, n: int, dim: int, nq: int, k: int, repeat: int, rng) -> dict:
    path = work / "chain"
    t = time.perf_counter()
    with compatindex.open(path, device="cpu") as ix:
        ix.create_version("v1", dim=dim)
        for a, b in zip(CHAIN, CHAIN[1:]):
            ix.register_version(b, a, dim, extension=orth(dim, rng))
        x = unit(rng.standard_normal((n, dim)))
        for s in range(0, n, 100_000):
            ix.add(np.arange(s, min(s + 100_000, n)), x[s : s + 100_000], version="v1")
        half = np.arange(0, n, 2)
        for name in CHAIN[1:]:
            y = unit(rng.standard_normal((len(half), dim)))
            for s in range(0, len(half), 100_000):
                ix.backfill(half[s : s + 100_000], y[s : s + 100_000], version=name, raw=False)
    build_s = time.perf_counter() - t
    q = unit(rng.standard_normal((nq, dim)))
    out = {"n": n, "dim": dim, "nq": nq, "k": k, "build_s": build_s}
    for mode in ("writer", "readonly"):
        with compatindex.open(path, device="cpu", readonly=mode == "readonly") as ix:
            ix.search(q[:10], k=k, version="v6", score="pad", raw=False)
            hand = hand_merge_fn(ix, q, k, "v6")
            res = ix.search(q, k=k, version="v6", score="pad", raw=False)
            D_hand, I_hand = hand()
            same = bool(np.allclose(res.scores, D_hand, atol=1e-5))
            t = interleaved({"compatindex": lambda: ix.search(q, k=k, version="v6", score="pad", raw=False),
                             "by_hand": hand}, repeat)
            out[mode] = {"compatindex_s": t["compatindex"], "by_hand_s": t["by_hand"],
                         "ratio": t["ratio"], "hand_merge_equals_index": same}
    return out


def bench_single(work: Path, n: int, dim: int, nq: int, k: int, repeat: int, rng) -> dict:
    path = work / "single"
    x = unit(rng.standard_normal((n, dim)))
    out: dict = {"n": n, "dim": dim, "nq": nq, "k": k}
    ix = compatindex.open(path, device="cpu")
    ix.create_version("v1", dim=dim)
    for s in range(0, n, 100_000):
        ix.add(np.arange(s, min(s + 100_000, n)), x[s : s + 100_000])
    bare = faiss.IndexFlatIP(dim)
    bare.add(x)
    q = unit(rng.standard_normal((max(nq, 200), dim)))
    q1 = [q[i : i + 1] for i in range(200)]

    def one_ix():
        for qq in q1:
            ix.search(qq, k=k, version="v1")

    def one_bare():
        for qq in q1:
            bare.search(qq, k)

    one_ix()
    ix.search(q1[0], k=k, version="v1")
    t = interleaved({"compatindex": one_ix, "bare": one_bare}, repeat)
    per_ix, per_bare = t["compatindex"] / len(q1), t["bare"] / len(q1)
    out["unbatched"] = {"compatindex_s": per_ix, "bare_faiss_s": per_bare, "ratio": t["ratio"],
                        "budget_s": 1.2 * per_bare + 50e-6, "extra_us": (per_ix - per_bare) * 1e6}
    qb = q[:nq]
    next_id = [n]

    def add_some():  # the writer case: every repeat searches right after a write
        ids = np.arange(next_id[0], next_id[0] + 100)
        ix.add(ids, unit(rng.standard_normal((100, dim))), version="v1")
        next_id[0] += 100

    shard = ix.backend.shards.shards[ix.version("v1").code].index
    t = interleaved({"compatindex": lambda: ix.search(qb, k=k, version="v1"),
                     "by_hand": lambda: shard.search(qb, k)}, repeat, before=add_some)
    out["batch_writer"] = {"compatindex_s": t["compatindex"], "by_hand_s": t["by_hand"], "ratio": t["ratio"]}
    ix.close()
    with compatindex.open(path, device="cpu", readonly=True) as ro:
        shard = ro.backend.shards.shards[ro.version("v1").code].index
        ro.search(qb[:10], k=k, version="v1")
        t = interleaved({"compatindex": lambda: ro.search(qb, k=k, version="v1"),
                         "by_hand": lambda: shard.search(qb, k)}, repeat)
        out["batch_readonly"] = {"compatindex_s": t["compatindex"], "by_hand_s": t["by_hand"], "ratio": t["ratio"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", default=str(HERE / "results" / "overhead.json"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="ci-overhead-"))
    try:
        t0 = time.perf_counter()
        chain = bench_chain(work, args.n, args.dim, args.nq, args.k, args.repeat, rng)
        single = bench_single(work, args.n, args.dim, args.nq, args.k, args.repeat, rng)
        cmd = "python bench/bench_overhead.py" + "".join(
            f" --{a} {getattr(args, a)}" for a in ("n", "dim", "nq", "repeat")
            if getattr(args, a) != ap.get_default(a))
        result = {
            "command": cmd, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
                       f"{platform.python_version()}, faiss {faiss.__version__}, load average "
                       f"{os.getloadavg()[0]:.2f} at start",
            "seconds": time.perf_counter() - t0,
            "chain": chain, "single": single,
            "goals": {
                "chain_batch_writer_<=1.3x_hand": chain["writer"]["ratio"] <= 1.3,
                "chain_batch_readonly_<=1.3x_hand": chain["readonly"]["ratio"] <= 1.3,
                "unbatched_<=1.2x_bare_plus_50us": single["unbatched"]["compatindex_s"] <= single["unbatched"]["budget_s"],
                "batch_writer_<=1.05x_hand": single["batch_writer"]["ratio"] <= 1.05,
                "batch_readonly_<=1.05x_hand": single["batch_readonly"]["ratio"] <= 1.05,
            },
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
