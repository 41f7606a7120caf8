"""ONNX export of a whole run's classifier: prepared tensors in, class probabilities out, any batch size.

What the graph takes depends on the run:

- linear probe: the cached frozen features, per modality ``{m}.pooled`` (batch, dim) or, for cross-attention,
  ``{m}.sequence`` (batch, time, dim) and ``{m}.mask`` (batch, time) bool; the encoders are not in the graph (they
  are the frozen pretrained ones: ``polymodal encode`` or ``polymodal.features.encode`` gives the features);
- full / LoRA (LoRA merged first): the encoder inputs that ``encoder.prepare`` makes, per modality
  ``{m}.{key}`` e.g. ``text.input_ids``, ``text.attention_mask`` (batch, tokens) int64 or ``image.pixel_values``
  (batch, 3, h, w) float32; encoders, fusion head and softmax are all in the graph;

plus ``{m}.present`` (batch,) bool in both cases: False where an example lacks that modality (its other inputs
for that row are placeholders and are masked, as in training). Axis 0 is dynamic everywhere; the token axis of
text inputs and the time axis of cached sequences too.

Exporter: ``torch.onnx.export(..., dynamo=True)``, the torch.export-based exporter, default and recommended since
torch 2.9; it needs the ``onnx`` and ``onnxscript`` packages. The TorchScript exporter (``dynamo=False``) is
deprecated and warns that it will be removed. A run with torch INT8 layers is not exportable (those are
torch-only kernels): export the fp32 run and pass ``int8=True`` for ONNX Runtime's own dynamic quantisation.

The export folder (default ``RUN/export``) holds ``model.onnx`` (and ``model.int8.onnx``), ``export.json``
(inputs with dtypes and shapes, labels, parity, test accuracy, preprocessing) and ``sample.npz`` (a few real test
rows' inputs and the PyTorch probabilities), read by ``runtime.OnnxClassifier`` without torch. For a run whose
encoders are in the graph (full / LoRA), the preprocessing travels too: the text encoder's tokenizer as
``text.tokenizer.json`` (the ``tokenizers`` library reads it) and the image transform's size, crop, mean and std,
so ``OnnxClassifier.predict_raw(texts=..., images=...)`` needs neither polymodal's model code nor torch. Audio
preprocessing (mel features, feature extractors) is not carried: audio inputs are prepared with polymodal.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .._paths import atomic_dir
from ..classify.run import Run, Split, load_run, read_split
from ..errors import PolymodalError
from ..features import load_input
from ..fusion import ModalityFeatures
from ..tuning import merge_lora
from .runs import SUPPORTED_MODES

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
SPEC_FILE = "export.json"
SAMPLE_FILE = "sample.npz"
OUTPUT = "probabilities"
PARITY_TOLERANCE = 1e-4  # max abs difference of probabilities, ONNX Runtime fp32 vs PyTorch, on real test rows
EXAMPLE_ROWS = 4  # rows traced by the exporter (>= 2: torch.export specialises a size-1 axis)
SAMPLE_ROWS = 2
TOKENIZER_FILE = "text.tokenizer.json"
ACCURACY_CHUNK = 64  # test rows per ONNX Runtime call when scoring the whole test split


class ExportGraph(nn.Module):
    """A run's classifier as a function of flat tensors, in the order of ``names``.

    Unlike ``MultimodalClassifier.encode`` (which runs the encoders on present rows only, a data-dependent shape),
    the encoders run on every row and absent rows are masked after: the same result for the head, and a static
    graph.
    """

    def __init__(self, model: nn.Module, names: list[str], live: bool):
        super().__init__()
        self.model = model
        self.names = names
        self.live = live
        self.modalities = list(dict.fromkeys(n.split(".", 1)[0] for n in names))

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        by_name = dict(zip(self.names, tensors))
        features = {}
        for m in self.modalities:
            present = by_name[f"{m}.present"]
            if self.live:
                inputs = {n.split(".", 1)[1]: t for n, t in by_name.items() if n.startswith(f"{m}.") and n != f"{m}.present"}
                res = self.model.encoders[m](inputs)
                keep = present.unsqueeze(-1)
                pooled = torch.where(keep, res.pooled, torch.zeros_like(res.pooled))
                seq = mask = None
                if self.model.sequence:
                    seq = torch.where(keep.unsqueeze(-1), res.sequence, torch.zeros_like(res.sequence))
                    mask = res.mask & keep
                features[m] = ModalityFeatures(pooled=pooled, present=present, sequence=seq, mask=mask)
            else:
                seq = by_name.get(f"{m}.sequence")
                pooled = by_name.get(f"{m}.pooled")
                if pooled is None:  # cross-attention reads the sequence only; the head never touches pooled
                    pooled = seq.mean(1)
                features[m] = ModalityFeatures(pooled=pooled, present=present, sequence=seq, mask=by_name.get(f"{m}.mask"))
        return self.model.head(features).float().softmax(-1)


def _placeholder(modality: str, encoder: Any) -> Any:
    """A stand-in input for a row lacking ``modality``: encoded, then masked out by ``present``."""
    if modality == "text":
        return ""
    if modality == "image":
        return Image.new("RGB", (32, 32))
    return np.zeros(int(getattr(encoder, "sample_rate", 16_000)), dtype=np.float32)


def graph_inputs(run: Run, split: Split, idx: list[int]) -> dict[str, torch.Tensor]:
    """The named graph inputs for rows ``idx`` of the test split, in graph order (see the module docstring)."""
    model, cfg = run.model, run.config
    out: dict[str, torch.Tensor] = {}
    if cfg.tuning.mode == "linear_probe":
        batch = split.inputs.table.batch(torch.tensor(idx))
        for m, f in batch.items():
            if f.sequence is not None:
                out[f"{m}.sequence"] = f.sequence.float()
                out[f"{m}.mask"] = f.mask.bool()
            else:
                out[f"{m}.pooled"] = f.pooled.float()
            out[f"{m}.present"] = f.present.bool()
        return out
    examples = [split.examples[i] for i in idx]
    for m, enc in model.encoders.items():
        present = [e.get(m) is not None and (m != "text" or e.text != "") for e in examples]
        items = [load_input(m, e, getattr(enc, "sample_rate", None)) if p else _placeholder(m, enc)
                 for e, p in zip(examples, present)]
        for k, v in enc.prepare(items, train=False, rng=np.random.default_rng(0)).items():
            out[f"{m}.{k}"] = v
        out[f"{m}.present"] = torch.tensor(present)
    return out


def _dynamic_axes(name: str, t: torch.Tensor) -> dict[int, Any]:
    axes = {0: torch.export.Dim.DYNAMIC}
    key = name.split(".", 1)[1]
    if t.ndim >= 2 and (key in ("sequence", "mask") or (name.startswith("text.") and key != "pooled")):
        axes[1] = torch.export.Dim.DYNAMIC  # tokens or time steps
    return axes


def _axis_names(name: str, t: torch.Tensor) -> list[Any]:
    dims: list[Any] = list(t.shape)
    dims[0] = "batch"
    if 1 in _dynamic_axes(name, t):
        dims[1] = "tokens" if name.startswith("text.") else "time"
    return dims


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # constant-folding notices are not the user's concern
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(sess, inputs: dict[str, np.ndarray]) -> np.ndarray:
    wanted = {i.name for i in sess.get_inputs()}
    return sess.run([OUTPUT], {k: v for k, v in inputs.items() if k in wanted})[0]


@dataclass
class ExportResult:
    out: Path  # the export folder
    onnx: Path
    max_abs_diff: float  # ONNX Runtime fp32 vs PyTorch, over the parity rows
    rows: int  # parity rows (real test examples)
    int8_onnx: Path | None
    int8_max_abs_diff: float | None
    int8_agreement: float | None  # share of parity rows where the INT8 graph predicts the same class
    test_rows: int = 0  # with int8: the whole test split, scored by both graphs
    accuracy: float | None = None  # fp32 graph, test split (with int8)
    int8_accuracy: float | None = None  # INT8 graph, test split


def export_onnx(run_dir: str | Path, out: str | Path | None = None, *, int8: bool = False, force: bool = False,
                parity_rows: int = 64, opset: int | None = None) -> ExportResult:
    """Export a run to ONNX, check it against PyTorch on real test rows, and write the export folder.

    Args:
        out: the export folder; default ``RUN/export``. An existing one is replaced only with ``force``.
        int8: also write ``model.int8.onnx``, quantised by ONNX Runtime's ``quantize_dynamic`` (per-channel int8
            weights of MatMul/Gemm).
        parity_rows: test rows run through both PyTorch and ONNX Runtime.

    Raises:
        PolymodalError: unsupported or torch-INT8 run, existing ``out``, or a parity failure (nothing written).
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "export"
    if out.exists() and not force:
        raise PolymodalError(f"{out} exists; pass --force to replace it, or --out another folder")
    run = load_run(run_dir, backend="torch")
    cfg = run.config
    if cfg.tuning.mode not in SUPPORTED_MODES:
        raise PolymodalError(f"{run_dir}: tuning mode {cfg.tuning.mode!r} is not exportable; export takes "
                             f"{', '.join(SUPPORTED_MODES)} runs")
    if cfg.compression is not None and cfg.compression.int8:
        raise PolymodalError(f"{run_dir}: torch INT8 layers do not export to ONNX; export the fp32 run "
                             f"{cfg.compression.source} with --int8 (ONNX Runtime quantisation) instead")
    if cfg.tuning.mode == "lora":
        merge_lora(run.model)  # one plain graph, no adapter matmuls
    split = read_split(cfg, run.labels, run_dir)
    rows = list(range(min(parity_rows, len(split.examples))))
    inputs = graph_inputs(run, split, rows)
    names = list(inputs)
    graph = ExportGraph(run.model, names, live=cfg.tuning.mode != "linear_probe").eval()
    with torch.inference_mode():
        expected = graph(*inputs.values()).numpy()
    example_idx = [i % len(split.examples) for i in range(EXAMPLE_ROWS)]
    example = graph_inputs(run, split, example_idx)

    with atomic_dir(out) as tmp:
        _export(graph, example, tmp / ONNX_FILE, opset)
        sess = session(tmp / ONNX_FILE)
        arrays = {k: v.numpy() for k, v in inputs.items()}
        got = run_session(sess, arrays)
        diff = float(np.abs(got - expected).max())
        if not diff <= PARITY_TOLERANCE:
            raise PolymodalError(f"{run_dir}: ONNX Runtime and PyTorch probabilities differ by up to {diff:.2e} "
                                 f"(tolerance {PARITY_TOLERANCE:g}) on {len(rows)} test rows; nothing was written. "
                                 "Rerun with -v and report it with the run's config.yaml")
        int8_diff = agreement = None
        accuracy: dict[str, float] = {}
        if int8:
            quantize_onnx(tmp / ONNX_FILE, tmp / INT8_FILE)
            sess8 = session(tmp / INT8_FILE)
            got8 = run_session(sess8, arrays)
            int8_diff = float(np.abs(got8 - expected).max())
            agreement = float((got8.argmax(-1) == expected.argmax(-1)).mean())
            accuracy = test_accuracy(run, split, {"fp32": sess, "int8": sess8})
        preprocess = write_preprocessing(run, tmp) if cfg.tuning.mode != "linear_probe" else {}
        spec = {
            "format": "polymodal-onnx/1", "run": str(run_dir.resolve()), "mode": cfg.tuning.mode,
            "fusion": cfg.model.fusion.kind, "labels": run.labels, "model": ONNX_FILE,
            "int8_model": INT8_FILE if int8 else None,
            "inputs": [{"name": n, "dtype": str(inputs[n].numpy().dtype), "shape": _axis_names(n, inputs[n])}
                       for n in names if n in {i.name for i in sess.get_inputs()}],
            "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", len(run.labels)]},
            "encoders": {m: e.model for m, e in cfg.model.encoders.items()},
            "inputs_are": ("cached frozen features (polymodal encode)" if cfg.tuning.mode == "linear_probe"
                           else "encoder.prepare() outputs"),
            "parity": {"rows": len(rows), "max_abs_diff": diff, "tolerance": PARITY_TOLERANCE,
                       "int8_max_abs_diff": int8_diff, "int8_argmax_agreement": agreement},
            "test_accuracy": {"rows": len(split.examples), **accuracy} if accuracy else None,
            "preprocess": preprocess,
            "torch": torch.__version__,
        }
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=1))
        sample = {k: v[:SAMPLE_ROWS] for k, v in arrays.items() if k in {i["name"] for i in spec["inputs"]}}
        np.savez(tmp / SAMPLE_FILE, **sample, **{OUTPUT: expected[:SAMPLE_ROWS]})
    return ExportResult(out, out / ONNX_FILE, diff, len(rows), out / INT8_FILE if int8 else None, int8_diff, agreement,
                        len(split.examples) if accuracy else 0, accuracy.get("fp32"), accuracy.get("int8"))


def test_accuracy(run: Run, split: Split, sessions: dict[str, Any]) -> dict[str, float]:
    """Accuracy of each ONNX Runtime session on the whole test split, in chunks (what INT8 costs, measured)."""
    correct = dict.fromkeys(sessions, 0)
    targets = split.targets.numpy()
    for start in range(0, len(split.examples), ACCURACY_CHUNK):
        idx = list(range(start, min(start + ACCURACY_CHUNK, len(split.examples))))
        arrays = {k: v.numpy() for k, v in graph_inputs(run, split, idx).items()}
        for name, sess in sessions.items():
            correct[name] += int((run_session(sess, arrays).argmax(-1) == targets[idx]).sum())
    return {name: n / max(1, len(split.examples)) for name, n in correct.items()}


def write_preprocessing(run: Run, folder: Path) -> dict[str, Any]:
    """What turns raw inputs into the graph's inputs, written beside it: per modality its settings, or None where
    the preprocessing is not carried (audio)."""
    out: dict[str, Any] = {}
    for m, enc in run.model.encoders.items():
        tok, transform = getattr(enc, "tokenizer", None), getattr(enc, "transform", None)
        if m == "text" and tok is not None and getattr(tok, "is_fast", False):
            tok.backend_tokenizer.save(str(folder / TOKENIZER_FILE))
            out[m] = {"tokenizer": TOKENIZER_FILE, "max_tokens": int(enc.max_tokens),
                      "pad_id": int(tok.pad_token_id or 0), "pad_token": str(tok.pad_token or "")}
        elif m == "image" and transform is not None:
            out[m] = {"size": transform.size, "crop_pct": transform.crop_pct, "mean": list(transform.mean),
                      "std": list(transform.std), "background": [255, 255, 255], "resample": "bicubic"}
        else:
            out[m] = None
    return out


def _export(graph: ExportGraph, example: dict[str, torch.Tensor], path: Path, opset: int | None) -> None:
    from ..models.onnx_backend import export_onnx

    export_onnx(graph, example, path, [OUTPUT], tuple(_dynamic_axes(n, t) for n, t in example.items()), opset,
                "ONNX export", "rerun with -v for the exporter's trace")


def quantize_onnx(src: Path, dst: Path) -> None:
    """ONNX Runtime dynamic INT8 quantisation of ``src`` into ``dst`` (int8 weights, per channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it advises its pre-processing step on the root logger; the parity check judges
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
