"""Shared helpers of the benchmark suite: work folder, caching, machine info, result files,
retrieval through a real :class:`compatindex.Index` and the metrics computed from its hits.

Everything large (embeddings, trained models, indexes) lives in the work folder
(``$COMPATINDEX_BENCH_WORK``, default ``~/.cache/compatindex-bench``), never in git; only the
small JSON / Markdown / PNG results go to ``bench/results/``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = Path(os.environ.get("COMPATINDEX_BENCH_RESULTS", HERE / "results"))


def work_dir(*parts: str) -> Path:
    """The benchmark's cache folder (created), outside the repository."""
    base = Path(os.environ.get("COMPATINDEX_BENCH_WORK", Path.home() / ".cache" / "compatindex-bench"))
    p = base.joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


def machine() -> dict[str, Any]:
    """Where and when a figure was measured."""
    import numpy

    info: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "numpy": numpy.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    for mod in ("torch", "faiss"):
        m = sys.modules.get(mod)
        if m is not None:
            info[mod] = getattr(m, "__version__", "?")
    return info


def command_line() -> str:
    """The command that produced a result, as typed (relative to the repository root)."""
    argv = list(getattr(sys, "orig_argv", sys.argv))
    if argv and "python" in Path(argv[0]).name:
        argv = argv[1:]
    if argv and argv[0].endswith("run.py"):
        argv[0] = "bench/run.py"
    return ".venv/bin/python " + " ".join(argv) if argv else "?"


def clean(x: Any) -> Any:
    """JSON-able copy (numpy scalars and arrays to Python, floats rounded to 6 digits)."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return clean(x.tolist())
    if isinstance(x, np.generic):
        return clean(x.item())
    if isinstance(x, float):
        if x != x:  # NaN
            return None
        return round(x, 6)
    return x


def write_result(name: str, result: dict[str, Any], markdown: str, *, quick: bool) -> Path:
    """Write ``bench/results/<name>[-quick].json`` and ``.md``; returns the JSON path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-quick" if quick else name
    p = RESULTS / f"{stem}.json"
    p.write_text(json.dumps(clean(result), indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown)
    return p


def png_name(name: str, quick: bool) -> str:
    return f"{name}-quick.png" if quick else f"{name}.png"


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.t0, 2)


def log(*a: Any) -> None:
    print("[bench]", *a, file=sys.stderr, flush=True)


# -- metrics ---------------------------------------------------------------------------------
def fmt(x: Any, pct: bool = True, nd: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{100 * x:.{nd}f}" if pct else f"{x:.{nd + 2}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def cmc_from_hits(hit_labels: np.ndarray, q_labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """CMC top-k from the labels of the returned hits ``(nq, k)`` (first match within rank k)."""
    rel = hit_labels == q_labels[:, None]
    return {f"top{k}": float(np.mean(rel[:, :k].any(1))) for k in ks}


def mean_ap(S: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Average precision of each row over the full ranking (ties broken like a stable argsort).

    ``S`` ``(nq, ng)`` scores, ``rel`` ``(nq, ng)`` bool. Uses sorts of the scores instead of an
    argsort of the whole matrix (5-10x faster than ``compatindex.evaluation.cmc_map`` on 60k
    galleries; the two agree, tests/bench checks it).
    """
    out = np.zeros(len(S))
    for i in range(len(S)):
        s, r = S[i], rel[i]
        npos = int(r.sum())
        if not npos:
            out[i] = np.nan
            continue
        allsort = np.sort(-s)
        pos = np.sort(-s[r])
        # rank of each relevant item = #items scoring strictly higher + ties before it; with
        # ties counted as ahead we get a (tiny) pessimistic bound, exact without ties
        rank = np.searchsorted(allsort, pos, side="right")
        out[i] = float(np.mean(np.arange(1, npos + 1) / rank))
    return out


def label_map(queries: np.ndarray, gallery: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray,
              *, score: str = "renorm", chunk: int = 512) -> float:
    """mAP of label retrieval over the full ranking (brute force, the cut-to-prefix similarity
    of :func:`compatindex.evaluation.similarity`)."""
    from compatindex.evaluation import similarity

    aps = []
    for s in range(0, len(queries), chunk):
        S = similarity(queries[s: s + chunk], gallery, score=score)
        rel = q_labels[s: s + chunk, None] == g_labels[None, :]
        aps.append(mean_ap(S, rel))
    a = np.concatenate(aps)
    return float(np.nanmean(a))


def mixed_similarity(q: np.ndarray, gal_old: np.ndarray, gal_new: np.ndarray, new_mask: np.ndarray,
                     *, score: str) -> np.ndarray:
    """Scores of new queries ``(nq, d_new)`` against a mixed gallery (brute force, the same rule as
    ``Index.search``): items in ``new_mask`` through their new vector, the rest through the old one."""
    d_old = gal_old.shape[1]
    S = np.empty((len(q), len(new_mask)), np.float32)
    qc = q[:, :d_old]
    if score == "renorm":
        qc = qc * (np.linalg.norm(q, axis=1) / np.maximum(np.linalg.norm(qc, axis=1), 1e-12))[:, None]
    S[:, ~new_mask] = qc @ gal_old[~new_mask].T
    S[:, new_mask] = q @ gal_new[new_mask].T
    return S


def search_ids(index: Any, queries: np.ndarray, k: int, *, version: str, score: str = "renorm",
               raw: bool | None = None, batch: int = 2048) -> tuple[np.ndarray, np.ndarray, float]:
    """``Index.search`` in batches; returns ``(ids (nq,k) int64, versions (nq,k) object, seconds)``.

    ``raw`` goes to ``Index.search`` as given: a version with a head or a non-identity ``Q`` needs it said.
    """
    ids, vers = [], []
    t = time.perf_counter()
    for s in range(0, len(queries), batch):
        r = index.search(queries[s: s + batch], k, version=version, score=score, raw=raw)
        ids.append(np.array([[(-1 if x is None else x) for x in row] for row in r.ids], dtype=np.int64))
        vers.append(r.versions)
    return np.vstack(ids), np.vstack(vers), time.perf_counter() - t


def brute_topk(queries: np.ndarray, gallery: np.ndarray, k: int, *, score: str = "renorm") -> np.ndarray:
    """Top-k rows of ``gallery`` per query by brute force (cross-check of ``Index.search``)."""
    from compatindex.evaluation import similarity

    out = []
    for s in range(0, len(queries), 1024):
        S = similarity(queries[s: s + 1024], gallery, score=score)
        part = np.argpartition(-S, k, axis=1)[:, :k]
        o = np.argsort(-np.take_along_axis(S, part, 1), axis=1, kind="stable")
        out.append(np.take_along_axis(part, o, 1))
    return np.vstack(out)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of queries whose top-1 agrees between two rankings."""
    return float(np.mean(a[:, 0] == b[:, 0]))
