"""Pretrained encoders for text, images and audio behind one small interface, and the model resolver."""

from ._registry import BUNDLED, DEFAULT_ENCODERS, EncoderConfig, build_encoder, encoder_key, encoder_modality
from ._resolver import resolve_model
from .encoder import Encoder, EncoderOutput

__all__ = [
    "BUNDLED", "DEFAULT_ENCODERS", "Encoder", "EncoderConfig", "EncoderOutput", "build_encoder", "encoder_key",
    "encoder_modality", "resolve_model",
]
