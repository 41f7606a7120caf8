"""Transcribe audio files: decode -> VAD speech chunks (<= 30 s) -> recogniser -> timed segments.

Errors of one file (missing, corrupt, empty, too long) never stop a batch: ``transcribe_files`` records them in
that file's ``Transcript`` (``error``, ``error_kind``) and goes on. Silence gives an empty transcript with a note.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from ..data.audio import SAMPLE_RATE_HZ, load_audio
from ..errors import ConfigError, MediaError
from .engines import COMPUTE_TYPES, ENGINES, MIN_WINDOW_S, Recognizer, build_recognizer
from .vad import VADConfig, Span, fixed_windows, merge_spans, speech_spans

MAX_TRANSCRIBE_SECONDS = 4 * 3600.0  # 4 h of 16 kHz float32 is 920 MB in memory; longer files are refused
NO_SPEECH_NOTE = "no speech found"


@dataclass(frozen=True)
class TranscribeConfig:
    """What transcribes, and how."""

    model: str = "whisper-base"  # 'whisper-base' (bundled), a faster-whisper or transformers folder, or a hub id
    engine: str = "faster-whisper"  # faster-whisper (CTranslate2, CPU-fast) | transformers (PyTorch)
    compute_type: str = "int8"  # faster-whisper weight type: int8 | int8_float32 | float32 | float16 | default
    language: str | None = "en"  # spoken language (ISO code); None: detect it
    beam_size: int = 1  # 1: greedy decoding
    vad: bool = True  # cut audio into speech chunks with Silero VAD; off: fixed 30 s windows
    vad_config: VADConfig = field(default_factory=VADConfig)  # thresholds and chunk length of the VAD
    max_seconds: float = MAX_TRANSCRIBE_SECONDS  # longer files are refused with an audio_too_long error
    threads: int = 0  # CPU threads for faster-whisper; 0: torch's setting
    min_window_s: float | None = MIN_WINDOW_S  # Whisper (both engines, a set language): a clip under 30 s is encoded
    # in a window of its length + 1 s, at least this long (whisper.cpp's audio_ctx; bench/results/whisper_window.md);
    # None: always 30 s

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ConfigError(f"transcribe.engine: {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.compute_type not in COMPUTE_TYPES:
            raise ConfigError(f"transcribe.compute_type: {self.compute_type!r} is not one of {', '.join(COMPUTE_TYPES)}")
        if self.beam_size < 1:
            raise ConfigError(f"transcribe.beam_size: must be at least 1, got {self.beam_size}")
        if self.max_seconds <= 0:
            raise ConfigError(f"transcribe.max_seconds: must be positive, got {self.max_seconds}")


@dataclass(frozen=True)
class Segment:
    """Recognised text of one chunk; times in seconds from the start of the file."""

    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Transcript:
    """One file's result. ``error`` is set (and ``text`` empty) when the file could not be transcribed."""

    path: str
    text: str
    segments: tuple[Segment, ...] = ()
    duration_s: float = 0.0
    note: str | None = None  # e.g. "no speech found"
    error: str | None = None
    error_kind: str | None = None  # MediaError.kind: missing_file, corrupt_audio, audio_too_long, ...

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["segments"] = [asdict(s) for s in self.segments]
        return d


def chunk_spans(wave: np.ndarray, vad: bool, cfg: VADConfig = VADConfig()) -> list[Span]:
    """Spans (in samples) of a 16 kHz waveform (samples,) to hand to the recogniser, each <= ``cfg.max_chunk_s``."""
    max_samples = int(cfg.max_chunk_s * SAMPLE_RATE_HZ)
    if not vad:
        return fixed_windows(len(wave), max_samples)
    return merge_spans(speech_spans(wave, cfg), max_samples, int(cfg.max_pause_s * SAMPLE_RATE_HZ))


def transcribe_wave(wave: np.ndarray, recognizer: Recognizer, vad: bool = True,
                    vad_config: VADConfig = VADConfig()) -> list[Segment]:
    """Timed segments of a 16 kHz mono waveform (samples,); chunks that decode to no text are left out."""
    spans = chunk_spans(wave, vad, vad_config)
    if not spans:
        return []
    texts = recognizer.decode([wave[s.start : s.end] for s in spans])
    return [Segment(round(s.start / SAMPLE_RATE_HZ, 3), round(s.end / SAMPLE_RATE_HZ, 3), t)
            for s, t in zip(spans, texts) if t]


def transcribe_waves(waves: list[np.ndarray], recognizer: Recognizer) -> list[list[Segment]]:
    """Timed segments of several 16 kHz waveforms: those within one window (30 s) are decoded together, in one
    batch through the model; a longer one is cut at pauses by voice activity detection first."""
    window = int(VADConfig().max_chunk_s * SAMPLE_RATE_HZ)
    out: list[list[Segment] | None] = [None] * len(waves)
    short = [i for i, w in enumerate(waves) if len(w) <= window]
    for i, text in zip(short, recognizer.decode([waves[i] for i in short]) if short else []):
        out[i] = [Segment(0.0, round(len(waves[i]) / SAMPLE_RATE_HZ, 3), text)] if text else []
    return [segs if segs is not None else transcribe_wave(w, recognizer, vad=True) for segs, w in zip(out, waves)]


def transcribe_file(path: str | os.PathLike, recognizer: Recognizer, cfg: TranscribeConfig = TranscribeConfig()) -> Transcript:
    """Transcribe one file.

    Raises:
        MediaError: the file is missing, unreadable, corrupt, empty or longer than ``cfg.max_seconds``.
    """
    path = os.fspath(path)
    wave = load_audio(path, SAMPLE_RATE_HZ, max_seconds=cfg.max_seconds)
    segments = transcribe_wave(wave, recognizer, cfg.vad, cfg.vad_config)
    return Transcript(path=path, text=" ".join(s.text for s in segments), segments=tuple(segments),
                      duration_s=round(len(wave) / SAMPLE_RATE_HZ, 3), note=None if segments else NO_SPEECH_NOTE)


def transcribe_files(paths: list[str | os.PathLike], cfg: TranscribeConfig = TranscribeConfig(),
                     recognizer: Recognizer | None = None, progress: bool | None = None) -> list[Transcript]:
    """Transcribe many files with one recogniser; a file that fails gets a Transcript with ``error`` set.

    Args:
        paths: audio files (wav, flac, ogg, mp3, ...).
        cfg: model, engine and VAD settings.
        recognizer: reuse a built recogniser; None builds one from ``cfg``.
        progress: show a tqdm bar over files; None: only on a terminal.
    """
    from tqdm.auto import tqdm

    if recognizer is None:
        recognizer = build_recognizer(cfg.model, cfg.engine, cfg.compute_type, cfg.language, cfg.beam_size, cfg.threads,
                                      cfg.min_window_s)
    results = []
    for path in tqdm(paths, desc="transcribe", unit="file", disable=None if progress is None else not progress):
        try:
            results.append(transcribe_file(path, recognizer, cfg))
        except MediaError as e:
            results.append(Transcript(path=os.fspath(path), text="", error=str(e), error_kind=e.kind))
    return results


def transcribe(paths: str | os.PathLike | list[str | os.PathLike], cfg: TranscribeConfig | None = None,
               **overrides) -> list[Transcript]:
    """Transcribe one file or many: ``transcribe("talk.wav", engine="transformers")[0].text``.

    Keyword overrides are fields of ``TranscribeConfig``.
    """
    from dataclasses import replace

    cfg = replace(cfg or TranscribeConfig(), **overrides)
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    return transcribe_files(paths, cfg)
