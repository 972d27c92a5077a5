"""Fixed front ends: a data-independent map from images to features, computed once per image.

The interface (small on purpose, so that a frozen pretrained backbone can be one too):

* a front end is an ``nn.Module`` subclass of :class:`FixedFrontEnd` with NO trainable
  parameters and no state that depends on data (``build`` makes it the same at every site);
* ``forward(x)``: images ``[B, 1, H, W]`` float in [0, 1] -> features ``[B, *output_shape]``
  float32, each example's features a function of that example alone (no batch statistics);
* ``output_shape``: the feature shape for one image;
* ``key``: text that names everything the features depend on (kind, version, settings,
  image size); the feature cache (fedxray.training.features) keys files by it.

A model with a front end is a :class:`FrontEndModel`: ``front_end`` then ``head``; only the
head trains and travels, and training may feed it cached features instead of images.
Buffers of a front end (filters) are non-persistent, so they never travel.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedxray.errors import FedxrayError

# Added before the log so that near-zero coefficients do not blow up: for images in [0, 1],
# second-order coefficients sit near 1e-3 and first-order ones near 1e-2 (a fixed constant).
LOG_EPS = 1e-4


class FixedFrontEnd(nn.Module):
    """Base class: images [B, 1, H, W] in [0, 1] -> features [B, *output_shape]."""

    output_shape: tuple[int, ...]
    key: str

    def check_fixed(self) -> None:
        if any(True for _ in self.parameters()):
            raise FedxrayError(f"{type(self).__name__}: a fixed front end has no parameters")
        if self.state_dict():
            raise FedxrayError(f"{type(self).__name__}: a fixed front end keeps no sent state")

    def _unpersist(self) -> None:
        """Make every buffer non-persistent: filters are rebuilt at each site, never sent."""
        for module in self.modules():
            for name, buf in list(module._buffers.items()):
                if buf is not None and name not in module._non_persistent_buffers_set:
                    del module._buffers[name]
                    module.register_buffer(name, buf, persistent=False)


@dataclass(frozen=True)
class ScatterSettings:
    """A 2-D wavelet scattering transform (kymatio): J scales, L orientations, order 1 or 2,
    log(S + LOG_EPS), then average pooling to ``grid`` x ``grid`` cells."""

    image_size: int
    J: int = 3
    L: int = 8
    max_order: int = 2
    grid: int = 0  # 0: image_size / 16 (each cell covers 16 px), at least 1

    @property
    def channels(self) -> int:
        j, l_ = self.J, self.L
        return 1 + j * l_ + (l_ * l_ * j * (j - 1) // 2 if self.max_order == 2 else 0)

    @property
    def side(self) -> int:
        native = self.image_size // 2**self.J
        want = self.grid or max(1, self.image_size // 16)
        return max(1, min(want, native))

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.side, self.side)

    @property
    def key(self) -> str:
        return f"scatter-v1-s{self.image_size}-J{self.J}-L{self.L}-o{self.max_order}-g{self.side}"


class ScatteringFrontEnd(FixedFrontEnd):
    """Wavelet scattering (Oyallon & Mallat; Tramer & Boneh 2021 for DP): fixed Morlet filters
    set by (J, L) alone, so the features cost no privacy."""

    def __init__(self, settings: ScatterSettings):
        super().__init__()
        s = settings
        if s.image_size % 2**s.J or s.image_size < 2 ** (s.J + 1):
            raise FedxrayError(f"scattering with J={s.J} needs an image size that 2^J divides")
        if s.max_order not in (1, 2):
            raise FedxrayError("scattering order must be 1 or 2")
        self.settings = s
        self.output_shape = s.output_shape
        self.key = s.key
        self.scattering = copy.deepcopy(_filter_bank(s.J, s.L, s.max_order, s.image_size))
        self._unpersist()
        self.check_fixed()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if x.dim() != 4 or x.shape[1] != 1 or tuple(x.shape[-2:]) != (s.image_size,) * 2:
            raise FedxrayError(f"expected [B, 1, {s.image_size}, {s.image_size}] input")
        key = None
        if x.device.type == "cpu":  # the same images again (each round's evaluation): reuse
            x = x.float().contiguous()
            key = (self.key, hashlib.sha256(x.numpy().tobytes()).hexdigest())
            if key in _RECENT:
                return _RECENT[key].clone()
        out = self.scattering(x[:, 0].float().contiguous())  # [B, K, S/2^J, S/2^J]
        out = torch.log(out.clamp(min=0) + LOG_EPS)
        if out.shape[-1] != s.side:
            out = F.adaptive_avg_pool2d(out, s.side)
        if key is not None:
            _remember(key, out)
        return out


# Features of recently seen batches, in this process only (never written anywhere): a
# simulation's evaluation party scores the same test images every round.
_RECENT: dict[tuple[str, str], torch.Tensor] = {}
_RECENT_ELEMENTS = 1 << 24  # 64 MB of float32


def _remember(key: tuple[str, str], out: torch.Tensor) -> None:
    if out.numel() > _RECENT_ELEMENTS:
        return
    while _RECENT and sum(t.numel() for t in _RECENT.values()) + out.numel() > _RECENT_ELEMENTS:
        _RECENT.pop(next(iter(_RECENT)))  # the oldest first
    _RECENT[key] = out.clone()


@functools.lru_cache(maxsize=8)
def _filter_bank(J: int, L: int, max_order: int, size: int) -> nn.Module:
    """kymatio's scattering module for these settings, built once per process: its Morlet
    filters cost seconds to compute at 128 px and never change (callers copy it)."""
    # kymatio.torch breaks with scipy >= 1.17 (kymatio #1068): import the frontend directly.
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    with torch.device("cpu"):  # real tensors, also when a model is built on "meta"
        return ScatteringTorch2D(J=J, shape=(size, size), L=L, max_order=max_order)


class FrontEndModel(nn.Module):
    """A fixed front end followed by a trainable head: ``head(front_end(x))``."""

    def __init__(self, front_end: FixedFrontEnd, head: nn.Module):
        super().__init__()
        self.front_end = front_end
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.front_end(x))
