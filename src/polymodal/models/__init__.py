"""Pretrained encoders for text, images and audio behind one small interface, and the model resolver."""

from ._registry import (BUNDLED, DEFAULT_ENCODERS, EncoderConfig, build_encoder, build_frozen_encoder, encoder_key,
                        encoder_modality, frozen_backend)
from ._resolver import resolve_model
from .encoder import Encoder, EncoderOutput

__all__ = [
    "BUNDLED", "DEFAULT_ENCODERS", "Encoder", "EncoderConfig", "EncoderOutput", "build_encoder", "build_frozen_encoder",
    "encoder_key", "encoder_modality", "frozen_backend", "resolve_model",
]
