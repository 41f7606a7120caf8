"""How a knowledge base is built: saved as ``kb.yaml`` in its folder and read back by every query."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml

from .._paths import atomic_write_text
from ..errors import ConfigError

CONFIG_FILE = "kb.yaml"
BACKENDS = ("faiss", "pgvector")
DSN_ENV = "POLYMODAL_KB_DSN"


@dataclass(frozen=True)
class KBConfig:
    """Settings of one knowledge base. Changing ``encoder`` or the chunk sizes needs a new KB folder."""

    encoder: str = "minilm"  # text encoder for chunks and questions: any resolver reference, or e5 (multilingual)
    chunk_tokens: int = 200  # chunk length in the encoder's tokens (MiniLM was trained on up to 256)
    overlap_tokens: int = 40  # tokens shared by consecutive chunks, so an answer cut at an edge is whole in one
    max_tokens: int = 256  # the encoder truncates longer inputs (questions); must hold a whole chunk
    backend: str = "faiss"  # dense index: faiss (a file in the KB folder) | pgvector (a PostgreSQL server)
    dsn: str | None = None  # pgvector: libpq connection string; None: read $POLYMODAL_KB_DSN at run time
    table: str = "polymodal_kb"  # pgvector: table name (one per knowledge base)
    image_run: str | None = None  # an `align` run folder: also embed images in its joint space; None: captions only
    language: str = "en"  # BM25 words: en (stop words, Snowball stems) | zh (jieba segmentation, for Chinese)

    def __post_init__(self):
        if self.chunk_tokens < 8:
            raise ConfigError(f"chunk_tokens: {self.chunk_tokens} is too small (at least 8 tokens)")
        if not 0 <= self.overlap_tokens < self.chunk_tokens:
            raise ConfigError(f"overlap_tokens: {self.overlap_tokens} must be >= 0 and < chunk_tokens "
                              f"({self.chunk_tokens})")
        if self.max_tokens < self.chunk_tokens + 2:
            raise ConfigError(f"max_tokens: {self.max_tokens} cannot hold a chunk of {self.chunk_tokens} tokens "
                              "plus the two special tokens; raise max_tokens or lower chunk_tokens")
        if self.language not in ("en", "zh"):
            raise ConfigError(f"language: {self.language!r} is not one of en, zh")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")

    def resolved_dsn(self) -> str:
        dsn = self.dsn or os.environ.get(DSN_ENV)
        if not dsn:
            raise ConfigError(f"backend pgvector needs a server: pass --dsn or set ${DSN_ENV} "
                              "(start a local one with `polymodal kb pgserver DIR`)")
        return dsn

    def same_build(self, other: KBConfig) -> list[str]:
        """Fields that differ in ways that make existing chunks or vectors invalid."""
        fields = ("encoder", "chunk_tokens", "overlap_tokens", "max_tokens", "backend", "table", "image_run",
                  "language")
        return [f for f in fields if getattr(self, f) != getattr(other, f)]


def save_config(cfg: KBConfig, folder: Path) -> None:
    data = dataclasses.asdict(cfg)
    if data["dsn"] and _has_password(data["dsn"]):
        data["dsn"] = None  # never write a password into the KB folder; it comes from --dsn or $POLYMODAL_KB_DSN
    atomic_write_text(folder / CONFIG_FILE, yaml.safe_dump(data, sort_keys=False))


def _has_password(dsn: str) -> bool:
    if "://" in dsn:
        return bool(urlparse(dsn).password)
    return "password=" in dsn


def load_config(folder: Path) -> KBConfig:
    path = folder / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{folder}: not a knowledge base (no {CONFIG_FILE}); build one with `polymodal kb build`")
    try:  # safe_load builds plain data only: a `!!python/...` tag is refused, never run
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        detail = " ".join(str(e).split())
        raise ConfigError(f"{path}: not valid YAML or not plain data ({detail[:300]}); fix the file or rebuild the "
                          "knowledge base with `polymodal kb build`") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings; rebuild with `polymodal kb build`")
    unknown = set(data) - {f.name for f in dataclasses.fields(KBConfig)}
    if unknown:
        raise ConfigError(f"{path}: unknown fields {sorted(unknown)}")
    return KBConfig(**data)
