"""Small real media files written on the fly for the data-layer tests, and where the shared real data lives."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image


def shared_data_dir() -> Path:
    """``$POLYMODAL_SHARED_DATA``, else ``../shared/data`` next to the project root."""
    return Path(os.environ.get("POLYMODAL_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def noise_image(size: tuple[int, int] = (32, 24), seed: int = 0) -> Image.Image:
    """An RGB image of uniform noise; ``size`` is (width, height)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_image(path: Path, size: tuple[int, int] = (32, 24), seed: int = 0) -> Path:
    """A noise image; the format follows the suffix (.png, .jpg)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(size, seed).save(path)
    return path


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A 1-bit greyscale PNG whose header says ``width`` x ``height`` but which holds almost no pixel data.

    Enough for a decoder to read the size (a decompression bomb as far as a header check goes) without
    this test writing or decoding a huge image.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    idat = zlib.compress(b"\x00" * 64)  # a few rows' worth; the rest is missing
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def sine(freq_hz: float, sample_rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sample_rate * seconds))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def write_audio(path: Path, wave: np.ndarray, sample_rate: int, subtype: str | None = None) -> Path:
    """Write ``wave`` (samples,) or (samples, channels); the format follows the suffix (.wav, .ogg, .flac)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sample_rate, subtype=subtype)
    return path


def truncate(src: Path, dst: Path, keep: float = 0.5) -> Path:
    """Copy the first ``keep`` fraction of a file's bytes, as an interrupted download would leave it."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst
