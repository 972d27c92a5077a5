"""Model architectures (all DP-compatible: GroupNorm, no in-place ops) and their registry."""

from fedxray.models.registry import (
    MODEL_NAMES,
    build_model,
    default_image_size,
    load_numpy_state,
    state_layout,
    state_to_numpy,
)

__all__ = [
    "MODEL_NAMES",
    "build_model",
    "default_image_size",
    "load_numpy_state",
    "state_layout",
    "state_to_numpy",
]
