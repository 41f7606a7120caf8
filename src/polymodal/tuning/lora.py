"""LoRA (Hu et al. 2021) on encoders through the peft library: inject, save only the adapter, merge.

This family changes weights. Methods that change the input (learned soft prompts) live apart, in
``tuning/prompts.py``.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import ConfigError

# Suffixes of the attention projections LoRA adapts in transformer encoders (BERT: query/value; CLIP, Whisper,
# wav2vec2: q_proj/v_proj), as in the LoRA paper's W_q, W_v choice.
ATTENTION_TARGETS = ("query", "value", "q_proj", "v_proj")


def default_targets(encoder: nn.Module) -> list[str]:
    """Full names of the modules to adapt: attention q/v projections when the encoder has them, else its 1x1
    convolutions and linear layers (EfficientNet's expand/project convs), else every convolution."""
    named = [(n, m) for n, m in encoder.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d))]
    attention = [n for n, _ in named if n.split(".")[-1] in ATTENTION_TARGETS]
    if attention:
        return attention
    pointwise = [n for n, m in named if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))]
    return pointwise or [n for n, _ in named]


def apply_lora(encoder: nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.0,
               targets: list[str] | tuple[str, ...] | None = None, where: str = "lora") -> int:
    """Inject LoRA adapters into ``encoder`` in place and freeze everything else in it.

    Args:
        targets: module names (exact, or suffixes as peft matches them); default: ``default_targets``.
        where: the config field errors name (``tuning.lora``, ``instruct.lora``).

    Returns:
        the number of trainable (adapter) parameters.
    """
    from peft import LoraConfig, inject_adapter_in_model

    names = list(targets) if targets else default_targets(encoder)
    if not names:
        raise ConfigError(f"{where}.targets: the model has no linear or convolution layers to adapt")
    _plain_pointwise_convs(encoder, names if targets is None else None)
    pattern = "^(" + "|".join(re.escape(n) if targets is None else f"(.*\\.)?{re.escape(n)}" for n in names) + ")$"
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern)
    try:
        inject_adapter_in_model(config, encoder)
    except ValueError as e:
        known = sorted({n.rsplit(".", 1)[-1] for n in default_targets(encoder)})
        raise ConfigError(f"{where}.targets: {', '.join(names)} matches no module of {type(encoder).__name__}; name "
                          f"modules it has, e.g. {', '.join(known[:6]) or '(none)'}, or leave it empty for the "
                          "default") from e
    for name, p in encoder.named_parameters():
        p.requires_grad = "lora_" in name
    return sum(p.numel() for p in encoder.parameters() if p.requires_grad)


def _plain_pointwise_convs(encoder: nn.Module, names: list[str] | None) -> None:
    """Swap 1x1, stride-1 subclasses of nn.Conv2d (EfficientNet's Conv2dStaticSamePadding, whose padding is then
    a no-op) for plain nn.Conv2d holding the same weights.

    peft builds each adapter as ``type(base_layer)(...)``; such subclasses need extra constructor arguments
    (``image_size``) and fail there.
    """
    wanted = set(names) if names is not None else None
    for name, module in list(encoder.named_modules()):
        if type(module) is nn.Conv2d or not isinstance(module, nn.Conv2d) or (wanted is not None and name not in wanted):
            continue
        if module.kernel_size != (1, 1) or tuple(module.stride) != (1, 1) or module.padding not in (0, (0, 0)):
            continue
        plain = nn.Conv2d(module.in_channels, module.out_channels, 1, bias=module.bias is not None, groups=module.groups)
        plain.load_state_dict(module.state_dict(), strict=False)
        plain.to(module.weight.device, module.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(encoder.get_submodule(parent_name) if parent_name else encoder, child, plain)


def freeze_norm_statistics(module: nn.Module) -> None:
    """Put every BatchNorm layer of ``module`` in eval mode, so training the rest leaves its running statistics
    as they were. Needed wherever the base weights are frozen (LoRA, a frozen phase of full tuning): the statistics
    are buffers that an adapter-only checkpoint does not save."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights of ``model`` (any module containing LoRA layers), by full parameter name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base layer and remove the adapter modules (in place).

    The merged model computes the same function without the extra matmuls, and saves as a plain model.
    """
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    return model


def has_lora(model: nn.Module) -> bool:
    return any("lora_" in n for n, _ in model.named_parameters())
