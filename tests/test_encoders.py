"""Every encoder kind, with tiny random weights, through the same checks (the timm test_models pattern)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.errors import ConfigError
from polymodal.models import Encoder, EncoderConfig, build_encoder, encoder_key, encoder_modality
from polymodal.models.audio import build_audio_cnn, build_mel_efficientnet
from polymodal.models.image import EfficientNetLiteEncoder, build_efficientnet_lite0


def _random_effnet(size: int = 32):
    return EfficientNetLiteEncoder(build_efficientnet_lite0(None), image_size=size)


# (id, how to build, modality)
ENCODERS = {
    "hf-bert": (lambda d: build_encoder(EncoderConfig(str(d("bert")))), "text"),
    "hf-clip-text": (lambda d: build_encoder(EncoderConfig(str(d("clip")), modality="text")), "text"),
    "hf-clip-image": (lambda d: build_encoder(EncoderConfig(str(d("clip")), modality="image")), "image"),
    "hf-vit": (lambda d: build_encoder(EncoderConfig(str(d("vit")))), "image"),
    "hf-wav2vec2": (lambda d: build_encoder(EncoderConfig(str(d("wav2vec2")))), "audio"),
    "hf-whisper": (lambda d: build_encoder(EncoderConfig(str(d("whisper")))), "audio"),
    "hf-ast": (lambda d: build_encoder(EncoderConfig(str(d("ast")))), "audio"),
    "efficientnet-lite0": (lambda d: _random_effnet(), "image"),
    "efficientnet-lite0-mel": (lambda d: build_mel_efficientnet(build_efficientnet_lite0(None), clip_seconds=1.0), "audio"),
    "audio-cnn": (lambda d: build_audio_cnn(width=4, clip_seconds=1.0), "audio"),
}


def _items(modality: str, sample_rate: int = 16_000) -> list:
    rng = np.random.default_rng(0)
    if modality == "text":
        return ["a short one", "a rather longer sentence about a cat that sat on a mat"]
    if modality == "image":
        return [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(2)]
    return [(0.1 * rng.standard_normal(sample_rate)).astype(np.float32),
            (0.1 * rng.standard_normal(sample_rate // 2)).astype(np.float32)]


@pytest.fixture(params=list(ENCODERS), scope="module")
def encoder_case(request, tiny_model_dir):
    build, modality = ENCODERS[request.param]
    torch.manual_seed(0)
    return build(tiny_model_dir), modality


def _run(enc, items, train=False, rng=None):
    with torch.no_grad():
        return enc(enc.prepare(items, train=train, rng=rng))


def test_output_contract(encoder_case):
    enc, modality = encoder_case
    assert isinstance(enc, Encoder) and enc.modality == modality
    out = _run(enc, _items(modality, getattr(enc, "sample_rate", 16_000)))
    b, t = out.mask.shape
    assert out.pooled.shape == (2, enc.dim)
    assert out.sequence.shape == (2, t, enc.seq_dim)
    assert out.mask.dtype == torch.bool and out.mask.any(1).all()
    assert torch.isfinite(out.pooled).all() and torch.isfinite(out.sequence).all()


def test_batch_does_not_change_an_items_features(encoder_case):
    enc, modality = encoder_case
    items = _items(modality, getattr(enc, "sample_rate", 16_000))
    together = _run(enc, items).pooled
    alone = torch.cat([_run(enc, [x]).pooled for x in items])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-3)


def test_padding_is_masked(encoder_case):
    enc, modality = encoder_case
    if modality == "image":
        pytest.skip("images are never padded")
    out = _run(enc, _items(modality, getattr(enc, "sample_rate", 16_000)))
    if getattr(enc, "kind", "") == "audio-spectrogram-transformer":
        pytest.skip("AST's feature extractor pads every clip to a fixed length and attends to all of it")
    counts = out.mask.sum(1)
    if modality == "text":
        assert counts[0] < counts[1]  # the short text has fewer real tokens
    else:
        assert counts[1] < counts[0]  # the half-second clip covers fewer frames than the one-second clip


def test_augmentation_only_in_training_and_seeded(encoder_case):
    enc, modality = encoder_case
    if modality == "text":
        pytest.skip("text has no augmentation")
    items = _items(modality, getattr(enc, "sample_rate", 16_000))
    key = next(iter(enc.prepare(items)))
    eval_a, eval_b = enc.prepare(items)[key], enc.prepare(items)[key]
    torch.testing.assert_close(eval_a, eval_b)
    train_1 = enc.prepare(items, train=True, rng=np.random.default_rng(1))[key]
    train_1b = enc.prepare(items, train=True, rng=np.random.default_rng(1))[key]
    train_2 = enc.prepare(items, train=True, rng=np.random.default_rng(2))[key]
    torch.testing.assert_close(train_1, train_1b)
    assert not torch.equal(train_1, eval_a) and not torch.equal(train_1, train_2)


def test_gradients_reach_the_weights(encoder_case):
    # Fine-tuning (full or LoRA) depends on the encoder being differentiable end to end.
    enc, modality = encoder_case
    enc.train()
    try:
        out = enc(enc.prepare(_items(modality, getattr(enc, "sample_rate", 16_000))))
        out.pooled.square().mean().backward()
        grads = [p.grad for p in enc.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    finally:
        enc.zero_grad(set_to_none=True)
        enc.eval()


def test_modality_is_inferred_without_loading_weights(tiny_model_dir):
    assert encoder_modality(EncoderConfig(str(tiny_model_dir("bert")))) == "text"
    assert encoder_modality(EncoderConfig(str(tiny_model_dir("whisper")))) == "audio"
    assert encoder_modality(EncoderConfig(str(tiny_model_dir("vit")))) == "image"
    assert encoder_modality(EncoderConfig("efficientnet-lite0")) == "image"


def test_two_tower_model_needs_a_modality(tiny_model_dir):
    with pytest.raises(ConfigError, match="encoder.modality"):
        build_encoder(EncoderConfig(str(tiny_model_dir("clip"))))
    with pytest.raises(ConfigError, match="not a image encoder"):
        build_encoder(EncoderConfig(str(tiny_model_dir("whisper")), modality="image"))


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="encoder.modality"):
        EncoderConfig("minilm", modality="video")
    with pytest.raises(ConfigError, match="encoder.clip_seconds"):
        EncoderConfig("minilm", clip_seconds=0)


def test_folder_without_config_is_refused_clearly(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        build_encoder(EncoderConfig(str(tmp_path)))


def test_encoder_key_changes_with_settings_and_weights(tiny_model_dir, tmp_path):
    import shutil

    src = tiny_model_dir("bert")
    copy = shutil.copytree(src, tmp_path / "bert")
    a = encoder_key(EncoderConfig(str(copy)))
    assert a == encoder_key(EncoderConfig(str(copy)))
    assert a != encoder_key(EncoderConfig(str(copy), max_tokens=16))
    assert a == encoder_key(EncoderConfig(str(copy), augment=False))  # augmentation never touches cached features
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"\0")
    assert a != encoder_key(EncoderConfig(str(copy)))


def test_time_shift_of_a_short_clip_stays_inside_the_sound():
    from polymodal.data.audio import AudioAugment

    aug = AudioAugment(noise_snr_db=None, gain_db=0.0, max_shift=0.5, freq_masks=0, time_masks=0)
    enc = build_audio_cnn(width=4, clip_seconds=1.0, augment=aug)
    t = np.arange(6400) / 16_000  # a 0.4 s tone in a 1 s window
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for seed in range(5):
        batch = enc.prepare([tone], train=True, rng=np.random.default_rng(seed))
        real = int(batch["lengths"][0])
        frame_level = batch["mel"][0, 0, :, 2 : real - 1].mean(0)  # edge frames see the window edge and the wrap
        # Every valid frame is tone, none is silence that a shift into the padding would leave behind.
        assert frame_level.max() - frame_level.min() < 1.0, seed


def test_efficientnet_evaluates_channels_last_with_the_same_features_and_trains_in_nchw():
    torch.manual_seed(0)
    enc = EfficientNetLiteEncoder(build_efficientnet_lite0(None), image_size=64)
    stem = enc.backbone._conv_stem.weight
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        got = enc({"pixel_values": x})
        reference = build_efficientnet_lite0(None)
        reference.load_state_dict(enc.backbone.state_dict())
        want = reference.eval().extract_features(x)  # NCHW weights and input
    torch.testing.assert_close(got.pooled, want.mean((2, 3)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.sequence, want.flatten(2).transpose(1, 2), atol=1e-4, rtol=1e-4)
    enc.train()
    assert enc.backbone._conv_stem.weight.is_contiguous()


def test_frozen_image_batches_keep_their_largest_activation_under_the_malloc_threshold(tmp_path):
    """A big input (EfficientNet-Lite0 at 224 px: 96 x 113 x 113 floats at its widest) gets a small batch; a small
    one keeps the requested batch; features do not depend on the batch the encoder ran in."""
    from polymodal.data.manifest import Example
    from polymodal.features import encode
    from polymodal.models.encoder import FAULT_FREE_BYTES, fault_free_batch_size, largest_activation_bytes

    torch.manual_seed(0)
    big = EfficientNetLiteEncoder(build_efficientnet_lite0(None), image_size=224, augment=None)
    one = big.prepare([Image.new("RGB", (40, 30), "red")])
    widest = largest_activation_bytes(big, one)
    assert widest == 96 * 113 * 113 * 4  # the expanded 112 x 112 map, zero-padded for the "same" depthwise conv
    assert fault_free_batch_size(big, one, 32) == FAULT_FREE_BYTES // widest < 32
    small = EfficientNetLiteEncoder(build_efficientnet_lite0(None), image_size=32, augment=None)
    assert fault_free_batch_size(small, small.prepare([Image.new("RGB", (40, 30), "red")]), 32) == 32

    paths = []
    for i in range(7):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(paths[-1])
    examples = [Example(row=i + 2, image=str(p)) for i, p in enumerate(paths)]
    got = encode("efficientnet-lite0", examples, "image", cache=False, encoder=big, progress=False).pooled
    alone = torch.cat([big(big.prepare([Image.open(p).convert("RGB")])).pooled for p in paths])
    torch.testing.assert_close(got, alone, atol=1e-4, rtol=1e-4)


def test_raw_images_are_predicted_in_fault_free_batches_and_cached_features_in_big_ones(tmp_path):
    """``Inputs.eval_batch_size``: a split of raw images through a torch image encoder gets the page-fault-free batch
    (measured once per split and batch size), pooled cached features a big batch, anything else the given one."""
    from torch import nn

    from polymodal.classify.predict import POOLED_EVAL_BATCH, Inputs
    from polymodal.data import load_manifest
    from polymodal.fusion import ModalityFeatures
    from polymodal.models.encoder import fault_free_batch_size

    from _train_data import write_dataset

    examples = load_manifest(write_dataset(tmp_path, n=6)).examples
    torch.manual_seed(0)
    big = EfficientNetLiteEncoder(build_efficientnet_lite0(None), image_size=224, augment=None)
    model = nn.Module()
    model.encoders = nn.ModuleDict({"image": big})
    raw = Inputs(examples, torch.zeros(6), None)
    want = fault_free_batch_size(big, big.prepare([Image.open(examples[0].image).convert("RGB")]), 32)
    assert raw.eval_batch_size(32, model) == want < 32
    assert raw._fault_free == {32: want}
    model.encoders = nn.ModuleDict({"image": EfficientNetLiteEncoder(build_efficientnet_lite0(None), image_size=32)})
    assert Inputs(examples, torch.zeros(6), None).eval_batch_size(32, model) == 32  # small images: the given batch
    model.encoders = nn.ModuleDict({})
    assert raw.eval_batch_size(16, model) == 16  # no image encoder

    class Table:
        features = {"image": ModalityFeatures(pooled=torch.zeros(6, 4), present=torch.ones(6, dtype=torch.bool))}

    assert Inputs(examples, torch.zeros(6), Table()).eval_batch_size(32, model) == POOLED_EVAL_BATCH
    Table.features["image"].sequence = torch.zeros(6, 3, 4)
    assert Inputs(examples, torch.zeros(6), Table()).eval_batch_size(32, model) == 32


def test_frozen_torch_efficientnet_folds_its_batch_norms_with_the_same_features():
    """The torch backend's frozen EfficientNet-Lite folds each BatchNorm into its convolution: no BatchNorm left,
    weights frozen, pooled features as the unfolded model's (random BatchNorm statistics, so folding changes weights)."""
    import copy

    from polymodal.models import build_frozen_encoder
    from polymodal.models.audio import build_mel_efficientnet
    from polymodal.models.image import fold_batch_norms

    torch.manual_seed(0)
    backbone = build_efficientnet_lite0(None)
    for m in backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    for plain in (EfficientNetLiteEncoder(backbone, image_size=64, augment=None),
                  build_mel_efficientnet(copy.deepcopy(backbone), clip_seconds=0.5, augment=None)):
        plain.eval()
        folded = fold_batch_norms(copy.deepcopy(plain))
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert not any(p.requires_grad for p in folded.parameters())
        if plain.modality == "image":
            x = plain.prepare([Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 30, 3), dtype=np.uint8))
                               for i in range(3)])
        else:
            x = plain.prepare([np.random.default_rng(i).standard_normal(8000).astype(np.float32) * 0.1 for i in range(3)])
        with torch.inference_mode():
            torch.testing.assert_close(folded(x).pooled, plain(x).pooled, atol=1e-4, rtol=1e-4)
    frozen = build_frozen_encoder(EncoderConfig("efficientnet-lite0", backend="torch"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
