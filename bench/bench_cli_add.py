"""Adding N x D float32 vectors from an .npy file: `compatindex add` (the CLI) vs `Index.add` (the
Python API), measured side by side in one run. Goal: the CLI within 1.3x of the API.

What is timed, each in a fresh Python process on an index that already holds its root version:

- ``api_s``: ``compatindex.open(path)`` + ``index.add(np.arange(n), np.load(npy, mmap_mode="r"))``
  + ``close()``, timed inside the process (interpreter start and imports excluded: the strict
  baseline).
- ``cli_s``: the whole ``compatindex add INDEX x.npy --quiet`` process, wall clock (interpreter
  start, imports, the CLI's check pass over the file and its 65,536-row batches included).

The two alternate (api, cli, api, cli, ...) ``--repeat`` times each; the figures are the best of
each side, with every run listed. The .npy file is written once and is in the page cache for
both, and dirty pages are written back (``os.sync``) before each run. Prints a small JSON to stdout and writes it to ``bench/results/cli_add.json``.

Run with:
    .venv/bin/python bench/bench_cli_add.py                 # 1M x 128 (the issue's figure)
    .venv/bin/python bench/bench_cli_add.py --n 200000      # a quicker check
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
import textwrap
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOAL = 1.3

API_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import compatindex
    path, npy = sys.argv[1], sys.argv[2]
    t0 = time.perf_counter()
    x = np.load(npy, mmap_mode="r")
    with compatindex.open(path, create=False) as index:
        index.add(np.arange(x.shape[0], dtype=np.int64), x)
    print(time.perf_counter() - t0)
    """
)


def cli_command() -> list[str]:
    exe = shutil.which("compatindex") or str(Path(sys.executable).with_name("compatindex"))
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "compatindex_cli"]


def fresh_index(root: Path, name: str, dim: int) -> Path:
    import compatindex

    path = root / name
    if path.exists():
        shutil.rmtree(path)
    with compatindex.open(str(path)) as index:
        index.create_version("v1", dim=dim, metric="cosine")
    return path


def settle() -> None:
    """Write dirty pages back now, so that no run pays for the previous run's writes."""
    if hasattr(os, "sync"):
        os.sync()


def run_api(path: Path, npy: Path) -> float:
    settle()
    out = subprocess.run([sys.executable, "-c", API_SCRIPT, str(path), str(npy)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_cli(path: Path, npy: Path) -> float:
    settle()
    t0 = time.perf_counter()
    subprocess.run([*cli_command(), "add", str(path), str(npy), "--quiet"], capture_output=True, text=True,
                   check=True)
    return time.perf_counter() - t0


def count(path: Path) -> int:
    import compatindex

    with compatindex.open(str(path), readonly=True, create=False) as index:
        return int(index.count)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors to add (default 1M)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each side, alternating")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cli_add.json")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_cli_add_", dir=args.workdir))
    try:
        npy = root / "x.npy"
        rng = np.random.default_rng(0)
        x = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(args.n, args.dim))
        for s in range(0, args.n, 1 << 18):
            x[s : s + (1 << 18)] = rng.standard_normal((min(1 << 18, args.n - s), args.dim), dtype=np.float32)
        x.flush()
        del x
        api_runs, cli_runs = [], []
        for r in range(args.repeat):
            path = fresh_index(root, f"api{r}.index", args.dim)
            api_runs.append(run_api(path, npy))
            assert count(path) == args.n
            shutil.rmtree(path)
            path = fresh_index(root, f"cli{r}.index", args.dim)
            cli_runs.append(run_cli(path, npy))
            assert count(path) == args.n
            shutil.rmtree(path)
            print(f"run {r}: api {api_runs[-1]:.2f}s  cli {cli_runs[-1]:.2f}s", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    api_s, cli_s = min(api_runs), min(cli_runs)
    result = {
        "bench": "cli_add",
        "n": args.n,
        "dim": args.dim,
        "api_s": round(api_s, 3),
        "cli_s": round(cli_s, 3),
        "ratio": round(cli_s / api_s, 3),
        "goal_ratio": GOAL,
        "within_goal": cli_s / api_s <= GOAL,
        "api_runs_s": [round(t, 3) for t in api_runs],
        "cli_runs_s": [round(t, 3) for t in cli_runs],
        "api_vectors_per_s": round(args.n / api_s),
        "cli_vectors_per_s": round(args.n / cli_s),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
