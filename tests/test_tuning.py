"""LoRA on every encoder family: only adapters train, outputs start unchanged, merging keeps the function."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.models import EncoderConfig, build_encoder, resolve_model
from polymodal.models.audio import build_audio_cnn, build_mel_efficientnet
from polymodal.models.image import EFFICIENTNET_LITE0_WEIGHTS, EfficientNetLiteEncoder, build_efficientnet_lite0
from polymodal.tuning import apply_lora, default_targets, freeze_norm_statistics, merge_lora

IMAGE = [Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))]
AUDIO = [(0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)]

def _real_lite0():
    # Random EfficientNet weights give near-zero activations; the bundled ImageNet weights (19 MB) load in 0.1 s.
    return build_efficientnet_lite0(resolve_model(EFFICIENTNET_LITE0_WEIGHTS))


CASES = {
    "efficientnet-lite0": (lambda d: EfficientNetLiteEncoder(_real_lite0(), image_size=64), IMAGE),
    "efficientnet-lite0-mel": (lambda d: build_mel_efficientnet(_real_lite0(), clip_seconds=0.5), AUDIO),
    "audio-cnn": (lambda d: build_audio_cnn(width=4, clip_seconds=0.5), AUDIO),
    "hf-bert": (lambda d: build_encoder(EncoderConfig(str(d("bert")))), ["a short text", "another one"]),
    "hf-whisper": (lambda d: build_encoder(EncoderConfig(str(d("whisper")))), AUDIO),
}


@pytest.mark.parametrize("name", list(CASES))
def test_lora_trains_adapters_only_and_merges_to_the_same_function(name, tiny_model_dir):
    build, items = CASES[name]
    torch.manual_seed(0)
    enc = build(tiny_model_dir)
    assert default_targets(enc)
    inputs = enc.prepare(items)
    with torch.no_grad():
        base = enc(inputs).pooled
    n = apply_lora(enc, r=2)
    trainable = [n_ for n_, p in enc.named_parameters() if p.requires_grad]
    assert n > 0 and trainable and all("lora_" in t for t in trainable)
    with torch.no_grad():
        torch.testing.assert_close(enc(inputs).pooled, base)  # lora_B starts at zero: the function is unchanged
    enc.train()
    freeze_norm_statistics(enc)  # as the training loop does for LoRA
    buffers = {k: v.clone() for k, v in enc.named_buffers()}
    opt = torch.optim.SGD([p for p in enc.parameters() if p.requires_grad], lr=0.5)
    enc(inputs).pooled.square().mean().backward()
    opt.step()
    enc.eval()
    assert all(torch.equal(v, buffers[k]) for k, v in enc.named_buffers())  # BatchNorm statistics untouched
    with torch.no_grad():
        adapted = enc(inputs).pooled
        assert not torch.allclose(adapted, base)
        merge_lora(enc)
        assert not any("lora_" in n_ for n_, _ in enc.named_parameters())
        torch.testing.assert_close(enc(inputs).pooled, adapted, atol=1e-5, rtol=1e-4)
