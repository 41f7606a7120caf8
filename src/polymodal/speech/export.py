"""Export a tuned asr run: back to the faster-whisper (CTranslate2) format, or as a plain transformers folder.

LoRA adapters are merged into the weights first (a CTranslate2 model has no adapters). The CTranslate2 folder is
written by CTranslate2's own converter (``TransformersConverter``), so faster-whisper, ``polymodal transcribe
--model FOLDER`` and any CTranslate2 runtime load it like the bundled model; ``quantization`` stores the weights
as int8 (what faster-whisper computes in on the CPU anyway), float16 or float32.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .._paths import atomic_dir
from ..errors import ConfigError, PolymodalError

FORMATS = ("ct2", "hf")
QUANTIZATIONS = ("int8", "float16", "float32")


def export_asr_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, fmt: str = "ct2",
                   quantization: str = "int8", force: bool = False) -> Path:
    """Write the run's tuned Whisper to ``out_dir`` (default ``RUN/export-ct2`` or ``RUN/export-hf``).

    Raises:
        ConfigError: unknown format or quantization.
        PolymodalError: the folder exists (without ``force``).
    """
    from ..tuning.lora import has_lora, merge_lora
    from .asr_task import load_asr_run

    if fmt not in FORMATS:
        raise ConfigError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization: {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / f"export-{fmt}"
    if out.exists() and not force:
        raise PolymodalError(f"{out} exists; pass --force to replace it, or choose another --out")
    model, processor = load_asr_run(run_dir)
    if has_lora(model):
        merge_lora(model)
    with atomic_dir(out) as tmp:
        if fmt == "hf":
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
            return out
        from ctranslate2.converters import TransformersConverter

        with tempfile.TemporaryDirectory() as hf:
            model.save_pretrained(hf)
            processor.save_pretrained(hf)
            files = [f for f in ("tokenizer.json", "preprocessor_config.json") if (Path(hf) / f).exists()]
            TransformersConverter(hf, copy_files=files).convert(str(tmp), quantization=quantization, force=True)
    return out
