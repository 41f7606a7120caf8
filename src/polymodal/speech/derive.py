"""Recognised speech as a modality: a manifest's audio becomes a derived text column (the voice-assistant case).

``transcribe_examples`` gives every example with audio the recogniser's transcript as its text, so a fusion
model sees the audio features and what was said. Transcripts are cached like features: one SQLite file per
recogniser (model, engine), one row per audio content hash, committed per batch, so a rerun, another manifest
with the same clips or an interrupted run decodes only what it has not heard yet.

In a training config: ``data.transcribe: whisper-base`` (any recogniser model; ``pocketsphinx`` for the tiny
fallback). The transcript replaces a text column the manifest may already have (a reference transcript there
would leak the answer); rows without audio keep their text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sqlite3
from pathlib import Path

from tqdm.auto import tqdm

from .._paths import cache_dir
from ..data.audio import load_audio
from ..data.manifest import Example, Manifest
from ..features.extract import content_key

BATCH = 16


class TranscriptCache:
    """audio content hash -> transcript, for one recogniser."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=60)
        self._db.execute("CREATE TABLE IF NOT EXISTS transcripts (key TEXT PRIMARY KEY, text TEXT NOT NULL)")
        self._db.commit()

    def get(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            rows = self._db.execute(f"SELECT key, text FROM transcripts WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update(rows)
        return found

    def put(self, entries: dict[str, str]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO transcripts VALUES (?, ?)", list(entries.items()))

    def close(self) -> None:
        self._db.close()


def _cache_path(model: str, engine: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).name or model)[:40]
    digest = hashlib.sha256(f"{model}|{engine}".encode()).hexdigest()[:12]
    return cache_dir("transcripts") / f"{name}-{engine}-{digest}.sqlite"


def _engine(model: str) -> str:
    return "pocketsphinx" if model == "pocketsphinx" else "faster-whisper"


def transcribe_examples(examples: list[Example], model: str = "whisper-base", progress: bool = True) -> list[Example]:
    """Copies of ``examples`` whose text is the transcript of their audio (examples without audio unchanged).

    Args:
        model: a recogniser model reference (``whisper-base``, a Whisper folder or hub id), or ``pocketsphinx``.
    """
    from .transcribe import transcribe_waves

    engine = _engine(model)
    with_audio = [e for e in examples if e.audio is not None]
    keys = {e.row: content_key("audio", e) for e in with_audio}
    cache = TranscriptCache(_cache_path(model if engine != "pocketsphinx" else "en-us", engine))
    try:
        known = cache.get(sorted(set(keys.values())))
        todo = {k: e for e in with_audio if (k := keys[e.row]) not in known}
        if todo:
            recognizer = recognizer_for(model)
            items = list(todo.items())
            for i in tqdm(range(0, len(items), BATCH), desc=f"transcribing ({model})", unit="batch",
                          disable=None if progress else True, leave=False):
                chunk = items[i : i + BATCH]
                segments = transcribe_waves([load_audio(e.audio) for _, e in chunk], recognizer)
                done = {key: " ".join(s.text for s in segs) for (key, _), segs in zip(chunk, segments)}
                cache.put(done)
                known.update(done)
    finally:
        cache.close()
    return [_with_text(e, known[keys[e.row]]) if e.row in keys else e for e in examples]


def recognizer_for(model: str):
    """The recogniser ``data.transcribe: MODEL`` names (load it once and pass it to ``transcribe_items``)."""
    from .engines import build_recognizer

    engine = _engine(model)
    return build_recognizer(model if engine != "pocketsphinx" else "whisper-base", engine=engine)


def transcribe_items(items: list[dict], recognizer, sample_rate: int = 16_000) -> list[dict]:
    """Copies of decoded inputs (modality -> str / image / waveform at ``sample_rate``) whose text is the transcript
    of their audio, as ``transcribe_examples`` does for manifest rows; items without audio are unchanged."""
    from ..data.audio import resample
    from .transcribe import transcribe_waves

    idx = [i for i, it in enumerate(items) if it.get("audio") is not None]
    waves = [items[i]["audio"] if sample_rate == 16_000 else resample(items[i]["audio"], sample_rate, 16_000) for i in idx]
    out = [dict(it) for it in items]
    for i, segments in zip(idx, transcribe_waves(waves, recognizer) if waves else []):
        text = " ".join(s.text for s in segments)
        if text:
            out[i]["text"] = text
        else:  # as an empty text cell of a manifest row: no text input
            out[i].pop("text", None)
    return out


def _with_text(e: Example, text: str) -> Example:
    return dataclasses.replace(e, text=text, raw={**e.raw, "text": text} if e.raw else e.raw)


def transcribe_manifest(manifest: Manifest, model: str = "whisper-base", progress: bool = True) -> Manifest:
    """The manifest with a text column holding each row's transcript (see ``transcribe_examples``)."""
    columns = manifest.columns if "text" in manifest.columns else (*manifest.columns, "text")
    return dataclasses.replace(manifest, columns=columns,
                               examples=transcribe_examples(manifest.examples, model, progress))
