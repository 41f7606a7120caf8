"""Whisper's shortened encoder window (whisper.cpp's ``audio_ctx``): one place for the rule, the loop test and the
encoder forward on fewer frames, shared by both engines and by ASR fine-tuning.

Whisper's encoder reads a 30 s window: a 0.5 s clip is padded with 29.5 s of silence and costs as much as a 30 s
one. A clip shorter than the window is instead padded to ``clip + WINDOW_MARGIN_S`` seconds (at least
``min_window_s``) and only those log-mel frames go through the encoder, with the first positional embeddings (what
whisper.cpp and CTranslate2 do). Whisper was trained on 30 s windows only, and too short a window makes it loop
("one one one ..."): such an answer is decoded again with the full window (``looks_like_loop``).
bench/results/whisper_window.md measured the rule and its default.
"""

from __future__ import annotations

import torch
from torch import nn

WHISPER_WINDOW_S = 30.0  # Whisper's encoder window
HOP_LENGTH = 160  # samples per log-mel frame (10 ms at 16 kHz)
SAMPLE_RATE_HZ = 16_000
# The shortened window: clip + WINDOW_MARGIN_S, at least MIN_WINDOW_S. Shorter windows made Whisper base loop on
# half-second digits (WER 123-301 %, bench/results/whisper_window.md).
WINDOW_MARGIN_S, MIN_WINDOW_S = 1.0, 10.0
# A shortened window's answer may hold at most MIN_TOKENS + MAX_TOKENS_PER_S per second of audio (fast speech is
# about 4 tokens a second); more is a decoding loop.
MIN_TOKENS, MAX_TOKENS_PER_S = 8, 10
MAX_COMPRESSION_RATIO = 2.4  # Whisper's own test of a repetitive answer (gzip ratio of the text)


def window_seconds(seconds: float, min_window_s: float | None, margin_s: float | None = WINDOW_MARGIN_S,
                   full_s: float = WHISPER_WINDOW_S, language: str | None = "en") -> float:
    """The encoder window for a clip of ``seconds``: the clip plus ``margin_s`` (at least ``min_window_s``), at most
    the model's ``full_s``. The full window where ``min_window_s`` or ``margin_s`` is None, without a set language
    (language detection reads the full window), or for a clip longer than the window (cut into full windows)."""
    if min_window_s is None or margin_s is None or language is None or seconds > full_s:
        return full_s
    return min(full_s, max(min_window_s, seconds + margin_s))


def window_frames(window_s: float) -> int:
    """Log-mel frames of a window: an even count (the encoder's second convolution has stride 2)."""
    samples = round(window_s * SAMPLE_RATE_HZ)
    return 2 * (samples // (2 * HOP_LENGTH))


def token_cap(seconds: float) -> int:
    """Most text tokens a shortened window's answer to a clip of ``seconds`` may hold before it counts as a loop."""
    return int(MIN_TOKENS + MAX_TOKENS_PER_S * seconds)


def looks_like_loop(text: str, n_tokens: int, cap: int) -> bool:
    """Whether a shortened window's answer looks like a decoding loop, to decode again with the full window: the token
    cap reached, or a gzip compression ratio above Whisper's 2.4 (faster-whisper's own ``get_compression_ratio``)."""
    from faster_whisper.transcribe import get_compression_ratio

    return n_tokens >= cap or get_compression_ratio(text) > MAX_COMPRESSION_RATIO


def encode_frames(encoder: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Whisper encoder outputs (batch, frames // 2, d_model) of log-mel ``features`` (batch, n_mels, frames).

    At the full window this is transformers' own ``WhisperEncoder.forward``; on fewer frames (transformers refuses
    them) it runs the same layers with the first ``frames // 2`` positional embeddings, as whisper.cpp's
    ``audio_ctx`` and CTranslate2 do. tests/test_speech.py checks that the two agree exactly at the full window.
    Layer drop is not applied (the frozen-encoder and decoding paths never train the encoder).
    """
    full = encoder.config.max_source_positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]
    if features.shape[-1] == full:
        return encoder(features).last_hidden_state
    return _encoder_layers(encoder, features)


def _encoder_layers(encoder: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """``WhisperEncoder.forward`` (transformers 5) without its check that ``features`` holds the full window."""
    if features.shape[-1] % 2 or features.shape[-1] // 2 > encoder.embed_positions.num_embeddings:
        raise ValueError(f"Whisper's encoder takes an even number of frames up to "
                         f"{2 * encoder.embed_positions.num_embeddings}, got {features.shape[-1]}")
    hidden = nn.functional.gelu(encoder.conv1(features))
    hidden = nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    hidden = nn.functional.dropout(hidden, p=encoder.dropout, training=encoder.training)
    for layer in encoder.layers:
        hidden = layer(hidden, None)
    return encoder.layer_norm(hidden)
