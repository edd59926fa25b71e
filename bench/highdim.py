"""High-dimensional upgrades: 1280-d features through `compatindex upgrade` with default options.

The upgrade that crashed (EfficientNet-Lite0 gallery, Lite2 new model, 1280-d, 800 pairs, 4,000
items) is reproduced with synthetic features of the same shape: a class-structured latent seen by
two different random post-ReLU "encoders", each L2-normalized, the old one noisier. Parts:

- ``cli``: `compatindex upgrade INDEX new.npy --ids ids.txt --json` with default options, run as a
  subprocess (interpreter start and imports included), once with labels stored and once without;
- ``ridge``: the isometric fit with the old fixed ridge (1e-3, ``scale``) against the
  cross-validated strength and spectrum, on the gate split of the same pairs;
- ``auto10k``: ``fit_upgrade`` with ``method="auto"`` on 10,000 pairs at 1280-d (3,000 with
  ``--quick``), timed;
- ``ip``: a planted exactly-isometric upgrade under ``metric="ip"``: new/new after a full
  backfill against the raw new model's exact top-10, and new->old top-10 overlap with old->old.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import ROOT, command_line, fmt, log, machine, md_table, write_result

D = 1280


def features(n: int, *, seed: int = 0, classes: int = 20, latent: int = 96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(G_old, H_new, y)``: ``n`` items, two 1280-d post-ReLU views of one class-structured latent."""
    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(classes, latent))
    y = rng.integers(0, classes, n)
    X = cent[y] + rng.normal(size=(n, latent))
    A = rng.normal(size=(latent, D)) / np.sqrt(latent)
    B = rng.normal(size=(latent, D)) / np.sqrt(latent)
    G = np.maximum(X @ A + 3.0 * rng.normal(size=(n, D)), 0)  # the weaker old model
    H = np.maximum(X @ B + 1.5 * rng.normal(size=(n, D)), 0)
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    return G.astype(np.float32), H.astype(np.float32), y.astype(np.int64)


def _cli(work: Path, G: np.ndarray, H: np.ndarray, y: np.ndarray, n_pairs: int, labels: bool) -> dict[str, Any]:
    import compatindex

    ix_path = work / ("ix-labels" if labels else "ix-pairs")
    ids = [f"i{i}" for i in range(len(G))]
    with compatindex.open(ix_path) as ix:
        ix.create_version("v1", dim=D)
        ix.add(ids, G, labels=[int(v) for v in y] if labels else None)
    np.save(work / "new.npy", H[:n_pairs])
    (work / "ids.txt").write_text("\n".join(ids[:n_pairs]) + "\n")
    cmd = [sys.executable, "-m", "compatindex_cli", "upgrade", str(ix_path), str(work / "new.npy"),
           "--ids", str(work / "ids.txt"), "--json", "--quiet"]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    secs = time.perf_counter() - t
    out: dict[str, Any] = {"labels": labels, "exit_code": p.returncode, "seconds": round(secs, 1),
                           "command": "compatindex upgrade INDEX new.npy --ids ids.txt --json --quiet"}
    try:
        rep = json.loads(p.stdout)
    except json.JSONDecodeError:
        out["stderr"] = p.stderr[-2000:]
        return out
    g = rep["gate"]
    out.update(chosen=rep["chosen"], registered=rep["registered"], gate_passed=g["passed"], reasons=g["reasons"],
               resolved=rep.get("resolved"), candidates={c["method"]: round(c["fit_seconds"], 1)
                                                         for c in rep["candidates"]},
               pairs={"mrr": g["pairs"]["mrr"], "mrr_shuffled": g["pairs"]["mrr_shuffled"],
                      "recall@10": g["pairs"]["fit"]["recall@10"]})
    lab = g.get("labels")
    if lab and "old_old" in lab:
        out["old_old"] = lab["old_old"]
        out["new_old"] = lab["new_old"]
        out["interval"] = lab["interval"]
    return out


def _ridge(G: np.ndarray, H: np.ndarray, y: np.ndarray, n_pairs: int) -> dict[str, Any]:
    from compatindex.trainer import TrainConfig, fit_upgrade, pairs_from_arrays

    data = pairs_from_arrays(H[:n_pairs], G[:n_pairs], y[:n_pairs], gallery=G[n_pairs:], gallery_labels=y[n_pairs:])
    out = {}
    for label, kw in (("fixed ridge 1e-3, scale (old default)", {"ridge": 1e-3, "spectrum": "scale"}),
                      ("cross-validated (default)", {})):
        t = time.perf_counter()
        _, rep = fit_upgrade(data, d_parent=D, config=TrainConfig(method="isometric", **kw))
        lab = rep["gate"]["labels"]
        out[label] = {"new_old": lab["new_old"], "old_old": lab["old_old"], "resolved": rep["resolved"],
                      "pairs_mrr": rep["gate"]["pairs"]["mrr"], "seconds": round(time.perf_counter() - t, 1)}
    return out


def _auto(n_pairs: int) -> dict[str, Any]:
    from compatindex.trainer import TrainConfig, fit_upgrade, pairs_from_arrays

    G, H, y = features(n_pairs + 2000, seed=1)
    data = pairs_from_arrays(H[:n_pairs], G[:n_pairs], y[:n_pairs], gallery=G[n_pairs:], gallery_labels=y[n_pairs:])
    t = time.perf_counter()
    _, rep = fit_upgrade(data, d_parent=D, config=TrainConfig())
    secs = time.perf_counter() - t
    return {"n_pairs": n_pairs, "seconds": round(secs, 1), "chosen": rep["chosen"], "gate_passed": rep["gate"]["passed"],
            "selection_seconds": rep["selection"]["seconds"], "threads": rep.get("threads"),
            "candidates": {c["method"]: round(c["fit_seconds"], 1) for c in rep["candidates"]},
            "old_old_top1": rep["gate"]["labels"]["old_old"]["top1"],
            "new_old_top1": rep["gate"]["labels"]["new_old"]["top1"]}


def _ip() -> dict[str, Any]:
    import compatindex
    from compatindex.trainer import upgrade

    rng = np.random.default_rng(7)
    n, d = 3000, 64
    G = (rng.normal(size=(n, d)) * rng.uniform(0.3, 3.0, size=(n, 1))).astype(np.float32)
    R, _ = np.linalg.qr(rng.normal(size=(d, d)))
    H = (G @ R).astype(np.float32)
    qo = (rng.normal(size=(500, d)) * rng.uniform(0.3, 3.0, size=(500, 1))).astype(np.float32)
    qn = (qo @ R).astype(np.float32)
    ids = list(range(n))
    with compatindex.open(":memory:") as ix:
        ix.create_version("v1", dim=d, metric="ip")
        ix.add(ids, G)
        _, rep = upgrade(ix, H[:1500], ids[:1500], name="v2")
        old = ix.search(qo, k=10, version="v1")
        new_old = ix.search(qn, k=10, version="v2", raw=True, score="pad")  # ip across versions
        overlap = float(np.mean([len(set(old.ids[i]) & set(new_old.ids[i])) / 10 for i in range(len(qo))]))
        ix.backfill(ids, H, version="v2", raw=True)
        new_new = ix.search(qn, k=10, version="v2", raw=True, score="pad")
    brute = np.argsort(-(qn.astype(np.float64) @ H.T.astype(np.float64)), axis=1)[:, :10]
    exact = float(np.mean([set(new_new.ids[i]) == set(brute[i].tolist()) for i in range(len(qn))]))
    return {"n": n, "dim": d, "chosen": rep["chosen"], "normalize_input": rep["resolved"]["normalize_input"],
            "new_new_exact_top10": exact, "new_old_top10_overlap": overlap}


def run(quick: bool = False) -> Path:
    t0 = time.perf_counter()
    mach = machine()
    n_items, n_pairs = 4000, 800
    G, H, y = features(n_items)
    res: dict[str, Any] = {"scenario": "highdim", "quick": quick, "command": command_line(), "machine": mach,
                           "setup": {"dim": D, "items": n_items, "pairs": n_pairs,
                                     "features": "synthetic 1280-d post-ReLU views of a 20-class latent"}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        res["cli"] = [_cli(work, G, H, y, n_pairs, labels) for labels in (True, False)]
    log("highdim: cli done", [c["seconds"] for c in res["cli"]])
    res["ridge"] = _ridge(G, H, y, n_pairs)
    res["auto10k"] = _auto(3000 if quick else 10_000)
    log("highdim: auto done", res["auto10k"]["seconds"])
    res["ip"] = _ip()
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return write_result("highdim", res, markdown(res), quick=quick)


def markdown(r: dict[str, Any]) -> str:
    rows = []
    for c in r["cli"]:
        rows.append(["labels stored" if c["labels"] else "pairs only", c["exit_code"], c["seconds"], c.get("chosen"),
                     "yes" if c.get("registered") else "no", fmt(c.get("old_old", {}).get("top1")),
                     fmt(c.get("new_old", {}).get("top1")), fmt(c.get("pairs", {}).get("mrr"))])
    out = ("`compatindex upgrade` with default options, 1280-d, "
           f"{r['setup']['pairs']} pairs, {r['setup']['items']} items ({r['setup']['features']}); "
           "seconds include the interpreter start:\n\n"
           + md_table(["stored", "exit", "seconds", "chosen", "registered", "old/old top-1", "new/old top-1",
                       "pairs MRR"], rows))
    rows = [[k, v["resolved"]["ridge"], v["resolved"]["spectrum"], fmt(v["old_old"]["top1"]), fmt(v["new_old"]["top1"]),
             fmt(v["new_old"]["mAP"]), fmt(v["pairs_mrr"])] for k, v in r["ridge"].items()]
    out += ("\nIsometric fit on the same pairs, gate split (old/old is the same split):\n\n"
            + md_table(["ridge", "strength", "spectrum", "old/old top-1", "new/old top-1", "new/old mAP", "pairs MRR"],
                       rows))
    a = r["auto10k"]
    out += (f"\n`fit_upgrade(method='auto')` on {a['n_pairs']:,} pairs at 1280-d: **{a['seconds']} s** "
            f"({a['threads']} thread(s); cross-validation {a['selection_seconds']} s, candidates "
            + ", ".join(f"{k} {v} s" for k, v in a["candidates"].items())
            + f"), chose {a['chosen']}, new/old top-1 {fmt(a['new_old_top1'])} vs old/old {fmt(a['old_old_top1'])}.\n")
    p = r["ip"]
    out += (f"\nPlanted isometric upgrade under `metric='ip'` ({p['n']} items, {p['dim']}-d, chosen {p['chosen']}, "
            f"normalize_input={p['normalize_input']}): new/new after a full backfill equals the raw new model's "
            f"exact top-10 in {fmt(p['new_new_exact_top10'])} of queries; new->old top-10 overlap with old->old "
            f"{p['new_old_top10_overlap']:.3f}.\n")
    return out
