"""Short extractive answers with the bundled models: a sentence chosen by MiniLM, then a span of it chosen by SmolLM2.

No extractive QA model ships offline, so ``SpanExtractor`` composes the two bundled ones:

1. Sentence: the passage sentences are ranked by the cosine of their MiniLM embedding with the question's, after
   dropping every sentence that only restates the question (its content words are all in the question, or it is
   itself a question) or is too short to hold an answer.
2. Span: the candidate answers are the word spans (up to ``max_span_words``) of the best ``sentences`` sentences
   that bring something the question does not have; each is scored by the language model's log-probability of
   copying it after a two-shot reading prompt, ``log P(" " + span + "\\n" | prompt)``, so the model can only answer
   with text that is in the passage (generation constrained to copy a span, by enumeration), minus
   ``question_word_penalty`` per question word inside the span and ``distance_penalty`` per word between the span
   and the nearest question word in the sentence (answers sit next to what the question names). Without a
   language model the span is the contiguous run of new words nearest the question's words in the sentence.

Chosen on 100 questions of XQuAD's dev articles (never the test articles): the top-1 sentence by cosine + 0.5 x
word overlap holds the answer for 83.5 % (cosine alone 75 %); within it, the LM's log-probability alone picks spans
worth F1 34.6, with the two priors 41.3 (the best span in the sentence: 79.3); a PMI correction by the span's
probability without the question, and SmolLM2's chat template, did not help enough to pay for a second pass, and
three more examples in the prompt (five shots) gave 41.5, no better, at a longer prompt.
The reader's confidence, the best span's mean log-probability per token, is ``last_confidence``.

3. Answer type (``type_weight``): the question's wh-word says what kind of answer it wants, as in classic
   factoid QA: "how many / how much / what year / when / what percentage" a number or a date, "who / whom / whose"
   a name. A span of the wanted kind gains ``type_weight``, a span of the other kind loses it (a number for "who",
   a span without a number for "how many"); other questions are left alone. ``type_weight`` 4 was chosen on 100
   dev questions (F1 46.6 -> 49.0); on the 60 held-out test questions F1 49.8 -> 50.6 (bench/results/kb_answer_type.md).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence

import numpy as np
import torch

from .knowledge_base import Hit

_WORD = re.compile(r"[\w][\w'’.-]*[\w]|[\w]", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'“‘(\[]?[A-Z0-9])|(?<=[。！？])\s*|\n\s*\n|\n(?=- )")
_CJK_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_LATIN_RUN = re.compile(r"[A-Za-z0-9_]+")
STOP_WORDS = frozenset("""a an the of in on at to for from by with and or but is are was were be been being do does did
has have had it its this that these those which who whom whose what when where why how as into than then there their
they them he she his her we you your our i not no can could would should will shall may might must also such any each
all some most more other only own same so too very just about over under after before between through during up down
out off again further once here both few s t don if""".split())
_NUMBER_WORDS = frozenset("""zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand
million billion trillion dozen first second third fourth fifth sixth seventh eighth ninth tenth half quarter""".split())
_MONTHS = frozenset("""january february march april may june july august september october november december""".split())
_NUMBER_QUESTION = re.compile(r"^\s*(how (many|much|long|old|far|large|big|tall|high|often)|what (year|percentage|"
                              r"percent|proportion|fraction|number|amount|age|date|day|month|decade|century)|when|"
                              r"in what (year|decade|century|month)|in which (year|decade|century|month))\b", re.I)
_PERSON_QUESTION = re.compile(r"^\s*(who|whom|whose)\b", re.I)
_FEW_SHOT = (
    ("The Eiffel Tower was completed in 1889 and is 330 metres tall.", "When was the Eiffel Tower completed?", "1889"),
    ("The library lends books for three weeks; members of the staff may keep them for two months.",
     "How long may staff members keep books?", "two months"),
)


def split_sentences(text: str) -> list[str]:
    return [" ".join(s.split()) for s in _SENTENCE_END.split(text) if s and s.strip()]


def content_words(text: str) -> set[str]:
    """The stemmed, lower-cased words of ``text`` that are not stop words ("served" and "serves" -> "serv");
    Chinese text is cut into words by jieba."""
    from .multilingual import has_cjk, zh_words

    if has_cjk(text):
        latin = {w.lower() for w in _WORD.findall(_CJK_RUN.sub(" ", text))} - STOP_WORDS
        return set(zh_words(_LATIN_RUN.sub(" ", text))) | latin
    words = {w.lower().strip(".'’-") for w in _WORD.findall(text)} - STOP_WORDS
    stemmer = _stemmer()
    return set(stemmer.stemWords(sorted(words))) if stemmer else words


@functools.lru_cache(maxsize=1)
def _stemmer():
    try:
        import Stemmer
    except ImportError:  # PyStemmer is a dependency; without it words are compared unstemmed
        return None
    return Stemmer.Stemmer("english")


def cached_cosines(kb, cache: dict, cache_size: int, question: str, sentences: list[str]) -> np.ndarray:
    """(n,) cosine of each sentence with the question, the sentences' embeddings kept in ``cache`` (cleared when it
    would pass ``cache_size``): the same passages come back for many questions."""
    new = list(dict.fromkeys(s for s in sentences if s not in cache))
    if len(cache) + len(new) > cache_size:
        cache.clear()
    emb = kb.embed([question] + new)
    cache.update(zip(new, emb[1:]))
    return np.stack([cache[s] for s in sentences]) @ emb[0]


def restates_question(sentence: str, question: str) -> bool:
    """A sentence that cannot answer: a question itself, or nothing in it that the question does not say already."""
    if sentence.rstrip().endswith("?"):
        return True
    words = content_words(sentence)
    return not words or words <= content_words(question)


class SpanExtractor:
    """A short answer copied from the passages (see the module docstring).

    Args:
        kb: the knowledge base whose encoder embeds question and sentences.
        lm, tokenizer: a causal LM scoring the candidate spans (e.g. ``load_answer_lm("smollm2")``); None: the
            heuristic span.
        sentences: how many top sentences the spans are drawn from.
    """

    def __init__(self, kb, lm=None, tokenizer=None, sentences: int = 1, max_span_words: int = 6,
                 lexical_weight: float = 0.5, question_word_penalty: float = 1.0, distance_penalty: float = 1.0,
                 type_weight: float = 4.0, batch_size: int = 64, cache_size: int = 100_000):
        self.kb, self.lm, self.tokenizer = kb, (lm.eval() if lm is not None else None), tokenizer
        self.sentences, self.max_span_words, self.batch_size = sentences, max_span_words, batch_size
        self.lexical_weight = lexical_weight
        self.question_word_penalty, self.distance_penalty = question_word_penalty, distance_penalty
        self.type_weight = type_weight
        self._cache: dict[str, np.ndarray] = {}
        self.cache_size = cache_size
        self.last_confidence = float("nan")  # mean log-probability per token of the last span (LM only)
        self.last_sentence_score = float("nan")  # cosine of the last chosen sentence with the question

    def rank_sentences(self, question: str, passages: Sequence[Hit]) -> list[tuple[float, int, str]]:
        """(score, passage index, sentence), best first, restating and too-short sentences left out; the score is
        the MiniLM cosine plus ``lexical_weight`` times the share of the question's content words in the sentence."""
        sentences = [(i, s) for i, p in enumerate(passages) for s in split_sentences(p.chunk.text)
                     if len(s.split()) >= 3 and not restates_question(s, question)]
        if not sentences:
            return []
        scores = cached_cosines(self.kb, self._cache, self.cache_size, question, [s for _, s in sentences])
        asked = content_words(question)
        if asked and self.lexical_weight:  # plus the share of the question's words the sentence repeats
            scores = scores + self.lexical_weight * np.array([len(content_words(s) & asked) / len(asked)
                                                              for _, s in sentences])
        order = np.argsort(-scores, kind="stable")
        return [(float(scores[j]), sentences[j][0], sentences[j][1]) for j in order]

    def answer(self, question: str, passages: Sequence[Hit]) -> tuple[str, list[int]]:
        ranked = self.rank_sentences(question, passages)
        self.last_confidence = float("nan")
        if not ranked:
            self.last_sentence_score = float("nan")
            return "", []
        self.last_sentence_score = ranked[0][0]
        top = ranked[: self.sentences]
        candidates = [(c, i, s) for _, i, s in top for c in candidate_spans(s, question, self.max_span_words)]
        if not candidates:
            return top[0][2], [top[0][1]]
        if self.lm is None:
            span = heuristic_span(top[0][2], question, self.max_span_words)
            return (span or top[0][2]), [top[0][1]]
        context = " ".join(s for _, _, s in top)
        scores = self.span_log_probs(context, question, [c for c, _, _ in candidates])
        asked = content_words(question)
        kind = answer_type(question)
        ranked = [total - self.question_word_penalty * len(content_words(span) & asked)
                  - self.distance_penalty * min(distance_to_question(sentence, span, asked), 10)
                  + self.type_weight * type_match(span, kind)
                  for (total, _), (span, _, sentence) in zip(scores, candidates)]
        best = int(np.argmax(ranked))
        self.last_confidence = scores[best][1]
        return candidates[best][0], [candidates[best][1]]

    def prompt(self, context: str, question: str) -> str:
        shots = "".join(f"Text: {t}\nQuestion: {q}\nShort answer copied from the text: {a}\n\n"
                        for t, q, a in _FEW_SHOT)
        return f"{shots}Text: {context}\nQuestion: {question}\nShort answer copied from the text:"

    @torch.no_grad()
    def span_log_probs(self, context: str, question: str, spans: Sequence[str]) -> list[tuple[float, float]]:
        """(total, mean per token) log-probability of each span, followed by a newline, after the prompt."""
        tok = self.tokenizer
        prompt_ids = tok(self.prompt(context, question), add_special_tokens=False)["input_ids"]
        out = self.lm(torch.tensor([prompt_ids]), use_cache=True)
        cache, first_logits = _returned_cache(out), out.logits[0, -1].log_softmax(-1)
        results: list[tuple[float, float]] = []
        for start in range(0, len(spans), self.batch_size):
            part = spans[start:start + self.batch_size]
            ids = [tok(f" {s}\n", add_special_tokens=False)["input_ids"] for s in part]
            width = max(map(len, ids))
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            batch = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
            batch_cache = _repeat_cache(cache, len(part))
            mask = torch.ones(len(part), len(prompt_ids) + width, dtype=torch.long)
            logits = self.lm(batch, attention_mask=mask, use_cache=True, **_cache_argument(self.lm, batch_cache)).logits
            logp = logits.log_softmax(-1)
            for row, x in enumerate(ids):
                total = float(first_logits[x[0]])
                total += sum(float(logp[row, t - 1, x[t]]) for t in range(1, len(x)))
                results.append((total, total / len(x)))
        return results


def _returned_cache(out):
    """The key/value cache a forward pass returned (``cache`` from transformers 5.x, ``past_key_values`` before)."""
    cache = out.get("cache") if hasattr(out, "get") else None
    return cache if cache is not None else out.past_key_values


def _cache_argument(lm, cache) -> dict:
    """The keyword that passes a cache to this model's forward (transformers renamed past_key_values to cache)."""
    import inspect

    return {"cache": cache} if "cache" in inspect.signature(lm.forward).parameters else {"past_key_values": cache}


def _repeat_cache(cache, n: int):
    """The prompt's key/value cache repeated for a batch of n continuations (a fresh copy per batch)."""
    import copy

    repeated = copy.deepcopy(cache)
    if hasattr(repeated, "batch_repeat_interleave"):
        repeated.batch_repeat_interleave(n)
        return repeated
    return tuple(tuple(t.repeat_interleave(n, dim=0) for t in layer) for layer in repeated)


def answer_type(question: str) -> str | None:
    """``number`` (how many, when, what year, ...), ``person`` (who, whom, whose), or None (anything else)."""
    if _NUMBER_QUESTION.search(question):
        return "number"
    if _PERSON_QUESTION.search(question):
        return "person"
    return None


def type_match(span: str, kind: str | None) -> float:
    """+1 when ``span`` is of the ``kind`` the question wants, -1 when it is clearly not, 0 when unsure or no kind."""
    if kind is None:
        return 0.0
    words = [w for w in _WORD.findall(span)]
    numeric = any(any(c.isdigit() for c in w) or w.lower() in _NUMBER_WORDS or (w[0].isupper() and w.lower() in _MONTHS)
                  for w in words)
    if kind == "number":
        return 1.0 if numeric else -1.0
    if numeric:  # a person is not a number
        return -1.0
    content = [w for w in words if w.lower() not in STOP_WORDS]
    return 1.0 if content and all(w[0].isupper() for w in content) else 0.0


def distance_to_question(sentence: str, span: str, asked: set[str]) -> int:
    """Words between ``span`` (its first occurrence in ``sentence``) and the nearest word of the question; 99 when
    the sentence has none of the question's words."""
    words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(sentence)]
    start = sentence.find(span)
    inside = [k for k, (a, b, _) in enumerate(words) if a >= start and b <= start + len(span)]
    anchors = [k for k, (_, _, w) in enumerate(words) if content_words(w) & asked]
    if not inside or not anchors:
        return 99
    return min(min(abs(inside[0] - k), abs(inside[-1] - k)) for k in anchors)


def candidate_spans(sentence: str, question: str, max_words: int) -> list[str]:
    """Word spans of ``sentence`` (exact substrings) worth proposing: up to ``max_words`` words, not opening or
    closing on a stop word, and not made only of the question's words."""
    words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(sentence)]
    asked = content_words(question)
    out: list[str] = []
    seen: set[str] = set()
    for i in range(len(words)):
        if words[i][2].lower() in STOP_WORDS:
            continue
        for j in range(i, min(i + max_words, len(words))):
            if words[j][2].lower() in STOP_WORDS:
                continue
            span = sentence[words[i][0]:words[j][1]]
            if content_words(span) <= asked or span in seen:
                continue
            seen.add(span)
            out.append(span)
    return out


def heuristic_span(sentence: str, question: str, max_words: int) -> str:
    """Without a language model: the longest run (up to ``max_words``) of words the question lacks, nearest the
    question's own words in the sentence."""
    words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(sentence)]
    asked = content_words(question)
    stems = [next(iter(content_words(w)), "") for _, _, w in words]
    anchors = [k for k, stem in enumerate(stems) if stem in asked]
    runs: list[tuple[int, int]] = []
    start = None
    for k, (_, _, w) in enumerate(words + [(0, 0, "")]):
        new = bool(w) and (stems[k] if k < len(stems) else "") not in asked
        if new and start is None:
            start = k
        elif not new and start is not None:
            runs.append((start, k))
            start = None
    best, best_score = "", -math.inf
    for a, b in runs:
        while a < b and words[a][2].lower() in STOP_WORDS:
            a += 1
        while b > a and words[b - 1][2].lower() in STOP_WORDS:
            b -= 1
        if a >= b:
            continue
        b = min(b, a + max_words)
        distance = min((min(abs(a - k), abs(b - 1 - k)) for k in anchors), default=0)
        score = -distance + 0.1 * (b - a)
        if score > best_score:
            best, best_score = sentence[words[a][0]:words[b - 1][1]], score
    return best
