"""A small, fast CNN (~100k parameters) for 64x64 radiographs on a few CPU cores."""

from __future__ import annotations

from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: one example's gradient must not depend on the others (DP).
    return nn.GroupNorm(min(8, channels), channels)


class SmallCNN(nn.Module):
    """A strided 5x5 stem, three conv/GroupNorm/ReLU stages, global average pooling, a linear head.

    The stem halves the resolution at once: full-resolution feature maps are what make
    per-example gradients (DP) expensive, and a 64 px radiograph loses little to it.
    Works at any input size >= 16 px; the parameter layout does not depend on it.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths=(16, 32, 64, 128),
        head_grid: int = 1,
    ):
        super().__init__()
        stem = widths[0]
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, stem, kernel_size=5, stride=2, padding=2, bias=False),
            _norm(stem),
            nn.ReLU(),
        ]
        cin = stem
        for i, w in enumerate(widths[1:]):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), _norm(w), nn.ReLU()]
            cin = w
        self.features = nn.Sequential(*layers)
        # head_grid > 1 keeps coarse position (left/right, upper/lower lung) for the head.
        self.pool = nn.AdaptiveAvgPool2d(head_grid)
        self.fc = nn.Linear(cin * head_grid * head_grid, num_classes)

    def forward(self, x):
        x = self.pool(self.features(x))
        return self.fc(x.flatten(1))
