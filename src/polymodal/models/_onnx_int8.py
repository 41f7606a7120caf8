"""INT8 copies of the parity-checked fp32 ONNX exports (``encoder.backend: onnxruntime-int8``), by ONNX Runtime's own
quantiser (``onnxruntime.quantization``).

How each encoder is quantised was chosen by measurement (bench/results/encode.md, INT8 section; 2 cores, AVX-512
VNNI), per kind of graph:

- Convolutional encoders (EfficientNet-Lite0 on photos or log-mels, the audio CNN): **static** QDQ, int8 weights per
  output channel, uint8 activations, ranges calibrated once with the Percentile method (99.99 %) on a fixed set
  shipped with the code (below). Dynamic quantisation of these graphs was 20x *slower* than fp32 (ConvInteger has no
  fast kernel) and far off (cosine 0.63); MinMax calibration was as fast as Percentile but less exact (mean cosine
  0.974 vs 0.982 on CIFAR-10 photos); quantising only the convolutions (fp32 between them) broke it (0.64), and
  symmetric int8 activations were worse (0.955).
- Transformers (Hugging Face text and vision towers): **dynamic** quantisation of the MatMuls only (int8 weights per
  channel, activations quantised per batch at run time): MiniLM ran 2.0x fp32 with a mean cosine of 0.992. Static QDQ
  was as fast but wrong (cosine 0.31: softmax and GELU ranges do not calibrate on a few sentences); quantising the
  embedding table too (``Gather``) made the file 2.5x smaller but the worst sentence worse (cosine 0.972 vs 0.981).

Calibration and check sets (offline, deterministic, shipped): images: scikit-image's sample photos (a core dependency),
each also flipped, cropped to two quarters and blown up from a 48 px thumbnail; the first ``_CALIBRATION_PHOTOS``
calibrate, the rest check. Text: the fixed sentences below. Audio: generated tones, chirps, harmonic buzzes and noise
bursts at several levels. All go through the encoder's own ``prepare``, so preprocessing is the encoder's.

The check: the INT8 file replaces nothing and is renamed into place only when every row of the check set has pooled
features with cosine similarity >= ``INT8_MIN_COSINE`` to the fp32 export's. Features move by more than fp32's 1e-4
(that is the point of INT8), so a cosine is the bound; what INT8 costs a linear probe is measured in the benchmark.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from .._paths import atomic_write_bytes
from ..errors import PolymodalError

QUANT_VERSION = 1  # bumped when the quantisation recipe or its calibration set changes: a new file name
# Smallest cosine similarity allowed between one check row's INT8 and fp32 pooled features. Measured, worst row (mean):
# EfficientNet-Lite0 0.900 (0.966) on the check photos, 0.944 (0.982) on 160 CIFAR-10 photos at 224 px; MiniLM 0.964
# (0.990) on the check sentences, 0.981 (0.992) on 512 rt-polarity sentences; EfficientNet-Lite0-mel 0.853 (0.960) on
# the generated check sounds, 0.895 (0.975) on the 300 FSDD test clips, 0.926 (0.970) on 20 ESC-10 clips. Broken
# recipes measured 0.3-0.7.
INT8_MIN_COSINE = 0.85
_CALIBRATION_PHOTOS = 12
_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
           "colorwheel", "camera", "brick", "coins", "grass", "gravel", "moon", "page", "clock")
_SENTENCES = (
    "a photo of a dog playing in the snow",
    "The quick brown fox jumps over the lazy dog.",
    "what a wonderful film , i loved every minute of it .",
    "the plot is thin and the acting is wooden ; a waste of two hours .",
    "Where is the nearest train station?",
    "Quarterly revenue rose 12 % on strong demand for cloud services, the company said on Tuesday.",
    "ok",
    "Bitte schließen Sie die Tür.",
    "def add(a, b): return a + b",
    ("The mitochondria is the powerhouse of the cell, producing ATP through oxidative phosphorylation in its inner "
     "membrane, a process that depends on a gradient of protons."),
    "!!! 😀 best day ever #happy",
    "I am not sure this is what I ordered; the box was open and the manual is missing.",
)

log = logging.getLogger(__name__)


def method(encoder) -> str:
    """``static`` for convolutional encoders, ``dynamic`` for transformers (see the module docstring)."""
    from .audio import SpectrogramEncoder
    from .image import EfficientNetLiteEncoder

    return "static" if isinstance(encoder, (EfficientNetLiteEncoder, SpectrogramEncoder)) else "dynamic"


def int8_path(fp32_path: Path, how: str) -> Path:
    """The INT8 file derived from ``fp32_path`` (same key, opset and export version)."""
    return fp32_path.with_name(f"{fp32_path.stem}-int8-{how}-q{QUANT_VERSION}.onnx")


def _photos():
    from PIL import Image
    from skimage import data

    out = []
    for name in _PHOTOS:
        im = Image.fromarray(getattr(data, name)()).convert("RGB")
        w, h = im.size
        out.append([im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), im.crop((0, 0, w // 2, h // 2)),
                    im.crop((w // 2, h // 2, w, h)), im.resize((48, 48)).resize((w, h))])
    return out


def _sounds(sample_rate: int, seconds: float) -> list[np.ndarray]:
    """Generated clips (deterministic): pure and harmonic tones, chirps, noise bursts, peaks from -34 to -6 dBFS."""
    rng = np.random.default_rng(0)
    n = max(1, int(sample_rate * seconds))
    t = np.arange(n) / sample_rate
    out = []
    for i, level in enumerate((0.5, 0.1, 0.02, 0.3, 0.05, 0.2)):
        f0 = 110.0 * 2 ** (i / 2)
        tone = np.sin(2 * np.pi * f0 * t)
        buzz = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12)) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
        chirp = np.sin(2 * np.pi * (100 + (sample_rate / 4) * t / (2 * seconds)) * t)
        burst = rng.standard_normal(n) * (np.sin(2 * np.pi * (1 + i) * t) > 0.3)
        for wave in (tone, buzz / 3, chirp, burst / 3):
            clip = (level * wave).astype(np.float32)
            out.append(clip[: n * (2 + i % 3) // 4])  # several lengths, so masks differ
    return out


def samples(encoder) -> tuple[list, list]:
    """(calibration items, check items) for ``encoder``'s modality, as its ``prepare`` takes them."""
    if encoder.modality == "image":
        photos = _photos()
        return ([v for p in photos[:_CALIBRATION_PHOTOS] for v in p], [v for p in photos[_CALIBRATION_PHOTOS:] for v in p])
    if encoder.modality == "text":
        return list(_SENTENCES), list(_SENTENCES)  # dynamic quantisation calibrates nothing
    clip = getattr(encoder, "clip_samples", None) or encoder.sample_rate
    sounds = _sounds(encoder.sample_rate, clip / encoder.sample_rate)  # 4 kinds per level: alternate the levels
    return [w for k, w in enumerate(sounds) if k // 4 % 2 == 0], [w for k, w in enumerate(sounds) if k // 4 % 2]


def _feeds(encoder, items, names: list[str], batch: int = 8) -> list[dict[str, np.ndarray]]:
    feeds = []
    for i in range(0, len(items), batch):
        prepared = encoder.prepare(items[i:i + batch])
        feeds.append({n: prepared[n].detach().cpu().numpy() for n in names})
    return feeds


@contextlib.contextmanager
def _quiet():
    """The quantiser advises its pre-processing step on the root logger and prints calibration progress."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            yield
    finally:
        root.setLevel(level)


def quantize(encoder, fp32_path: Path, dst: Path, how: str, calibration: list[dict[str, np.ndarray]]) -> None:
    """Write the INT8 graph of ``fp32_path`` to ``dst`` (``how``: static or dynamic, see the module docstring)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet():
        if how == "dynamic":
            quantize_dynamic(str(fp32_path), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul"])
            return

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = iter(calibration)

            def get_next(self):
                return next(self.batches, None)

        pre = dst.with_name(dst.name + ".pre.onnx")
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)  # folds and infers shapes first
            quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.Percentile, extra_options={"CalibPercentile": 99.99})
        finally:
            pre.unlink(missing_ok=True)


def cosines(fp32_path: Path, int8_path_: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Cosine similarity of each row's pooled features, INT8 vs fp32 graph: (rows,)."""
    from .onnx_backend import session

    ref, got = session(fp32_path), session(int8_path_)
    out = []
    for feed in feeds:
        a, b = ref.run(["pooled"], feed)[0].astype(np.float64), got.run(["pooled"], feed)[0].astype(np.float64)
        num = (a * b).sum(1)
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        out.append(np.where(den > 0, num / np.maximum(den, 1e-30), np.where(np.abs(a - b).max(1) == 0, 1.0, 0.0)))
    return np.concatenate(out)


def quantized_file(encoder, fp32_path: Path) -> tuple[Path, float | None]:
    """The INT8 file of the parity-checked ``fp32_path``: quantised and checked on first use (then (path, worst
    cosine on the check set)), else the cached file (then (path, None)). Written tmp + rename, like the export."""
    how = method(encoder)
    path = int8_path(fp32_path, how)
    if path.exists():
        return path, None
    names = [i.name for i in _session_inputs(fp32_path)]
    calibration_items, check_items = samples(encoder)
    tmp_dir = path.with_name(f".{path.stem}.{os.getpid()}.quant")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / "model.onnx"
    try:
        # one item per calibration batch: the histogram calibrators stack batches, so their shapes must agree
        quantize(encoder, fp32_path, tmp, how, _feeds(encoder, calibration_items, names, 1) if how == "static" else [])
        cos = cosines(fp32_path, tmp, _feeds(encoder, check_items, names))
        worst = float(cos.min())
        if not worst >= INT8_MIN_COSINE:
            raise PolymodalError(f"the INT8 ({how}) copy of the {encoder.modality} encoder's export moves pooled "
                                 f"features too far from fp32 (worst cosine similarity {worst:.3f} on the check set, "
                                 f"allowed {INT8_MIN_COSINE}); it is not used: set encoder.backend: onnxruntime")
        atomic_write_bytes(path, tmp.read_bytes())
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    log.info("quantised the %s encoder to INT8 (%s) at %s (worst cosine vs fp32 %.4f, mean %.4f)", encoder.modality,
             how, path, worst, float(cos.mean()))
    return path, worst


def _session_inputs(path: Path):
    from .onnx_backend import session

    return session(path, 1).get_inputs()
