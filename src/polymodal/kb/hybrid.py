"""Lexical retrieval (BM25) and reciprocal rank fusion of ranked lists.

BM25 is ``bm25s`` (Lù 2024: Lucene's BM25 variant, k1=1.5, b=0.75, as scipy sparse matrices; maintained, fast,
numpy only), with English stop words removed and Snowball stemming (PyStemmer) on both sides. A chunk that shares
no term with the question scores 0 and is not returned at all, so "nothing lexical matched" stays visible.

Reciprocal rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009): ``score(d) = sum over lists of 1 / (k + rank)``
with 1-based ranks and k = 60, the paper's constant. It needs no score calibration between dense cosines and BM25
scores, which live on unrelated scales.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._paths import atomic_dir
from ..errors import PolymodalError

RRF_K = 60
BM25_DIR = "bm25"


def rrf_fuse(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Fuse ranked lists of ids (best first) into one: (id, fused score), best first.

    Ties are broken by the best single rank the id reached, then by the id, so the order is deterministic.
    """
    scores: dict[int, float] = {}
    best: dict[int, int] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
            best[item] = min(best.get(item, rank), rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], best[kv[0]], kv[0]))


def _stemmer():
    try:
        import Stemmer
    except ImportError:  # PyStemmer is a dependency; without it BM25 still works, on unstemmed words
        return None
    return Stemmer.Stemmer("english")


def _bm25s():
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it sets itself to DEBUG on import
    return bm25s


def _tokenize(texts: list[str], stemmer, ids: bool, language: str = "en"):
    if language == "zh":  # bm25s indexes and scores lists of words as they are
        from .multilingual import zh_words

        return [zh_words(t) for t in texts]
    bm25s = _bm25s()

    return bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, return_ids=ids, show_progress=False)


class BM25Index:
    """A BM25 index over chunk texts, saved in ``<kb>/bm25`` (rebuilt whole on each build: it takes seconds)."""

    def __init__(self, folder: str | Path, language: str = "en"):
        self.folder = Path(folder)
        self._retriever = None
        self._ids: np.ndarray | None = None
        self.language = language
        self._stemmer = _stemmer()

    @classmethod
    def build(cls, folder: str | Path, ids: Sequence[int], texts: Sequence[str], language: str = "en") -> BM25Index:
        """``language``: en (stop words, stems) | zh (jieba words)."""
        bm25s = _bm25s()
        index = cls(folder, language)
        retriever = bm25s.BM25()
        if len(texts):
            retriever.index(_tokenize(list(texts), index._stemmer, ids=True, language=language), show_progress=False)
        with atomic_dir(index.folder) as tmp:
            if len(texts):
                retriever.save(tmp, show_progress=False)
            np.save(tmp / "chunk_ids.npy", np.asarray(ids, np.int64))
            (tmp / "polymodal.json").write_text(json.dumps({"stemmer": "english" if index._stemmer else None,
                                                            "documents": len(texts), "language": language}))
        return index

    def _load(self):
        if self._ids is None:
            bm25s = _bm25s()
            if not (self.folder / "chunk_ids.npy").exists():
                raise PolymodalError(f"{self.folder}: the BM25 index is missing; rebuild with `polymodal kb build`")
            try:  # allow_pickle=False: an object array (a pickle) in the index folder is refused, never run
                self._ids = np.load(self.folder / "chunk_ids.npy", allow_pickle=False)
                saved = self.folder / "polymodal.json"
                if saved.exists():
                    self.language = json.loads(saved.read_text()).get("language", "en")
                if len(self._ids):
                    self._retriever = bm25s.BM25.load(self.folder, show_progress=False, allow_pickle=False)
            except (ValueError, OSError, KeyError) as e:
                self._ids = None
                raise PolymodalError(f"{self.folder}: the BM25 index is damaged ({' '.join(str(e).split())[:200]}); "
                                     "rebuild with `polymodal kb build`") from None
        return self._retriever, self._ids

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        """Per query, up to k (chunk id, BM25 score) with score > 0, best first."""
        retriever, ids = self._load()
        out: list[list[tuple[int, float]]] = []
        tokens = (_tokenize(list(queries), self._stemmer, ids=False, language=self.language) if len(ids)
                  else [[] for _ in queries])
        for query in tokens:
            if not query:
                out.append([])
                continue
            scores = retriever.get_scores(query)
            top = np.argsort(-scores, kind="stable")[:k]
            out.append([(int(ids[i]), float(scores[i])) for i in top if scores[i] > 0])
        return out
