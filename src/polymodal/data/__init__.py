"""The data layer: manifests, validation, and per-modality decoding, preprocessing and augmentation."""

from .audio import AudioAugment, LogMel, load_audio, pad_or_trim, resample, spec_augment
from .check import CheckLimits, check_manifest, format_problems, require_clean
from .image import ImageAugment, ImageTransform, load_image
from .manifest import Example, Manifest, Problem, load_manifest
from .text import TruncationReport, tokenize

__all__ = [
    "AudioAugment", "CheckLimits", "Example", "ImageAugment", "ImageTransform", "LogMel", "Manifest", "Problem",
    "TruncationReport", "check_manifest", "format_problems", "load_audio", "load_image", "load_manifest",
    "pad_or_trim", "require_clean", "resample", "spec_augment", "tokenize",
]
