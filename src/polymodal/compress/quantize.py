"""Dynamic INT8 quantisation of a run's Linear layers, with torch's ``quantize_dynamic``.

Why torch's rather than ONNX Runtime's ``quantize_dynamic``: the result must stay a polymodal run that
``load_run``, ``polymodal eval`` and ``polymodal predict`` use like any other, with the same encoders, the same
``prepare`` code and the same fusion-head inputs (dataclasses, missing modalities). An ONNX Runtime model is a
different artefact with its own inputs; it is what ``polymodal export --onnx --int8`` writes for edge use.
torch's dynamic INT8 Linear runs on fbgemm/x86 kernels, so it is faster on CPU than fp32, not only smaller.

``torch.ao.quantization`` is deprecated in favour of torchao; torch is pinned (==2.13.0) and it works there. The
weight format of a compressed run is plain int8 tensors with per-channel scales (``train/_compressed.py``), so
moving to torchao later changes the layer swap, not the saved runs.

What is quantised: every ``nn.Linear`` the run owns (the head; and the encoders of a full or LoRA run, e.g. the
attention and feed-forward layers of a text transformer). Convolutions, embeddings, LayerNorms and
the Linears inside torch's ``nn.TransformerEncoderLayer`` (cross-attention head) stay fp32: dynamic quantisation covers Linear layers only, so an
EfficientNet encoder gains little.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import torch
from torch import nn

from ..classify._compressed import is_int8_linear, owned_modules, quantize_linear_layers, within


def input_outlier_ratios(model: nn.Module, mode: str, batches: Iterable[object]) -> dict[str, float]:
    """max |x| / rms(x) of the input of every Linear the run owns, over the forward passes of ``model`` on
    ``batches`` (calibration data, not the test split), by full name.

    A dynamic INT8 Linear quantises its whole input with one scale set by max |x|; the larger this ratio, the fewer
    of the (on x86, 7: torch's fbgemm kernels use reduce_range) bits carry the typical value.
    """
    stats: dict[str, list[float]] = {}

    def hook(name: str):
        def record(module, inputs, output):
            x = inputs[0].detach().float()
            s = stats.setdefault(name, [0.0, 0.0, 0.0])
            s[0] = max(s[0], float(x.abs().max()))
            s[1] += float((x * x).sum())
            s[2] += x.numel()
        return record

    handles = [m.register_forward_hook(hook(f"{prefix}.{n}"))
               for prefix, part in owned_modules(model, mode).items()
               for n, m in part.named_modules() if type(m) is nn.Linear]
    try:
        with torch.inference_mode():
            for batch in batches:
                model(batch)
    finally:
        for h in handles:
            h.remove()
    return {n: mx / max(1e-12, (ss / max(1.0, cnt)) ** 0.5) for n, (mx, ss, cnt) in stats.items()}


def quantize_int8(model: nn.Module, mode: str, keep_fp32: Collection[str] = ()) -> int:
    """Quantise the Linear layers of the parts of ``model`` (a ``MultimodalClassifier``) a run of tuning ``mode``
    owns, in place. A LoRA model must be merged first (``polymodal.tuning.merge_lora``).

    Args:
        keep_fp32: full names of Linear layers to leave fp32 (see ``input_outlier_ratios``).

    Returns:
        the number of INT8 Linear layers.
    """
    count = 0
    for prefix, part in owned_modules(model, mode).items():
        quantize_linear_layers(part, within(prefix, keep_fp32))
        count += sum(is_int8_linear(m) for m in part.modules())
    return count
