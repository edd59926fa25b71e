"""Scenario 5: speed. Runs the core library benchmark (``bench/bench_core.py``: search, add,
reopen, memory; written by the core developers, run here as a subprocess) and times the trainer:
each closed-form and torch head fit on 384-d pairs, ``upgrade()`` end to end on a stored
gallery, and whole-backbone training throughput of the Fashion-MNIST CNN.

Run: ``.venv/bin/python -m bench.run speed [--quick]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import numpy as np

from .common import RESULTS, ROOT, Timer, command_line, fmt, log, machine, md_table, write_result


def _synthetic_pairs(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 20, n)
    C = rng.standard_normal((20, d))
    G = C[y] + 0.8 * rng.standard_normal((n, d))
    A = rng.standard_normal((d, d)) / np.sqrt(d)
    H = np.tanh(G @ A) + 0.1 * rng.standard_normal((n, d))
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return unit(H), unit(G), y


def trainer_timings(quick: bool) -> dict[str, Any]:
    import torch

    import compatindex
    from compatindex.trainer import TrainConfig, fit_method, pairs_from_arrays, upgrade

    out: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    n, d = (2000, 384) if quick else (10000, 384)
    steps = 50 if quick else 400
    H, G, y = _synthetic_pairs(n, d)
    data = pairs_from_arrays(H, G, labels=y)
    fits = {}
    for meth in ("procrustes", "isometric", "affine", "mlp", "oca"):
        t = time.perf_counter()
        fit_method(meth, data, TrainConfig(method=meth, steps=steps), d_parent=d)
        fits[meth] = round(time.perf_counter() - t, 3)
        log(f"speed: fit {meth} on {n} x {d} pairs: {fits[meth]}s")
    out["fit_seconds"] = {"n_pairs": n, "dim": d, "torch_steps": steps, **fits}
    # upgrade() end to end: pairs read from a stored gallery, candidates, gate, registration
    ng = 20000 if quick else 100000
    rng = np.random.default_rng(1)
    Gs = rng.standard_normal((ng, 64)).astype(np.float32)
    R, _ = np.linalg.qr(rng.standard_normal((80, 80)))
    Hs = np.hstack([Gs, 0.3 * rng.standard_normal((ng, 16)).astype(np.float32)]) @ R.T.astype(np.float32)
    with compatindex.open(":memory:") as ix:
        ix.create_version("v1", dim=64)
        ix.add(np.arange(ng), Gs)
        pick = np.arange(0, ng, 10)
        t = time.perf_counter()
        v, rep = upgrade(ix, Hs[pick], pick.tolist(), method="isometric", parent="v1")
        out["upgrade_isometric"] = {"gallery": ng, "pairs": len(pick), "seconds": round(time.perf_counter() - t, 3),
                                    "gate_passed": rep["gate"]["passed"], "dim": rep["dim"]}
    # backbone throughput (the Fashion-MNIST CNN, OCA recipe)
    from compatindex.trainer import BackboneConfig, train_backbone

    from .fmnist import make_cnn

    nb = 2560 if quick else 12800
    X = torch.randn(nb, 1, 28, 28)
    yb = torch.randint(0, 10, (nb,))
    P = np.random.default_rng(2).standard_normal((10, 64)).astype(np.float32)
    for meth in ("independent", "oca"):
        cfg = BackboneConfig(method=meth, d_parent=64, num_classes=10, epochs=1, batch_size=128, device="cpu",
                             quiet=True)
        t = time.perf_counter()
        train_backbone(make_cnn(80), X, yb, config=cfg, prototypes=P if meth != "independent" else None, d_out=80)
        dt = time.perf_counter() - t
        out[f"backbone_{meth}_images_per_s"] = round(nb / dt, 1)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    T = Timer()
    core_out = RESULTS / ("core-quick.json" if quick else "core.json")
    n = 100_000 if quick else 1_000_000
    cmd = [sys.executable, str(ROOT / "bench" / "bench_core.py"), "--n", str(n), "--out", str(core_out)]
    log("speed: " + " ".join(cmd[1:]))
    t = Timer()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    core: dict[str, Any] = {"returncode": p.returncode, "seconds": t(), "json": str(core_out.relative_to(ROOT))}
    if p.returncode != 0:
        core["stderr_tail"] = p.stderr[-2000:]
    elif core_out.exists():
        core["result"] = json.loads(core_out.read_text())
    res = {"scenario": "speed", "quick": quick, "command": command_line(), "machine": machine(), "core": core,
           "trainer": trainer_timings(quick)}
    res["seconds"] = T()
    write_result("speed", res, markdown(res), quick=quick)
    return res


def core_markdown(c: dict[str, Any]) -> str:
    s, a, r = c.get("search", {}), c.get("add", {}), c.get("reopen", {})
    rows = []
    for k, v in s.items():
        rows.append([f"search: {k}", fmt(v, pct=False) if isinstance(v, float) else v])
    for k, v in a.items():
        rows.append([f"add: {k}", fmt(v, pct=False) if isinstance(v, float) else v])
    for k, v in r.items():
        rows.append([f"reopen: {k}", fmt(v, pct=False) if isinstance(v, float) else v])
    for k, v in c.get("goals", {}).items():
        rows.append([f"goal: {k}", fmt(v)])
    return (f"Core benchmark (`{c.get('command')}`, {c.get('date')}, {c.get('machine')}; n = {c.get('n')}, "
            f"dims {c.get('dims')}):\n\n" + md_table(["measure", "value"], rows))


def markdown(r: dict[str, Any]) -> str:
    t = r["trainer"]
    f = t["fit_seconds"]
    rows = [[m, f"{f[m]:.2f}"] for m in ("procrustes", "isometric", "affine", "mlp", "oca")]
    txt = (f"### Speed\n\nTrainer fits on {f['n_pairs']} synthetic {f['dim']}-d pairs (torch heads: {f['torch_steps']} "
           f"steps, CPU, {t['torch_threads']} threads), seconds:\n\n" + md_table(["method", "fit seconds"], rows)
           + f"\n`upgrade(method='isometric')` on a {t['upgrade_isometric']['gallery']}-item gallery with "
             f"{t['upgrade_isometric']['pairs']} pairs (read pairs, fit, gate, register): "
             f"{t['upgrade_isometric']['seconds']:.2f} s. Whole-backbone training of the Fashion-MNIST CNN: "
             f"{t['backbone_independent_images_per_s']:.0f} images/s independent, "
             f"{t['backbone_oca_images_per_s']:.0f} images/s OCA.\n\n")
    c = r["core"]
    if "result" in c:
        txt += core_markdown(c["result"])
    else:
        txt += f"Core benchmark failed (return code {c['returncode']}).\n"
    return txt
