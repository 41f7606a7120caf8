"""The chunk store: one SQLite file holding every source file's hash, its chunks, their text and their vectors.

It is the knowledge base's source of truth; vector indexes are derived from it. Each source file is replaced in
one transaction (its old chunks out, new chunks in, its hash recorded), and each batch of embeddings is committed as
it finishes, so a build killed at any point leaves a consistent store and the next build carries on: files whose
hash matches are skipped, chunks without a vector get embedded. A chunk whose text (hash) is already embedded in
this KB (another file, a renamed file, or the old version of an edited file) takes that vector instead.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._paths import text_sha256
from ..errors import PolymodalError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, n_chunks INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    doc_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    start_char INTEGER NOT NULL,
    end_char INTEGER NOT NULL,
    image TEXT,
    vector BLOB,
    image_vector BLOB
);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks (file);
CREATE INDEX IF NOT EXISTS chunks_text_hash ON chunks (text_hash);
CREATE TABLE IF NOT EXISTS vector_cache (text_hash TEXT PRIMARY KEY, vector BLOB NOT NULL);
"""


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as stored; ``text == document[start_char:end_char]``."""

    id: int
    file: str
    doc_id: str
    doc_hash: str  # SHA-256 of the whole document's text: evaluation matches gold paragraphs by it
    kind: str
    title: str
    text: str
    start_char: int
    end_char: int
    image: str | None


@dataclass(frozen=True)
class NewChunk:
    doc_id: str
    doc_hash: str
    kind: str
    title: str
    text: str
    start_char: int
    end_char: int
    image: str | None = None


def retrieval_text(title: str, text: str) -> str:
    """What the retrievers see of a chunk: its title (page and section) on a line above the text, so a chunk whose
    body never names its subject ("It is executed when the loop terminates") is still found by it."""
    return f"{title}\n{text}" if title and title != text else text


class ChunkStore:
    """SQLite-backed chunks of a knowledge base (``kb.sqlite`` in the KB folder)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise PolymodalError(f"{self.path}: not a knowledge-base store ({e}); delete it and rebuild with "
                                 "`polymodal kb build`") from None

    def close(self) -> None:
        self.db.close()

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def file_hashes(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT path, sha256 FROM files"))

    def replace_file(self, path: str, sha256: str, chunks: Sequence[NewChunk]) -> int:
        """Swap a file's chunks for new ones in one transaction; returns how many took a cached vector."""
        with self.db:
            self._delete_file(path)
            for c in chunks:
                text_hash = text_sha256(retrieval_text(c.title, c.text))  # what gets embedded
                self.db.execute(
                    "INSERT INTO chunks (file, doc_id, doc_hash, kind, title, text, text_hash, start_char, end_char, "
                    "image, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, COALESCE("
                    "(SELECT vector FROM chunks WHERE text_hash = ? AND vector IS NOT NULL LIMIT 1), "
                    "(SELECT vector FROM vector_cache WHERE text_hash = ?)))",
                    (path, c.doc_id, c.doc_hash, c.kind, c.title, c.text, text_hash, c.start_char, c.end_char,
                     c.image, text_hash, text_hash))
            self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?)", (path, sha256, len(chunks)))
        reused = self.db.execute("SELECT COUNT(*) FROM chunks WHERE file = ? AND vector IS NOT NULL", (path,))
        return reused.fetchone()[0]

    def remove_file(self, path: str) -> None:
        with self.db:
            self._delete_file(path)
            self.db.execute("DELETE FROM files WHERE path = ?", (path,))

    def _delete_file(self, path: str) -> None:
        # Vectors outlive their chunks in the cache, so an edited file re-embeds only the chunks that changed.
        self.db.execute("INSERT OR IGNORE INTO vector_cache SELECT text_hash, vector FROM chunks "
                        "WHERE file = ? AND vector IS NOT NULL", (path,))
        self.db.execute("DELETE FROM chunks WHERE file = ?", (path,))

    def clear_vector_cache(self) -> None:
        """Forget the vectors of deleted chunks (once a build has taken what it could from them)."""
        with self.db:
            self.db.execute("DELETE FROM vector_cache")

    def pending(self, column: str = "vector", kind: str | None = None) -> list[tuple[int, str, str | None]]:
        """(id, retrieval text, image) of chunks still without a vector in ``column`` (vector | image_vector)."""
        assert column in ("vector", "image_vector")
        sql = f"SELECT id, title, text, image FROM chunks WHERE {column} IS NULL"
        if kind:
            rows = self.db.execute(sql + " AND kind = ? ORDER BY id", (kind,)).fetchall()
        else:
            rows = self.db.execute(sql + " ORDER BY id").fetchall()
        return [(i, retrieval_text(title, text), image) for i, title, text, image in rows]

    def set_vectors(self, ids: Sequence[int], vectors: np.ndarray, column: str = "vector") -> None:
        """Store float32 vectors (n, dim) for chunk ids, committed at once (a finished batch survives a crash)."""
        assert column in ("vector", "image_vector")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self.db:
            self.db.executemany(f"UPDATE chunks SET {column} = ? WHERE id = ?",
                                [(v.tobytes(), int(i)) for i, v in zip(ids, vectors)])

    def vectors(self, column: str = "vector", ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,) int64, vectors (n, dim) float32) of chunks that have a vector, in id order."""
        assert column in ("vector", "image_vector")
        sql = f"SELECT id, {column} FROM chunks WHERE {column} IS NOT NULL"
        rows = self.db.execute(sql + " ORDER BY id").fetchall()
        if ids is not None:
            wanted = set(int(i) for i in ids)
            rows = [r for r in rows if r[0] in wanted]
        dim = int(self.get_meta("dim") or 0)
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        return (np.array([r[0] for r in rows], np.int64),
                np.stack([np.frombuffer(r[1], np.float32) for r in rows]))

    def chunk_ids(self) -> np.ndarray:
        return np.array([r[0] for r in self.db.execute("SELECT id FROM chunks ORDER BY id")], np.int64)

    def chunks(self, ids: Sequence[int] | None = None) -> list[StoredChunk]:
        """Chunks by id (in the order asked; unknown ids are left out), or all of them in id order."""
        cols = "id, file, doc_id, doc_hash, kind, title, text, start_char, end_char, image"
        if ids is None:
            return [StoredChunk(*r) for r in self.db.execute(f"SELECT {cols} FROM chunks ORDER BY id")]
        found: dict[int, StoredChunk] = {}
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            rows = self.db.execute(f"SELECT {cols} FROM chunks WHERE id IN ({','.join('?' * len(part))})", part)
            found.update((r[0], StoredChunk(*r)) for r in rows)
        return [found[i] for i in ids if i in found]

    def iter_texts(self) -> Iterator[tuple[int, str]]:
        """(id, retrieval text: title and text) of every chunk, in id order."""
        for i, title, text in self.db.execute("SELECT id, title, text FROM chunks ORDER BY id"):
            yield i, retrieval_text(title, text)

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def summary(self) -> dict:
        files = self.db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        docs = self.db.execute("SELECT COUNT(DISTINCT doc_id) FROM chunks").fetchone()[0]
        kinds = dict(self.db.execute("SELECT kind, COUNT(*) FROM chunks GROUP BY kind"))
        return {"files": files, "chunks": self.count(), "chunks_by_kind": kinds, "documents": docs}
