"""Audio: decoding with limits, mono, resampling, pad/trim, log-mel features, augmentation.

Waveforms are float32 numpy arrays in [-1, 1], shape (samples,). Log-mel features are (n_mels, frames).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch

from ..errors import MediaError
from ._source import media_source

SAMPLE_RATE_HZ = 16_000  # what most speech and audio encoders expect
MAX_AUDIO_SECONDS = 600.0  # longer files are refused by load_audio unless the caller raises the limit
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


def probe_audio(path: str | os.PathLike | BinaryIO) -> sf._SoundFileInfo:
    """Read an audio file's header (rate, frames, channels) without decoding it.

    Args:
        path: a file path, or a seekable binary file object (e.g. an upload held in a ``BytesIO``); messages name
            it by its ``name`` attribute where it has one.

    Raises:
        MediaError: ``missing_file``, ``unreadable_file`` or ``corrupt_audio``.
    """
    source, path = media_source(path)
    if isinstance(source, str):
        if not os.path.exists(path):
            raise MediaError("missing_file", path, f"{path}: file not found")
        if os.path.isdir(path):
            raise MediaError("unreadable_file", path, f"{path}: is a folder, not an audio file")
        if not os.access(path, os.R_OK):
            raise MediaError("unreadable_file", path, f"{path}: cannot read it; fix its permissions")
    try:
        info = sf.info(_rewound(source))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise MediaError("corrupt_audio", path, f"{path}: not a readable audio file ({e}); re-export it as wav/flac/ogg or remove it") from e
    if isinstance(source, str):
        with open(source, "rb") as f:
            missing = _wav_missing_bytes(f)
    else:
        missing = _wav_missing_bytes(_rewound(source))
    if missing:
        raise MediaError(
            "corrupt_audio", path,
            f"{path}: the header declares {missing} more bytes of audio than the file holds (truncated); re-export or remove it",
        )
    return info


def _rewound(source: str | BinaryIO) -> str | BinaryIO:
    """A file object back at its start (libsndfile reads from the current position); a path as it is."""
    if not isinstance(source, str):
        source.seek(0)
    return source


# A data size written by encoders that stream and cannot go back to fill it in: unknown, not truncated.
_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


def _wav_missing_bytes(f: BinaryIO) -> int:
    """Bytes a RIFF WAV's ``data`` chunk declares beyond the end of the file; 0 for whole files and other formats.

    libsndfile quietly shortens a truncated WAV to what is there, so its frame count cannot reveal the cut.
    """
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return 0
    size = f.seek(0, os.SEEK_END)
    f.seek(12)
    while len(chunk := f.read(8)) == 8:
        length = int.from_bytes(chunk[4:], "little")
        if chunk[:4] == b"data":
            return 0 if length in _WAV_UNKNOWN_SIZES else max(0, length - (size - f.tell()))
        f.seek(length + (length & 1), os.SEEK_CUR)  # chunks are padded to an even length
    return 0


def load_audio(
    path: str | os.PathLike | BinaryIO,
    sample_rate: int | None = SAMPLE_RATE_HZ,
    max_seconds: float | None = MAX_AUDIO_SECONDS,
) -> np.ndarray:
    """Decode an audio file to a mono float32 waveform, resampled to ``sample_rate`` (None keeps the file's rate).

    Args:
        path: a file path, or a seekable binary file object, as for ``probe_audio``.

    Raises:
        MediaError: ``missing_file``, ``unreadable_file``, ``corrupt_audio`` (also truncated or empty files)
            or ``audio_too_long`` (checked from the header, before decoding).
    """
    source, path = media_source(path)
    info = probe_audio(source)
    if info.frames <= 0 or info.samplerate <= 0:
        raise MediaError("corrupt_audio", path, f"{path}: audio has no samples; remove the row or replace the file")
    seconds = info.frames / info.samplerate
    if max_seconds is not None and seconds > max_seconds:
        raise MediaError(
            "audio_too_long", path,
            f"{path}: {seconds:.1f} s is longer than the limit of {max_seconds:g} s; cut it into segments or raise max_seconds",
        )
    try:
        wave, rate = sf.read(_rewound(source), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise MediaError("corrupt_audio", path, f"{path}: audio data is corrupt or truncated ({e}); re-export or remove it") from e
    if wave.shape[0] == 0:
        raise MediaError("corrupt_audio", path, f"{path}: audio decoded to no samples (truncated?); re-export or remove it")
    if wave.shape[0] < info.frames * 0.99:
        raise MediaError(
            "corrupt_audio", path,
            f"{path}: header says {info.frames} samples but only {wave.shape[0]} decode (truncated); re-export or remove it",
        )
    wave = wave.mean(axis=1)
    if not np.isfinite(wave).all():
        raise MediaError("corrupt_audio", path, f"{path}: audio holds NaN or infinite samples; re-export it")
    if sample_rate is not None and rate != sample_rate:
        wave = resample(wave, rate, sample_rate)
    return np.ascontiguousarray(wave, dtype=np.float32)


def resample(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling (libsoxr, 'HQ' quality) of a mono waveform."""
    import soxr

    if orig_rate == new_rate:
        return wave
    return soxr.resample(wave.astype(np.float32, copy=False), orig_rate, new_rate, quality="HQ").astype(np.float32)


def pad_or_trim(wave: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad at the end or cut to exactly ``length`` samples."""
    if wave.shape[-1] >= length:
        return wave[..., :length]
    return np.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(0, length - wave.shape[-1])])


@functools.lru_cache(maxsize=8)
def _mel_filters(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=f_min, max_frequency=f_max,
        sampling_rate=sample_rate, norm="slaney", mel_scale="slaney",
    )
    return torch.from_numpy(fb.astype(np.float32))  # (freq, mel)


@dataclass(frozen=True)
class LogMel:
    """Waveform (samples,) or (batch, samples) -> log-mel spectrogram (n_mels, frames) or (batch, n_mels, frames).

    Power spectrogram of a Hann-windowed STFT (centred, reflect-padded), Slaney mel filters, ``log(mel + 1e-6)``.
    """

    sample_rate: int = SAMPLE_RATE_HZ
    n_fft: int = 400  # 25 ms at 16 kHz
    hop_length: int = 160  # 10 ms at 16 kHz
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float | None = None  # None: Nyquist

    def key(self) -> str:
        return f"logmel:{self.sample_rate}:{self.n_fft}:{self.hop_length}:{self.n_mels}:{self.f_min}:{self.f_max}"

    def __call__(self, wave: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(wave, dtype=torch.float32)
        # Reflect padding needs more than n_fft/2 samples; a shorter clip is zero-padded to n_fft first.
        if x.shape[-1] <= self.n_fft // 2:
            x = torch.nn.functional.pad(x, (0, self.n_fft - x.shape[-1]))
        spec = torch.stft(
            x, self.n_fft, self.hop_length, window=torch.hann_window(self.n_fft, device=x.device), center=True,
            pad_mode="reflect", return_complex=True,
        ).abs().pow(2)  # (..., freq, frames)
        fb = _mel_filters(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max or self.sample_rate / 2)
        fb = fb.to(x.device)
        mel = torch.matmul(spec.transpose(-1, -2), fb).transpose(-1, -2)
        return torch.log(mel + 1e-6)


@dataclass(frozen=True)
class AudioAugment:
    """Train-time audio augmentation; each part is off when its strength is 0."""

    noise_snr_db: tuple[float, float] | None = (10.0, 40.0)  # white noise at an SNR drawn from this range
    noise_p: float = 0.5  # probability of adding noise
    max_shift: float = 0.1  # circular time shift, as a fraction of the clip
    gain_db: float = 6.0  # gain drawn from [-g, +g] dB
    freq_masks: int = 2  # SpecAugment (Park et al. 2019): number of frequency masks
    freq_mask_width: int = 8  # in mel bins
    time_masks: int = 2
    time_mask_width: int = 20  # in frames


def add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise so that signal power / noise power equals ``snr_db``."""
    power = float(np.mean(wave.astype(np.float64) ** 2))
    if power == 0.0:
        return wave
    noise = rng.standard_normal(wave.shape) * np.sqrt(power / 10 ** (snr_db / 10))
    return (wave + noise).astype(np.float32)


def time_shift(wave: np.ndarray, shift: int) -> np.ndarray:
    """Circular shift by ``shift`` samples along the last axis (positive: later)."""
    return np.roll(wave, shift, axis=-1)


def apply_gain(wave: np.ndarray, gain_db: float) -> np.ndarray:
    return (wave * 10 ** (gain_db / 20)).astype(np.float32)


def augment_wave(wave: np.ndarray, aug: AudioAugment, rng: np.random.Generator) -> np.ndarray:
    """Waveform augmentation: shift, gain, then noise."""
    if aug.max_shift > 0:
        limit = int(aug.max_shift * wave.shape[-1])
        wave = time_shift(wave, int(rng.integers(-limit, limit + 1)))
    if aug.gain_db > 0:
        wave = apply_gain(wave, float(rng.uniform(-aug.gain_db, aug.gain_db)))
    if aug.noise_snr_db is not None and rng.random() < aug.noise_p:
        wave = add_noise(wave, float(rng.uniform(*aug.noise_snr_db)), rng)
    return wave


def spec_augment(mel: torch.Tensor, aug: AudioAugment, rng: np.random.Generator) -> torch.Tensor:
    """SpecAugment frequency and time masks on (n_mels, frames); masked cells take the spectrogram's mean."""
    mel = mel.clone()
    fill = mel.mean()
    n_mels, frames = mel.shape[-2:]
    for _ in range(aug.freq_masks):
        w = int(rng.integers(0, aug.freq_mask_width + 1))
        f0 = int(rng.integers(0, max(1, n_mels - w)))
        mel[..., f0 : f0 + w, :] = fill
    for _ in range(aug.time_masks):
        w = int(rng.integers(0, min(aug.time_mask_width, frames) + 1))
        t0 = int(rng.integers(0, max(1, frames - w)))
        mel[..., :, t0 : t0 + w] = fill
    return mel
