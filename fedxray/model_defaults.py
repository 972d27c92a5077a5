"""Per model, the settings a plan takes when it does not give them (a plan's own values win).

The general defaults in :mod:`fedxray.settings` are the default model's (scatter-linear's
recipe); the CNNs and plug-ins train differently.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The training of the CNNs (and plug-ins), where it differs from the defaults above (which
# are the default model's): Poisson batches of 64 patients, 5 rounds x 2 epochs at lr 0.15.
# Under DP nearly every per-example gradient is clipped, so steps are small: 0.15 learned
# in both DP and non-DP runs where 0.05 stayed at chance.
CNN_TRAINING: dict[str, Any] = {
    "rounds": 5,
    "local_epochs": 2,
    "lr": 0.15,
    "full_batch": False,
    "bias_lr": 0.0,
    "centering": False,
    "augment": True,  # scatter-linear trains on features cached per image: never augmented
}
# Per model, the settings that a plan without them takes: a plan's own values win.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "scatter-linear": {},
    # The same normalised linear head on a frozen pretrained network: the same recipe.
    "resnet18-frozen": {},
    "densenet121-frozen": {},
    "smallcnn": {"model": {"image_size": 64}, "training": CNN_TRAINING},
    "tinycnn": {"model": {"image_size": 32}, "training": CNN_TRAINING},
    "resnet18": {"model": {"image_size": 224}, "training": CNN_TRAINING},
}
PLUGIN_DEFAULTS: dict[str, Any] = {"training": CNN_TRAINING}


def merged(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` over ``defaults``, section by section."""
    out = dict(defaults)
    for key, value in given.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out
