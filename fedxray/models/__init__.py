"""Models: the built-in architectures (DP-compatible: GroupNorm, no in-place ops), plug-ins
from the ``fedxray.models`` entry points, the contract they meet (spec) and their input (inputs).
"""

from fedxray.models.registry import (
    MODEL_NAMES,
    build_model,
    default_image_size,
    get_spec,
    load_numpy_state,
    model_names,
    state_layout,
    state_to_numpy,
)
from fedxray.models.spec import ModelSpec

__all__ = [
    "MODEL_NAMES",
    "ModelSpec",
    "build_model",
    "default_image_size",
    "get_spec",
    "load_numpy_state",
    "model_names",
    "state_layout",
    "state_to_numpy",
]
