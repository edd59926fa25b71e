"""GPU check: the GPU shard paths and the trainer on CUDA, each beside its CPU baseline.

Prepared for a session that is lent a GPU machine (one short run): builds an index of N
vectors over two versions, searches it with ``device="cpu"``, ``"gpu"`` (faiss GPU when faiss
sees a GPU, else the exact torch shard) and ``"torch-fp16"``, checks every GPU result against
the CPU one (ids equal, scores within tolerance) and times them; then trains the same backbone
for a fixed number of steps on the CPU and on CUDA. Prints one JSON object and writes it to
``--out``.

Also: the mirrors after writes (deletes and a further backfill once they exist: they follow in
place and must still equal the CPU), and IVF on the torch shard after deletes beside the CPU IVF.

Run with: ``python bench/gpu_check.py --n 1000000 --out $OUT/gpu_check.json``
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import compatindex  # noqa: E402


def orth(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default="gpu_check.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    out: dict = {"machine": platform.node(), "n": args.n, "nq": args.nq}
    try:
        import torch

        out["cuda"] = torch.cuda.is_available()
        out["gpu_name"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        out["cuda"] = False
    from compatindex.embedded.faiss_import import faiss, num_gpus

    out["faiss"] = faiss.__version__
    out["faiss_gpus"] = num_gpus()
    x1 = rng.standard_normal((args.n // 2, 128)).astype(np.float32)
    x2 = rng.standard_normal((args.n - args.n // 2, 192)).astype(np.float32)
    q = rng.standard_normal((args.nq, 192)).astype(np.float32)
    results = {}
    for device in ("cpu", "gpu", "torch-fp16"):
        try:
            ix = compatindex.open(":memory:", device=device)
        except compatindex.errors.InvalidInputError as exc:
            results[device] = {"error": str(exc)}
            continue
        ix.create_version("v1", dim=128)
        ix.register_version("v2", "v1", 192, extension=orth(192, rng))
        ix.add(np.arange(len(x1)), x1, version="v1", raw=False)
        ix.add(np.arange(len(x1), args.n), x2, version="v2", raw=False)
        half = np.arange(0, len(x1), 2)  # half the old gallery backfilled: the normal state of a migration
        ix.backfill(half, rng.standard_normal((len(half), 192)).astype(np.float32), version="v2", raw=False)
        ix.search(q[:10], k=10, version="v2", raw=False)  # builds the GPU mirrors
        t = time.perf_counter()
        res = ix.search(q, k=10, version="v2", raw=False)
        search_s = time.perf_counter() - t
        mirrors = len(getattr(ix.backend.shards, "_mirrors", {}))
        # writes after the mirrors exist: they must follow in place and stay equal to the CPU
        ix.delete(np.arange(1, min(20_001, len(x1)), 2))
        more = np.arange(max(20_001, len(x1) // 2) + 1, len(x1), 8)  # odd ids past the deletes: still v1-only
        ix.backfill(more, rng.standard_normal((len(more), 192)).astype(np.float32), version="v2", raw=False)
        res2 = ix.search(q, k=10, version="v2", raw=False)
        results[device] = {"backend": ix.backend.shards.device, "search_s": search_s, "mirrors": mirrors,
                           "mirrors_after_writes": len(getattr(ix.backend.shards, "_mirrors", {})),
                           "ids": res.ids, "scores": res.scores, "ids2": res2.ids}
        ix.close()
        rng = np.random.default_rng(0)  # same data for every device
        x1 = rng.standard_normal((args.n // 2, 128)).astype(np.float32)
        x2 = rng.standard_normal((args.n - args.n // 2, 192)).astype(np.float32)
        q = rng.standard_normal((args.nq, 192)).astype(np.float32)
    base = results["cpu"]
    for device, r in results.items():
        if "ids" in r and device != "cpu":
            r["ids_equal_cpu"] = float(np.mean(r["ids"] == base["ids"]))
            r["max_score_diff"] = float(np.abs(r["scores"] - base["scores"]).max())
            r["speedup_vs_cpu"] = base["search_s"] / r["search_s"]
            r["ids_equal_cpu_after_writes"] = float(np.mean(r["ids2"] == base["ids2"]))
    out["search"] = {d: {k: v for k, v in r.items() if k not in ("ids", "scores", "ids2")} for d, r in results.items()}

    # IVF on the torch mirror after deletes (once broke on make_direct_map), beside the CPU IVF
    ivf = {}
    xs = np.random.default_rng(1).standard_normal((200_000, 64)).astype(np.float32)
    qs = np.random.default_rng(2).standard_normal((200, 64)).astype(np.float32)
    for device in ("exact", "cpu", "torch"):
        try:
            spec = "flat" if device == "exact" else {"kind": "ivf", "nlist": 256, "nprobe": 16}
            ix = compatindex.open(":memory:", device="cpu" if device == "exact" else device, shard=spec)
            ix.create_version("v1", dim=64)
            ix.add(np.arange(len(xs)), xs, version="v1", raw=False)
            ix.delete(np.arange(0, 50_000, 3))
            ix.add(np.arange(300_000, 300_100), xs[:100], version="v1", raw=False)
            r = ix.search(qs, k=10, version="v1", raw=False)
            ivf[device] = {"backend": ix.backend.shards.device, "ids": r.ids}
            ix.close()
        except Exception as exc:  # report, don't hide
            ivf[device] = {"error": repr(exc)}
    for device in ("cpu", "torch"):  # recall@10 against exact search of the same items
        if "ids" in ivf.get("exact", {}) and "ids" in ivf.get(device, {}):
            a, b = ivf["exact"]["ids"], ivf[device]["ids"]
            ivf[device]["recall_vs_exact"] = float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b)]))
    out["ivf_after_deletes"] = {d: {k: v for k, v in r.items() if k != "ids"} for d, r in ivf.items()}

    try:
        import torch
        from torch import nn

        from compatindex.trainer import BackboneConfig, train_backbone

        X = rng.standard_normal((20_000, 256)).astype(np.float32)
        y = rng.integers(0, 10, 20_000)
        timing = {}
        for dev in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
            net = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 160))
            t = time.perf_counter()
            train_backbone(net, X, y, config=BackboneConfig(method="independent", num_classes=10, epochs=100,
                                                            max_steps=args.steps, batch_size=256, device=dev,
                                                            quiet=True))
            timing[dev] = time.perf_counter() - t
        out["trainer_s"] = timing
    except Exception as exc:  # report, don't hide
        out["trainer_error"] = repr(exc)
    text = json.dumps(out, indent=2, default=str)
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
