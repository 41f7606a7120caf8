"""Fusion heads: early (concat), gated, cross-attention and late (decision-level) fusion of modality features."""

from .heads import (
                    FUSIONS,
                    CrossAttentionFusion,
                    EarlyFusion,
                    GatedFusion,
                    LateFusion,
                    ModalityFeatures,
                    build_fusion,
                    drop_modalities,
)

__all__ = ["FUSIONS", "CrossAttentionFusion", "EarlyFusion", "GatedFusion", "LateFusion", "ModalityFeatures", "build_fusion",
           "drop_modalities"]
