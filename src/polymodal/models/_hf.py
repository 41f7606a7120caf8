"""Loading Hugging Face models quietly, and CLIP towers with the projection size of the full model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and per-file progress bars (a tower loaded from a two-tower checkpoint
    reports every weight of the other tower as unexpected, which is expected)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_clip_tower(model_dir: str | Path, tower: str):
    """CLIP's text or vision tower with its projection into the joint space. (batch, projection_dim) embeddings.

    ``CLIP*ModelWithProjection.from_pretrained`` on a full CLIP folder would take the tower config's default
    projection size (512) instead of the model's; the full config says the real one.
    """
    from transformers import AutoConfig, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    full = AutoConfig.from_pretrained(model_dir)
    cls = CLIPTextModelWithProjection if tower == "text" else CLIPVisionModelWithProjection
    if full.model_type != "clip":  # already a single-tower folder
        with quiet_transformers():
            return cls.from_pretrained(model_dir)
    config = full.text_config if tower == "text" else full.vision_config
    config.projection_dim = full.projection_dim
    with quiet_transformers():
        return cls.from_pretrained(model_dir, config=config)
