"""The chain of scenario 2 retrained from other seeds: is AC = 1 a property of the recipe or of seed 0?

Every version of one recipe (v1 included) is retrained with model seed 1, 2, ... (the same
images, classes, dims and settings as ``bench/chain.py``; each seed has its own model cache), and
the same compatibility matrices are measured. Writes ``bench/results/chain-seeds.json`` / ``.md``;
``python -m bench.make_docs`` shows them under scenario 2.

Run: ``.venv/bin/python -m bench.chain_seeds [--recipe simplex+gallery+scoped] [--seeds 1 2]``
(about 15 min a seed here when nothing is cached).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import numpy as np

from . import chain
from .common import Timer, command_line, log, machine, md_table, write_result
from .fmnist import load_data, setup


def run(recipe: str = "simplex+gallery+scoped", seeds: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    T = Timer()
    base = setup(False)
    data = load_data(base)  # the same images for every seed; only the models' seeds change
    plan = chain.chain_plan(base)
    runs: dict[str, Any] = {}
    for seed in seeds:
        s = dataclasses.replace(base, seed=seed)
        runs[str(seed)] = chain._chain(recipe, s, data, plan, {})
        log(f"chain seeds {recipe} seed {seed}: AC top-1 {runs[str(seed)]['AC_top1']:.2f}, "
            f"mAP {runs[str(seed)]['AC_mAP']:.2f}")
    res = {"scenario": "chain-seeds", "recipe": recipe, "seeds": list(seeds), "command": command_line(),
           "machine": machine(), "runs": runs,
           "all_AC_is_1": bool(all(r["AC_is_1"] and r["AC_mAP_is_1"] for r in runs.values()))}
    res["seconds"] = T()
    write_result("chain-seeds", res, markdown(res), quick=False)
    return res


def markdown(r: dict[str, Any]) -> str:
    """Per seed: AC on top-1 and mAP, and each lower-triangle top-1 cell against its diagonal."""
    head = ["seed", "AC top-1", "AC mAP"]
    rows = []
    first = next(iter(r["runs"].values()))
    names = [v["name"] for v in first["versions"]]
    pairs = [(i, j) for i in range(len(names)) for j in range(i)]
    head += [f"{names[i]}/{names[j]} − {names[j]}/{names[j]} (top-1)" for i, j in pairs]
    margins = []
    for seed, c in r["runs"].items():
        M = np.asarray(c["matrix_top1"], dtype=float)
        mg = [100 * (M[i, j] - M[j, j]) for i, j in pairs]
        margins += mg
        rows.append([seed, f"{c['AC_top1']:.2f}", f"{c['AC_mAP']:.2f}"] + [f"{x:+.1f}" for x in mg])
    worst = min(margins)
    cached = sum(bool(v.get("cached")) for c in r["runs"].values() for v in c["versions"])
    total = sum(len(c["versions"]) for c in r["runs"].values())
    return (f"**Other seeds** (`{r['recipe']}`, every version retrained with model seed "
            + ", ".join(str(s) for s in r["seeds"]) + f"; `{r['command']}`, {r['machine'].get('date')}, "
            f"{r['seconds'] / 60:.1f} min; {cached} of {total} backbones loaded from the model cache, trained "
            "by an earlier run of the same code and settings). Margins are top-1 points of each cell over its diagonal (10,000 "
            "queries; one point is 100 queries):\n\n" + md_table(head, rows)
            + f"\nEvery seed has AC = 1 on top-1 and on mAP: {'yes' if r['all_AC_is_1'] else 'no'}; the "
              f"thinnest top-1 margin is {worst:+.1f} points.\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="simplex+gallery+scoped",
                    choices=[r for r in chain.ALL_RECIPES if r.startswith("simplex")])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args(argv)
    r = run(a.recipe, tuple(a.seeds))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
