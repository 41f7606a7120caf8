"""The layers and weight format of a run written by ``polymodal compress``, shared by saving and ``load_run``.

Training owns how a run is rebuilt from its folder, so the rebuild of compressed layers lives here, below
``polymodal.compress`` (which chooses, measures and writes; see ``compress/quantize.py`` for why torch's dynamic
quantisation).

Which weights a compressed run owns: the head always; the encoders too unless the run is a linear probe (whose
frozen encoders are rebuilt from the config and feed it cached features). A LoRA run is merged first: the INT8
layers and the pruning masks apply to plain weights, and the run then holds all of them, like a full run.

Safetensors holds no quantised tensors, so each INT8 Linear ``name`` is saved as plain tensors:
``name.weight_int8`` (out, in) int8, ``name.weight_scale`` (out,) float64, ``name.weight_zero_point`` (out,)
int64 (per output channel), and ``name.bias`` (out,) float32 when it has one.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Collection
from pathlib import Path

import torch
from torch import nn

from ..train.config import TrainConfig

INT8_SUFFIXES = (".weight_int8", ".weight_scale", ".weight_zero_point")
FUSED_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.MultiheadAttention)


def owned_modules(model: nn.Module, mode: str) -> dict[str, nn.Module]:
    """The parts of a ``MultimodalClassifier`` whose weights the run holds, by their prefix in its state dict."""
    parts = {"head": model.head}
    if mode != "linear_probe":
        parts.update({f"encoders.{m}": enc for m, enc in model.encoders.items()})
    return parts


@contextlib.contextmanager
def _quiet_quantization():
    # torch.ao.quantization warns on import and use that it moves to torchao; torch is pinned (==2.13.0), where it
    # works, and the warning is not the user's to act on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        yield


def quantize_linear_layers(module: nn.Module, keep_fp32: Collection[str] = ()) -> nn.Module:
    """Swap every ``nn.Linear`` of ``module`` for a dynamic INT8 one (per-output-channel weight scales), in place.

    Activations are quantised per batch at run time; weights are int8 from here on. The Linears inside torch's own
    ``nn.TransformerEncoderLayer`` / ``nn.MultiheadAttention`` (the cross-attention head) stay fp32: the fused fast
    path of those layers reads their weights as plain tensors.

    Args:
        keep_fp32: names (within ``module``) of Linear layers to leave fp32.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    # torch's fused transformer-layer fast path reads its Linear weights as tensors: those layers stay fp32.
    fused = [name for name, m in module.named_modules() if isinstance(m, FUSED_LAYERS)]
    names = {name: per_channel_dynamic_qconfig for name, m in module.named_modules()
             if type(m) is nn.Linear and name not in keep_fp32 and not any(name.startswith(f"{f}.") for f in fused)}
    with _quiet_quantization():
        return quantize_dynamic(module, names, dtype=torch.qint8, inplace=True)


def is_int8_linear(module: nn.Module) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    return isinstance(module, DynamicInt8Linear)


def compressed_state(model: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """The tensors a compressed run saves (safetensors-ready): owned weights, INT8 Linears unpacked."""
    out: dict[str, torch.Tensor] = {}
    for prefix, part in owned_modules(model, mode).items():
        int8 = {name: m for name, m in part.named_modules() if is_int8_linear(m)}
        for name, m in int8.items():
            key = f"{prefix}.{name}" if name else prefix
            w = m.weight()
            out[f"{key}.weight_int8"] = w.int_repr()
            out[f"{key}.weight_scale"] = w.q_per_channel_scales()
            out[f"{key}.weight_zero_point"] = w.q_per_channel_zero_points()
            if m.bias() is not None:
                out[f"{key}.bias"] = m.bias()
        skip = tuple(f"{name}." if name else "" for name in int8)
        for k, v in part.state_dict().items():
            if not (int8 and any(k.startswith(s) for s in skip)):
                out[f"{prefix}.{k}"] = v
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def within(prefix: str, names: Collection[str]) -> set[str]:
    """The ``names`` under ``prefix`` (a part of the model), relative to it."""
    return {n[len(prefix) + 1:] for n in names if n.startswith(f"{prefix}.")}


def rebuild_compressed(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Give a freshly built classifier the layer types of a compressed run: merge LoRA, then INT8 Linears."""
    from ..tuning import merge_lora

    if cfg.tuning.mode == "lora":
        merge_lora(model)
    if cfg.compression is not None and cfg.compression.int8:
        for prefix, part in owned_modules(model, cfg.tuning.mode).items():
            quantize_linear_layers(part, within(prefix, cfg.compression.fp32_layers))
    return model


def load_compressed(model: nn.Module, cfg: TrainConfig, path: Path) -> None:
    """Rebuild a compressed run's layers in ``model`` (built from ``cfg``) and load its weights from ``path``."""
    rebuild_compressed(model, cfg)
    from ..train.checkpoint import read_weights

    tensors = read_weights(path)
    int8_keys = {k[: -len(s)] for k in tensors for s in INT8_SUFFIXES if k.endswith(s)}
    for key in sorted(int8_keys):
        module = model.get_submodule(key)
        if not is_int8_linear(module):
            raise RuntimeError(f"{path}: {key} holds INT8 weights but the model built from the config has a "
                               f"{type(module).__name__} there")
        with _quiet_quantization():
            weight = torch._make_per_channel_quantized_tensor(
                tensors.pop(f"{key}.weight_int8"), tensors.pop(f"{key}.weight_scale").double(),
                tensors.pop(f"{key}.weight_zero_point").long(), 0)
        module.set_weight_bias(weight, tensors.pop(f"{key}.bias", None))
    # Copied tensor by tensor: load_state_dict would also visit the INT8 modules, whose own loader wants a state
    # this format does not keep (and does not need: their weights are set above).
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    unexpected = [k for k in tensors if k not in named or named[k].shape != tensors[k].shape]
    if unexpected:
        raise RuntimeError(f"{path}: weights {unexpected[:5]} do not fit the model built from the config")
    with torch.no_grad():
        for k, v in tensors.items():
            named[k].copy_(v)
