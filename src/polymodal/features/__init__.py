"""Frozen features: encode a manifest column once, cache the result on disk keyed by model, preprocessing and content."""

from .cache import FeatureCache
from .extract import Features, encode, load_input

__all__ = ["FeatureCache", "Features", "encode", "load_input"]
