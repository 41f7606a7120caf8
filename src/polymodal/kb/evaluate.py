"""``evaluate_kb``: score retrieval and answering separately on SQuAD-format questions, so a user sees which fails.

- Retrieval, per mode (dense, BM25, hybrid): Recall@1/5/20 and MRR over the *paragraphs* (chunks are mapped back to
  the paragraph they came from, by the SHA-256 of its text; a paragraph counts once, at its best chunk).
- Answering, SQuAD exact match and F1 (``squad.py``), twice: end to end (the answerer reads the top retrieved
  passages) and with the oracle passage (it reads the gold paragraph alone). The oracle score is the answerer's own
  ceiling; the gap between the two is what retrieval costs. End-to-end scores are also split by whether the gold
  paragraph was among the passages the answerer saw.

(``polymodal.eval.retrieval.ranks`` assumes one gold item per query on a square similarity matrix's diagonal; here
many questions share a paragraph and rankings come from fusion, not a matrix, so ranks are read off the lists.)
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._paths import atomic_write_text, text_sha256
from ..errors import PolymodalError
from .answer import DEFAULT_THRESHOLD, Answerer, answer_from, strip_citations
from .knowledge_base import MODES, Hit, KnowledgeBase, Retrieval
from .squad import Question, exact_match, f1_score, read_squad

KS = (1, 5, 20)


def paragraph_rank(retrieval: Retrieval, gold_hash: str) -> int | None:
    """0-based rank of the gold paragraph among the distinct paragraphs retrieved; None when absent."""
    seen: list[str] = []
    for hit in retrieval.hits:
        if hit.chunk.doc_hash not in seen:
            if hit.chunk.doc_hash == gold_hash:
                return len(seen)
            seen.append(hit.chunk.doc_hash)
    return None


def retrieval_scores(ranks: Sequence[int | None], ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@k and MRR from 0-based ranks (None: not retrieved, reciprocal rank 0)."""
    n = max(len(ranks), 1)
    out = {f"recall@{k}": sum(r is not None and r < k for r in ranks) / n for k in ks}
    out["mrr"] = sum(1.0 / (r + 1) for r in ranks if r is not None) / n
    return out


def evaluate_kb(kb: KnowledgeBase, squad_path: str | Path, answerer: Answerer | None = None, *, k: int = 3,
                answer_mode: str = "hybrid", threshold: float = DEFAULT_THRESHOLD, max_answered: int | None = None,
                oracle: bool = True, seed: int = 0, depth: int = 100, progress: bool = True, reranker=None,
                rerank_depth: int = 20) -> dict:
    """Retrieval metrics for every mode and, given an answerer, EM/F1 end to end and with the oracle passage.

    Args:
        k: passages the answerer reads.
        max_answered: answer only a random subsample of this many questions (generation is slow on a CPU);
            retrieval is always scored on all of them.
        reranker: also score ``answer_mode`` re-ranked (row "<mode>+rerank"), and answer from that.
    """
    _, questions = read_squad(squad_path)
    questions = [q for q in questions if q.answers]
    if not questions:
        raise PolymodalError(f"{squad_path}: no answerable questions to evaluate")
    gold = [text_sha256(q.paragraph.text) for q in questions]
    in_kb = {c.doc_hash for c in kb.store.chunks()}
    missing = sum(g not in in_kb for g in gold)
    if missing == len(gold):
        raise PolymodalError(f"none of the paragraphs of {squad_path} is in {kb.folder}; build the KB from this "
                             f"file first: `polymodal kb build {squad_path} --out {kb.folder}`")
    report: dict = {"questions": len(questions), "gold_not_in_kb": missing, "kb": str(kb.folder),
                    "data": str(squad_path), "encoder": kb.config.encoder, "retrieval": {}, "seconds": {}}
    start = time.perf_counter()
    embeddings = kb.embed([q.question for q in questions])
    report["seconds"]["embed_questions"] = time.perf_counter() - start
    retrievals: dict[str, list[Retrieval]] = {}
    for mode in MODES:
        start = time.perf_counter()
        retrievals[mode] = kb.retrieve_many([q.question for q in questions], k=depth, mode=mode, depth=depth,
                                            embeddings=embeddings)
        report["seconds"][f"retrieve_{mode}"] = time.perf_counter() - start
        ranks = [paragraph_rank(r, g) for r, g in zip(retrievals[mode], gold)]
        report["retrieval"][mode] = retrieval_scores(ranks)
    if reranker is not None:
        start = time.perf_counter()
        name = f"{answer_mode}+rerank"
        retrievals[name] = kb.retrieve_many([q.question for q in questions], k=depth, mode=answer_mode, depth=depth,
                                            embeddings=embeddings, reranker=reranker, rerank_depth=rerank_depth)
        report["seconds"][f"retrieve_{name}"] = time.perf_counter() - start
        report["retrieval"][name] = retrieval_scores([paragraph_rank(r, g) for r, g in zip(retrievals[name], gold)])
        answer_mode = name
    if answerer is not None:
        chosen = list(range(len(questions)))
        if max_answered is not None and max_answered < len(chosen):
            chosen = sorted(random.Random(seed).sample(chosen, max_answered))
        report["answer"] = _answer_scores(questions, gold, retrievals[answer_mode], chosen, answerer, k, threshold,
                                          oracle, kb, progress)
        report["answer"].update(mode=answer_mode, k=k, threshold=threshold)
    return report


def _answer_scores(questions: list[Question], gold: list[str], retrievals: list[Retrieval], chosen: list[int],
                   answerer: Answerer, k: int, threshold: float, oracle: bool, kb: KnowledgeBase,
                   progress: bool) -> dict:
    from tqdm.auto import tqdm

    rows = []
    start = time.perf_counter()
    oracle_hits = _oracle_hits(kb, [questions[i] for i in chosen]) if oracle else None
    for n, i in enumerate(tqdm(chosen, desc="answering", unit="question", disable=None if progress else True)):
        q = questions[i]
        r = retrievals[i]
        result = answer_from(Retrieval(r.question, r.hits[:k], r.best_dense), answerer, k, threshold)
        text = strip_citations(result.text)
        row = {"id": q.qid, "question": q.question, "gold": list(q.answers), "answer": result.text,
               "found": result.found,
               "gold_in_passages": any(h.chunk.doc_hash == gold[i] for h in r.hits[:k]),
               "em": exact_match(text, q.answers), "f1": f1_score(text, q.answers),
               "cited": [h.chunk.id for h in result.sources]}
        if oracle_hits is not None:
            o_text, _ = answerer.answer(q.question, oracle_hits[n])
            row.update(oracle_answer=o_text, oracle_em=exact_match(strip_citations(o_text), q.answers),
                       oracle_f1=f1_score(strip_citations(o_text), q.answers))
        rows.append(row)
    seconds = time.perf_counter() - start
    out = {"answered": len(rows), "em": _mean(rows, "em"), "f1": _mean(rows, "f1"),
           "not_found_rate": float(np.mean([not r["found"] for r in rows])),
           "seconds_per_question": seconds / max(len(rows), 1)}
    for name, keep in (("gold_in_passages", True), ("gold_not_in_passages", False)):
        part = [r for r in rows if r["gold_in_passages"] is keep]
        out[name] = {"questions": len(part), "em": _mean(part, "em"), "f1": _mean(part, "f1")}
    if oracle:
        out["oracle"] = {"em": _mean(rows, "oracle_em"), "f1": _mean(rows, "oracle_f1")}
    out["rows"] = rows
    return out


def _oracle_hits(kb: KnowledgeBase, questions: list[Question]) -> list[list[Hit]]:
    """The gold paragraph as the single passage (a stand-in chunk: the whole paragraph, even if chunked)."""
    from .store import StoredChunk

    return [[Hit(StoredChunk(-1, "oracle", q.paragraph.doc_id, text_sha256(q.paragraph.text), "text",
                             q.paragraph.title, q.paragraph.text, 0, len(q.paragraph.text), None), 1.0, 1.0)]
            for q in questions]


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows])) if rows else float("nan")


def write_report(report: dict, out: str | Path) -> tuple[Path, Path]:
    """``report.json`` (everything, per-question rows included) and ``report.md`` (the tables) in folder ``out``."""
    out = Path(out)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "report.md", report_markdown(report))
    return out / "report.json", out / "report.md"


def report_markdown(report: dict) -> str:
    lines = ["# Knowledge-base evaluation", "",
             f"- KB: `{report['kb']}` (encoder `{report['encoder']}`); data: `{report['data']}`",
             f"- {report['questions']} answerable questions; {report['gold_not_in_kb']} of them have their paragraph "
             "missing from the KB", "", "## Retrieval (over paragraphs)", "",
             "| mode | Recall@1 | Recall@5 | Recall@20 | MRR |", "| --- | ---: | ---: | ---: | ---: |"]
    for mode, s in report["retrieval"].items():
        lines.append(f"| {mode} | {s['recall@1']:.3f} | {s['recall@5']:.3f} | {s['recall@20']:.3f} | {s['mrr']:.3f} |")
    a = report.get("answer")
    if a:
        lines += ["", f"## Answers (SQuAD exact match and F1, {a['answered']} questions, top {a['k']} {a['mode']} "
                      f"passages, threshold {a['threshold']})", "",
                  "| setting | questions | EM | F1 |", "| --- | ---: | ---: | ---: |",
                  f"| end to end | {a['answered']} | {a['em']:.3f} | {a['f1']:.3f} |"]
        for name in ("gold_in_passages", "gold_not_in_passages"):
            p = a[name]
            lines.append(f"| end to end, {name.replace('_', ' ')} | {p['questions']} | {p['em']:.3f} | {p['f1']:.3f} |")
        if "oracle" in a:
            lines.append(f"| oracle passage (answerer alone) | {a['answered']} | {a['oracle']['em']:.3f} | "
                         f"{a['oracle']['f1']:.3f} |")
        lines += ["", f"Answered \"not in the knowledge base\" for {a['not_found_rate']:.1%} of the questions. "
                  "A low oracle score means the answerer fails; a high oracle score with a low end-to-end score "
                  "means retrieval fails."]
    return "\n".join(lines) + "\n"
