"""ONNX Runtime as the inference backend of frozen encoders (feature extraction, linear probes).

An encoder is exported once per (weights, preprocessing settings, opset) into ``<cache>/onnx/`` by torch's
exporter, with dynamic batch (and token) axes, then checked against the torch module on a probe batch of another
shape: the file is renamed into place only when the pooled features agree within ``PARITY_MAX_ABS``, so a file that
exists has passed the check and later runs load it directly. Preprocessing stays the torch encoder's own
(``prepare``: the same tokenizer, the same image transform), so only the forward pass changes.

Why: on 2 CPU cores ONNX Runtime runs EfficientNet-Lite0 about 7x faster than torch eager (its convolutions fuse
batch norm and ReLU6 and run in a blocked layout; bench/results/encode.md). MiniLM gains nothing there (torch's
SDPA on length-sorted batches is as fast or faster), so text encoders use it only when asked.

INT8 (``encoder.backend: onnxruntime-int8``, never a default): ONNX Runtime's quantiser applied to that checked fp32
file, once per key, itself checked before it is renamed into place (``_onnx_int8``).

Thread count: one place, ``inference_threads()``.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._paths import atomic_write_bytes, cache_dir
from ..errors import ConfigError, PolymodalError
from .encoder import EncoderOutput

BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")
OPSET = 18
EXPORT_VERSION = 2  # bumped when the exported graph changes; 2: the mask is an output (audio derives it from lengths)
# Largest |ONNX Runtime - torch| allowed on any pooled feature of the probe batch (fp32). Measured: 8e-6 for
# EfficientNet-Lite0 (features up to ~6), 1e-6 for MiniLM; tests/test_onnx_backend.py checks both against it.
PARITY_MAX_ABS = 1e-4
THREADS_ENV = "POLYMODAL_THREADS"
_PROBE_TEXTS = ("a photo", "the quick brown fox jumps over the lazy dog, and then it runs all the way back home again")

log = logging.getLogger(__name__)


def inference_threads() -> int:
    """Intra-op threads for inference: ``$POLYMODAL_THREADS`` if set, else the number of physical cores this process
    may run on (hyper-threads share one core's vector units, so they add little to dense kernels)."""
    value = os.environ.get(THREADS_ENV)
    if value:
        try:
            n = int(value)
        except ValueError:
            raise ConfigError(f"${THREADS_ENV}={value!r} is not a whole number; set it to a thread count such as 4"
                              ) from None
        if n < 1:
            raise ConfigError(f"${THREADS_ENV}={n}: needs at least 1 thread")
        return n
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or allowed
        logical = psutil.cpu_count(logical=True) or allowed
    except ImportError:
        physical = logical = allowed
    return max(1, min(allowed, allowed * physical // logical))


def onnxruntime_available() -> bool:
    """Whether onnxruntime and onnxscript (torch's exporter needs it) are installed; found without importing them."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnxscript", "onnx"))


def exportable(encoder: Any) -> bool:
    """Whether this built encoder has an ONNX export here: EfficientNet-Lite on images or log-mels, the audio CNN,
    Hugging Face text and vision towers."""
    from .audio import SpectrogramEncoder
    from .image import EfficientNetLiteEncoder, HFVisionEncoder
    from .text import HFTextEncoder

    return isinstance(encoder, (EfficientNetLiteEncoder, HFTextEncoder, HFVisionEncoder, SpectrogramEncoder))


class _Graph(torch.nn.Module):
    """The encoder's forward pass with tensors in and (pooled, sequence, mask) out, as the exporter wants it."""

    def __init__(self, encoder: torch.nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.encoder, self.names = encoder, names

    def forward(self, *tensors: torch.Tensor):
        out = self.encoder(dict(zip(self.names, tensors)))
        return out.pooled, out.sequence, out.mask


def _probe_inputs(encoder, batch: int) -> dict[str, torch.Tensor]:
    """Model inputs for export (``batch`` rows) and the parity check (another batch size and length)."""
    if encoder.modality == "text":
        texts = [_PROBE_TEXTS[i % 2] * (1 + i // 2) for i in range(batch)]  # padded rows and several lengths
        prepared = encoder.prepare(texts)
        return {"input_ids": prepared["input_ids"], "attention_mask": prepared["attention_mask"]}
    if encoder.modality == "audio":  # clips of different lengths, so the masks differ
        rng = np.random.default_rng(batch)
        clip = encoder.clip_samples
        return encoder.prepare([0.1 * rng.standard_normal(clip * (i + 1) // (batch + 1)).astype(np.float32)
                                for i in range(batch)])
    size = encoder.transform.size
    gen = torch.Generator().manual_seed(batch)
    return {"pixel_values": torch.randn(batch, 3, size, size, generator=gen)}


def _dynamic_shapes(names: tuple[str, ...]):
    batch, tokens = torch.export.Dim.DYNAMIC, torch.export.Dim.DYNAMIC
    return tuple({0: batch, 1: tokens} if n in ("input_ids", "attention_mask") else {0: batch} for n in names)


def export_onnx(module: torch.nn.Module, example: dict[str, torch.Tensor], path: Path, output_names: list[str],
                dynamic_shapes: tuple, opset: int | None, what: str, fix: str) -> None:
    """torch's dynamo ONNX exporter, quiet (it logs that torchvision's operators are unavailable and prints
    progress), outside inference mode; its failure as one line naming ``what`` failed and the ``fix``."""
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, tuple(example.values()), str(path), input_names=list(example),
                              output_names=output_names, dynamic_shapes=(dynamic_shapes,), dynamo=True,
                              external_data=False, opset_version=opset, verbose=False)
    except Exception as e:
        root = e
        while root.__cause__ is not None:  # the exporter wraps torch.export's error, which says what failed
            root = root.__cause__
        raise PolymodalError(f"{what} failed: {type(root).__name__}: {' '.join(str(root).split())[:400]}; {fix}"
                             ) from e
    finally:
        quiet.setLevel(level)


def _export_bytes(encoder: torch.nn.Module, example: dict[str, torch.Tensor], path: Path) -> None:
    names = tuple(example)
    export_onnx(_Graph(encoder, names), example, path, ["pooled", "sequence", "mask"], _dynamic_shapes(names), OPSET,
                f"ONNX export of the {encoder.modality} encoder", "set encoder.backend: torch")


def session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session with ``inference_threads()`` intra-op threads and every graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or inference_threads()
    options.inter_op_num_threads = 1  # the graphs are chains; parallelism is inside each kernel
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxEncoder:
    """A frozen encoder whose forward pass runs in ONNX Runtime; ``prepare`` and every other attribute (tokenizer,
    truncation report, transform, dim) are the torch encoder's. Not trainable: training paths build torch encoders.

    Attributes:
        path: the exported .onnx file (the INT8 copy for ``backend`` onnxruntime-int8); ``max_abs_diff``: the fp32
            parity check's result when this process exported it; ``int8_cosine``: the INT8 check's worst cosine
            similarity to fp32 when this process quantised it.
    """

    def __init__(self, encoder: torch.nn.Module, path: Path, max_abs_diff: float | None = None,
                 backend: str = "onnxruntime", int8_cosine: float | None = None):
        self.torch_encoder = encoder
        self.path = path
        self.max_abs_diff = max_abs_diff
        self.backend = backend  # names the feature cache (features.encode): fp32 and INT8 features never mix
        self.int8_cosine = int8_cosine
        self.session = session(path)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __getattr__(self, name: str):  # modality, dim, seq_dim, tokenizer, truncation, transform, ...
        if name == "torch_encoder":
            raise AttributeError(name)
        return getattr(self.torch_encoder, name)

    def prepare(self, items, train: bool = False, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        if train:
            raise PolymodalError("the onnxruntime backend serves frozen encoders only; training uses "
                                 "encoder.backend: torch")
        return self.torch_encoder.prepare(items, train=False, rng=rng)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        feed = {n: inputs[n].detach().cpu().numpy() for n in self.input_names}
        pooled, seq, mask = self.session.run(["pooled", "sequence", "mask"], feed)
        return EncoderOutput(pooled=torch.from_numpy(pooled), sequence=torch.from_numpy(seq),
                             mask=torch.from_numpy(mask).bool())


class OnnxModule(torch.nn.Module):
    """An ``OnnxEncoder`` as a parameter-free ``nn.Module``, so a loaded classifier's ``encoders`` (a ModuleDict)
    can hold it: ``Run.predict`` and the service then encode through ONNX Runtime. Inference only."""

    def __init__(self, encoder: OnnxEncoder):
        super().__init__()
        object.__setattr__(self, "onnx", encoder)  # not a submodule: no parameters, nothing to save

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        return self.onnx(inputs)

    def prepare(self, items, train: bool = False, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        return self.onnx.prepare(items, train=train, rng=rng)

    def __getattr__(self, name: str):  # modality, dim, seq_dim, tokenizer, sample_rate, transform, backend, ...
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "onnx"), name)


def onnx_path(key: str) -> Path:
    """Where the export of the encoder with torch-backend key ``key`` lives."""
    return cache_dir("onnx") / f"{key}-opset{OPSET}-v{EXPORT_VERSION}.onnx"


def onnx_encoder(encoder: torch.nn.Module, key: str, int8: bool = False) -> OnnxEncoder:
    """``encoder`` (built, eval mode) running in ONNX Runtime: exported and parity-checked on first use, then loaded
    from the cache. ``key``: the torch encoder's ``encoder_key`` (weights + preprocessing). ``int8``: run the INT8
    copy of that export instead, quantised and checked on first use (``_onnx_int8``), then cached beside it."""
    if not exportable(encoder):
        raise ConfigError(f"encoder.backend: {'onnxruntime-int8' if int8 else 'onnxruntime'} has no export for "
                          f"{type(encoder).__name__} (it covers EfficientNet-Lite0 on images and log-mels, audio-cnn, "
                          "Hugging Face text and vision towers); set encoder.backend: torch")
    encoder.eval()
    fp32_path = onnx_path(key)
    if not int8:
        return _cached(encoder, fp32_path, "onnxruntime", lambda: {"max_abs_diff": _export_checked(encoder, fp32_path)})
    from . import _onnx_int8

    def quantise() -> dict[str, float | None]:
        fp32 = onnx_encoder(encoder, key)  # the parity-checked export the INT8 copy is made from
        return {"max_abs_diff": fp32.max_abs_diff, "int8_cosine": _onnx_int8.quantized_file(encoder, fp32.path)[1]}

    # a cached INT8 file is loaded alone: the fp32 export is read only to make it
    return _cached(encoder, _onnx_int8.int8_path(fp32_path, _onnx_int8.method(encoder)), "onnxruntime-int8", quantise)


def _cached(encoder: torch.nn.Module, path: Path, backend: str, make) -> OnnxEncoder:
    """``encoder`` on the cached file ``path`` (the fp32 export or its INT8 copy); ``make()`` writes the file, checked,
    when it is missing or cannot be loaded (disk full, edited by hand), and returns its check's results."""
    if path.exists():
        try:
            return OnnxEncoder(encoder, path, backend=backend)
        except Exception as e:  # noqa: BLE001 - a damaged file is made again
            log.warning("%s cannot be loaded (%s); making it again", path, str(e).splitlines()[0][:200])
            path.unlink(missing_ok=True)
    return OnnxEncoder(encoder, path, backend=backend, **make())


def _export_checked(encoder: torch.nn.Module, path: Path) -> float:
    """Export ``encoder`` to ``path`` if its pooled features match torch's within ``PARITY_MAX_ABS``; the difference."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.export")
    try:
        _export_bytes(encoder, _probe_inputs(encoder, 2), tmp)
        diff = parity(encoder, tmp)
        if not diff <= PARITY_MAX_ABS:
            raise PolymodalError(f"the ONNX export of the {encoder.modality} encoder differs from torch by {diff:.2e} "
                                 f"on pooled features (allowed {PARITY_MAX_ABS:.0e}); it is not used: set "
                                 "encoder.backend: torch")
        atomic_write_bytes(path, tmp.read_bytes())  # another process may have won the race: same bytes, same file
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported the %s encoder to %s (max abs diff vs torch %.1e)", encoder.modality, path, diff)
    return diff


@torch.inference_mode()
def parity(encoder: torch.nn.Module, path: Path) -> float:
    """Max abs difference of pooled features, ONNX Runtime vs torch, on a probe batch of 3 rows (shapes other than
    the export's, so the dynamic axes are exercised)."""
    inputs = _probe_inputs(encoder, 3)
    ref = encoder(inputs).pooled.float().numpy()
    sess = session(path)
    got = sess.run(["pooled"], {n: t.numpy() for n, t in inputs.items()})[0]
    return float(np.abs(got - ref).max())
