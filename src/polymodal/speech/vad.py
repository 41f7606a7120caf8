"""Voice activity detection with Silero VAD, and grouping of speech into recogniser-sized chunks.

Silero VAD (MIT, the ``silero-vad`` wheel; its TorchScript model ships inside the wheel, no download) scores
32 ms windows of 16 kHz audio. Whisper reads 30 s at a time, so neighbouring speech regions are merged into
chunks of at most ``max_chunk_s`` (the WhisperX recipe, Bain et al. 2023): fewer, fuller windows decode faster
and give the decoder context, while silence between chunks is never decoded, which is where Whisper
hallucinates. A pause longer than ``max_pause_s`` still ends a chunk, so subtitle segments follow the speech.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np

from ..data.audio import SAMPLE_RATE_HZ
from ..errors import ConfigError

SILENCE_PEAK = 1e-4  # a waveform whose absolute peak is below this is digital silence; VAD is not run on it


@dataclass(frozen=True)
class VADConfig:
    """How speech is found and grouped."""

    threshold: float = 0.5  # speech probability above which a 32 ms window is speech
    min_speech_ms: int = 250  # shorter speech bursts are dropped
    min_silence_ms: int = 100  # shorter pauses do not end a speech region
    speech_pad_ms: int = 200  # kept on both sides of each region, so word edges are not clipped
    max_chunk_s: float = 30.0  # longest chunk handed to the recogniser (Whisper's window)
    # A longer pause starts a new chunk (and subtitle segment) even if both would fit. Smaller gives finer
    # timestamps, but Whisper transcribes single isolated words worse than words in context.
    max_pause_s: float = 3.0

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"vad.threshold: must be in (0, 1), got {self.threshold}")
        if not 1.0 <= self.max_chunk_s <= 30.0:
            raise ConfigError(f"vad.max_chunk_s: must be between 1 and 30 s (Whisper's window), got {self.max_chunk_s}")
        if min(self.min_speech_ms, self.min_silence_ms, self.speech_pad_ms, self.max_pause_s) < 0:
            raise ConfigError("vad: durations must not be negative")


@dataclass(frozen=True)
class Span:
    """A stretch of audio, in samples at 16 kHz: ``wave[start:end]``."""

    start: int
    end: int

    @property
    def seconds(self) -> tuple[float, float]:
        return self.start / SAMPLE_RATE_HZ, self.end / SAMPLE_RATE_HZ


@functools.lru_cache(maxsize=1)
def _silero_model():
    import torch

    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad  # importing silero_vad calls torch.set_num_threads(1)

        with warnings.catch_warnings():  # its loader uses deprecated importlib and torch.jit calls; not ours to fix
            warnings.simplefilter("ignore", DeprecationWarning)
            return load_silero_vad(onnx=False)
    except ImportError as e:
        from ..errors import ModelNotFoundError

        raise ModelNotFoundError(f"voice activity detection needs the silero-vad wheel ({e}); "
                                 "`pip install silero-vad`, or transcribe with vad off") from e
    finally:
        torch.set_num_threads(threads)


def speech_spans(wave: np.ndarray, cfg: VADConfig = VADConfig()) -> list[Span]:
    """Regions of speech in a 16 kHz waveform (samples,), in order, padded by ``cfg.speech_pad_ms``.

    Regions longer than ``cfg.max_chunk_s`` are split (at the longest pause Silero finds near the limit).
    Digital silence gives no spans without running the model.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.size == 0 or float(np.abs(wave).max()) < SILENCE_PEAK:
        return []
    import torch
    from silero_vad import get_speech_timestamps

    threads = torch.get_num_threads()
    try:
        with torch.inference_mode():
            stamps = get_speech_timestamps(
                torch.from_numpy(wave), _silero_model(), threshold=cfg.threshold, sampling_rate=SAMPLE_RATE_HZ,
                min_speech_duration_ms=cfg.min_speech_ms, min_silence_duration_ms=cfg.min_silence_ms,
                speech_pad_ms=cfg.speech_pad_ms, max_speech_duration_s=cfg.max_chunk_s - 2 * cfg.speech_pad_ms / 1000,
            )
    finally:
        torch.set_num_threads(threads)
    return [Span(int(s["start"]), int(s["end"])) for s in stamps]


def merge_spans(spans: list[Span], max_samples: int, max_gap: int | None = None) -> list[Span]:
    """Greedily join consecutive spans (and the pauses between them) while a chunk stays within ``max_samples``
    and the pause is at most ``max_gap`` samples (None: any pause).

    A span already longer than ``max_samples`` is cut into pieces of at most that length.
    """
    chunks: list[Span] = []
    for span in spans:
        for start in range(span.start, span.end, max_samples):
            piece = Span(start, min(span.end, start + max_samples))
            close = max_gap is None or piece.start - chunks[-1].end <= max_gap if chunks else False
            if chunks and close and piece.end - chunks[-1].start <= max_samples:
                chunks[-1] = Span(chunks[-1].start, piece.end)
            else:
                chunks.append(piece)
    return chunks


def fixed_windows(n_samples: int, max_samples: int) -> list[Span]:
    """Consecutive windows of ``max_samples`` covering ``n_samples`` (the no-VAD fallback)."""
    return [Span(s, min(n_samples, s + max_samples)) for s in range(0, n_samples, max_samples)]
