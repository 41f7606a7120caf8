"""Instruction-tuning conversations for the generative answerer, from SQuAD-format questions over a KB.

Each conversation is exactly what ``GenerativeAnswerer`` sends at question time (the same system turn, the top
retrieved passages labelled [1]..[k]) with the gold answer and the gold passage's label as the assistant turn, in
the JSONL format of ``polymodal.instruct.data``; train on it with ``task: instruct`` and answer with ``--lm RUN``.
Split by article (``title``), never by question: the questions of one article share its paragraphs, so a question
split would leak test passages into training.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from .._paths import atomic_write_text, text_sha256
from .answer import GenerativeAnswerer
from .knowledge_base import KnowledgeBase
from .squad import Question


def split_articles(questions: Sequence[Question], test_share: float = 0.5, seed: int = 0) -> set[str]:
    """The titles of a random ``test_share`` of the articles: the held-out test articles."""
    titles = sorted({q.paragraph.title for q in questions})
    return set(random.Random(seed).sample(titles, round(len(titles) * test_share)))


def answerer_conversations(kb: KnowledgeBase, questions: Sequence[Question], test_titles: set[str], k: int = 3,
                           mode: str = "hybrid") -> list[dict]:
    """One conversation per answerable question; ``split`` is test for the test articles, else train. Where
    retrieval missed the gold paragraph it replaces the last passage, so every target is answerable."""
    prompt = GenerativeAnswerer.__new__(GenerativeAnswerer)  # only its prompt text is needed, not a model
    prompt.tokenizer, prompt.max_passage_chars = None, 1500
    questions = [q for q in questions if q.answers]
    retrievals = kb.retrieve_many([q.question for q in questions], k=k, mode=mode)
    out = []
    for q, r in zip(questions, retrievals):
        hits = list(r.hits[:k])
        gold = text_sha256(q.paragraph.text)
        at = next((i for i, h in enumerate(hits) if h.chunk.doc_hash == gold), None)
        if at is None:
            gold_hits = [h for h in kb.retrieve(q.paragraph.text[:500], k=20, mode="bm25").hits
                         if h.chunk.doc_hash == gold]
            if not gold_hits:
                continue
            hits = hits[:k - 1] + gold_hits[:1]
            at = len(hits) - 1
        user = prompt.user_message(q.question, hits)
        out.append({"messages": [{"role": "system", "content": GenerativeAnswerer.SYSTEM},
                                 {"role": "user", "content": user},
                                 {"role": "assistant", "content": f"{q.answers[0]} [{at + 1}]"}],
                    "split": "test" if q.paragraph.title in test_titles else "train", "task": "kb_qa"})
    return out


def write_conversations(conversations: list[dict], path: str | Path) -> Path:
    atomic_write_text(path, "".join(json.dumps(c) + "\n" for c in conversations))
    return Path(path)
