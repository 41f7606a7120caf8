"""Where media bytes come from: a file path, or an open binary file (an upload held in a ``BytesIO``)."""

from __future__ import annotations

import os
from typing import BinaryIO


def media_source(path: str | os.PathLike | BinaryIO) -> tuple[str | BinaryIO, str]:
    """(what the decoder opens, the name messages use): a file object as it is, named by its ``name`` attribute
    where it has one; a path as a string, named by itself."""
    if hasattr(path, "read"):
        return path, str(getattr(path, "name", "<stream>"))
    path = os.fspath(path)
    return path, path
