"""Run an exported classifier with ONNX Runtime and numpy only: no PyTorch at inference (edge use).

This module imports neither torch nor the rest of polymodal's model code; a test checks that ``torch`` stays out
of ``sys.modules``. Inputs are the arrays ``export.json`` lists (see ``export.py``): cached features for a
linear-probe run, ``encoder.prepare`` outputs for a run with live encoders.

    clf = OnnxClassifier("runs/my-run/export")
    probs = clf.predict({"text.input_ids": ids, "text.attention_mask": mask})   # (batch, classes)
    clf.labels[probs.argmax(-1)[0]]
    clf.predict_raw(texts=["great food"], images=["photo.jpg"])   # full / LoRA runs: the export's own preprocessing

``predict_raw`` repeats polymodal's evaluation preprocessing with the ``tokenizers`` library, PIL and numpy (the
image steps mirror ``polymodal.data.image``, which imports torch and so cannot be used here; a test holds the two
equal): transparency onto white, EXIF rotation, short side resized to size / crop_pct (bicubic), centre crop,
scaled to [0, 1], normalised.
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

    def prepare(self, texts: list[str] | None = None, images: list | None = None) -> dict[str, np.ndarray]:
        """The graph's inputs for raw texts and images (paths or PIL images; None or an empty text: absent for that
        row), by the export's preprocessing."""
        pre = self.spec.get("preprocess") or {}
        given = [(m, v) for m, v in (("text", texts), ("image", images)) if v is not None]
        if not given:
            raise PolymodalError("give texts and/or images")
        if not pre:
            raise PolymodalError(f"{self.path}: this export takes cached features (a linear-probe run); "
                                 "prepare them with polymodal.features.encode, or export a full / LoRA run")
        sizes = {len(v) for _, v in given}
        if len(sizes) != 1:
            raise PolymodalError(f"give as many images as texts: got {sorted(sizes)}")
        out: dict[str, np.ndarray] = {}
        for m, values in given:
            if pre.get(m) is None:
                raise PolymodalError(f"{self.path}: the export does not carry {m} preprocessing (its modalities: "
                                     f"{', '.join(k for k, v in pre.items() if v) or 'none'})")
            # as polymodal reads a table: an empty text or a None cell is that modality absent for the row
            present = np.array([v is not None and (m != "text" or v != "") for v in values], dtype=bool)
            if m == "text":
                out |= self._text(["" if v is None else v for v in values], pre[m])
            else:
                blank = np.zeros((3, pre[m]["size"], pre[m]["size"]), np.float32)
                out["image.pixel_values"] = np.stack([_image_array(v, pre[m]) if v is not None else blank
                                                      for v in values])
            out[f"{m}.present"] = present
        batch = sizes.pop()
        for m in {n.split(".", 1)[0] for n in self.inputs} - {m for m, _ in given}:  # absent: placeholders, masked
            if pre.get(m) is None:
                raise PolymodalError(f"the model also reads {m}, whose preprocessing the export does not carry: "
                                     f"prepare all inputs yourself and call predict")
            out |= self._text([""] * batch, pre[m]) if m == "text" else {
                "image.pixel_values": np.zeros((batch, 3, pre[m]["size"], pre[m]["size"]), np.float32)}
            out[f"{m}.present"] = np.zeros(batch, dtype=bool)
        return out

    def predict_raw(self, texts: list[str] | None = None, images: list | None = None) -> np.ndarray:
        """Class probabilities (batch, classes) of raw texts and/or images; a modality not given is absent."""
        return self.predict(self.prepare(texts, images))

    def _text(self, texts: list[str], pre: dict) -> dict[str, np.ndarray]:
        from tokenizers import Tokenizer

        if not hasattr(self, "_tokenizer"):
            tok = Tokenizer.from_file(str(self.path / pre["tokenizer"]))
            tok.enable_truncation(max_length=pre["max_tokens"])
            tok.enable_padding(pad_id=pre["pad_id"], pad_token=pre["pad_token"])
            self._tokenizer = tok
        enc = self._tokenizer.encode_batch([str(t) for t in texts])
        return {"text.input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "text.attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}

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


def _image_array(image, pre: dict) -> np.ndarray:
    """One image (a path or a PIL image) as the graph's (3, size, size) float32 input."""
    import math

    from PIL import Image, ImageOps

    img = image if isinstance(image, Image.Image) else Image.open(image)
    img = ImageOps.exif_transpose(img)
    if img.mode == "P" and "transparency" in img.info or img.mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        flat = Image.new("RGB", img.size, tuple(pre["background"]))
        flat.paste(img, mask=img.getchannel("A"))
        img = flat
    img = img.convert("RGB")
    size = pre["size"]
    side = int(math.floor(size / pre["crop_pct"]))
    w, h = img.size
    scale = side / min(w, h)
    img = img.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return (x - np.array(pre["mean"], np.float32)[:, None, None]) / np.array(pre["std"], np.float32)[:, None, None]
