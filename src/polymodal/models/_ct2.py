"""Reader for CTranslate2's ``model.bin``: named arrays, without importing ctranslate2.

The layout is the one ``ctranslate2.specs.model_spec.ModelSpec._serialize`` writes (binary version 6),
little-endian throughout::

    u32 binary_version
    str spec_name            # str: u16 length including the NUL, utf-8 bytes, NUL
    u32 spec_revision
    u32 n_variables
    n_variables x {str name, u8 rank, rank x u32 dim, u8 dtype_id, u32 n_bytes, n_bytes of data}
    u32 n_aliases
    n_aliases x {str alias, str target_name}   # a variable stored once under two names (tied weights)

dtype ids follow ``DataType`` in ctranslate2's ``types.h``: float32, int8, int16, int32, float16, bfloat16.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelNotFoundError

SUPPORTED_BINARY_VERSIONS = (5, 6)  # 5 and 6 differ only in what the C++ side accepts, not in this layout
_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # None: bfloat16, unsupported by numpy


@dataclass(frozen=True)
class CT2Model:
    """The contents of a ``model.bin``.

    Attributes:
        spec: the specification's name, e.g. ``"WhisperSpec"``.
        revision: the specification's revision.
        variables: name -> array (read-only views of the file's bytes; copy before changing them).
        aliases: alias -> name of the variable it stands for.
    """

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.variables[self.aliases.get(name, name)]

    def __contains__(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables


class _Cursor:
    def __init__(self, buf: memoryview, path: str):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise ModelNotFoundError(f"{self.path}: model.bin ends early (at byte {len(self.buf)}, needs "
                                     f"{self.pos + n}); the file is truncated, so rebuild or re-download it")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = bytes(self.take(self.unpack("H")))
        return raw[:-1].decode("utf-8")  # drop the NUL


def read_ct2_model(path: str | os.PathLike) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (a file, or a model folder holding one).

    The arrays are memory-mapped, so reading a 150 MB model costs little until its values are used.

    Raises:
        ModelNotFoundError: the file is missing, truncated, of an unknown version or holds bfloat16 data.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no CTranslate2 model.bin here; give a faster-whisper / CTranslate2 model folder")
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ModelNotFoundError(f"{path}: model.bin is empty; rebuild or re-download it")
        buf = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    cur = _Cursor(buf, str(path))
    version = cur.unpack("I")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise ModelNotFoundError(f"{path}: CTranslate2 binary version {version}; this reader knows versions "
                                 f"{SUPPORTED_BINARY_VERSIONS} (re-convert the model with ctranslate2 >= 3)")
    spec = cur.string()
    revision = cur.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(cur.unpack("I")):
        name = cur.string()
        shape = tuple(cur.unpack("I") for _ in range(cur.unpack("B")))
        type_id = cur.unpack("B")
        n_bytes = cur.unpack("I")
        data = cur.take(n_bytes)
        dtype = _DTYPES[type_id] if type_id < len(_DTYPES) else None
        if dtype is None:
            raise ModelNotFoundError(f"{path}: variable {name!r} has dtype id {type_id} (bfloat16 or unknown); "
                                     "re-convert the model with --quantization float16 or float32")
        variables[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
    aliases = {}
    if cur.pos < len(buf):
        for _ in range(cur.unpack("I")):
            alias = cur.string()
            aliases[alias] = cur.string()
    return CT2Model(spec=spec, revision=revision, variables=variables, aliases=aliases)
