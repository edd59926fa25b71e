"""compatindex.evaluation cross-checked against trec_eval (through pytrec_eval) on random rankings."""

from __future__ import annotations

import numpy as np
import pytest

from compatindex import evaluation as ev

pytrec_eval = pytest.importorskip("pytrec_eval")


def _run_and_qrels(S: np.ndarray, rel: np.ndarray) -> tuple[dict, dict]:
    run = {f"q{i}": {f"d{j}": float(S[i, j]) for j in range(S.shape[1])} for i in range(S.shape[0])}
    qrels = {f"q{i}": {f"d{j}": int(rel[i, j]) for j in range(S.shape[1])} for i in range(S.shape[0])}
    return run, qrels


def test_cmc_map_matches_trec_eval_map_and_precision_at_1():
    rng = np.random.default_rng(0)
    nq, ng, C = 60, 150, 6
    q = rng.standard_normal((nq, 12)).astype(np.float32)
    g = rng.standard_normal((ng, 12)).astype(np.float32)
    ql, gl = rng.integers(0, C, nq), rng.integers(0, C, ng)
    q[:, :C] += 1.5 * np.eye(C)[ql]
    g[:, :C] += 1.5 * np.eye(C)[gl]
    ours = ev.cmc_map(q, g, ql, gl, topk=(1,))
    S = ev.similarity(q, g).astype(np.float64)  # continuous scores: no ties for trec_eval to break
    run, qrels = _run_and_qrels(S, ql[:, None] == gl[None, :])
    res = pytrec_eval.RelevanceEvaluator(qrels, {"map", "P.1"}).evaluate(run)
    assert ours["mAP"] == pytest.approx(np.mean([r["map"] for r in res.values()]), abs=1e-6)
    assert ours["top1"] == pytest.approx(np.mean([r["P_1"] for r in res.values()]), abs=1e-9)


def test_identity_retrieval_mrr_and_recall_match_trec_eval():
    rng = np.random.default_rng(1)
    n, ng = 80, 300
    g = rng.standard_normal((ng, 16)).astype(np.float32)
    q = g[:n] + 0.9 * rng.standard_normal((n, 16)).astype(np.float32)  # query i's own item is g[i]
    S = ev.similarity(q, g).astype(np.float64)
    order = np.argsort(-S, axis=1)
    own = np.arange(n)
    run, qrels = _run_and_qrels(S, np.eye(n, ng, dtype=bool))
    res = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank", "recall.1", "recall.10"}).evaluate(run)
    assert ev.mrr(order, own) == pytest.approx(np.mean([r["recip_rank"] for r in res.values()]), abs=1e-9)
    for k in (1, 10):
        assert ev.recall_at_k(order, own, k) == pytest.approx(np.mean([r[f"recall_{k}"] for r in res.values()]),
                                                               abs=1e-9)
    pa = ev.pair_alignment(q, g)
    assert pa["mrr"] == pytest.approx(np.mean([r["recip_rank"] for r in res.values()]), abs=1e-6)
    assert pa["recall@10"] == pytest.approx(np.mean([r["recall_10"] for r in res.values()]), abs=1e-9)
