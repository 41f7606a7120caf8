"""The ``polymodal`` command line. Library code never imports this package."""

from .main import main

__all__ = ["main"]
