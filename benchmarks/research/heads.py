"""Trainable heads on scattering features [B, K, P, P].

Both start with a per-example GroupNorm without affine parameters: each example is normalised
with its own statistics only, which is free under DP (no statistics of other patients), and
it puts every site's features on one scale before the first gradient is clipped.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def groups_for(channels: int, groups: int) -> int:
    """Largest divisor of ``channels`` not above ``groups`` (GroupNorm needs a divisor)."""
    return max(g for g in range(1, groups + 1) if channels % g == 0)


class UnitScale(nn.Module):
    """Multiply by a fixed constant (no parameters)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x):
        return x * self.factor


class BlockNorm(nn.Module):
    """Per-example standardisation of channel blocks, each block then given a fixed energy.

    blocks: (first, last) channel ranges; energy: the squared norm each block gets (sum 1).
    Like GroupNorm without affine, but with unequal, meaningful groups (scattering orders).
    """

    def __init__(self, blocks: list[tuple[int, int]], energy: list[float], eps: float = 1e-5):
        super().__init__()
        self.blocks, self.energy, self.eps = list(blocks), list(energy), eps

    def forward(self, x):
        parts = []
        for (a, b), e in zip(self.blocks, self.energy, strict=True):
            v = x[:, a:b].flatten(1)
            v = (v - v.mean(1, keepdim=True)) / (v.std(1, unbiased=False, keepdim=True) + self.eps)
            parts.append(v * math.sqrt(e / v.shape[1]))
        return torch.cat(parts, dim=1)


def order_blocks(channels: int, J: int, L: int) -> list[tuple[int, int]]:
    """Channel ranges of scattering orders 0 + 1 together, and order 2 (kymatio order)."""
    first = 1 + J * L
    return [(0, first), (first, channels)]


class LinearHead(nn.Module):
    """GroupNorm (per example) -> flatten -> scale to unit norm -> minus centre -> Linear.

    After the GroupNorm every example's feature vector has norm sqrt(K*P*P); the fixed factor
    1/sqrt(K*P*P) makes it 1, so the softmax loss is at most 1-smooth in (weights, bias), a
    per-image gradient has norm at most 2, and one learning rate fits every image size.

    ``center`` (a buffer, zeros by default) is subtracted before the linear layer. It does not
    change what the head can express (W (z - c) + b = W z + (b - W c)); it only conditions
    gradient descent: the features of all radiographs share one large common direction, which
    otherwise dominates the curvature and forces a small learning rate (see REPORT.md).
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        classes: int = 3,
        groups: int = 8,
        blocks: list[tuple[int, int]] | None = None,
    ):
        super().__init__()
        k, p, _ = shape
        dim = k * p * p
        if blocks is None:
            self.normalise = nn.Sequential(
                nn.GroupNorm(groups_for(k, groups), k, affine=False),
                nn.Flatten(),
                UnitScale(1 / math.sqrt(dim)),
            )
        else:  # per-order blocks, equal energy: the result has norm 1 as well
            self.normalise = BlockNorm(blocks, [1 / len(blocks)] * len(blocks))
        self.register_buffer("center", torch.zeros(dim))
        self.linear = nn.Linear(dim, classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def embed(self, x):
        """Per-example normalised features (norm 1), before centring."""
        return self.normalise(x)

    def forward(self, x):
        return self.linear(self.normalise(x) - self.center)


class ScatterCNN(nn.Module):
    """Small CNN on scattering features (after Tramèr & Boneh 2021, ScatterNet + CNN).

    GroupNorm(K) per example -> [conv3x3 -> GroupNorm -> tanh] x depth with a 2x2 max-pool
    after the first block when the map is larger than 4x4 -> global average pool -> Linear.
    tanh rather than ReLU: bounded activations keep clipped DP gradients informative
    (Papernot et al. 2021, "Tempered sigmoid activations").
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        classes: int = 3,
        width: int = 32,
        depth: int = 2,
        groups: int = 8,
    ):
        super().__init__()
        k, p, _ = shape
        layers: list[nn.Module] = [nn.GroupNorm(groups_for(k, groups), k, affine=False)]
        c_in = k
        for i in range(depth):
            layers += [
                nn.Conv2d(c_in, width, 3, padding=1),
                nn.GroupNorm(groups_for(width, groups), width),
                nn.Tanh(),
            ]
            if i == 0 and p > 4:
                layers.append(nn.MaxPool2d(2))
            c_in = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def make_head(name: str, shape: tuple[int, int, int], classes: int = 3) -> nn.Module:
    """``linear`` or ``cnn[W]x[D]`` (e.g. cnn32x2)."""
    if name == "linear":
        return LinearHead(shape, classes)
    if name == "linear-orders":  # J=3, L=8 scattering with orientations="all"
        return LinearHead(shape, classes, blocks=order_blocks(shape[0], 3, 8))
    if name.startswith("cnn"):
        width, depth = (int(v) for v in name[3:].split("x"))
        return ScatterCNN(shape, classes, width=width, depth=depth)
    raise ValueError(f"unknown head {name!r}")


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
