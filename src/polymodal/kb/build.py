"""``build_kb``: sources -> documents -> chunks -> vectors -> indexes, re-doing only what changed.

Incremental by content: a source file whose SHA-256 matches the last build is not even re-read; a changed file has
its chunks replaced, and of those only chunks with new text are embedded (the others take their old vector from
the store). Every step commits as it goes (see ``store.ChunkStore``), so an interrupted build resumes where it
stopped when run again. The KB then holds exactly the files found under the SOURCES of the latest build.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._paths import file_sha256, text_sha256
from ..errors import ConfigError, PolymodalError
from .chunking import chunk_text
from .config import KBConfig, load_config, save_config, CONFIG_FILE
from .hybrid import BM25_DIR, BM25Index
from .knowledge_base import STORE_FILE, dense_index
from .sources import SourceProblem, discover, read_source
from .store import ChunkStore, NewChunk


@dataclass
class BuildReport:
    """What a build did."""

    files: int = 0  # source files found
    changed: int = 0  # new or edited files that were (re)chunked
    removed: int = 0  # files of the previous build no longer among the sources
    chunks: int = 0  # chunks in the KB after the build
    embedded: int = 0  # chunks embedded by this build
    reused: int = 0  # chunks of changed files whose vector came from the store
    images_embedded: int = 0  # images embedded by the aligned image encoder
    problems: list[SourceProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    index_bytes: int = 0  # size of the KB folder on disk


def build_kb(sources: Sequence[str | Path], out: str | Path, config: KBConfig | None = None, *, dsn: str | None = None,
             batch_size: int = 32, progress: bool = True, text_encoder=None) -> BuildReport:
    """Build or update the knowledge base in folder ``out`` from files and folders ``sources``.

    Args:
        config: how to build; None: the folder's saved config (or the defaults for a new KB). A config that
            differs from the saved one in the encoder, chunk sizes or backend is refused: the old chunks and
            vectors would not match the new ones.
        dsn: pgvector connection string, not saved when it holds a password.
        text_encoder: an already built text encoder (else built from ``config.encoder``).

    Raises:
        ConfigError: a config that does not match the existing KB.
        EmptyBuildError: no source gave any text (none found, or every one had a problem); nothing is written.
    """
    start = time.perf_counter()
    out = Path(out)
    files, problems = discover(list(sources))
    if not files:
        raise EmptyBuildError(_empty_reason(sources, problems, found=0))
    new = not (out / CONFIG_FILE).exists()
    out.mkdir(parents=True, exist_ok=True)
    config = _settle_config(out, config)
    if config.backend == "pgvector" and dsn and not config.dsn:
        config = dataclasses.replace(config, dsn=dsn)
    save_config(config, out)
    store = ChunkStore(out / STORE_FILE)
    report = BuildReport()
    encoder = _LazyEncoder(config, text_encoder)
    try:
        report.problems = problems
        report.files = len(files)
        _ingest(store, files, config, encoder, report)
        if store.count() == 0:
            store.close()
            if new:  # leave no half-made KB folder behind
                shutil.rmtree(out, ignore_errors=True)
            raise EmptyBuildError(_empty_reason(sources, report.problems, found=len(files)))
        _embed_pending(store, encoder, batch_size, progress, report)
        store.clear_vector_cache()
        if config.image_run:
            _embed_images(store, config, batch_size, report)
        else:
            images = store.summary()["chunks_by_kind"].get("image", 0)
            if images:
                report.notes.append(f"{images} image chunk(s) are searchable by their captions only; set an aligned "
                                    "image encoder (--image-run ALIGN_RUN) to embed the pictures too")
        dim = int(store.get_meta("dim") or 0)
        dense_index(out, config, dim, dsn=dsn).sync(store)
        if config.image_run:
            dense_index(out, config, int(store.get_meta("image_dim") or 0), image=True, dsn=dsn).sync(
                store, "image_vector")
        ids, texts = zip(*store.iter_texts()) if store.count() else ((), ())
        BM25Index.build(out / BM25_DIR, ids, texts, language=config.language)
        report.chunks = store.count()
    finally:
        store.close()
    report.seconds = time.perf_counter() - start
    report.index_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return report


class EmptyBuildError(PolymodalError):
    """A build that would leave the knowledge base without a single chunk."""


def _empty_reason(sources, problems: list[SourceProblem], found: int) -> str:
    from .sources import SUFFIXES

    where = ", ".join(map(str, sources))
    if not found:
        why = (f"no source file found under {where} (looked for {', '.join(SUFFIXES)}, also gzip-compressed)")
    else:
        why = f"none of the {found} source file(s) under {where} gave any text"
    listed = "".join(f"\n  {p}" for p in problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return f"empty knowledge base: {why}{listed}{more}"


def _settle_config(out: Path, config: KBConfig | None) -> KBConfig:
    if not (out / CONFIG_FILE).exists():
        return config or KBConfig()
    saved = load_config(out)
    if config is None:
        return saved
    differ = config.same_build(saved)
    if differ:
        changes = ", ".join(f"{f}: {getattr(saved, f)!r} -> {getattr(config, f)!r}" for f in differ)
        raise ConfigError(f"{out} was built with other settings ({changes}); build into a new --out folder, or "
                          "delete this one to rebuild it from scratch")
    return dataclasses.replace(config, dsn=config.dsn or saved.dsn)


class _LazyEncoder:
    """Loads the text encoder only when something needs chunking or embedding (an unchanged KB loads nothing)."""

    def __init__(self, config: KBConfig, module=None):
        self.config, self.module = config, module

    def get(self, store: ChunkStore):
        if self.module is None:
            from .knowledge_base import build_text_encoder

            self.module = build_text_encoder(self.config)
        if store.get_meta("encoder_key") is None:
            from .knowledge_base import text_encoder_key

            store.set_meta("encoder", self.config.encoder)
            store.set_meta("encoder_key", text_encoder_key(self.config, self.module))
            store.set_meta("dim", str(int(self.module.dim)))
        return self.module


def _ingest(store: ChunkStore, files: list[Path], config: KBConfig, encoder: _LazyEncoder, report: BuildReport) -> None:
    known = store.file_hashes()
    found = set()
    for path in files:
        key = str(path)
        found.add(key)
        sha = file_sha256(path)
        if known.get(key) == sha:
            continue
        documents, problems = read_source(path, _display(path))
        report.problems.extend(problems)
        if problems and not documents:
            if key in known:
                store.remove_file(key)
            continue
        tokenizer = encoder.get(store).tokenizer
        chunks = [NewChunk(d.doc_id, text_sha256(d.text), d.kind, d.title, c.text, c.start, c.end, d.image)
                  for d in documents for c in chunk_text(d.text, tokenizer, config.chunk_tokens, config.overlap_tokens)]
        report.reused += store.replace_file(key, sha, chunks)
        report.changed += 1
    for key in set(known) - found:
        store.remove_file(key)
        report.removed += 1


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _embed_pending(store: ChunkStore, encoder: _LazyEncoder, batch_size: int, progress: bool,
                   report: BuildReport) -> None:
    from tqdm.auto import tqdm

    from ..models.text import embed_texts

    pending = store.pending("vector")
    if not pending:
        return
    module = encoder.get(store)
    with tqdm(total=len(pending), desc="embedding chunks", unit="chunk", disable=None if progress else True) as bar:
        for i in range(0, len(pending), batch_size):
            batch = pending[i:i + batch_size]
            texts = [text for _, text, _ in batch]
            if hasattr(module, "embed_passages"):  # multilingual-e5 embeds passages and queries differently
                vectors = module.embed_passages(texts)
            else:
                vectors = embed_texts(module, texts, batch_size=batch_size).numpy()
            store.set_vectors([cid for cid, _, _ in batch], vectors)
            report.embedded += len(batch)
            bar.update(len(batch))


def _embed_images(store: ChunkStore, config: KBConfig, batch_size: int, report: BuildReport) -> None:
    from ..data.manifest import Example
    from ..classify.run import load_run

    pending = [(cid, image) for cid, _, image in store.pending("image_vector", kind="image")
               if image and Path(image).is_file()]
    if not pending:
        return
    run = load_run(config.image_run)
    for i in range(0, len(pending), batch_size):
        batch = pending[i:i + batch_size]
        vectors = run.embed([Example(row=j, image=Path(p)) for j, (_, p) in enumerate(batch)])["image"].numpy()
        store.set_meta("image_dim", str(vectors.shape[1]))
        store.set_vectors([cid for cid, _ in batch], np.asarray(vectors, np.float32), column="image_vector")
        report.images_embedded += len(batch)
