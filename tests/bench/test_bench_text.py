"""The text benchmark's metrics (trec_eval through pytrec_eval, cross-checked against
compatindex.evaluation) and its baselines (scipy Procrustes, residual MLP adapter), on synthetic data:
no model or corpus is needed."""

from __future__ import annotations

import numpy as np
import pytest

from compatindex import evaluation as ev

pytrec_eval = pytest.importorskip("pytrec_eval")
ti = pytest.importorskip("bench.text_indomain")


def _rankings(seed: int = 0, nq: int = 120, ng: int = 60, k: int = 10) -> tuple[np.ndarray, list[set[int]]]:
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.permutation(ng)[:k] for _ in range(nq)]).astype(np.int64)
    # known-item relevance with duplicate copies: 1-3 relevant items per query, often one in the list
    rel = []
    for i in range(nq):
        r = set(rng.choice(ng, size=int(rng.integers(1, 4)), replace=False).tolist())
        if rng.random() < 0.6:
            r.add(int(ids[i, rng.integers(0, k)]))
        rel.append(r)
    return ids, rel


def test_trec_metrics_match_compatindex_evaluation_with_duplicate_copies():
    ids, rel = _rankings()
    m = ti.trec_metrics(ids, rel)
    assert m["library"].startswith("pytrec_eval")
    assert m["mrr"] == pytest.approx(ev.mrr(ids, rel), abs=1e-12)
    for k in (1, 10):
        hit = np.mean([bool(rel[i] & set(ids[i, :k].tolist())) for i in range(len(rel))])
        assert m[f"recall@{k}"] == pytest.approx(hit, abs=1e-12)
    # a query with a single relevant item: success@k is recall@k, which compatindex.evaluation has
    single = [{next(iter(r))} for r in rel]
    ms = ti.trec_metrics(ids, single)
    assert ms["recall@10"] == pytest.approx(ev.recall_at_k(ids, single, 10), abs=1e-12)


def test_trec_metrics_by_hand():
    ids = np.array([[3, 1, 2], [5, 6, 7], [9, 8, 4]])
    rel = [{1, 11}, {0}, {9, 4}]
    m = ti.trec_metrics(ids, rel, k=3)
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@10"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 0 + 1) / 3)


def test_trec_metrics_fail_when_the_reference_disagrees(monkeypatch):
    ids, rel = _rankings(1)
    monkeypatch.setattr(ev, "mrr", lambda retrieved, relevant: 0.123)
    with pytest.raises(AssertionError, match="mrr"):
        ti.trec_metrics(ids, rel)


def _planted(n: int = 1500, d: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A rotated copy of G with a large common component (what e5's compressed cosines look like)."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, d))
    R, _ = np.linalg.qr(rng.standard_normal((d, d)))
    c = rng.standard_normal(d)
    c *= 2.0 * np.sqrt(d) / np.linalg.norm(c)
    H = G @ R + c + 0.3 * rng.standard_normal((n, d))
    return H.astype(np.float32), (G / np.linalg.norm(G, axis=1, keepdims=True)).astype(np.float32)


def _search_mrr(index, H, version, n):
    hits = ti._search(index, H[:n], 10, version=version, raw=True)
    return ev.mrr(hits, list(range(n)))


def test_baselines_register_and_search_through_the_index():
    pytest.importorskip("torch")
    import compatindex

    H, G = _planted()
    tr, te = slice(0, 1000), slice(1000, 1500)
    index = compatindex.open(":memory:")
    index.create_version("v1", dim=G.shape[1])
    index.add(list(range(500)), G[te], version="v1", raw=False)
    pro = ti.procrustes_scipy(H[tr], G[tr])
    assert np.allclose(pro["extension"] @ pro["extension"].T, np.eye(G.shape[1]), atol=1e-5)
    ti._register(index, "pro", pro)
    ti._register(index, "pro-c", ti.procrustes_scipy(H[tr], G[tr], centre=True))
    rm = ti.residual_mlp(H[tr], G[tr], hidden=64, max_epochs=60, patience=5)
    assert rm["info"]["n_val"] == 200
    ti._register(index, "rmlp", rm)
    chance = 10 / 500
    mrr_pro = _search_mrr(index, H[te], "pro", 500)
    mrr_rm = _search_mrr(index, H[te], "rmlp", 500)
    assert mrr_pro > 5 * chance
    # a rotation carries the common component along; the adapter (with its bias) removes it
    assert mrr_rm > 0.9 > mrr_pro + 0.3
    assert _search_mrr(index, H[te], "pro-c", 500) > 0.9  # centring removes it too
    index.close()


def test_evaluation_queries_leave_out_every_copy_of_a_reembedded_article():
    n = 400
    rel = [{i} for i in range(n)]
    rel[5] = rel[6] = {5, 6}  # a duplicate pair
    s = ti.setup_queries(n, rel)
    top = set(s["order"][: int(round(max(ti.FRACTIONS) * n))].tolist())
    assert len(s["eval_q"]) >= n - len(top) - 1
    for i in s["eval_q"]:
        assert not (rel[i] | {int(i)}) & top


def test_article_sentences_come_from_the_given_articles_only():
    from bench.textdata import article_sentences

    paras = [["Alpha headline for article zero", "Zero says one thing at length. Zero then says another thing!"],
             ["Beta headline for article one", "One has a sentence of its own here. Tiny."],
             ["Gamma headline for article two", "Zero says one thing at length. Two adds a sentence of its own."]]
    texts, owner = article_sentences(paras, np.array([2, 0]))
    assert len(texts) == len(set(texts)) == len(owner)
    assert "Tiny." not in texts and not any("One has" in t for t in texts)  # article 1 not given
    by = dict(zip(texts, owner.tolist()))
    assert by["Zero then says another thing!"] == 0 and by["Two adds a sentence of its own."] == 2
    assert by["Zero says one thing at length."] == 2  # shared: the first article given keeps it
    assert by["Gamma headline for article two"] == 2


def test_sentence_spans_are_windows_of_the_given_sentences():
    from bench.textdata import sentence_spans

    texts = ["a b c d e f g h i j k l", "short one here", "a b c d e f g h i j k l m n"]
    spans, owner = sentence_spans(texts, np.array([4, 5, 6]), width=4, stride=3)
    words = [t.split() for t in texts]
    want: dict[str, int] = {}
    for w, o in zip(words, (4, 5, 6)):
        if len(w) > 4:
            for s in range(0, len(w) - 3, 3):
                want.setdefault(" ".join(w[s:s + 4]), o)
    assert dict(zip(spans, owner.tolist())) == want
    assert spans[0] == "a b c d" and spans[-1] == "j k l m"  # windows start every 3 words: 0, 3, 6, 9
    assert want["a b c d"] == 4  # shared windows keep their first owner
    assert not any("short" in s for s in spans)  # a sentence of at most `width` words gives none
    assert all(len(s.split()) == 4 for s in spans)
