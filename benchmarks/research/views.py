"""Image views: random acquisition-shift augmentation for training, fixed shifts for testing.

Both are data-independent (draws come from a seed, never from the pixels' statistics), so
precomputing K augmented views per image and caching their scattering features costs no
privacy. The augmentation models what differs between X-ray acquisitions: exposure
(brightness), detector response / post-processing (gamma, contrast) and positioning (small
rotation, zoom, shift). No horizontal flip: the heart's side is anatomy.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# Ranges of the training augmentation (uniform draws).
MAX_ROTATION_DEG = 7.0
ZOOM = (0.92, 1.08)
MAX_SHIFT = 0.05  # fraction of the image side
LOG_GAMMA = 0.3  # gamma in [exp(-0.3), exp(0.3)] = [0.74, 1.35]
CONTRAST = 0.15
BRIGHTNESS = 0.06


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S] -> float32 [N, 1, S, S] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)


def _affine(x: torch.Tensor, angle, zoom, shift) -> torch.Tensor:
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _intensity(x: torch.Tensor, gamma, contrast, brightness) -> torch.Tensor:
    b = x.shape[0]
    x = x.clamp(0, 1).pow(gamma.view(b, 1, 1, 1))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast.view(b, 1, 1, 1) + mean + brightness.view(b, 1, 1, 1)
    return x.clamp(0, 1)


def augmented_view(images: np.ndarray, view: int, seed: int = 0) -> torch.Tensor:
    """View ``view`` (>= 1) of every image: fixed random draws from (seed, view, image index)."""
    n = len(images)
    rng = np.random.default_rng([seed, view, n])
    u = torch.from_numpy(rng.random((n, 7)))
    angle = (u[:, 0] * 2 - 1) * math.radians(MAX_ROTATION_DEG)
    zoom = ZOOM[0] + u[:, 1] * (ZOOM[1] - ZOOM[0])
    shift = (u[:, 2:4] * 2 - 1) * (2 * MAX_SHIFT)  # grid coordinates span [-1, 1]
    gamma = torch.exp((u[:, 4] * 2 - 1) * LOG_GAMMA)
    contrast = 1 + (u[:, 5] * 2 - 1) * CONTRAST
    brightness = (u[:, 6] * 2 - 1) * BRIGHTNESS
    x = to_float(images)
    x = _affine(x, angle.float(), zoom.float(), shift.float())
    return _intensity(x, gamma.float(), contrast.float(), brightness.float())


# Fixed shifts for the robustness check, applied to held-out images only. "blur" and "lowres"
# are NOT in the training augmentation (an unseen kind of shift); the others are at or
# beyond the edge of its ranges.
SHIFTS = ("gamma0.7", "gamma1.4", "contrast0.8", "blur", "lowres", "affine")


def shifted_view(images: np.ndarray, kind: str) -> torch.Tensor:
    x = to_float(images)
    n, size = x.shape[0], x.shape[-1]
    one = torch.ones(n)
    if kind.startswith("gamma"):
        return _intensity(x, one * float(kind[5:]), one, one * 0)
    if kind == "contrast0.8":
        return _intensity(x, one, one * 0.8, one * 0.05)
    if kind == "blur":  # Gaussian blur with sigma 1% of the image side (a softer detector)
        return _gaussian_blur(x, 0.01 * size)
    if kind == "lowres":  # acquired at half the resolution, upsampled back
        small = F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True)
        return F.interpolate(small, size=(size, size), mode="bilinear").clamp(0, 1)
    if kind == "affine":  # rotated 6 degrees, zoomed in 6 %, shifted 3 %
        angle = one * math.radians(6.0)
        return _affine(x, angle, one * 1.06, torch.full((n, 2), 0.06)).clamp(0, 1)
    raise ValueError(f"unknown shift {kind!r}")


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
