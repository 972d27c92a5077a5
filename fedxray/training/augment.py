"""Training-time augmentation for chest radiographs (the input scaling is fedxray.models.inputs).

Mild geometric jitter (rotation, scale, shift) and brightness/contrast changes that real
acquisitions show. No horizontal flip: the heart's side is anatomy, not noise. All random
draws come from a CPU generator, so a seed gives the same augmentation on CPU and GPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_ROTATION_DEG = 7.0
SCALE_RANGE = (0.92, 1.08)
MAX_SHIFT = 0.05  # fraction of the image size
BRIGHTNESS = 0.08
CONTRAST = 0.1
DRAWS_PER_IMAGE = 6  # angle, scale, 2 shifts, contrast, brightness


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Randomly jitter a batch [B, 1, H, W] in [0, 1]; returns a new tensor in [0, 1]."""
    b = x.shape[0]
    if b == 0:
        return x
    u = torch.rand(b, DRAWS_PER_IMAGE, generator=generator)  # all draws on the CPU generator
    angle = (u[:, 0] * 2 - 1) * math.radians(MAX_ROTATION_DEG)
    scale = SCALE_RANGE[0] + u[:, 1] * (SCALE_RANGE[1] - SCALE_RANGE[0])
    shift = (u[:, 2:4] * 2 - 1) * (2 * MAX_SHIFT)  # grid coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    ).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Zero padding: outside the film is dark, like air.
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    contrast = (1 + (u[:, 4] * 2 - 1) * CONTRAST).to(x.device, x.dtype).view(b, 1, 1, 1)
    brightness = ((u[:, 5] * 2 - 1) * BRIGHTNESS).to(x.device, x.dtype).view(b, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + brightness).clamp(0.0, 1.0)


def skip_augment(generator: torch.Generator, count: int) -> None:
    """Advance ``generator`` exactly as :func:`augment` of ``count`` images would."""
    if count > 0:
        torch.rand(count, DRAWS_PER_IMAGE, generator=generator)
