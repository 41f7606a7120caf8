"""Tuning methods. Weight-changing methods (full fine-tuning, LoRA) and input-changing methods (soft prompts)
are separate families."""

from .lora import apply_lora, default_targets, freeze_norm_statistics, lora_state_dict, merge_lora

__all__ = ["apply_lora", "default_targets", "freeze_norm_statistics", "lora_state_dict", "merge_lora"]
