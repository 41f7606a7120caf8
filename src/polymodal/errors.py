"""Errors polymodal raises on purpose. Each message says what is wrong, where, and how to fix it."""

from __future__ import annotations


class PolymodalError(Exception):
    """Base class: an error with a message meant for the user, shown without a traceback by the CLI."""


class ModelNotFoundError(PolymodalError):
    """A model reference could not be resolved to files on this machine."""


class MediaError(PolymodalError):
    """An image or audio file could not be read, or breaks a limit.

    Attributes:
        kind: short machine-readable problem kind, e.g. ``"corrupt_image"``.
        path: the file.
    """

    def __init__(self, kind: str, path: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.path = path


class ManifestError(PolymodalError):
    """A manifest cannot be used as it is (bad rows that the caller did not ask to skip)."""


class ConfigError(PolymodalError):
    """A configuration value is invalid; the message names the field."""
