"""Compression and export of trained runs: dynamic INT8 quantisation, magnitude pruning, ONNX export, and an ONNX
Runtime classifier that needs no PyTorch.

Names load lazily: ``polymodal.compress.runtime`` must import without torch (edge inference).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "compress_run": "polymodal.compress.runs",
    "quantize_int8": "polymodal.compress.quantize",
    "prune_magnitude": "polymodal.compress.prune",
    "export_onnx": "polymodal.compress.export",
    "OnnxClassifier": "polymodal.compress.runtime",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from .export import export_onnx
    from .prune import prune_magnitude
    from .quantize import quantize_int8
    from .runs import compress_run
    from .runtime import OnnxClassifier


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'polymodal.compress' has no attribute {name!r}")
