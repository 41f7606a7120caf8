"""An on-disk feature cache: one SQLite file per encoder key, one row per input content hash.

SQLite gives atomic transactions for free: each batch is committed once it is encoded, so an interrupted run
keeps every finished batch and a rerun encodes only the rest; a half-written row can never be read back.
Tensors are stored as safetensors bytes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import PolymodalError


class FeatureCache:
    """Maps a content hash to {"pooled": (dim,), and optionally "sequence": (time, dim), "mask": (time,)}."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, pooled BLOB NOT NULL, sequence BLOB)")
            self._db.commit()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise PolymodalError(f"{self.path}: not a feature cache ({e}); delete the file and the features are "
                                 "encoded again") from None

    def get(self, keys: list[str], sequence: bool = False) -> dict[str, dict[str, torch.Tensor]]:
        """Entries found for ``keys``; with ``sequence``, only entries that hold sequence features count."""
        found: dict[str, dict[str, torch.Tensor]] = {}
        col = ", sequence" if sequence else ""
        for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(f"SELECT key, pooled{col} FROM features WHERE key IN ({marks})", chunk):
                if sequence and row[2] is None:
                    continue
                try:  # safetensors bytes never run code; a damaged entry is a miss, encoded again and overwritten
                    entry = st_load(row[1])
                    if sequence:
                        entry.update(st_load(row[2]))
                except Exception:  # noqa: BLE001 - SafetensorError and friends
                    continue
                found[row[0]] = entry
        return found

    def put(self, entries: dict[str, dict[str, torch.Tensor]]) -> None:
        """Store entries in one transaction."""
        rows = []
        for key, e in entries.items():
            pooled = st_save({"pooled": e["pooled"].contiguous()})
            seq = st_save({"sequence": e["sequence"].contiguous(), "mask": e["mask"].contiguous()}) if "sequence" in e else None
            rows.append((key, pooled, seq))
        with self._db:
            self._db.executemany(
                "INSERT INTO features (key, pooled, sequence) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET pooled=excluded.pooled, sequence=COALESCE(excluded.sequence, features.sequence)",
                rows,
            )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM features").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
