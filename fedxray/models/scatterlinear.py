"""``scatter-linear``: wavelet scattering features and a linear head (issue 10's recipe).

Under DP a linear model on fixed, data-independent features beats an end-to-end CNN when
data are small (Tramer & Boneh 2021). The head normalises each example on its own (GroupNorm
without affine, then a fixed factor to unit norm: free under DP, and it bounds every
per-image gradient and the loss's curvature whatever the image size), subtracts a
``center`` (a buffer: one DP release of the mean feature, see fedxray.training.centering),
and applies one linear layer, initialised at zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedxray.models.frontend import FrontEndModel, ScatteringFrontEnd, ScatterSettings
from fedxray.models.inputs import to_unit_range


def _groups(channels: int, wanted: int = 7) -> int:
    """Largest divisor of ``channels`` not above ``wanted`` (GroupNorm needs a divisor)."""
    return max(g for g in range(1, wanted + 1) if channels % g == 0)


class NormalisedLinear(nn.Module):
    """features [B, K, P, P] -> GroupNorm (per example) -> unit norm -> minus center -> Linear."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        k, p, q = shape
        self.dim = k * p * q
        self.norm = nn.GroupNorm(_groups(k), k, affine=False)
        self.scale = 1 / math.sqrt(self.dim)
        self.register_buffer("center", torch.zeros(self.dim))
        self.linear = nn.Linear(self.dim, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Each example's normalised feature vector (norm 1), before centring."""
        return self.norm(x).flatten(1) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.embed(x) - self.center)


def build_scatter_linear(num_classes: int, in_channels: int, image_size: int) -> FrontEndModel:
    front = ScatteringFrontEnd(ScatterSettings(image_size))
    return FrontEndModel(front, NormalisedLinear(front.output_shape, num_classes))


class UnitImages:
    """The input view of front-end models: images as [N, 1, H, W] in [0, 1] (the front end
    is fixed, so augmentation, which would change the cached features, is not applied)."""

    def __init__(self, channels: int = 1):
        self.channels = channels

    def __call__(self, images, device="cpu", augment=None) -> torch.Tensor:
        return to_unit_range(images).to(device)
