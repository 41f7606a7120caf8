"""Request inputs -> decoded model inputs, with every limit of ``ServeConfig`` enforced on the way.

The media decoders are polymodal's own (``load_image``, ``load_audio``), reading from memory, so an upload meets
the same checks as a file in a manifest: the pixel count and the audio length are read from the header before
anything is decoded (Pillow's decompression-bomb guard included), and a WAV whose header promises more samples
than it holds is refused. Each violation becomes a ``RequestRejected`` with a 413 (too large) or a 422 (not
usable) and a message that says what to change.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

from ..data.audio import load_audio
from ..data.image import load_image
from ..errors import MediaError
from .config import ServeConfig

MODALITIES = ("text", "image", "audio")

# Leading bytes of each accepted container: the format is decided before a decoder sees the data.
_IMAGE_MAGIC = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",), "GIF": (b"GIF87a", b"GIF89a"), "BMP": (b"BM",)}
_AUDIO_MAGIC = {"FLAC": (b"fLaC",), "OGG": (b"OggS",)}
# MediaError kinds that mean "too large" rather than "not usable".
_TOO_LARGE = {"too_many_pixels", "audio_too_long"}


class RequestRejected(Exception):
    """A client error: the HTTP status, a short machine-readable kind and a message for the user."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


@dataclass
class RawInputs:
    """One request's inputs as they arrived: text, and media still encoded (bytes)."""

    text: str | None = None
    image: bytes | None = None
    audio: bytes | None = None

    def given(self) -> list[str]:
        return [m for m in MODALITIES if getattr(self, m) is not None]


def decode_base64(value: str, field: str) -> bytes:
    """Base64 (standard alphabet, padded) or a ``data:...;base64,`` URL -> bytes.

    Raises:
        RequestRejected: 422 when the text is not base64.
    """
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestRejected(422, "bad_base64", f"{field}: not valid base64 ({e}); send the file's bytes base64-encoded") from e


def check_inputs(raw: RawInputs, modalities: tuple[str, ...], cfg: ServeConfig) -> None:
    """The checks that need no decoding: something given, only modalities the run knows, text length and encoding.

    Raises:
        RequestRejected: 422, or 413 for a text over ``max_text_chars``.
    """
    if raw.text == "":
        raw.text = None  # an empty cell is a missing modality, as in a manifest
    given = raw.given()
    if not given:
        raise RequestRejected(422, "no_inputs", f"no input given: send at least one of {', '.join(modalities)}")
    unknown = [m for m in given if m not in modalities]
    if unknown:
        raise RequestRejected(422, "unsupported_modality",
                              f"this model was trained on {', '.join(modalities)}; it cannot use {', '.join(unknown)}")
    if raw.text is not None:
        if len(raw.text) > cfg.max_text_chars:
            raise RequestRejected(413, "text_too_long",
                                  f"text: {len(raw.text):,} characters exceeds the limit of {cfg.max_text_chars:,}; shorten it")
        if not raw.text.strip():
            raise RequestRejected(422, "empty_text", "text: only whitespace; send the text, or leave the field out")
        try:
            raw.text.encode("utf-8")
        except UnicodeEncodeError as e:
            # JSON may carry lone surrogates (\ud800) that no tokenizer can encode.
            raise RequestRejected(422, "bad_text", f"text: not valid Unicode ({e.reason} at {e.start})") from e


def sniff_format(data: bytes, modality: str) -> str | None:
    """The container format from the leading bytes, e.g. ``"PNG"`` or ``"WAV"``; None when unrecognised."""
    if modality == "image":
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return "WEBP"
        table = _IMAGE_MAGIC
    else:
        if data[:4] in (b"RIFF", b"RIFX", b"RF64") and data[8:12] == b"WAVE":
            return "WAV"
        table = _AUDIO_MAGIC
    return next((name for name, magics in table.items() if any(data.startswith(m) for m in magics)), None)


def decode_inputs(raw: RawInputs, cfg: ServeConfig, sample_rates: dict[str, int | None]) -> dict[str, Any]:
    """Decoded inputs per given modality: the text, a PIL RGB image, a mono float32 waveform at the encoder's rate.

    Args:
        sample_rates: modality -> the encoder's sample rate (used for audio).

    Raises:
        RequestRejected: 413 over a size limit, 422 for a format not allowed, corrupt or truncated media.
    """
    out: dict[str, Any] = {}
    if raw.text is not None:
        out["text"] = raw.text
    for modality, allowed in (("image", cfg.image_formats), ("audio", cfg.audio_formats)):
        data = getattr(raw, modality)
        if data is None:
            continue
        fmt = sniff_format(data, modality)
        if fmt not in allowed:
            what = f"a {fmt} file" if fmt else "not a recognised file"
            raise RequestRejected(422, "unsupported_format",
                                  f"{modality}: {what}; accepted formats are {', '.join(allowed)}")
        stream = io.BytesIO(data)
        stream.name = modality  # how the decoders' messages name it
        try:
            if modality == "image":
                out[modality] = load_image(stream, max_pixels=cfg.max_image_pixels, max_aspect_ratio=cfg.max_aspect_ratio)
            else:
                out[modality] = load_audio(stream, sample_rate=sample_rates.get("audio"), max_seconds=cfg.max_audio_seconds)
        except MediaError as e:
            raise RequestRejected(413 if e.kind in _TOO_LARGE else 422, e.kind, str(e)) from e
    return out
