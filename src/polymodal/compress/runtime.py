"""Run an exported classifier with ONNX Runtime and numpy only: no PyTorch at inference (edge use).

This module imports neither torch nor the rest of polymodal's model code; a test checks that ``torch`` stays out
of ``sys.modules``. Inputs are the arrays ``export.json`` lists (see ``export.py``): cached features for a
linear-probe run, ``encoder.prepare`` outputs for a run with live encoders.

    clf = OnnxClassifier("runs/my-run/export")
    probs = clf.predict({"text.input_ids": ids, "text.attention_mask": mask})   # (batch, classes)
    clf.labels[probs.argmax(-1)[0]]
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import PolymodalError

SPEC_FILE = "export.json"


class OnnxClassifier:
    """An exported run: ``predict`` maps named input arrays to class probabilities (batch, classes).

    Args:
        export_dir: the folder ``polymodal export`` wrote (``export.json`` + the .onnx files).
        int8: use ``model.int8.onnx`` (written by ``polymodal export --onnx --int8``).
        threads: ONNX Runtime intra-op threads; None: its default (the physical cores).
    """

    def __init__(self, export_dir: str | Path, int8: bool = False, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(export_dir)
        spec_path = self.path / SPEC_FILE
        if not spec_path.exists():
            raise PolymodalError(f"{self.path}: no {SPEC_FILE}; write the folder with `polymodal export RUN --onnx`")
        self.spec = json.loads(spec_path.read_text())
        model = self.spec["int8_model"] if int8 else self.spec["model"]
        if model is None:
            raise PolymodalError(f"{self.path}: no INT8 model; export with `polymodal export RUN --onnx --int8`")
        self.labels: list[str] = self.spec["labels"]
        self.inputs: dict[str, str] = {i["name"]: i["dtype"] for i in self.spec["inputs"]}
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path / model), options, providers=["CPUExecutionProvider"])

    def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Class probabilities (batch, classes), float32.

        Args:
            inputs: arrays by input name; a missing ``{modality}.present`` means every row has that modality.

        Raises:
            PolymodalError: an unknown or missing input name, or rows that differ in number.
        """
        unknown = sorted(set(inputs) - set(self.inputs))
        if unknown:
            raise PolymodalError(f"unknown inputs {unknown}; this model takes {', '.join(self.inputs)}")
        given = {k: np.asarray(v, dtype=self.inputs[k]) for k, v in inputs.items()}
        sizes = {len(v) for v in given.values()}
        if len(sizes) != 1:
            raise PolymodalError(f"inputs hold different numbers of rows: {sorted(sizes)}")
        batch = sizes.pop()
        for name in self.inputs:
            if name not in given and name.endswith(".present"):
                given[name] = np.ones(batch, dtype=bool)
        missing = [n for n in self.inputs if n not in given]
        if missing:
            raise PolymodalError(f"missing inputs {missing}; see {self.path / SPEC_FILE} for what each one is")
        return self.session.run([self.spec["output"]["name"]], given)[0]
