"""Start a local PostgreSQL server with pgvector for the pgvector backend, from the ``pgserver`` wheel.

``pgserver`` (PyPI) bundles PostgreSQL 16 binaries with the pgvector extension and runs a real server on a data
folder (a Unix socket in it, no TCP port, no root needed; as root it runs the server under a created user), so
tests and single-machine users get the server backend without a system install. A shared deployment points
``--dsn`` at its own PostgreSQL with ``CREATE EXTENSION vector`` available instead.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import PolymodalError


def start_pgvector_server(data_dir: str | Path, keep_running: bool = False):
    """Start (or reuse) a server on ``data_dir``; returns (server, dsn). ``server.cleanup()`` stops it, unless
    ``keep_running``."""
    try:
        import pgserver
    except ImportError as e:
        raise PolymodalError("a local pgvector server needs the pgserver wheel: `pip install pgserver`") from e
    try:
        server = pgserver.get_server(Path(data_dir), cleanup_mode=None if keep_running else "stop")
    except Exception as e:  # noqa: BLE001 - initdb/pg_ctl failures surface as several exception types
        raise PolymodalError(f"could not start PostgreSQL on {data_dir} ({e}); check the folder is writable") from e
    dsn = server.get_uri()
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    return server, dsn
