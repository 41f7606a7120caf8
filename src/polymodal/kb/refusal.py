"""When to answer "not in the knowledge base": a logistic score over three signals, not the best cosine alone.

- ``best_dense``: the best MiniLM cosine of the question with any chunk (the old rule's only signal).
- ``coverage``: how much of the question the top passages (titles included) contain, each question word weighted
  by its inverse document frequency in the KB, stemmed; a word the KB never uses weighs the most. A question
  about something absent ("Which module reads TOML files?") usually names it, and the name is nowhere.
- ``sentence``: the reader's own confidence: the best cosine of the question with a passage sentence that does
  not merely restate it (``extract.SpanExtractor.rank_sentences``).

``RefusalModel.refuse`` answers ``w . features + b < 0``. The default weights were fitted (scikit-learn logistic
regression, balanced classes) on XQuAD English dev articles: questions on articles in a KB against questions on
dev articles left out of it; bench/kb_xquad.py reports precision/recall on the held-out test articles.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .knowledge_base import KnowledgeBase, Retrieval

FEATURES = ("best_dense", "coverage", "sentence")


@dataclass(frozen=True)
class RefusalWeights:
    """Weights of ``FEATURES`` and the bias; refuse when the weighted sum is below 0."""

    best_dense: float
    coverage: float
    sentence: float
    bias: float

    def score(self, features: dict[str, float]) -> float:
        return (self.best_dense * features["best_dense"] + self.coverage * features["coverage"]
                + self.sentence * features["sentence"] + self.bias)


# Fitted by bench/kb_xquad.py on XQuAD dev articles (all-MiniLM-L6-v2; 12 articles in the KB, 12 out; 590
# questions): balanced accuracy 98.0 % there, against 94.2 % for the best cosine under 0.35. Per-feature AUROC on
# dev: best_dense 0.983, coverage 0.950, sentence 0.996. Held-out figures: bench/results/kb_xquad.md.
DEFAULT_WEIGHTS = RefusalWeights(best_dense=7.70, coverage=3.09, sentence=10.45, bias=-11.19)


class RefusalModel:
    """Decides from a retrieval whether the KB holds an answer; ``features`` exposes the signals."""

    def __init__(self, kb: KnowledgeBase, weights: RefusalWeights = DEFAULT_WEIGHTS, k: int = 3):
        self.kb, self.weights, self.k = kb, weights, k
        self._idf: dict[str, float] | None = None
        self._extractor = None

    def idf(self) -> dict[str, float]:
        if self._idf is None:
            df: Counter[str] = Counter()
            n = 0
            for _, text in self.kb.store.iter_texts():
                df.update(self.terms(text))
                n += 1
            self._idf = {w: math.log((n + 1) / (c + 0.5)) for w, c in df.items()}
            self._unseen = math.log((n + 1) / 0.5)
        return self._idf

    def terms(self, text: str) -> set[str]:
        from .extract import content_words

        return content_words(text)  # stemmed, stop words out

    def coverage(self, question: str, retrieval: Retrieval) -> float:
        idf = self.idf()
        asked = self.terms(question)
        if not asked:
            return 0.0
        seen = {w for h in retrieval.hits[: self.k] for w in self.terms(f"{h.chunk.title} {h.chunk.text}")}
        weight = {w: idf.get(w, self._unseen) for w in asked}
        return sum(v for w, v in weight.items() if w in seen) / sum(weight.values())

    def features(self, retrieval: Retrieval) -> dict[str, float]:
        from .extract import SpanExtractor

        if self._extractor is None:
            self._extractor = SpanExtractor(self.kb)
        ranked = self._extractor.rank_sentences(retrieval.question, retrieval.hits[: self.k])
        best_dense = retrieval.best_dense if np.isfinite(retrieval.best_dense) else 0.0
        return {"best_dense": float(best_dense), "coverage": self.coverage(retrieval.question, retrieval),
                "sentence": ranked[0][0] if ranked else 0.0}

    def refuse(self, retrieval: Retrieval) -> bool:
        if not retrieval.hits:
            return True
        return self.weights.score(self.features(retrieval)) < 0


def fit_weights(features: Sequence[dict[str, float]], answerable: Sequence[bool]) -> RefusalWeights:
    """Logistic regression (balanced classes) of answerable on the features."""
    from sklearn.linear_model import LogisticRegression

    x = np.array([[f[name] for name in FEATURES] for f in features])
    model = LogisticRegression(class_weight="balanced", C=10.0, max_iter=1000).fit(x, np.asarray(answerable, int))
    w = model.coef_[0]
    return RefusalWeights(float(w[0]), float(w[1]), float(w[2]), float(model.intercept_[0]))
