"""polymodal: build multimodal (text, image, audio) models from open pretrained models, end to end.

Heavy dependencies (torch, transformers) load lazily: ``import polymodal`` is fast, and the names below are
imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "fit": "polymodal.api",
    "load": "polymodal.api",
    "Model": "polymodal.api",
    "EncoderConfig": "polymodal.models",
    "build_encoder": "polymodal.models",
    "resolve_model": "polymodal.models",
    "Encoder": "polymodal.models",
    "EncoderOutput": "polymodal.models",
    "load_manifest": "polymodal.data",
    "check_manifest": "polymodal.data",
    "require_clean": "polymodal.data",
    "encode": "polymodal.features",
    "Features": "polymodal.features",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from .api import Model, fit, load
    from .data import check_manifest, load_manifest, require_clean
    from .features import Features, encode
    from .models import Encoder, EncoderConfig, EncoderOutput, build_encoder, resolve_model


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'polymodal' has no attribute {name!r}")
