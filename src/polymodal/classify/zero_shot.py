"""Zero-shot image classification by prompts of class names (CLIP's recipe), with no training: the config of such a
run and a ready ``Run`` over any class names. ``polymodal zeroshot`` and the studio build it here."""

from __future__ import annotations

from pathlib import Path

from ..train.config import TrainConfig, config_from_dict
from .model import build_classifier
from .run import Run

DEFAULT_MODEL = "efficientnet-lite0"  # the bundled ImageNet model, mapped into MiniLM's sentence space by ConSE


def zero_shot_config(manifest: str = "-", model: str = DEFAULT_MODEL, *, templates: str = "photo",
                     image_map: str | None = None, text_tower: str | None = None, image_size: int | None = None,
                     out_dir: str | Path = "runs/zeroshot") -> TrainConfig:
    """The config of a zero-shot run (every row of ``manifest`` is test data; ``-``: no manifest, for ``zero_shot``).

    Args:
        image_map: none | conse | conse:TOP_K | devise:PATH; default conse for the bundled model (its output is
            ImageNet classes, not a shared text-image space), none for a CLIP model.
    """
    image_map = image_map or ("conse" if model == DEFAULT_MODEL else "none")
    encoder = {"model": model, **({"image_size": image_size} if image_size else {})}
    return config_from_dict({
        "data": {"manifest": manifest, "test_fraction": 0.0, "val_fraction": 0.0},
        "model": {"encoders": {"image": encoder}},
        "tuning": {"mode": "zeroshot", "prompt": {"templates": templates, "image_map": image_map,
                                                  "text_tower": text_tower}},
        "out_dir": str(out_dir),
    })


def zero_shot(classes: list[str], cfg: TrainConfig | None = None) -> Run:
    """A ``Run`` classifying images into ``classes`` by their prompts; ``predict`` / ``predict_items`` as any run."""
    from ..errors import PolymodalError

    classes = [c.strip() for c in classes if c.strip()]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise PolymodalError(f"zero-shot needs at least two different class names, got {classes}")
    cfg = cfg or zero_shot_config()
    model, _ = build_classifier(cfg, len(classes), live_encoders=True, labels=classes)
    return Run(Path(cfg.out_dir), cfg, classes, model.eval())
