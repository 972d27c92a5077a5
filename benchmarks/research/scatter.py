"""The wavelet scattering front end: fixed filters, no trainable parameters, cached features.

Tramèr & Boneh (2021) showed that under DP a linear model or a small CNN on the output of a
scattering transform (Oyallon & Mallat) beats end-to-end CNNs trained from scratch on small
data sets. The filters (Morlet wavelets) are fixed by (J, L) alone, so computing features
costs no privacy and can happen once, at prep time, on each site's own images.

Output of ``ScatterFrontEnd`` for input [B, 1, S, S] in [0, 1]:
    [B, K, P, P] with K = 1 + J*L + L*L*J*(J-1)/2 (order 2) and P = ``pool`` (or S / 2**J
    when pool is 0). log(x + LOG_EPS) compression (``log``), optionally an average over absolute
    orientations (``orientations="relative"``: K = 1 + J + L*J*(J-1)/2), then average pooling
    to P x P. The cache stores the full map; ``reduce`` derives the smaller settings from it.
Per-example normalisation (GroupNorm without affine) belongs to the head: it uses only the
example's own features, so it is free under DP.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Added before the log so that near-zero coefficients do not blow up: for images in [0, 1],
# second-order coefficients sit around 1e-3 and first-order ones around 1e-2, so 1e-4 keeps
# the log's compression of both (a fixed constant of the plan, not fitted per site).
LOG_EPS = 1e-4


@dataclass(frozen=True)
class ScatterSettings:
    image_size: int = 64
    J: int = 3
    L: int = 8
    max_order: int = 2
    log: bool = True
    pool: int = 4  # spatial side of the output after average pooling; 0 keeps S / 2**J
    # "all": one channel per scattering path; "relative": averaged over the absolute
    # orientation, keeping each second-order path's relative angle (theta2 - theta1);
    # "mixed": first order kept per orientation, second order relative.
    orientations: str = "all"

    @property
    def channels(self) -> int:
        j, l_ = self.J, self.L
        if self.orientations in ("relative", "mixed"):
            first = j if self.orientations == "relative" else j * l_
            return 1 + first + (l_ * j * (j - 1) // 2 if self.max_order == 2 else 0)
        return 1 + j * l_ + (l_ * l_ * j * (j - 1) // 2 if self.max_order == 2 else 0)

    @property
    def side(self) -> int:
        native = self.image_size // 2**self.J
        return native if self.pool == 0 else min(self.pool, native)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.side, self.side)

    def key(self) -> str:
        key = "s{image_size}-J{J}-L{L}-o{max_order}-{log}-p{pool}".format(
            **asdict(self) | {"log": "log" if self.log else "lin"}
        )
        return key if self.orientations == "all" else f"{key}-{self.orientations}"

    @property
    def native(self) -> ScatterSettings:
        """The settings of the full output that ``reduce`` turns into this one's."""
        return ScatterSettings(self.image_size, self.J, self.L, self.max_order, self.log, 0)


def orientation_groups(
    J: int, L: int, max_order: int = 2, keep_first: bool = False
) -> list[list[int]]:
    """Channel groups averaged by orientations="relative", in kymatio's output order.

    kymatio orders channels: order 0; order 1 by (j1, theta1); order 2 by
    (j1, theta1, j2 > j1, theta2). Groups: order 0; one per j1; one per (j1, j2, delta theta).
    """
    if keep_first:
        groups = [[c] for c in range(1 + J * L)]
    else:
        groups = [[0]] + [[1 + j * L + t for t in range(L)] for j in range(J)]
    if max_order < 2:
        return groups
    paths = [
        (j1, t1, j2, t2)
        for j1 in range(J)
        for t1 in range(L)
        for j2 in range(j1 + 1, J)
        for t2 in range(L)
    ]
    base = 1 + J * L
    for j1 in range(J):
        for j2 in range(j1 + 1, J):
            for d in range(L):
                groups.append(
                    [
                        base + i
                        for i, (a, t1, b, t2) in enumerate(paths)
                        if (a, b) == (j1, j2) and (t2 - t1) % L == d
                    ]
                )
    return groups


def reduce(native: torch.Tensor, settings: ScatterSettings) -> torch.Tensor:
    """Orientation then spatial average pooling of (log-)scattering maps [B, K, H, W]."""
    out = native
    if settings.orientations in ("relative", "mixed"):
        keep = settings.orientations == "mixed"
        groups = orientation_groups(settings.J, settings.L, settings.max_order, keep)
        out = torch.stack([out[:, g].mean(1) for g in groups], dim=1)
    elif settings.orientations != "all":
        raise ValueError(f"unknown orientations {settings.orientations!r}")
    if settings.pool and out.shape[-1] != settings.side:
        out = F.adaptive_avg_pool2d(out, settings.side)
    return out


class ScatterFrontEnd(nn.Module):
    """Images [B, 1, S, S] in [0, 1] -> scattering features [B, K, P, P] (no parameters)."""

    def __init__(self, settings: ScatterSettings):
        super().__init__()
        # kymatio.torch breaks with scipy >= 1.17 (kymatio #1068): import the frontend directly.
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

        s = settings
        self.settings = s
        self.scattering = ScatteringTorch2D(
            J=s.J, shape=(s.image_size, s.image_size), L=s.L, max_order=s.max_order
        )
        assert not list(self.parameters()), "the front end must have no trainable parameters"

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if x.shape[-2:] != (s.image_size, s.image_size):
            raise ValueError(f"expected {s.image_size} px input, got {list(x.shape)}")
        out = self.scattering(x[:, 0])  # [B, K, S/2^J, S/2^J]
        if s.log:
            out = torch.log(out.clamp(min=0) + LOG_EPS)
        return reduce(out, s)


def compute_features(
    front: ScatterFrontEnd, images: torch.Tensor, batch: int = 64, progress=None
) -> np.ndarray:
    """Features float16 [N, K, P, P] of float images [N, 1, S, S] in [0, 1]."""
    out = np.empty((len(images), *front.settings.output_shape), dtype=np.float16)
    for start in range(0, len(images), batch):
        out[start : start + batch] = front(images[start : start + batch].float()).numpy()
        if progress:
            progress(min(start + batch, len(images)), len(images))
    return out


def images_hash(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]


class FeatureCache:
    """Features on disk, keyed by the front end's settings, the view and the images' hash.

    A site computes its features once (at prep, or the first round) and reuses them in every
    round; any change of settings, augmentation view or pixels gives another key.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, settings: ScatterSettings, view: str, pixels: str) -> Path:
        return self.root / f"{settings.key()}--{view}--{pixels}.npy"

    def get(self, settings: ScatterSettings, view: str, images_fn, pixels: str) -> np.ndarray:
        """Cached features, or compute them from ``images_fn()`` ([N, 1, S, S] in [0, 1])."""
        path = self.path(settings, view, pixels)
        if path.exists():
            return np.load(path, mmap_mode="r")
        self.root.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        feats = compute_features(ScatterFrontEnd(settings), images_fn())
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")  # concurrent writers never mix
        np.save(tmp, feats)
        tmp.replace(path)
        meta = {"settings": asdict(settings), "view": view, "pixels": pixels}
        meta |= {"n": len(feats), "seconds": round(time.monotonic() - started, 1)}
        path.with_suffix(".json").write_text(json.dumps(meta))
        return np.load(path, mmap_mode="r")
