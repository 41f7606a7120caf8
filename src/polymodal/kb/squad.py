"""SQuAD-format question answering data and the official SQuAD v1.1 answer metrics (exact match and token F1).

The metric reproduces ``evaluate-v1.1.py`` of Rajpurkar et al. (2016) line for line: answers are lower-cased, stripped
of punctuation, of the articles a/an/the and of extra whitespace; F1 is over the bag of remaining tokens; a
prediction scores the maximum over the gold answers. (Hugging Face ``evaluate`` downloads this script at run time,
which does not work offline, so it is written out here.)
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import PolymodalError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


@dataclass(frozen=True)
class Paragraph:
    """One SQuAD context: a knowledge-base document."""

    doc_id: str  # "<title>/<paragraph index>", unique within its file
    title: str
    text: str


@dataclass(frozen=True)
class Question:
    """One SQuAD question with its gold answers and the paragraph that holds them."""

    qid: str
    question: str
    answers: tuple[str, ...]  # empty for SQuAD 2.0 unanswerable questions
    paragraph: Paragraph


def read_squad(path: str | Path) -> tuple[list[Paragraph], list[Question]]:
    """Paragraphs and questions of a SQuAD v1.1 / v2.0 JSON file.

    Raises:
        PolymodalError: the file is not JSON or not SQuAD-shaped; the message names the file and the fix.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise PolymodalError(f"{path}: not UTF-8 (byte {e.start}); re-save it as UTF-8") from e
    except json.JSONDecodeError as e:
        raise PolymodalError(f"{path}: broken JSON at line {e.lineno}, column {e.colno} ({e.msg}); fix the file") from e
    return parse_squad(raw, path)


def parse_squad(raw: object, path: str | Path) -> tuple[list[Paragraph], list[Question]]:
    """Like ``read_squad`` on already-decoded JSON; ``path`` only names the file in errors."""
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise PolymodalError(f"{path}: not SQuAD format (no top-level 'data' list); a JSON source must look like "
                             '{"data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [...]}]}]}')
    paragraphs: list[Paragraph] = []
    questions: list[Question] = []
    for a, article in enumerate(raw["data"]):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise PolymodalError(f"{path}: data[{a}] has no 'paragraphs' list; every article needs one")
        title = str(article.get("title", f"article {a}"))
        for p, para in enumerate(article["paragraphs"]):
            if not isinstance(para, dict) or not isinstance(para.get("context"), str):
                raise PolymodalError(f"{path}: data[{a}].paragraphs[{p}] has no 'context' string")
            paragraph = Paragraph(f"{title}/{p}", title, para["context"])
            paragraphs.append(paragraph)
            for q, qa in enumerate(para.get("qas") or []):
                try:
                    answers = tuple(str(ans["text"]) for ans in qa.get("answers") or [])
                    questions.append(Question(str(qa.get("id", f"{title}/{p}/{q}")), str(qa["question"]), answers,
                                              paragraph))
                except (KeyError, TypeError) as e:
                    raise PolymodalError(f"{path}: data[{a}].paragraphs[{p}].qas[{q}] is malformed (missing {e}); "
                                         "each question needs 'question' and 'answers': [{'text': ...}]") from e
    return paragraphs, questions


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    return max((float(normalize_answer(prediction) == normalize_answer(g)) for g in gold), default=0.0)


def f1_score(prediction: str, gold: Sequence[str]) -> float:
    """SQuAD token F1, the maximum over the gold answers."""
    return max((_f1(prediction, g) for g in gold), default=0.0)


def _f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)
