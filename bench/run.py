"""Entry point of the benchmark suite.

    .venv/bin/python -m bench.run --all            # every scenario, full size
    .venv/bin/python -m bench.run --all --quick    # every scenario, reduced (< 5 min here)
    .venv/bin/python -m bench.run fmnist chain     # some scenarios
    .venv/bin/python bench/run.py --all            # same, as a script

Scenarios: fmnist, chain, backfill, text, highdim, speed, serving. Each writes bench/results/<name>[-quick].json,
.md and .png; the suite then regenerates docs/benchmarks.md (``--no-docs`` to skip).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

SCENARIOS = ("fmnist", "chain", "backfill", "text", "highdim", "speed", "serving")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="compatindex benchmark suite")
    ap.add_argument("scenarios", nargs="*", help=f"scenarios to run, of {', '.join(SCENARIOS)}")
    ap.add_argument("--all", action="store_true", help="run every scenario")
    ap.add_argument("--quick", action="store_true", help="reduced sizes (the whole suite in < 5 min here)")
    ap.add_argument("--no-docs", action="store_true", help="do not regenerate docs/benchmarks.md")
    ap.add_argument("--text-pairs", type=int, default=0,
                    help="cap the WordNet training pairs of the text scenario (default 1,000 quick, 10,000 full)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("COMPATINDEX_BENCH_THREADS", 1)),
                    help="BLAS/OpenMP/torch threads (default 1: on a shared 2-core machine more threads "
                         "spin-wait and small torch fits run ~8x slower)")
    ap.add_argument("--keep-going", action="store_true", help="run the next scenario when one fails")
    a = ap.parse_args(argv)
    names = list(SCENARIOS) if a.all or not a.scenarios else a.scenarios
    bad = [n for n in names if n not in SCENARIOS]
    if bad:
        ap.error(f"unknown scenario(s) {bad}; choose from {SCENARIOS}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads
        os.environ[var] = str(a.threads)
    import torch

    torch.set_num_threads(a.threads)
    if a.text_pairs:
        os.environ["COMPATINDEX_BENCH_TEXT_PAIRS"] = str(a.text_pairs)
    import importlib

    from .common import log

    failed = []
    t0 = time.perf_counter()
    for name in names:
        t = time.perf_counter()
        try:
            mod = importlib.import_module(f"bench.{name}")
            mod.run(quick=a.quick)
            log(f"{name}: done in {time.perf_counter() - t:.0f}s")
        except Exception as e:  # noqa: BLE001 - report and go on when asked
            from .textdata import Missing

            missing = isinstance(e, Missing) or type(e).__name__ == "DatasetMissingError"
            log(f"{name}: {'SKIPPED' if missing else 'FAILED'}: {e}")
            if not missing:
                traceback.print_exc()
                failed.append(name)
                if not a.keep_going:
                    break
    log(f"suite: {time.perf_counter() - t0:.0f}s")
    if not a.no_docs:
        from .make_docs import main as docs

        docs()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
