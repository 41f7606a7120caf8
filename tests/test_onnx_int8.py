"""``encoder.backend: onnxruntime-int8``: INT8 copies of the parity-checked ONNX exports. Features stay within the
stated cosine bound of fp32, the INT8 file and its features are cached apart from fp32's, the fp32 export is reused,
a damaged INT8 file is quantised again, a refused one leaves nothing, and bad settings are clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from polymodal.data.manifest import Example
from polymodal.errors import ConfigError, PolymodalError
from polymodal.features import encode
from polymodal.models import (
    EncoderConfig,
    _onnx_int8,
    build_encoder,
    build_frozen_encoder,
    encoder_key,
    frozen_backend,
    onnx_backend,
)
from polymodal.models.onnx_backend import OnnxEncoder, onnx_encoder

TEXTS = ["a cat", "two dogs play in the long grass of the garden behind the old house", "hello",
         "one more sentence of middling length here", "the film was long, loud and not very good"]


@pytest.fixture(autouse=True, scope="module")
def _own_cache(tmp_path_factory):
    """Exports and INT8 files of this module stay in its own cache: other modules' tests expect to export first."""
    old = os.environ.get("POLYMODAL_CACHE")
    os.environ["POLYMODAL_CACHE"] = str(tmp_path_factory.mktemp("int8-cache"))
    yield
    os.environ["POLYMODAL_CACHE"] = old or ""
    if old is None:
        del os.environ["POLYMODAL_CACHE"]


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


def _pooled(encoder, prepared) -> torch.Tensor:
    with torch.inference_mode():
        return encoder(prepared).pooled.float()


@pytest.fixture
def bert_dir(tiny_model_dir):
    return str(tiny_model_dir("bert"))


def test_text_int8_is_a_dynamic_copy_of_the_fp32_export_within_the_cosine_bound(bert_dir):
    fp32 = build_frozen_encoder(EncoderConfig(bert_dir, backend="onnxruntime"))
    int8 = build_frozen_encoder(EncoderConfig(bert_dir, backend="onnxruntime-int8"))
    assert isinstance(int8, OnnxEncoder) and int8.backend == "onnxruntime-int8" and fp32.backend == "onnxruntime"
    assert int8.path != fp32.path and int8.path.parent == fp32.path.parent and "int8-dynamic" in int8.path.name
    assert int8.int8_cosine is not None and int8.int8_cosine >= _onnx_int8.INT8_MIN_COSINE  # quantised in this call
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8.path)).graph.node}
    assert "MatMulInteger" in ops  # the MatMuls really run in int8
    for texts in (TEXTS, TEXTS[:1], TEXTS * 5):  # other batch sizes and lengths than the check set's
        prepared = int8.prepare(texts)
        got, want = _pooled(int8, prepared), _pooled(fp32, prepared)
        assert got.shape == want.shape
        assert _cosines(got, want).min() >= _onnx_int8.INT8_MIN_COSINE
        assert not torch.equal(got, want)  # a different graph, not the fp32 file
        assert torch.equal(int8(prepared).mask, prepared["attention_mask"].bool())


def test_convolutional_encoders_are_calibrated_static_qdq_within_the_bound(tmp_path):
    import onnx
    from PIL import Image

    from polymodal.data.image import ImageAugment
    from polymodal.models.image import EfficientNetLiteEncoder, build_efficientnet_lite0

    torch.manual_seed(0)
    effnet = EfficientNetLiteEncoder(build_efficientnet_lite0(None), image_size=64, augment=ImageAugment()).eval()
    assert _onnx_int8.method(effnet) == "static"
    int8 = onnx_encoder(effnet, "test-int8-effnet-random", int8=True)
    assert "int8-static" in int8.path.name and int8.int8_cosine >= _onnx_int8.INT8_MIN_COSINE
    ops = [n.op_type for n in onnx.load(str(int8.path)).graph.node]
    assert ops.count("QuantizeLinear") > 10 and "DequantizeLinear" in ops  # QDQ around the convolutions
    images = [Image.new("RGB", (40 + 9 * i, 50), (30 * i, 200 - 20 * i, 90)) for i in range(4)]
    prepared = int8.prepare(images)
    assert _cosines(_pooled(int8, prepared), _pooled(effnet, prepared)).min() >= _onnx_int8.INT8_MIN_COSINE


@pytest.mark.parametrize("model", ["audio-cnn", "efficientnet-lite0-mel"])
def test_spectrogram_int8_keeps_the_masks(model):
    int8 = build_frozen_encoder(EncoderConfig(model, clip_seconds=1.0, backend="onnxruntime-int8"))
    torch_enc = build_encoder(EncoderConfig(model, clip_seconds=1.0, backend="torch"))
    assert "int8-static" in int8.path.name
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (3000, 16000, 9000)]
    prepared = int8.prepare(waves)
    with torch.inference_mode():
        got, want = int8(prepared), torch_enc(prepared)
    assert torch.equal(got.mask, want.mask) and not got.mask.all()
    assert _cosines(got.pooled, want.pooled).min() >= _onnx_int8.INT8_MIN_COSINE


def test_vision_transformers_are_dynamic_and_within_the_bound(tiny_model_dir):
    from PIL import Image

    vit = build_frozen_encoder(EncoderConfig(str(tiny_model_dir("vit")), backend="onnxruntime-int8"))
    fp32 = build_frozen_encoder(EncoderConfig(str(tiny_model_dir("vit")), backend="onnxruntime"))
    assert "int8-dynamic" in vit.path.name
    prepared = vit.prepare([Image.new("RGB", (30 + 7 * i, 40), (40 * i, 90, 200 - 30 * i)) for i in range(5)])
    assert _cosines(_pooled(vit, prepared), _pooled(fp32, prepared)).min() >= _onnx_int8.INT8_MIN_COSINE


def test_the_fp32_export_is_reused_and_the_int8_file_is_reused_not_redone(bert_dir, monkeypatch):
    fp32 = build_frozen_encoder(EncoderConfig(bert_dir, backend="onnxruntime"))
    first = build_frozen_encoder(EncoderConfig(bert_dir, backend="onnxruntime-int8"))
    stamps = fp32.path.stat().st_mtime_ns, first.path.stat().st_mtime_ns

    def never(*args, **kwargs):
        raise AssertionError("exported or quantised again although the checked file exists")

    monkeypatch.setattr(onnx_backend, "_export_bytes", never)
    monkeypatch.setattr(_onnx_int8, "quantize", never)
    second = build_frozen_encoder(EncoderConfig(bert_dir, backend="onnxruntime-int8"))
    assert second.path == first.path and (fp32.path.stat().st_mtime_ns, second.path.stat().st_mtime_ns) == stamps
    assert second.int8_cosine is None  # loaded, not quantised


def test_an_int8_file_alone_is_derived_from_the_export_not_a_second_export(tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path))
    calls = []
    real = onnx_backend._export_bytes
    monkeypatch.setattr(onnx_backend, "_export_bytes", lambda *a: calls.append(1) or real(*a))
    cfg = EncoderConfig(str(tiny_model_dir("bert")), backend="onnxruntime-int8")
    build_frozen_encoder(cfg)
    build_frozen_encoder(EncoderConfig(cfg.model, backend="onnxruntime"))
    assert len(calls) == 1  # one export serves both
    fp32, int8 = sorted((p.name for p in (tmp_path / "onnx").iterdir()), key=lambda name: "-int8-" in name)
    assert "-int8-" not in fp32 and int8.startswith(fp32.removesuffix(".onnx") + "-int8-")  # named after the export


def test_a_damaged_int8_file_is_quantised_again(bert_dir):
    cfg = EncoderConfig(bert_dir, backend="onnxruntime-int8")
    path = build_frozen_encoder(cfg).path
    path.write_bytes(b"not an onnx graph")
    again = build_frozen_encoder(cfg)
    assert again.path == path and again.int8_cosine is not None and path.stat().st_size > 1000


def test_an_int8_copy_outside_the_bound_is_refused_and_leaves_no_file(tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path))
    monkeypatch.setattr(_onnx_int8, "INT8_MIN_COSINE", 1.01)
    with pytest.raises(PolymodalError, match="INT8 .* too far from fp32 .* set encoder.backend: onnxruntime"):
        build_frozen_encoder(EncoderConfig(str(tiny_model_dir("bert")), backend="onnxruntime-int8"))
    left = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    assert len(left) == 1 and "int8" not in left[0]  # the checked fp32 export only; no INT8 file, no scratch folder


def test_feature_cache_keeps_fp32_and_int8_apart(bert_dir, tmp_path):
    examples = [Example(row=i + 1, text=t) for i, t in enumerate(TEXTS)]
    cfg8, cfg32 = EncoderConfig(bert_dir, backend="onnxruntime-int8"), EncoderConfig(bert_dir, backend="onnxruntime")
    assert len({encoder_key(cfg8), encoder_key(cfg32), encoder_key(EncoderConfig(bert_dir, backend="torch"))}) == 3
    by32 = encode(cfg32, examples, cache=tmp_path, progress=False)
    by8 = encode(cfg8, examples, cache=tmp_path, progress=False)
    assert by8.encoded == len(examples)  # nothing read from the fp32 features
    assert len(list(tmp_path.glob("*.sqlite"))) == 2
    assert not torch.equal(by8.pooled, by32.pooled)
    assert _cosines(by8.pooled, by32.pooled).min() >= _onnx_int8.INT8_MIN_COSINE
    again = encode(cfg8, examples, cache=tmp_path, progress=False)
    assert (again.cached, again.encoded) == (len(examples), 0) and torch.equal(again.pooled, by8.pooled)
    # an INT8 encoder handed in stores under the INT8 key, whatever the config says
    handed = encode(cfg32, examples, cache=tmp_path, encoder=build_frozen_encoder(cfg8), progress=False)
    assert (handed.cached, handed.encoded) == (len(examples), 0)


def test_a_new_quantisation_recipe_gets_a_new_feature_cache_key(bert_dir, monkeypatch):
    cfg8 = EncoderConfig(bert_dir, backend="onnxruntime-int8")
    before, fp32 = encoder_key(cfg8), encoder_key(EncoderConfig(bert_dir, backend="onnxruntime"))
    monkeypatch.setattr(_onnx_int8, "QUANT_VERSION", _onnx_int8.QUANT_VERSION + 1)
    assert encoder_key(cfg8) != before and encoder_key(EncoderConfig(bert_dir, backend="onnxruntime")) == fp32


def test_int8_is_never_a_default_and_bad_values_are_clear_errors(tiny_model_dir):
    for model in ("efficientnet-lite0", "efficientnet-lite0-mel", "minilm", "audio-cnn"):
        assert frozen_backend(EncoderConfig(model)) in ("torch", "onnxruntime")
    assert frozen_backend(EncoderConfig("minilm", backend="onnxruntime-int8")) == "onnxruntime-int8"
    with pytest.raises(ConfigError, match="'int8' is not one of torch, onnxruntime, onnxruntime-int8"):
        EncoderConfig("minilm", backend="int8")
    with pytest.raises(ConfigError, match="onnxruntime-int8 has no export for"):
        build_frozen_encoder(EncoderConfig(str(tiny_model_dir("wav2vec2")), backend="onnxruntime-int8"))


def test_encode_command_takes_the_int8_backend(bert_dir, tmp_path, capsys):
    from polymodal.cli import main

    manifest = tmp_path / "m.csv"
    manifest.write_text("text,label\n" + "".join(f"{t},x\n" for t in ("a cat", "a dog", "hello there")))
    out = tmp_path / "f.safetensors"
    assert main(["encode", str(manifest), "--encoder", bert_dir, "--backend", "onnxruntime-int8", "--out", str(out)]) == 0
    assert "3 inputs" in capsys.readouterr().out and out.stat().st_size > 0


@pytest.mark.real_model
@pytest.mark.parametrize("model", ["minilm", "efficientnet-lite0"])
def test_real_bundled_encoders_in_int8_stay_within_the_bound(model):
    from PIL import Image
    from skimage import data

    int8 = build_frozen_encoder(EncoderConfig(model, backend="onnxruntime-int8"))
    fp32 = build_frozen_encoder(EncoderConfig(model, backend="onnxruntime"))
    assert int8.path.stat().st_size < 0.7 * fp32.path.stat().st_size
    items = TEXTS if model == "minilm" else [Image.fromarray(data.chelsea()), Image.fromarray(data.astronaut()),
                                             Image.fromarray(data.rocket()).resize((32, 32))]
    prepared = int8.prepare(items)
    assert _cosines(_pooled(int8, prepared), _pooled(fp32, prepared)).min() >= _onnx_int8.INT8_MIN_COSINE


def test_a_linear_probe_trained_on_int8_features_predicts_through_the_int8_file(bert_dir, tmp_path):
    """``load_run`` puts the same INT8 encoder in the loaded probe that computed its training features, so predictions
    see the features training saw; ``backend="torch"`` (compress, export) stays fp32 torch."""
    from _train_data import write_dataset

    from polymodal.classify.run import load_run
    from polymodal.models.onnx_backend import OnnxModule
    from polymodal.tasks import train
    from polymodal.train.config import config_from_dict

    data = write_dataset(tmp_path / "d", n=15)
    cfg = EncoderConfig(bert_dir, backend="onnxruntime-int8")
    run_dir = train(config_from_dict({
        "data": {"manifest": str(data)}, "model": {"encoders": {"text": {"model": bert_dir,
                                                                         "backend": "onnxruntime-int8"}}},
        "optim": {"epochs": 1, "batch_size": 4}, "out_dir": str(tmp_path / "run")}), progress=False)
    run, plain = load_run(run_dir), load_run(run_dir, backend="torch")
    enc = run.model.encoders["text"]
    assert isinstance(enc, OnnxModule) and enc.backend == "onnxruntime-int8"
    assert not isinstance(plain.model.encoders["text"], OnnxModule)
    ref = build_frozen_encoder(cfg)
    prepared = ref.prepare(TEXTS)
    assert torch.equal(_pooled(enc, prepared), _pooled(ref, prepared))  # the very file the cache key names
    items = [{"text": t} for t in TEXTS]
    torch.testing.assert_close(run.predict_items(items), plain.predict_items(items), atol=0.05, rtol=0)
