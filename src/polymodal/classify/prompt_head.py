"""The head of a zero-shot or CoOp run, rebuilt from its config: text tower, prompts and image-to-text mapping."""

from __future__ import annotations

import dataclasses

from torch import nn

from ..errors import ConfigError
from ..models import BUNDLED, EncoderConfig, build_encoder, encoder_key
from ..tuning.prompts import PromptHead, PromptLearner, class_names_from_labels, load_templates
from ..train.config import TrainConfig

LABEL_SPACE_TEXT = "minilm"  # the bundled sentence encoder whose space ConSE / DeViSE map images into
CONSE_IMAGE_ENCODERS = ("efficientnet-lite0",)  # bundled image encoders with an ImageNet classifier layer


class ProjectedText(nn.Module):
    """An ``align`` run's text tower followed by its projection: pooled is the joint-space embedding."""

    modality = "text"

    def __init__(self, encoder: nn.Module, projection: nn.Module):
        super().__init__()
        self.encoder, self.projection = encoder, projection
        self.tokenizer = encoder.tokenizer

    @property
    def model(self) -> nn.Module:  # the HF model, whose input embeddings CoOp's context replaces
        return self.encoder.model

    def prepare(self, items, train=False, rng=None):
        return self.encoder.prepare(items, train=train, rng=rng)

    def forward(self, inputs):
        from ..models.encoder import EncoderOutput

        out = self.encoder(inputs)
        return EncoderOutput(pooled=self.projection(out.pooled.float()), sequence=out.sequence, mask=out.mask)


def _align_run(cfg: TrainConfig):
    """The align run named by ``tuning.prompt.image_map: align:RUN``, checked against this config's image encoder."""
    from .run import load_run

    path = cfg.tuning.prompt.image_map.removeprefix("align:")
    run = load_run(path)
    (modality, enc), = cfg.model.encoders.items()
    if run.config.task != "align" or set(run.config.model.encoders) != {modality, "text"}:
        raise ConfigError(f"tuning.prompt.image_map: {path} is not an align run of {modality} and text")
    theirs = run.config.model.encoders[modality]
    if (theirs.model, theirs.image_size, theirs.clip_seconds) != (enc.model, enc.image_size, enc.clip_seconds):
        raise ConfigError(f"model.encoders.{modality}: must be the align run's own ({theirs.model}, image_size "
                          f"{theirs.image_size}), whose features its projection was trained on")
    if run.config.tuning.mode != "linear_probe" and modality not in run.config.model.align.locked:
        raise ConfigError(f"tuning.prompt.image_map: {path} tuned its {modality} tower; prompts classify cached features "
                          f"of the pretrained tower, so align with the {modality} tower locked (model.align.locked)")
    return run


def text_tower_config(cfg: TrainConfig) -> EncoderConfig:
    """The text encoder whose embedding space the classified features share."""
    p = cfg.tuning.prompt
    (modality, enc), = cfg.model.encoders.items()
    if p.text_tower:
        return EncoderConfig(p.text_tower, modality="text")
    if p.image_map != "none":
        return EncoderConfig(LABEL_SPACE_TEXT, modality="text")
    if enc.model in BUNDLED:
        raise ConfigError(
            f"tuning.prompt: {enc.model}'s features are not in any text encoder's space. Set tuning.prompt.image_map "
            "to conse (through its ImageNet classifier, no training) or devise:PATH, or use a CLIP model, or an "
            "aligned pair with tuning.prompt.text_tower")
    return dataclasses.replace(enc, modality="text")  # a two-tower model (CLIP): its own text tower


def build_image_map(cfg: TrainConfig, text: nn.Module, text_cfg: EncoderConfig) -> nn.Module | None:
    """ConSE or DeViSE from ``tuning.prompt.image_map``, or None when the features are already in the text space."""
    from ..models.label_space import ConSE, DeViSE, imagenet_name_embeddings

    spec = cfg.tuning.prompt.image_map
    (modality, enc), = cfg.model.encoders.items()
    if spec == "none":
        return None
    if spec.startswith("devise:"):
        return DeViSE.load(spec.removeprefix("devise:"))
    if enc.model not in CONSE_IMAGE_ENCODERS:
        raise ConfigError(f"tuning.prompt.image_map: conse needs an ImageNet classifier's outputs; {enc.model!r} has none "
                          f"(use {' or '.join(CONSE_IMAGE_ENCODERS)})")
    top_k = int(spec.split(":")[1]) if ":" in spec else 10
    classifier = build_encoder(enc).backbone._fc
    return ConSE(classifier, imagenet_name_embeddings(text, cache_key=encoder_key(text_cfg)), top_k=top_k)


def build_prompt_head(cfg: TrainConfig, labels: list[str]) -> PromptHead:
    """The PromptHead of a ``zeroshot`` or ``coop`` run over the single encoder of ``model.encoders``."""
    if len(cfg.model.encoders) != 1:
        raise ConfigError(f"tuning.mode {cfg.tuning.mode}: classify one modality by prompts; model.encoders names "
                          f"{len(cfg.model.encoders)} ({', '.join(cfg.model.encoders)})")
    p = cfg.tuning.prompt
    (modality, _), = cfg.model.encoders.items()
    if p.image_map.startswith("align:"):  # the run's own (maybe tuned) text tower, and both its projections
        run = _align_run(cfg)
        text = ProjectedText(run.model.encoders["text"], run.model.head.proj["text"])
        image_map = run.model.head.proj[modality]
    else:
        text_cfg = text_tower_config(cfg)
        text = build_encoder(text_cfg)
        if getattr(text, "modality", "text") != "text":
            raise ConfigError(f"tuning.prompt.text_tower: {text_cfg.model!r} is not a text encoder")
        image_map = build_image_map(cfg, text, text_cfg)
    names = class_names_from_labels(labels, p.class_names)
    learner = None
    if cfg.tuning.mode == "coop":
        learner = PromptLearner(text, names, n_ctx=p.n_ctx, ctx_init=p.ctx_init, class_specific=p.class_specific,
                                seed=cfg.optim.seed)
    return PromptHead(text, names, load_templates(p.templates), learner=learner, image_map=image_map,
                      logit_scale=p.logit_scale, modality=modality)
