"""The models' input contract: how a shard's images become a model's input tensor.

One place for it, used by training, evaluation and prediction alike, so an image gets the
same numbers wherever it is seen. The scaling is fixed and data-independent: statistics of a
site's private images would leak through it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fedxray.errors import FedxrayError

# Fixed, data-independent normalisation (statistics of the private data would leak).
MEAN = 0.5
STD = 0.25
_PIXEL_TYPES = (np.dtype(np.uint8), np.dtype(np.uint16))

Augment = Callable[[torch.Tensor], torch.Tensor]  # [B, 1, H, W] in [0, 1] -> same


def to_unit_range(images: np.ndarray) -> torch.Tensor:
    """uint8/uint16/float [N, H, W] images -> float32 tensor [N, 1, H, W] in [0, 1]."""
    arr = np.asarray(images)
    if arr.ndim != 3:
        raise FedxrayError(f"expected images [N, H, W], got shape {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if arr.dtype == np.uint8:
        t = t.float().div_(255.0)
    elif arr.dtype == np.uint16:
        t = t.float().div_(65535.0)
    elif np.issubdtype(arr.dtype, np.floating):
        t = t.float()
    else:
        raise FedxrayError(f"unsupported image dtype {arr.dtype}")
    return t.unsqueeze(1)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


def preprocess(images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """Model input for evaluation/prediction: scaled and normalised, no augmentation."""
    return normalize(to_unit_range(images).to(device))


class ImageInput:
    """The input view of the image models: [N, channels, H, W], scaled and normalised.

    During training an ``augment`` function (random jitter of images in [0, 1]) is applied
    between scaling and normalisation. ``channels`` 3 repeats the grey image for models built
    for colour input.
    """

    def __init__(self, channels: int = 1):
        if channels not in (1, 3):
            raise FedxrayError(f"input channels must be 1 or 3, got {channels}")
        self.channels = channels

    def __call__(
        self,
        images: np.ndarray,
        device: str | torch.device = "cpu",
        augment: Augment | None = None,
    ) -> torch.Tensor:
        arr = np.asarray(images)
        if arr.dtype not in _PIXEL_TYPES:
            raise FedxrayError(f"images must be uint8 or uint16, got {arr.dtype}")
        if arr.ndim != 3:
            raise FedxrayError(f"images must have shape [N, H, W], got {list(arr.shape)}")
        x = to_unit_range(arr).to(device, non_blocking=True)
        if augment is not None:
            x = augment(x)
        x = normalize(x)
        return x if self.channels == 1 else x.expand(-1, self.channels, -1, -1).contiguous()


def images_to_tensor(images: np.ndarray, channels: int = 1) -> torch.Tensor:
    """uint8 / uint16 images [N, H, W] -> float32 model input [N, channels, H, W]."""
    return ImageInput(channels)(images)
