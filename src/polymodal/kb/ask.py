"""Asking a knowledge base: the one path ``polymodal kb ask``, ``kb eval`` and the studio answer through.

``Asker(kb, AskOptions(...))`` holds the choices (retrieval mode, re-ranker, answerer, refusal rule); the answering
model loads on the first question that is not refused, then stays loaded for the next ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .answer import DEFAULT_THRESHOLD, NOT_FOUND, Answer, answer_from
from .knowledge_base import KnowledgeBase, Retrieval


@dataclass(frozen=True)
class AskOptions:
    k: int = 3  # passages given to the answerer
    mode: str = "hybrid"  # retrieval: hybrid | dense | bm25
    rerank: str | None = None  # a cross-encoder reference re-ranking the top passages; None: no re-ranking
    rerank_depth: int = 20  # passages the re-ranker reorders
    extractive: bool = False  # extract the answer (a span scored by the LM) instead of generating it
    sentence: bool = False  # with extractive: the whole best sentence, no language model
    reader: str | None = None  # with extractive: an AutoModelForQuestionAnswering reference
    lm: str = "smollm2"  # generative model: smollm2, an instruct run folder, or a causal LM reference
    max_new_tokens: int = 32  # generation length limit
    threshold: float | None = None  # refuse under this best dense cosine; None: the calibrated RefusalModel

    def __post_init__(self):
        if self.mode not in ("hybrid", "dense", "bm25"):
            raise ValueError(f"mode: {self.mode!r} is not hybrid, dense or bm25")
        if self.k < 1:
            raise ValueError(f"k: {self.k} must be at least 1")


@dataclass
class Asked:
    """One question's answer with what decided it."""

    answer: Answer
    retrieval: Retrieval
    refused: bool  # judged not in the knowledge base before any answering
    refusal_features: dict[str, float] = field(default_factory=dict)  # the signals behind a RefusalModel's refusal


class Asker:
    def __init__(self, kb: KnowledgeBase, options: AskOptions = AskOptions()):
        self.kb, self.options = kb, options
        self._answerer = None
        self.reranker = _reranker(options)
        self.threshold = DEFAULT_THRESHOLD if options.threshold is None else options.threshold
        if options.threshold is None:
            from .refusal import RefusalModel

            self.refusal = RefusalModel(kb, k=options.k)
        else:
            self.refusal = None

    @property
    def answerer(self):
        """The answerer the options ask for, loaded on first use."""
        if self._answerer is None:
            self._answerer = make_answerer(self.kb, self.options)
        return self._answerer

    def retrieve(self, question: str) -> Retrieval:
        o = self.options
        return self.kb.retrieve(question, k=o.k, mode=o.mode, reranker=self.reranker, rerank_depth=o.rerank_depth)

    def ask(self, question: str) -> Asked:
        retrieval = self.retrieve(question)
        # The refusal signals are computed once, here (a sentence ranking and a coverage pass over the passages).
        features = self.refusal.features(retrieval) if self.refusal is not None and retrieval.hits else {}
        refused = not retrieval.hits or (self.refusal.weights.score(features) < 0 if self.refusal is not None
                                         else retrieval.best_dense < self.threshold)
        if refused:
            result = Answer(NOT_FOUND, [], False, retrieval.best_dense, retrieval.hits[: self.options.k])
        else:  # decided above: answer_from's own threshold check must not refuse again (-inf)
            result = answer_from(retrieval, self.answerer, self.options.k, -math.inf)
        return Asked(result, retrieval, refused, features if refused else {})


def make_answerer(kb: KnowledgeBase, options: AskOptions):
    """The answerer ``options`` ask for: a span reader or sentence selector, the LM-scored span extractor, or the
    generative answerer grounded by the extractor (the default)."""
    from .answer import (
        GenerativeAnswerer,
        GroundedAnswerer,
        SentenceSelector,
        SpanReader,
    )
    from .extract import SpanExtractor

    if options.extractive and (options.reader or options.sentence):
        return SpanReader(options.reader) if options.reader else SentenceSelector(kb)
    from .lm import load_answer_lm

    model, tokenizer = load_answer_lm(options.lm)
    spans = SpanExtractor(kb, model, tokenizer)
    if options.extractive:
        return spans
    return GroundedAnswerer(GenerativeAnswerer(model, tokenizer, max_new_tokens=options.max_new_tokens), spans)


def _reranker(options: AskOptions):
    if not options.rerank:
        return None
    from .rerank import CrossEncoderReranker

    return CrossEncoderReranker(options.rerank)
