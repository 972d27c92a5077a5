"""From presentation values (any float range) to the stored square uint8 image.

Two geometries (the plan's ``model.geometry``): ``pad`` scales the longer side to the image
size and centres the image on black padding (aspect kept); ``stretch`` resizes to the square
(aspect not kept), so that an image comes out the same whether it was exported square or
not (docs/data.md, "Pad or stretch, never crop").

Order matters: resize (linear), then the percentile window, then the optional inversion,
then padding. Because every step before the inversion is the same for an image and its
inverse, a MONOCHROME1 copy of a MONOCHROME2 image comes out as exactly 255 - x
(up to one grey level of rounding).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from fedxray.geometry import DEFAULT_GEOMETRY, GEOMETRIES

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
# Box-reduce by an integer factor first when shrinking a lot: fast, and still anti-aliased.
REDUCING_GAP = 3.0


def fit_size(rows: int, cols: int, image_size: int) -> tuple[int, int]:
    """Rows and columns after scaling the longer side to image_size (aspect kept)."""
    scale = image_size / max(rows, cols)
    return (
        min(image_size, max(1, round(rows * scale))),
        min(image_size, max(1, round(cols * scale))),
    )


def resize(values: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Anti-aliased bilinear resize of a float image (like torchvision's antialias=True)."""
    if values.shape == (rows, cols):
        return values.astype(np.float32, copy=False)
    img = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))  # mode F
    out = img.resize((cols, rows), Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP)
    return np.asarray(out, dtype=np.float32)


def window(values: np.ndarray) -> np.ndarray:
    """Map the 0.5-99.5 percentile range to [0, 1]; a flat image becomes all zeros."""
    lo, hi = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.float32)
    out = (values - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def to_uint8(
    values: np.ndarray, image_size: int, invert: bool = False, geometry: str = DEFAULT_GEOMETRY
) -> np.ndarray:
    """Square uint8 [image_size, image_size], air dark: the image centred on black padding
    (``pad``) or resized to fill the square (``stretch``)."""
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {values.shape}")
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}")
    values = np.nan_to_num(values.astype(np.float32, copy=False))
    if geometry == "stretch":
        rows = cols = image_size
    else:
        rows, cols = fit_size(*values.shape, image_size)
    unit = window(resize(values, rows, cols))
    if invert:
        unit = 1.0 - unit
    out = np.zeros((image_size, image_size), dtype=np.uint8)
    top, left = (image_size - rows) // 2, (image_size - cols) // 2
    out[top : top + rows, left : left + cols] = np.rint(unit * 255.0).astype(np.uint8)
    return out
