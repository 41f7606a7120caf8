"""Question answering over a knowledge base (retrieval-augmented generation) of documents and captioned images.

Pipeline, one module each: ``sources`` (files -> documents) -> ``chunking`` (token windows) -> ``store`` (SQLite
chunks and vectors) -> ``index`` (FAISS or pgvector) and ``hybrid`` (BM25, reciprocal rank fusion) ->
``knowledge_base`` (retrieval) -> ``answer`` (generative with citations, or extractive) -> ``evaluate`` (SQuAD).
"""

from .answer import (DEFAULT_THRESHOLD, NOT_FOUND, Answer, GenerativeAnswerer, GroundedAnswerer, SentenceSelector,
                     SpanReader, answer, answer_from, is_supported, strip_citations)
from .ask import Asked, Asker, AskOptions
from .build import BuildReport, build_kb
from .chunking import Chunk, chunk_text
from .config import KBConfig
from .extract import SpanExtractor
from .evaluate import evaluate_kb, retrieval_scores, write_report
from .hybrid import BM25Index, rrf_fuse
from .index import FaissIndex, PgVectorIndex, VectorIndex
from .knowledge_base import Hit, KnowledgeBase, Retrieval
from .sources import Document, SourceProblem, discover, read_source
from .squad import exact_match, f1_score, normalize_answer, read_squad

__all__ = [
    "Answer", "Asked", "Asker", "AskOptions", "BM25Index", "BuildReport", "Chunk", "DEFAULT_THRESHOLD", "Document", "FaissIndex",
    "GenerativeAnswerer", "GroundedAnswerer", "Hit", "KBConfig", "KnowledgeBase", "NOT_FOUND", "PgVectorIndex",
    "Retrieval", "SentenceSelector", "SourceProblem", "SpanExtractor", "SpanReader", "VectorIndex", "answer",
    "answer_from", "build_kb", "chunk_text", "discover", "evaluate_kb", "exact_match", "f1_score", "is_supported",
    "normalize_answer", "read_source", "read_squad", "retrieval_scores", "rrf_fuse", "strip_citations",
    "write_report",
]
