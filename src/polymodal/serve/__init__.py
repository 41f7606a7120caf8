"""HTTP serving of a trained run: FastAPI on uvicorn, dynamic batching, limits, metrics, graceful drain.

FastAPI, uvicorn and torch load on first use of a name below, so the CLI can read ``ServeConfig`` for its flags
without paying for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {"ServeConfig": "polymodal.serve.config", "create_app": "polymodal.serve.app",
            "serve": "polymodal.serve.server"}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from .app import create_app
    from .config import ServeConfig
    from .server import serve


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'polymodal.serve' has no attribute {name!r}")
