"""The ONNX Runtime backend of frozen encoders: parity with torch, dynamic axes, the export cache, cache keys that
keep the two backends' features apart, and the errors."""

from __future__ import annotations

import pytest
import torch

from polymodal.data.manifest import Example
from polymodal.errors import ConfigError, PolymodalError
from polymodal.features import encode
from polymodal.models import EncoderConfig, build_encoder, build_frozen_encoder, encoder_key, frozen_backend
from polymodal.models import onnx_backend
from polymodal.models.onnx_backend import PARITY_MAX_ABS, OnnxEncoder, inference_threads, onnx_encoder

TEXTS = ["a cat", "two dogs play in the long grass of the garden behind the old house", "hello", "",
         "one more sentence of middling length here"]


def _pooled(encoder, prepared) -> torch.Tensor:
    with torch.inference_mode():
        return encoder(prepared).pooled.float()


@pytest.fixture
def bert_cfg(tiny_model_dir):
    return EncoderConfig(str(tiny_model_dir("bert")), backend="onnxruntime")


def test_text_encoder_matches_torch_within_the_stated_bound_at_other_batch_sizes_and_lengths(bert_cfg):
    ort_enc = build_frozen_encoder(bert_cfg)
    assert isinstance(ort_enc, OnnxEncoder) and ort_enc.path.exists()
    assert ort_enc.max_abs_diff is not None and ort_enc.max_abs_diff <= PARITY_MAX_ABS  # exported in this call
    torch_enc = build_encoder(bert_cfg)
    for texts in (TEXTS, TEXTS[:1], TEXTS * 7):  # batch 5, 1, 35; padded to different lengths
        prepared = ort_enc.prepare(texts)
        got, want = _pooled(ort_enc, prepared), _pooled(torch_enc, prepared)
        assert got.shape == want.shape
        assert (got - want).abs().max() <= PARITY_MAX_ABS
        out = ort_enc(prepared)
        assert out.sequence.shape[:2] == prepared["input_ids"].shape
        assert torch.equal(out.mask, prepared["attention_mask"].bool())


def test_the_export_is_reused_not_redone(bert_cfg, monkeypatch):
    first = build_frozen_encoder(bert_cfg)
    stamp = first.path.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the parity-checked file exists")

    monkeypatch.setattr(onnx_backend, "_export_bytes", no_export)
    second = build_frozen_encoder(bert_cfg)
    assert second.path == first.path and second.path.stat().st_mtime_ns == stamp
    assert second.max_abs_diff is None  # loaded, not exported


def test_a_damaged_export_is_exported_again(bert_cfg):
    path = build_frozen_encoder(bert_cfg).path
    path.write_bytes(b"not an onnx graph")
    again = build_frozen_encoder(bert_cfg)
    assert again.max_abs_diff is not None and again.path == path and path.stat().st_size > 1000


def test_image_towers_match_torch(tiny_model_dir):
    from PIL import Image

    from polymodal.data.image import ImageAugment
    from polymodal.models.image import EfficientNetLiteEncoder, build_efficientnet_lite0

    torch.manual_seed(0)
    effnet = EfficientNetLiteEncoder(build_efficientnet_lite0(None), image_size=64, augment=ImageAugment())
    vit = build_encoder(EncoderConfig(str(tiny_model_dir("vit"))))
    images = [Image.new("RGB", (40 + 9 * i, 50), (30 * i, 200 - 20 * i, 90)) for i in range(5)]
    for name, enc in (("effnet-random", effnet), ("vit-tiny", vit)):
        ort_enc = onnx_encoder(enc, f"test-{name}")
        prepared = ort_enc.prepare(images)
        for rows in (slice(0, 5), slice(0, 1)):
            part = {k: v[rows] for k, v in prepared.items()}
            assert (_pooled(ort_enc, part) - _pooled(enc, part)).abs().max() <= PARITY_MAX_ABS, name


def test_feature_cache_keeps_backends_apart(bert_cfg, tmp_path):
    examples = [Example(row=i + 1, text=t) for i, t in enumerate(TEXTS) if t]
    torch_cfg = EncoderConfig(bert_cfg.model, backend="torch")
    assert encoder_key(torch_cfg) != encoder_key(bert_cfg)
    by_torch = encode(torch_cfg, examples, cache=tmp_path, progress=False)
    by_ort = encode(bert_cfg, examples, cache=tmp_path, progress=False)
    assert by_ort.encoded == len(examples)  # nothing was read from the torch backend's cache file
    assert len(list(tmp_path.glob("*.sqlite"))) == 2
    assert (by_ort.pooled - by_torch.pooled).abs().max() <= PARITY_MAX_ABS
    # a torch encoder handed in stores under the torch key, whatever the config's backend says
    handed = encode(bert_cfg, examples, cache=tmp_path, encoder=build_encoder(torch_cfg), progress=False)
    assert (handed.encoded, handed.cached) == (0, len(examples))


def test_unset_backend_is_onnxruntime_where_it_measured_faster_only(tiny_model_dir):
    assert frozen_backend(EncoderConfig("efficientnet-lite0")) == "onnxruntime"
    assert frozen_backend(EncoderConfig("efficientnet-lite0-mel")) == "onnxruntime"
    assert frozen_backend(EncoderConfig(str(tiny_model_dir("bert")))) == "torch"
    assert frozen_backend(EncoderConfig("minilm")) == "torch"
    assert frozen_backend(EncoderConfig("audio-cnn")) == "torch"
    assert frozen_backend(EncoderConfig("efficientnet-lite0", backend="torch")) == "torch"


def test_a_failed_parity_check_refuses_the_export_and_leaves_no_file(tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path))
    monkeypatch.setattr(onnx_backend, "PARITY_MAX_ABS", -1.0)
    with pytest.raises(PolymodalError, match="differs from torch"):
        build_frozen_encoder(EncoderConfig(str(tiny_model_dir("bert")), backend="onnxruntime"))
    assert not list((tmp_path / "onnx").iterdir())


def test_bad_backend_settings_are_clear_errors(tiny_model_dir):
    with pytest.raises(ConfigError, match="encoder.backend: 'tensorrt' is not one of torch, onnxruntime"):
        EncoderConfig("minilm", backend="tensorrt")
    with pytest.raises(ConfigError, match="no export for"):
        build_frozen_encoder(EncoderConfig(str(tiny_model_dir("wav2vec2")), backend="onnxruntime"))
    enc = build_frozen_encoder(EncoderConfig(str(tiny_model_dir("bert")), backend="onnxruntime"))
    with pytest.raises(PolymodalError, match="frozen encoders only"):
        enc.prepare(["x"], train=True)


def test_threads_come_from_the_environment_else_the_physical_cores(monkeypatch):
    monkeypatch.delenv("POLYMODAL_THREADS", raising=False)
    assert inference_threads() >= 1
    monkeypatch.setenv("POLYMODAL_THREADS", "3")
    assert inference_threads() == 3
    monkeypatch.setenv("POLYMODAL_THREADS", "many")
    with pytest.raises(ConfigError, match="POLYMODAL_THREADS"):
        inference_threads()


@pytest.mark.real_model
@pytest.mark.parametrize("model", ["minilm", "efficientnet-lite0"])
def test_real_bundled_encoders_match_torch(model):
    from PIL import Image
    from skimage import data

    ort_enc = build_frozen_encoder(EncoderConfig(model, backend="onnxruntime"))
    torch_enc = build_encoder(EncoderConfig(model, backend="torch"))
    items = TEXTS if model == "minilm" else [Image.fromarray(data.chelsea()), Image.fromarray(data.astronaut())]
    prepared = ort_enc.prepare(items)
    assert (_pooled(ort_enc, prepared) - _pooled(torch_enc, prepared)).abs().max() <= PARITY_MAX_ABS


@pytest.mark.parametrize("model", ["audio-cnn", "efficientnet-lite0-mel"])
def test_spectrogram_encoders_match_torch_with_the_same_masks(model):
    import numpy as np

    ort_enc = build_frozen_encoder(EncoderConfig(model, clip_seconds=1.0, backend="onnxruntime"))
    torch_enc = build_encoder(EncoderConfig(model, clip_seconds=1.0, backend="torch"))
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (3000, 16000, 9000, 20000, 500)]
    for rows in (slice(0, 5), slice(0, 1)):
        prepared = ort_enc.prepare(waves[rows])
        with torch.inference_mode():
            got, want = ort_enc(prepared), torch_enc(prepared)
        assert (got.pooled - want.pooled).abs().max() <= PARITY_MAX_ABS
        assert torch.equal(got.mask, want.mask) and not got.mask.all()  # short clips are masked, as in torch


@pytest.mark.real_model
def test_a_loaded_linear_probe_predicts_through_onnxruntime_as_through_torch(tmp_path):
    """``load_run`` runs a linear probe's frozen EfficientNet-Lite0 in ONNX Runtime (as its training features
    were), so ``Run.predict_items``, ``polymodal predict`` and the service encode there; ``backend="torch"`` (what
    compress and export use) gives the same probabilities within the parity bound, and the service's embeddings too."""
    from PIL import Image

    from _train_data import write_dataset
    from polymodal.classify.run import load_run
    from polymodal.models.onnx_backend import OnnxModule
    from polymodal.serve.inference import load_backend
    from polymodal.tasks import train
    from polymodal.train.config import config_from_dict

    data = write_dataset(tmp_path / "d", n=15)
    run_dir = train(config_from_dict({
        "data": {"manifest": str(data)}, "model": {"encoders": {"image": {"model": "efficientnet-lite0",
                                                                          "image_size": 64}}},
        "optim": {"epochs": 1, "batch_size": 4}, "out_dir": str(tmp_path / "run")}), progress=False)
    fast, plain = load_run(run_dir), load_run(run_dir, backend="torch")
    assert isinstance(fast.model.encoders["image"], OnnxModule)
    assert not isinstance(plain.model.encoders["image"], OnnxModule)
    images = [Image.open(p).convert("RGB") for p in sorted((tmp_path / "d" / "img").glob("*.png"))[:5]]
    items = [{"image": im} for im in images]
    torch.testing.assert_close(fast.predict_items(items), plain.predict_items(items), atol=PARITY_MAX_ABS, rtol=0)
    served = load_backend(run_dir)
    assert isinstance(served.model.model.encoders["image"], OnnxModule)
    emb = served.fns["embed"](items)
    want = plain.embed_items(items)
    for got, w in zip(emb, want):
        torch.testing.assert_close(torch.tensor(got["image"]), w["image"], atol=PARITY_MAX_ABS, rtol=0)
