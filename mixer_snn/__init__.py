"""Spiking sparse-MLP family (TNNLS 2024): one model class with flags for every paper variant and ablation.

``SparseMLPSNN(neuron, ...)`` maps ``[B, C, H, W]`` / ``[T, B, C, H, W]`` images to logits ``[T, B, K]``;
``PRESETS`` and the ``sparse_mlp_*`` functions name the paper rows.
"""

from mixer_snn.model import (
    PRESETS,
    SparseMLPSNN,
    create_model,
    mlp_s,
    sparse_mlp_b,
    sparse_mlp_s,
    sparse_mlp_t,
    sparse_mlp_tiny,
)

__all__ = [
    "PRESETS",
    "SparseMLPSNN",
    "create_model",
    "mlp_s",
    "sparse_mlp_b",
    "sparse_mlp_s",
    "sparse_mlp_t",
    "sparse_mlp_tiny",
]
