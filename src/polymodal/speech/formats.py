"""Writing transcripts: SRT subtitles (one file per input) and JSON (all inputs, with errors)."""

from __future__ import annotations

import json
import os

from .._paths import atomic_write_text
from .transcribe import Transcript


def srt_timestamp(seconds: float) -> str:
    """``HH:MM:SS,mmm`` as SRT writes times (comma before the milliseconds)."""
    ms = max(0, int(round(seconds * 1000)))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def to_srt(transcript: Transcript) -> str:
    """SubRip text: numbered cues with start --> end times; empty for a transcript without segments."""
    cues = [f"{i}\n{srt_timestamp(s.start_s)} --> {srt_timestamp(s.end_s)}\n{s.text}\n"
            for i, s in enumerate(transcript.segments, start=1)]
    return "\n".join(cues)


def write_srt(transcript: Transcript, path: str | os.PathLike) -> None:
    atomic_write_text(path, to_srt(transcript))


def to_json(transcripts: list[Transcript]) -> str:
    return json.dumps([t.to_dict() for t in transcripts], indent=2, ensure_ascii=False) + "\n"


def write_json(transcripts: list[Transcript], path: str | os.PathLike) -> None:
    atomic_write_text(path, to_json(transcripts))
