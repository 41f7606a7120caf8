"""Split documents into overlapping windows measured in the text encoder's own tokens.

Sizes are in tokens of the encoder that will embed the chunks, so a chunk never gets truncated by it. Window edges
are moved back to the start of a word (a token glued to the previous one, such as WordPiece's ``##ing``, never
opens or closes a chunk), and each chunk is an exact slice ``text[start:end]`` of its document, so a citation can
point at characters in the source.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Chunk:
    """A slice of a document: ``text == document[start:end]``."""

    text: str
    start: int  # character offsets in the document
    end: int
    tokens: int  # how many encoder tokens it holds


def token_offsets(tokenizer, text: str) -> list[tuple[int, int]]:
    """(start, end) character span of every token of ``text`` (no special tokens); needs a fast tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"chunking needs a fast (Rust) tokenizer; {type(tokenizer).__name__} is not one")
    # A tokenizer.json may switch truncation on (all-MiniLM-L6-v2's cuts at 128 tokens): off while chunking.
    truncation = backend.truncation
    backend.no_truncation()
    try:
        offsets = backend.encode(text, add_special_tokens=False).offsets
    finally:
        if truncation:
            backend.enable_truncation(**truncation)
    return [span for span in offsets if span[1] > span[0]]


def chunk_text(text: str, tokenizer, chunk_tokens: int, overlap_tokens: int) -> list[Chunk]:
    """Windows of at most ``chunk_tokens`` tokens, consecutive ones sharing about ``overlap_tokens``.

    A text of only whitespace gives no chunk; one no longer than ``chunk_tokens`` gives one chunk (stripped).
    """
    if chunk_tokens < 1 or not 0 <= overlap_tokens < chunk_tokens:
        raise ConfigError(f"chunk sizes: need chunk_tokens >= 1 and 0 <= overlap_tokens < chunk_tokens, got "
                          f"{chunk_tokens} and {overlap_tokens}")
    spans = token_offsets(tokenizer, text)
    n = len(spans)
    chunks: list[Chunk] = []
    start = 0
    while start < n:
        end = _window_end(spans, start, chunk_tokens)
        chunks.append(Chunk(text[spans[start][0]:spans[end - 1][1]], spans[start][0], spans[end - 1][1], end - start))
        if end == n:
            break
        following = _next_start(spans, start, end, overlap_tokens)
        # An overlap that would make the next chunk end where this one does (a long word ahead) is dropped.
        start = following if _window_end(spans, following, chunk_tokens) > end else end
    return chunks


def _window_end(spans: list[tuple[int, int]], start: int, size: int) -> int:
    """End (exclusive) of the window opening at ``start``: at a word start, unless one word fills the window."""
    end = min(start + size, len(spans))
    if end == len(spans):
        return end
    return next((j for j in range(end, start, -1) if _starts_word(spans, j)), end)


def _starts_word(spans: list[tuple[int, int]], j: int) -> bool:
    """Whether token j opens a word (whitespace before it); a glued token (WordPiece ``##ing``) does not."""
    return j == 0 or spans[j][0] != spans[j - 1][1]


def _next_start(spans: list[tuple[int, int]], start: int, end: int, overlap: int) -> int:
    """Where the chunk after [start, end) opens: the word start nearest ``overlap`` tokens before ``end``, moving
    back first, then forward (less overlap); mid-word only where a word is longer than the overlap allows."""
    target = end - overlap
    for j in range(target, start, -1):
        if _starts_word(spans, j):
            return j
    for j in range(target + 1, end + 1):
        if _starts_word(spans, j):
            return j
    return max(target, start + 1)
