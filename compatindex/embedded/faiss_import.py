"""Import faiss once, with the packaging checks the extras need.

``faiss-cpu`` and ``faiss-gpu`` install the same ``faiss/`` folder and clobber each other
(docs/architecture.md, "Installing faiss"), so importing compatindex warns when more than one
faiss distribution is installed and raises an ImportError naming the extras when none is.
"""

from __future__ import annotations

import importlib.metadata as md
import warnings

FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu-cuvs", "faiss")


def installed_faiss_distributions() -> list[str]:
    """Names of the faiss distributions that ``importlib.metadata`` sees."""
    found = []
    for name in FAISS_DISTRIBUTIONS:
        try:
            md.distribution(name)
        except md.PackageNotFoundError:
            continue
        found.append(name)
    return found


def _load():
    dists = installed_faiss_distributions()
    if len(dists) > 1:
        warnings.warn(
            f"more than one faiss distribution is installed ({', '.join(dists)}); they share the "
            "`faiss/` folder and the last one installed wins. Uninstall all of them, then install "
            "exactly one: `pip install 'compatindex[cpu]'` or `pip install 'compatindex[gpu]'`.",
            RuntimeWarning,
            stacklevel=3,
        )
    try:
        import faiss as _faiss
    except ImportError as exc:  # pragma: no cover - exercised only without faiss
        raise ImportError(
            "compatindex needs faiss: install exactly one of the extras "
            "`pip install 'compatindex[cpu]'` (faiss-cpu) or `pip install 'compatindex[gpu]'` (faiss-gpu)"
        ) from exc
    # Flat search uses BLAS only when nq*d >= this threshold (default 128000); below it faiss scans
    # query by query, which is far slower for mid-size batches (docs/architecture.md, "Installing faiss").
    _faiss.cvar.distance_compute_blas_threshold = 20
    return _faiss


faiss = _load()


def num_gpus() -> int:
    """GPUs faiss can use (0 with faiss-cpu, or with faiss-gpu on a machine without a GPU)."""
    try:
        if not hasattr(faiss, "StandardGpuResources"):
            return 0
        return int(faiss.get_num_gpus())
    except Exception:  # pragma: no cover - broken driver setups
        return 0
