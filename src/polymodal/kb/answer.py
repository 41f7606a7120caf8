"""Answer a question from retrieved passages: generated with citations, or extracted from the passages.

- ``GenerativeAnswerer``: any causal LM with a chat template (default: the bundled SmolLM2-135M-Instruct, or a
  tuned ``instruct`` run); the top passages go into the prompt labelled [1], [2], ...; the model is told to answer
  briefly and cite them, greedy decoding. Cited labels are mapped back to chunk ids; when the model cites nothing
  (SmolLM2-135M often does not), the answer is attributed to the passage it shares most words with.
- ``SentenceSelector``: the passage sentence whose embedding is closest to the question's, never one that only
  restates the question. Its answers are whole sentences, so its SQuAD exact match is near zero by construction;
  ``extract.SpanExtractor`` narrows the sentence to a short span (the extractive default).
- ``GroundedAnswerer``: wraps a generator; an answer its cited passages do not support (words not in them, or
  only the question's or a heading's words) is replaced by the extractor's span, or by "not in the knowledge base".
- ``SpanReader``: any transformers ``AutoModelForQuestionAnswering`` (a SQuAD-tuned BERT, say) by model
  reference: the best start/end span over all passages, as in the reference SQuAD decoding.

Before answering, ``answer`` checks whether the KB holds anything relevant: when the best dense cosine of the
question with any chunk is under ``threshold`` the reply is "not in the knowledge base" (calibrated on XQuAD in
bench/results/kb.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from .knowledge_base import Hit, KnowledgeBase, Retrieval

NOT_FOUND = "not in the knowledge base"
# Best question-chunk cosine under which the KB is taken to hold nothing relevant (all-MiniLM-L6-v2; calibrated on
# XQuAD English, questions against their own articles vs against the other half of the articles: bench/kb.py).
DEFAULT_THRESHOLD = 0.35
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_CITATION = re.compile(r"\[\s*(\d+)\s*\]")


@dataclass(frozen=True)
class Answer:
    """An answer with the passages it rests on."""

    text: str
    sources: list[Hit]  # the passages cited (generative) or the one the span came from (extractive)
    found: bool  # False: nothing relevant enough was retrieved, or the answerer said so; ``text`` is NOT_FOUND
    best_dense: float
    passages: list[Hit] = field(default_factory=list)  # every passage the answerer saw, [1] first


class Answerer(Protocol):
    def answer(self, question: str, passages: Sequence[Hit]) -> tuple[str, list[int]]:
        """(answer text, 0-based indices of the passages it used)."""


def answer(kb: KnowledgeBase, question: str, answerer: Answerer, k: int = 3, mode: str = "hybrid",
           threshold: float = DEFAULT_THRESHOLD, retrieval: Retrieval | None = None, refusal=None) -> Answer:
    """Retrieve, check relevance, then answer from the top ``k`` passages."""
    retrieval = retrieval or kb.retrieve(question, k=k, mode=mode)
    return answer_from(retrieval, answerer, k, threshold, refusal)


def answer_from(retrieval: Retrieval, answerer: Answerer, k: int = 3, threshold: float = DEFAULT_THRESHOLD,
                refusal=None) -> Answer:
    """``answer`` on an existing retrieval (evaluation retrieves for all questions at once).

    Args:
        refusal: a ``refusal.RefusalModel`` deciding "not in the knowledge base" (hybrid signals and the reader's
            confidence); None: the best dense cosine against ``threshold``.
    """
    passages = retrieval.hits[:k]
    refused = refusal.refuse(retrieval) if refusal is not None and passages else retrieval.best_dense < threshold
    if not passages or refused:
        return Answer(NOT_FOUND, [], False, retrieval.best_dense, passages)
    text, used = answerer.answer(retrieval.question, passages)
    if strip_citations(text).lower().startswith(NOT_FOUND):  # the answerer found no answer in the passages
        return Answer(NOT_FOUND, [], False, retrieval.best_dense, passages)
    return Answer(text, [passages[i] for i in used], True, retrieval.best_dense, passages)


def strip_citations(text: str) -> str:
    """The answer without its [n] markers (for exact match and F1)."""
    return " ".join(_CITATION.sub(" ", text).split()).strip(" .")


class GenerativeAnswerer:
    """A chat LM answering from numbered passages (greedy; ``max_new_tokens`` keeps answers short and fast)."""

    SYSTEM = ("You answer questions using only the numbered passages. Reply with the shortest answer, a few words "
              "copied from a passage, then the number of the passage in brackets, like: Paris [2]. If no passage "
              f"answers the question, reply: {NOT_FOUND}.")

    def __init__(self, model, tokenizer, max_new_tokens: int = 32, max_passage_chars: int = 1500):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_new_tokens, self.max_passage_chars = max_new_tokens, max_passage_chars

    def user_message(self, question: str, passages: Sequence[Hit]) -> str:
        numbered = "\n\n".join(f"[{i + 1}] {p.chunk.text[: self.max_passage_chars]}" for i, p in enumerate(passages))
        # Small models follow the last instruction best, so the format request closes the user turn.
        return (f"Passages:\n\n{numbered}\n\nQuestion: {question}\nAnswer with a few words from the passages "
                "and the passage number.")

    def prompt(self, question: str, passages: Sequence[Hit]) -> str:
        user = self.user_message(question, passages)
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": self.SYSTEM}, {"role": "user", "content": user}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{self.SYSTEM}\n\n{user}\nAnswer:"

    @torch.no_grad()
    def answer(self, question: str, passages: Sequence[Hit]) -> tuple[str, list[int]]:
        enc = self.tokenizer(self.prompt(question, passages), return_tensors="pt", add_special_tokens=False)
        inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad)
        text = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        text = text.split("\n")[0].strip()
        used = sorted({int(n) - 1 for n in _CITATION.findall(text) if 0 < int(n) <= len(passages)})
        if not used and passages:  # the model cited nothing: attribute the answer to the passage it overlaps most
            used = _attribute(strip_citations(text), passages)
        return text, used


def _attribute(text: str, passages: Sequence[Hit]) -> list[int]:
    """[index of the passage sharing the most (lower-cased) words with ``text``], or [] when none shares any."""
    words = set(text.lower().split())
    overlaps = [len(words & set(p.chunk.text.lower().split())) for p in passages]
    best = int(np.argmax(overlaps)) if overlaps else 0
    return [best] if overlaps and overlaps[best] > 0 else []


class SentenceSelector:
    """The passage sentence most similar to the question, by the KB's own text encoder (offline default)."""

    def __init__(self, kb: KnowledgeBase, cache_size: int = 100_000):
        self.kb = kb
        self._cache: dict[str, np.ndarray] = {}  # sentence -> embedding: passages recur across questions
        self.cache_size = cache_size

    def answer(self, question: str, passages: Sequence[Hit]) -> tuple[str, list[int]]:
        from .extract import cached_cosines, restates_question

        sentences = [(i, s) for i, p in enumerate(passages) for s in split_sentences(p.chunk.text)
                     if not restates_question(s, question)]
        if not sentences:
            return "", []
        scores = cached_cosines(self.kb, self._cache, self.cache_size, question, [s for _, s in sentences])
        best = int(np.argmax(scores))
        return sentences[best][1], [sentences[best][0]]


class GroundedAnswerer:
    """A generative answerer whose answers must be copied from the passages they cite.

    An answer is supported when at least ``min_support`` of its (normalised) words occur in the passages it cites
    (all passages when it cites none) and it says something beyond the question and the passages' titles. An
    unsupported answer is replaced by ``fallback``'s (an extractive answerer), or by NOT_FOUND when that has none.
    ``last_grounded`` tells whether the last answer was the generator's own.
    """

    def __init__(self, generator: Answerer, fallback: Answerer | None = None, min_support: float = 1.0):
        self.generator, self.fallback, self.min_support = generator, fallback, min_support
        self.last_grounded = True

    def answer(self, question: str, passages: Sequence[Hit]) -> tuple[str, list[int]]:
        text, used = self.generator.answer(question, passages)
        plain = strip_citations(text)
        if plain.lower().startswith(NOT_FOUND):
            self.last_grounded = True
            return text, used
        cited = [passages[i] for i in used] or list(passages)
        self.last_grounded = is_supported(plain, question, cited, self.min_support)
        if self.last_grounded:
            return text, used
        if self.fallback is not None:
            span, span_used = self.fallback.answer(question, passages)
            if span.strip():
                return span, span_used
        return NOT_FOUND, []


def is_supported(answer_text: str, question: str, passages: Sequence[Hit], min_support: float = 1.0) -> bool:
    """Whether ``answer_text`` is copied from ``passages`` and adds something to the question and their titles."""
    from .extract import content_words
    from .squad import normalize_answer

    words = normalize_answer(answer_text).split()
    if not words:
        return False
    source = set(normalize_answer(" ".join(p.chunk.text for p in passages)).split())
    if sum(w in source for w in words) / len(words) < min_support:
        return False
    known = content_words(question) | {w for p in passages for w in content_words(p.chunk.title)}
    return not content_words(answer_text) <= known


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


class SpanReader:
    """An extractive QA model (``AutoModelForQuestionAnswering``): the best-scoring span over all passages."""

    def __init__(self, ref: str, max_answer_tokens: int = 30, max_length: int = 384, stride: int = 128):
        from transformers import AutoModelForQuestionAnswering, AutoTokenizer

        from ..models import resolve_model

        path = resolve_model(ref)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForQuestionAnswering.from_pretrained(path).eval()
        self.max_answer_tokens, self.max_length, self.stride = max_answer_tokens, max_length, stride

    @torch.no_grad()
    def answer(self, question: str, passages: Sequence[Hit]) -> tuple[str, list[int]]:
        best = (-float("inf"), "", -1)
        for p_index, passage in enumerate(passages):
            context = passage.chunk.text
            enc = self.tokenizer(question, context, truncation="only_second", max_length=self.max_length,
                                 stride=self.stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                                 padding=True, return_tensors="pt")
            offsets = enc.pop("offset_mapping")
            enc.pop("overflow_to_sample_mapping", None)
            out = self.model(**{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
            for w in range(out.start_logits.shape[0]):
                in_context = torch.tensor([s == 1 for s in enc.sequence_ids(w)])
                start = out.start_logits[w].masked_fill(~in_context, -1e9)
                end = out.end_logits[w].masked_fill(~in_context, -1e9)
                # score(i, j) = start_i + end_j over j >= i, j - i < max_answer_tokens
                scores = start[:, None] + end[None, :]
                n = scores.shape[0]
                allowed = torch.triu(torch.ones(n, n, dtype=torch.bool)) & \
                    ~torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=self.max_answer_tokens)
                scores = scores.masked_fill(~allowed, -1e9)
                flat = int(scores.argmax())
                i, j = divmod(flat, n)
                score = float(scores[i, j])
                if score > best[0] and in_context[i] and in_context[j]:
                    best = (score, context[int(offsets[w, i, 0]):int(offsets[w, j, 1])], p_index)
        return best[1], ([best[2]] if best[2] >= 0 else [])
