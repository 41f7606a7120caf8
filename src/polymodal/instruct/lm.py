"""Causal language models through the one resolver (the bundled SmolLM2-135M-Instruct is ``models._smollm2``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ModelNotFoundError
from ..models._smollm2 import SMOLLM2_NAME
from ..run_folder import is_run, run_task


def is_instruct_run(path: Path) -> bool:
    """Whether ``path`` is a run folder of task ``instruct``."""
    return is_run(path) and run_task(path) == "instruct"


def load_causal_lm(ref: str | os.PathLike = SMOLLM2_NAME, *, dtype: torch.dtype = torch.float32):
    """A causal language model and its tokenizer, ready for inference (``eval()`` mode).

    Args:
        ref: a resolver reference (``smollm2``, a local folder, ``pkg:...``, a hub id) or an ``instruct`` run
            folder, which gives its base model with the run's LoRA adapters merged in (a run's projector serves
            images and audio, see ``polymodal.instruct.load_instruct``; a plain causal LM has no use for it).
        dtype: weights' dtype.

    Returns:
        (model, tokenizer): a ``transformers`` ``PreTrainedModel`` and its tokenizer, with a pad token set.

    Raises:
        ModelNotFoundError: the reference does not resolve (with what to do).
    """
    from ..models import resolve_model

    path = Path(os.fspath(ref)).expanduser()
    if is_instruct_run(path):
        from .model import load_instruct

        run = load_instruct(path, dtype=dtype)
        run.merge()
        return run.lm, run.tokenizer
    return load_pretrained_lm(resolve_model(ref), dtype=dtype)


def load_pretrained_lm(folder: Path, *, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a transformers folder, in eval mode, with a pad token (the EOS token if none)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"{folder}: not a causal language model folder transformers can load ({e})") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer
