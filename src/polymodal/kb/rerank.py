"""Optional re-ranking of retrieved passages by a cross-encoder that reads question and passage together.

Any transformers ``AutoModelForSequenceClassification`` scoring a (question, passage) pair works, e.g. an MS MARCO
cross-encoder (one relevance logit) or an NLI-style model (the last label's logit is taken as "relevant"). None
ships on PyPI, so re-ranking is off unless ``--rerank REF`` names one. It only reorders the top ``depth`` hits of
the first-stage retriever (Nogueira and Cho 2019: BM25 then a BERT re-ranker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from .knowledge_base import Hit


class CrossEncoderReranker:
    """Scores (question, passage) pairs; higher is more relevant."""

    def __init__(self, ref: str, max_length: int = 256, batch_size: int = 16):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..models import resolve_model

        path = resolve_model(ref)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        self.max_length, self.batch_size = max_length, batch_size

    @torch.no_grad()
    def scores(self, question: str, passages: Sequence[str]) -> list[float]:
        out: list[float] = []
        for i in range(0, len(passages), self.batch_size):
            part = list(passages[i:i + self.batch_size])
            enc = self.tokenizer([question] * len(part), part, truncation="only_second", max_length=self.max_length,
                                 padding=True, return_tensors="pt")
            out.extend(self.model(**enc).logits[:, -1].float().tolist())
        return out

    def rerank(self, question: str, hits: Sequence[Hit]) -> list[Hit]:
        """The hits sorted by the cross-encoder (stable for equal scores); ``score`` becomes its logit."""
        scores = self.scores(question, [h.chunk.text for h in hits])
        order = sorted(range(len(hits)), key=lambda i: -scores[i])
        return [replace(hits[i], score=scores[i]) for i in order]
