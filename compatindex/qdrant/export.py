"""Copy an embedded index into Qdrant: versions, registry, items, vectors, labels, metadata.

Resumable: points are written with deterministic ids (``uuid5`` of the external id), so a
rerun after an interruption skips every point already present with the same set of versions'
vectors and rewrites the others; the copy is then verified by counts (items and vectors per
version).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import time
from typing import Any, Callable, Iterator

from ..core.records import version_record
from ..embedded.backend import EmbeddedBackend
from ..embedded.backend import open_backend as open_embedded
from ..errors import InvalidInputError, VersionExistsError
from ..index import Index
from .backend import QdrantBackend
from .backend import open_backend as open_qdrant
from .errors import require_client
from .items import item_payload, point_id


@contextlib.contextmanager
def _progress(total: int, enabled: bool, description: str) -> Iterator[Callable[[int], None]]:
    if not enabled or total <= 0:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True))
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _copy_versions(src: EmbeddedBackend, dst: QdrantBackend) -> None:
    src_vs = sorted(src.versions().values(), key=lambda v: v.code)
    dst_vs = sorted(dst.versions().values(), key=lambda v: v.code)
    for i, d in enumerate(dst_vs):  # a resumed export finds a prefix of the source's versions
        s = src_vs[i] if i < len(src_vs) else None
        if s is None or (s.name, s.dim, s.parent, s.metric) != (d.name, d.dim, d.parent, d.metric):
            raise VersionExistsError(
                f"{dst.path} already holds versions that are not the source's "
                f"({', '.join(v.name for v in dst_vs)} vs {', '.join(v.name for v in src_vs)})",
                hint="export into a new collection (qdrant://HOST:PORT/NEW_NAME)",
            )
    for s in src_vs[len(dst_vs):]:
        dst.put_version(version_record(dst.versions(), name=s.name, dim=s.dim, metric=s.metric, parent=s.parent,
                                       raw_dim=s.raw_dim, extension=s.extension, head=s.head, report=s.report,
                                       config=s.config, created_at=s.created_at))


def export_index(src_path_or_index: Any, url: str, *, batch: int = 1024, progress: bool = True) -> dict[str, Any]:
    """Copy an embedded index (a folder or an open :class:`~compatindex.Index`) into Qdrant at ``url``.

    Returns ``{"url", "items", "copied", "skipped", "vectors": {version: n}, "seconds", "ok",
    "problems"}``; ``ok`` is False (and ``problems`` says why) when the counts in Qdrant differ
    from the source's after the copy.
    """
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise InvalidInputError(f"`batch` must be an int >= 1; got {batch!r}")
    require_client()
    from qdrant_client import models as m

    t_start = time.perf_counter()
    own_src = not isinstance(src_path_or_index, Index)
    if own_src:
        if not isinstance(src_path_or_index, (str, os.PathLike)) or str(src_path_or_index).startswith("qdrant"):
            raise InvalidInputError(f"the source must be an embedded index folder or Index; got {src_path_or_index!r}")
        src = open_embedded(src_path_or_index, readonly=True, create=False)
    elif isinstance(src_path_or_index.backend, EmbeddedBackend):
        src = src_path_or_index.backend
    else:
        raise InvalidInputError(f"the source must be an embedded index; got {src_path_or_index!r}")
    dst = open_qdrant(url, create=True)
    try:
        with Index(dst):
            _copy_versions(src, dst)
            store = src.store
            names = {v.code: v.name for v in src.versions().values()}
            vs = sorted(src.versions().values(), key=lambda v: v.code)
            copied = skipped = 0
            with store.read() as r:
                n_items = int(r.meta("n_items", 0))
                kind = r.meta("id_kind")
                if kind is not None:
                    dst.record_id_kind(kind)
                items = r.iter_items()
                with _progress(n_items, progress, f"export -> {dst.collection}") as advance:
                    while True:
                        chunk = list(itertools.islice(items, batch))
                        if not chunk:
                            break
                        iids = [i for i, _ in chunk]
                        exts = [e for _, e in chunk]
                        held: list[list[str]] = [[] for _ in chunk]
                        vecs: list[dict[str, m.Vector]] = [{} for _ in chunk]
                        for v in vs:
                            x, ok = r.vectors(v.code, v.dim, iids)
                            for j in ok.nonzero()[0].tolist():
                                held[j].append(names[v.code])
                                vecs[j][v.name] = x[j].tolist()
                        pids = [point_id(e) for e in exts]
                        there = dst.points.retrieve(pids, vectors=True)
                        todo = [j for j, p in enumerate(pids)
                                if p not in there or sorted(there[p].vector or {}) != sorted(held[j])]
                        skipped += len(chunk) - len(todo)
                        if todo:
                            labels = r.labels([iids[j] for j in todo])
                            attrs = r.attrs([iids[j] for j in todo])
                            points = [m.PointStruct(id=pids[j], vector=vecs[j],
                                                    payload=item_payload(exts[j], lab, meta, iids[j]))
                                      for j, lab, meta in zip(todo, labels, attrs)]
                            dst.points.call("upsert", functools.partial(dst.client.upsert, dst.collection,
                                                                        points=points, wait=True))
                            copied += len(todo)
                        advance(len(chunk))
            problems = _check_counts(src, dst)
            return {"url": url, "items": n_items, "copied": copied, "skipped": skipped,
                    "vectors": {v.name: int(dst.stats()["versions"][v.name]["vectors"]) for v in vs},
                    "seconds": round(time.perf_counter() - t_start, 3), "ok": not problems, "problems": problems}
    finally:
        if own_src:
            src.close()


def _check_counts(src: EmbeddedBackend, dst: QdrantBackend) -> list[str]:
    s, d = src.stats(), dst.stats()
    problems = []
    if s["items"] != d["items"]:
        problems.append(f"items: the source holds {s['items']}, Qdrant {d['items']}")
    for name, sv in s["versions"].items():
        dv = d["versions"].get(name, {}).get("vectors")
        if sv["vectors"] != dv:
            problems.append(f"version {name!r}: the source holds {sv['vectors']} vectors, Qdrant {dv}")
    return problems
