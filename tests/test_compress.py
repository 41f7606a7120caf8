"""Compression and export of trained runs: INT8 and pruned runs load and predict like the fp32 run, ONNX exports
match PyTorch on real test rows at any batch size, and the ONNX runtime runs without torch. Tiny random-weight
encoders, real training runs; one CLI smoke test per command."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from _train_data import write_dataset
from polymodal.cli import main
from polymodal.compress import OnnxClassifier, compress_run, export_onnx
from polymodal.compress.export import PARITY_TOLERANCE, graph_inputs
from polymodal.classify import read_split
from polymodal.compress.prune import prunable_weights
from polymodal.compress.quantize import input_outlier_ratios
from polymodal.errors import PolymodalError
from polymodal.tasks import load_run, train
from polymodal.classify._compressed import is_int8_linear
from polymodal.train.config import config_from_dict

QUICK = dict(min_seconds=0.01, batch_sizes=(1, 2), progress=False)  # timing is not under test
INT8_PROB_TOLERANCE = 0.05  # max abs difference of class probabilities, INT8 vs fp32, on the tiny test split


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """A linear probe (head over cached features) and a LoRA run (live tiny BERT + ViT encoders)."""
    root = tmp_path_factory.mktemp("compress")
    dataset = write_dataset(root / "data")
    made = {}
    for mode, fusion in (("linear_probe", "early"), ("lora", "gated")):
        cfg = config_from_dict({
            "data": {"manifest": str(dataset)},
            "model": {"encoders": {"text": str(tiny_model_dir("bert")), "image": str(tiny_model_dir("vit"))},
                      "fusion": {"kind": fusion, "hidden": 16}},
            "tuning": {"mode": mode, "lora_r": 2},
            "optim": {"epochs": 1, "batch_size": 6, "lr": 1e-2, "encoder_lr": 1e-3},
            "out_dir": str(root / mode),
        })
        made[mode] = train(cfg, progress=False)
    return made


def _test_examples(run):
    return read_split(run.config, run.labels, run.path).examples


def test_int8_run_loads_and_predicts_like_fp32(runs, tmp_path):
    result = compress_run(runs["lora"], int8=True, out=tmp_path / "int8", **QUICK)
    fp32, int8 = load_run(runs["lora"]), load_run(result.out)
    assert int8.config.compression.int8 and int8.config.compression.source == str(runs["lora"].resolve())
    int8_layers = [n for n, m in int8.model.named_modules() if is_int8_linear(m)]
    assert any(n.startswith("encoders.text.") for n in int8_layers) and any(n.startswith("head.") for n in int8_layers)
    examples = _test_examples(fp32)
    p32, p8 = fp32.predict(examples), int8.predict(examples)
    diff = float((p32 - p8).abs().max())
    assert diff < INT8_PROB_TOLERANCE
    # The class must stay the same wherever fp32's top-2 margin exceeds what the probabilities moved (a tiny random
    # model has near-ties, where INT8 rounding may flip the order legitimately).
    top2 = p32.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * diff
    assert clear.any() and (p32.argmax(-1) == p8.argmax(-1))[clear].all()
    rows = json.loads((result.out / "compress.json").read_text())["rows"]
    assert rows[1]["weights_bytes"] < rows[0]["weights_bytes"]
    assert abs(rows[1]["accuracy"] - rows[0]["accuracy"]) <= 1 / len(examples) + 1e-9
    for name in ("config.yaml", "labels.json", "model.safetensors", "metrics.json", "predictions.csv", "compress.md"):
        assert (result.out / name).is_file(), name
    assert main(["eval", str(result.out)]) == 0  # the compressed run reports like any run


def test_int8_keeps_outlier_layers_fp32_and_reloads_them_so(runs, tmp_path):
    run = load_run(runs["linear_probe"])
    val = read_split(run.config, run.labels, run.path, part="val")
    batch = val.inputs.batch(torch.arange(len(val.examples)), run.model, False, np.random.default_rng(0))
    ratios = input_outlier_ratios(run.model, "linear_probe", [batch])
    assert set(ratios) == {"head.mlp.0", "head.mlp.3"} and all(r >= 1 for r in ratios.values())
    (low, _), (high, r_high) = sorted(ratios.items(), key=lambda kv: kv[1])
    threshold = (ratios[low] + r_high) / 2
    out = compress_run(runs["linear_probe"], int8=True, outlier_ratio=threshold, out=tmp_path / "q", **QUICK).out
    loaded = load_run(out)
    assert loaded.config.compression.fp32_layers == (high,)
    assert is_int8_linear(loaded.model.get_submodule(low))
    assert type(loaded.model.get_submodule(high)) is torch.nn.Linear
    torch.testing.assert_close(loaded.model.get_submodule(high).weight, run.model.get_submodule(high).weight)


def test_pruned_run_has_the_requested_zeros_and_no_masks(runs, tmp_path):
    result = compress_run(runs["lora"], prune=0.4, out=tmp_path / "pruned", **QUICK)
    run = load_run(result.out)
    weights = prunable_weights(run.model, run.config.tuning.mode)
    assert any(k.startswith("encoders.text.") for k in weights)
    for name, w in weights.items():
        assert abs(float((w == 0).float().mean()) - 0.4) < 0.01 + 1 / w.numel(), name
    saved = load_file(result.out / "model.safetensors")
    assert not any(k.endswith(("weight_orig", "weight_mask")) or "lora_" in k for k in saved)
    assert not any(k.endswith(("weight_orig", "weight_mask")) for k in run.model.state_dict())
    assert any("no speed-up: dense kernels" in n for n in result.notes)
    assert "no speed-up: dense kernels" in (result.out / "compress.md").read_text()


def test_compress_refuses_nothing_to_do_and_an_existing_out(runs):
    with pytest.raises(PolymodalError, match="--int8, --prune"):
        compress_run(runs["linear_probe"])
    with pytest.raises(PolymodalError, match="between 0 and 1"):
        compress_run(runs["linear_probe"], prune=1.5)


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    """The probe run exported through the API; the LoRA run through the CLI (its smoke test reads the output)."""
    out = tmp_path_factory.mktemp("exports")
    probe = export_onnx(runs["linear_probe"], out / "probe")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export", str(runs["lora"]), "--onnx", "--int8", "--out", str(out / "lora")])
    return {"linear_probe": probe.out, "lora": out / "lora", "cli": (code, printed.getvalue())}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["linear_probe", "lora"])
def test_onnx_matches_pytorch_at_batch_1_and_5(runs, exports, mode):
    spec = json.loads((exports[mode] / "export.json").read_text())
    assert spec["parity"]["max_abs_diff"] < PARITY_TOLERANCE
    run = load_run(runs[mode])
    split = read_split(run.config, run.labels, run.path)
    clf = OnnxClassifier(exports[mode])
    for batch in (1, 5):
        inputs = {k: v.numpy() for k, v in graph_inputs(run, split, list(range(batch))).items()}
        got = clf.predict(inputs)
        expected = run.predict(split.examples[:batch]).numpy()  # the ordinary PyTorch path, not the export wrapper
        assert got.shape == (batch, len(run.labels))
        assert np.abs(got - expected).max() < PARITY_TOLERANCE
    names = {i["name"] for i in spec["inputs"]}
    if mode == "linear_probe":
        assert names == {"text.pooled", "text.present", "image.pooled", "image.present"}
    else:
        assert {"text.input_ids", "text.attention_mask", "image.pixel_values"} <= names


@pytest.mark.slow
def test_export_cli_writes_the_folder(exports):
    code, printed = exports["cli"]
    assert code == 0
    assert "max abs difference" in printed and "INT8 (ONNX Runtime)" in printed
    for name in ("model.onnx", "model.int8.onnx", "export.json", "sample.npz"):
        assert (exports["lora"] / name).is_file(), name
    spec = json.loads((exports["lora"] / "export.json").read_text())
    assert spec["labels"] == ["b", "g", "r"] and spec["output"]["shape"] == ["batch", 3]
    assert spec["parity"]["int8_argmax_agreement"] >= 0.5


@pytest.mark.slow
def test_export_int8_reports_test_accuracy_beside_fp32(runs, exports):
    code, printed = exports["cli"]
    spec = json.loads((exports["lora"] / "export.json").read_text())
    acc = spec["test_accuracy"]
    run = load_run(runs["lora"])
    split = read_split(run.config, run.labels, run.path)
    torch_acc = float((run.predict(split.examples).argmax(-1) == split.targets).float().mean())
    assert acc["rows"] == len(split.examples) and acc["fp32"] == pytest.approx(torch_acc)  # fp32 is PyTorch's
    assert 0 <= acc["int8"] <= 1 and f"INT8 {100 * acc['int8']:.2f} %" in printed
    assert json.loads((exports["linear_probe"] / "export.json").read_text())["test_accuracy"] is None  # no --int8


@pytest.mark.slow
def test_the_export_carries_its_preprocessing_so_raw_inputs_need_no_torch(runs, exports, tmp_path):
    run = load_run(runs["lora"])
    split = read_split(run.config, run.labels, run.path)
    examples = split.examples[:5]
    texts = [e.text or "" for e in examples]
    images = [str(e.image) for e in examples]
    spec = json.loads((exports["lora"] / "export.json").read_text())
    assert spec["preprocess"]["text"]["tokenizer"] == "text.tokenizer.json" and spec["preprocess"]["image"]["size"]
    clf = OnnxClassifier(exports["lora"])
    # the runtime's own tokenizer and image steps give the inputs polymodal's encoders prepare
    prepared = clf.prepare(texts=texts, images=images)
    expected_inputs = graph_inputs(run, split, list(range(5)))
    for name in ("text.input_ids", "text.attention_mask"):
        assert np.array_equal(prepared[name], expected_inputs[name].numpy()), name
    assert np.abs(prepared["image.pixel_values"] - expected_inputs["image.pixel_values"].numpy()).max() < 1e-5
    expected = run.predict_items([{"text": t, "image": Image.open(i).convert("RGB")} for t, i in zip(texts, images)])
    assert np.abs(clf.predict_raw(texts=texts, images=images) - expected.numpy()).max() < PARITY_TOLERANCE
    # one modality only: the other is absent, as in the service
    text_only = run.predict_items([{"text": t} for t in texts]).numpy()
    assert np.abs(clf.predict_raw(texts=texts) - text_only).max() < PARITY_TOLERANCE
    with pytest.raises(PolymodalError, match="cached features"):
        OnnxClassifier(exports["linear_probe"]).predict_raw(texts=["x"])
    code = f"""
import sys
from polymodal.compress.runtime import OnnxClassifier
probs = OnnxClassifier({str(exports['lora'])!r}).predict_raw(texts={texts!r}, images={images!r})
assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch was imported'
print('ok', probs.shape)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok (5, 3)")


@pytest.mark.slow
def test_runtime_runs_without_torch(exports):
    code = f"""
import sys
import numpy as np
from polymodal.compress.runtime import OnnxClassifier
clf = OnnxClassifier({str(exports['lora'])!r})
sample = dict(np.load({str(exports['lora'] / 'sample.npz')!r}))
expected = sample.pop('probabilities')
got = clf.predict(sample)
assert np.abs(got - expected).max() < {PARITY_TOLERANCE}, np.abs(got - expected).max()
assert 'torch' not in sys.modules, 'torch was imported'
print('ok', got.shape)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok (2, 3)")


def test_export_refuses_a_torch_int8_run(runs, tmp_path):
    out = compress_run(runs["linear_probe"], int8=True, out=tmp_path / "q", **QUICK).out
    with pytest.raises(PolymodalError, match="--int8"):
        export_onnx(out)


def test_compress_cli_writes_the_new_run(runs, tmp_path, capsys):
    out = tmp_path / "probe-int8"
    assert main(["compress", str(runs["linear_probe"]), "--int8", "--out", str(out), "--seconds", "0.01"]) == 0
    printed = capsys.readouterr().out
    assert "| model | weights on disk | latency batch 1 | latency batch 32 | test accuracy |" in printed
    for name in ("config.yaml", "model.safetensors", "compress.md", "compress.json", "predictions.csv"):
        assert (out / name).is_file(), name
    assert main(["predict", str(out), "--text", "red apple"]) == 0
    assert "red apple" in capsys.readouterr().out
    run = load_run(out)
    assert all(is_int8_linear(m) for m in (run.model.head.mlp[0], run.model.head.mlp[3]))
    assert not any(is_int8_linear(m) for m in run.model.encoders.modules())  # frozen encoders: not the probe's
    assert torch.allclose(run.predict(_test_examples(run)).sum(-1), torch.ones(6))
