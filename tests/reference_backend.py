"""A third backend, written only against the Backend Protocol: plain dicts and exact numpy search.

It proves that the facade needs nothing else from an engine (docs/architecture.md), and it is a
brute-force reference for the two real backends: the facade over it must return what the facade
over the embedded index returns.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from compatindex.backend import ShardHits, ShardQuery
from compatindex.core.datatypes import ItemBatch, Version
from compatindex.core.filters import check_payload, matches
from compatindex.core.records import version_from_record
from compatindex.core.validate import check_id_kind, duplicate_ids, sample_rows, unknown_ids
from compatindex.errors import InvalidInputError, VersionExistsError


class DictBackend:
    """Items in a dict, one numpy vector per (item, version); search by exact inner products."""

    def __init__(self) -> None:
        self.path = "dict://"
        self.readonly = False
        self._versions: dict[str, Version] = {}
        self.items: dict[Any, dict[str, Any]] = {}  # insertion-ordered
        self.kind: str | None = None
        self.seq = 0
        self.schema: dict[str, str] = {}

    def versions(self) -> Mapping[str, Version]:
        return self._versions

    def refresh(self, *, force: bool = False) -> None:
        pass

    def put_version(self, record: dict[str, Any]) -> None:
        if record["name"] in self._versions:
            raise VersionExistsError(f"`name` {record['name']!r} is already a version of this index")
        self._versions[record["name"]] = version_from_record(record, where="the dict backend")
        self.seq += 1

    def set_serving(self, name: str, serving: dict[str, Any]) -> None:
        self._versions[name] = dataclasses.replace(self._versions[name], serving=serving)

    def _kind(self, kind: str) -> None:
        check_id_kind(self.kind, kind)
        self.kind = kind

    def _known(self, ids: list[Any]) -> None:
        err = unknown_ids(ids, self.known(ids))
        if err is not None:
            raise err

    def add(self, version, ids, id_kind, vectors, labels, metadata) -> int:
        self._kind(id_kind)
        if metadata is not None:
            check_payload(metadata, self.schema)
        there = self.known(ids)
        if there.any():
            raise duplicate_ids(ids, there)
        for j, i in enumerate(ids):
            self.items[i] = {"vecs": {version.name: vectors[j].copy()},
                             "label": None if labels is None else labels[j],
                             "meta": None if metadata is None else metadata[j]}
        self.seq += 1
        return self.seq

    def backfill(self, version, ids, id_kind, vectors, *, drop_old) -> int:
        self._kind(id_kind)
        self._known(ids)
        for j, i in enumerate(ids):
            vecs = self.items[i]["vecs"]
            if drop_old:
                vecs.clear()
            vecs[version.name] = vectors[j].copy()
        self.seq += 1
        return self.seq

    def delete(self, ids, id_kind) -> int:
        self._kind(id_kind)
        self._known(ids)
        for i in ids:
            del self.items[i]
        self.seq += 1
        return len(ids)

    def search(self, queries: Sequence[ShardQuery], k: int, *, where=None) -> ShardHits:
        table = list(self.items)
        scores, keys = [], []
        for s in queries:
            rows = [n for n, i in enumerate(table) if s.version in self.items[i]["vecs"]
                    and not any(u in self.items[i]["vecs"] for u in s.shadowing)
                    and matches(where, self.items[i]["label"], self.items[i]["meta"])]
            nq = len(s.queries)
            D = np.full((nq, k), -np.inf, dtype=np.float32)
            K = np.full((nq, k), -1, dtype=np.int64)
            if rows:
                X = np.stack([self.items[table[n]]["vecs"][s.version] for n in rows]).astype(np.float64)
                S = s.queries.astype(np.float64) @ X.T
                order = np.argsort(-S, axis=1, kind="stable")[:, :k]
                kk = order.shape[1]
                D[:, :kk] = np.take_along_axis(S, order, 1)
                K[:, :kk] = np.asarray(rows)[order]
            scores.append(D)
            keys.append(K)
        return ShardHits(scores, keys, lambda found: [table[n] for n in found.tolist()])

    def known(self, ids) -> np.ndarray:
        return np.array([i in self.items for i in ids], dtype=bool)

    def vectors(self, version, ids):
        x = np.zeros((len(ids), version.dim), dtype=np.float32)
        held = np.zeros(len(ids), dtype=bool)
        for j, i in enumerate(ids):
            v = self.items.get(i, {"vecs": {}})["vecs"].get(version.name)
            if v is not None:
                x[j], held[j] = v, True
        return x, held

    def labels(self, ids):
        return [self.items[i]["label"] for i in ids]

    def payload(self, ids):
        return [self.items[i]["label"] for i in ids], [self.items[i]["meta"] for i in ids]

    def held(self, ids):
        order = sorted(self._versions.values(), key=lambda v: v.code)
        return [tuple(v.name for v in order if v.name in self.items[i]["vecs"]) for i in ids]

    def list_items(self, offset, limit, where):
        hits = [i for i, it in self.items.items() if matches(where, it["label"], it["meta"])]
        page = hits[offset:offset + limit]
        return page, (offset + limit if offset + limit < len(hits) else -1)

    def set_payload(self, ids, id_kind, *, labels, metadata, merge) -> int:
        self._kind(id_kind)
        self._known(ids)
        if metadata is not None:
            new = []
            for i, m in zip(ids, metadata):
                old = self.items[i]["meta"]
                if m is None:
                    new.append(old)
                elif merge:
                    d = dict(old or {})
                    d.update(m)
                    new.append({a: b for a, b in d.items() if b is not None} or None)
                else:
                    new.append(dict(m))
            check_payload(new, self.schema)
            for i, m in zip(ids, new):
                self.items[i]["meta"] = m
        if labels is not None:
            for i, lab in zip(ids, labels):
                self.items[i]["label"] = lab
        self.seq += 1
        return self.seq

    def create_payload_index(self, field, schema) -> None:
        check_payload([it["meta"] for it in self.items.values()], {field: schema})
        self.schema[field] = schema

    def payload_schema(self):
        return self.schema

    def retire(self, version) -> int:
        alone = sum(1 for it in self.items.values() if list(it["vecs"]) == [version.name])
        if alone:
            raise InvalidInputError(f"`version` {version.name!r}: {alone} items hold no vector of another version")
        n = 0
        for it in self.items.values():
            n += it["vecs"].pop(version.name, None) is not None
        self._versions[version.name] = dataclasses.replace(version, retired=True)
        self.seq += 1
        return n

    def sample(self, version, limit, rng, *, seeded=True) -> ItemBatch:
        ids = [i for i, it in self.items.items() if version.name in it["vecs"]]
        pick = sample_rows(len(ids), limit, rng)
        if pick is not None:
            ids = [ids[p] for p in pick.tolist()]
        x = np.stack([self.items[i]["vecs"][version.name] for i in ids]) if ids else np.zeros((0, version.dim), np.float32)
        return ItemBatch(ids, x.astype(np.float32), self.labels(ids), version.name, self.payload(ids)[1])

    def count(self) -> int:
        return len(self.items)

    def stats(self) -> dict[str, Any]:
        n = len(self.items)
        held = {v: sum(v in it["vecs"] for it in self.items.values()) for v in self._versions}
        return {"path": self.path, "backend": "dict", "items": n, "seq": self.seq, "id_kind": self.kind,
                "disk_bytes": 0, "device": "cpu", "shard_spec": {"kind": "exact"}, "versions": {
                    v: {"dim": self._versions[v].dim, "parent": self._versions[v].parent,
                        "metric": self._versions[v].metric.value, "vectors": c, "coverage": c / n if n else 0.0,
                        "shard": {"ntotal": c}} for v, c in held.items()}}

    def verify(self) -> list[str]:
        return [f"item {i!r} holds no vector" for i, it in self.items.items() if not it["vecs"]]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
