"""Dense vector indexes behind one small protocol: embedded FAISS (default) or a PostgreSQL + pgvector server.

Both are derived from the chunk store (``store.ChunkStore``), which keeps every vector: ``sync`` makes an index
match the store, so it is idempotent and a build interrupted while indexing just syncs again.

- ``FaissIndex``: exact inner-product search (``IndexFlatIP`` under ``IndexIDMap2``, ids = chunk ids) over
  L2-normalised vectors, i.e. cosine. FAISS is the field's standard library (Meta, MIT, CPU wheels on PyPI for
  every platform), needs no server, and has approximate indexes (IVF, HNSW) for when exact search gets slow: about
  a million 384-d chunks (1.5 GB) is where flat search passes ~50 ms per query on one core. The index file is
  rebuilt from the store in one pass and replaced atomically; at this scale that costs less than embedding a
  single batch.
- ``PgVectorIndex``: a table ``(id, embedding vector(dim), file, doc_id, text)`` in PostgreSQL with the pgvector
  extension and an HNSW index on cosine distance, for a KB shared by several machines. ``sync`` only inserts the
  chunks the table lacks and deletes those the store no longer has.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

import numpy as np

from .._paths import atomic_write_bytes
from ..errors import PolymodalError
from .store import ChunkStore

FAISS_FILE = "dense.faiss"


class VectorIndex(Protocol):
    """Nearest chunks by cosine similarity."""

    def sync(self, store: ChunkStore, column: str = "vector") -> None:
        """Make the index hold exactly the store's vectors of ``column``."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """For L2-normalised queries (n, dim): (scores (n, k) cosine, ids (n, k) chunk ids, -1 past the end)."""


class FaissIndex:
    """Exact cosine search with FAISS in a file of the KB folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._index = None

    def sync(self, store: ChunkStore, column: str = "vector") -> None:
        import faiss

        ids, vectors = store.vectors(column)
        dim = vectors.shape[1] if len(vectors) else int(store.get_meta("dim") or 1)
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids)
        atomic_write_bytes(self.path, faiss.serialize_index(index).tobytes())
        self._index = index

    def _load(self):
        if self._index is None:
            import faiss

            if not self.path.exists():
                raise PolymodalError(f"{self.path}: the dense index is missing; rebuild with `polymodal kb build`")
            self._index = faiss.deserialize_index(np.fromfile(self.path, dtype=np.uint8))
        return self._index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._load()
        scores, ids = index.search(np.ascontiguousarray(queries, np.float32), k)
        return scores, ids

    def __len__(self) -> int:
        return int(self._load().ntotal)


_TABLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PgVectorIndex:
    """Chunks and vectors in a PostgreSQL table with pgvector (a server reached by a libpq connection string)."""

    def __init__(self, dsn: str, table: str, dim: int):
        if not _TABLE.match(table):
            raise PolymodalError(f"pgvector table name {table!r}: use lower-case letters, digits and _ (max 63)")
        self.dsn, self.table, self.dim = dsn, table, dim
        self._conn = None

    def _connect(self):
        if self._conn is None:
            try:
                import psycopg
            except ImportError as e:
                raise PolymodalError("the pgvector backend needs psycopg: `pip install 'psycopg[binary]'`") from e
            try:
                self._conn = psycopg.connect(self.dsn, autocommit=True)
            except psycopg.OperationalError as e:
                raise PolymodalError(f"cannot connect to PostgreSQL at {self.dsn!r} ({str(e).strip()}); start the "
                                     "server (e.g. `polymodal kb pgserver DIR`) or fix --dsn") from e
            self._conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            self._conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (id bigint PRIMARY KEY, "
                               f"embedding vector({self.dim}) NOT NULL, file text, doc_id text, text text)")
        return self._conn

    def sync(self, store: ChunkStore, column: str = "vector") -> None:
        conn = self._connect()
        have = {r[0] for r in conn.execute(f"SELECT id FROM {self.table}")}
        ids, _ = store.vectors(column)
        want = set(ids.tolist())
        stale = sorted(have - want)
        if stale:
            conn.execute(f"DELETE FROM {self.table} WHERE id = ANY(%s)", (stale,))
        missing = sorted(want - have)
        for start in range(0, len(missing), 2000):
            part = missing[start:start + 2000]
            part_ids, vectors = store.vectors(column, part)
            chunks = {c.id: c for c in store.chunks(part_ids.tolist())}
            copy = f"COPY {self.table} (id, embedding, file, doc_id, text) FROM STDIN"
            with conn.cursor() as cur, cur.copy(copy) as cp:
                for i, v in zip(part_ids.tolist(), vectors):
                    c = chunks[i]
                    cp.write_row((i, _literal(v), c.file, c.doc_id, c.text))
        conn.execute(f"CREATE INDEX IF NOT EXISTS {self.table}_hnsw ON {self.table} "
                     "USING hnsw (embedding vector_cosine_ops)")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        conn = self._connect()
        conn.execute(f"SET hnsw.ef_search = {max(40, min(k, 1000))}")
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for row, q in enumerate(queries):
            lit = _literal(q)
            found = conn.execute(f"SELECT id, 1 - (embedding <=> %s::vector) FROM {self.table} "
                                 "ORDER BY embedding <=> %s::vector LIMIT %s", (lit, lit, k)).fetchall()
            for j, (i, s) in enumerate(found):
                ids[row, j], scores[row, j] = i, s
        return scores, ids

    def __len__(self) -> int:
        return int(self._connect().execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0])

    def drop(self) -> None:
        self._connect().execute(f"DROP TABLE IF EXISTS {self.table}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _literal(v: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(v, np.float32).tolist()) + "]"
