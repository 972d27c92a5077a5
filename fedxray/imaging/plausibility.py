"""Is a decoded image plausibly a radiograph? Cheap checks on its pixels and header facts.

`assess` returns a `Verdict`: which checks failed, with a one-line message each, and the
statistics measured. prep skips an image that fails (reason ``implausible``); predict can
use the same verdict as an out-of-distribution flag. The checks are deliberately loose:
they refuse what cannot be a radiograph at all (a 1x1 icon, a blank or noise image, a smooth
gradient, a colour picture), not unusual radiographs. Every threshold keeps every real
image in the project's reference data with a wide margin; docs/data.md has the numbers.

The statistics do not depend on the model's image size: they are taken on the source
pixels, or on a copy reduced to ANALYSIS_SIZE (large JPEGs are decoded at a reduced scale
that still leaves at least that), so prep and predict agree whatever the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedxray.imaging.normalize import fit_size, resize, window

# A radiograph's shorter side, in source pixels. Real data: 224 or more; the sample-data
# phantoms: 72 or more. Icons, strips and thumbnails are smaller.
MIN_SHORT_SIDE = 64
# Distinct grey levels between the 0.5th and 99.5th percentile. Real data: 90 or more.
MIN_GREY_LEVELS = 16
# Detail share (see detail_share): white noise about 0.97, radiographs 0.02 to 0.42,
# smooth gradients under 0.003.
MAX_DETAIL_SHARE = 0.7
MIN_DETAIL_SHARE = 0.01
# PNG/JPEG colour: the share of pixels whose chroma (distance of Cb, Cr from grey, on the
# 0..255 scale) exceeds COLOUR_CHROMA. Real radiographs stored as RGB: 0.
MAX_COLOUR_SHARE = 0.10
COLOUR_CHROMA = 16.0
GREYSCALE_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")

ANALYSIS_SIZE = 128  # longer side of the copy the detail share is measured on
DETAIL_SCALE = 8  # the detail share is the variance a 1/8 reduction cannot represent
LEVEL_SAMPLE = 16384  # pixels sampled (on a regular grid) to count grey levels

CHECKS = ("size", "greyscale", "blank", "noise", "smooth")  # stable names: part of --json


@dataclass(frozen=True)
class ImageFacts:
    """What the decoder learnt about the source, beside the pixel values."""

    rows: int
    cols: int
    photometric: str | None = None  # DICOM Photometric Interpretation; None for PNG/JPEG
    samples_per_pixel: int = 1
    colour_share: float = 0.0  # PNG/JPEG: share of clearly coloured pixels (0 for grey)


@dataclass(frozen=True)
class Failure:
    check: str  # one of CHECKS
    message: str


@dataclass(frozen=True)
class Verdict:
    """The outcome of every check, and the statistics they measured."""

    failures: tuple[Failure, ...]
    short_side: int
    grey_levels: int
    detail_share: float | None  # None when the image is too small or blank to measure
    colour_share: float

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def message(self) -> str:
        """One line naming every failed check ('' when all passed)."""
        return "; ".join(f.message for f in self.failures)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "failed": [f.check for f in self.failures],
            "message": self.message,
            "short_side": self.short_side,
            "grey_levels": self.grey_levels,
            "detail_share": None if self.detail_share is None else round(self.detail_share, 4),
            "colour_share": round(self.colour_share, 4),
        }


def is_greyscale(photometric: str | None, samples_per_pixel: int = 1) -> bool:
    """A DICOM Photometric Interpretation a radiograph can have: one sample, MONOCHROME1/2."""
    value = str(photometric or "").strip().upper()
    return samples_per_pixel == 1 and value in GREYSCALE_PHOTOMETRIC


def grey_levels(values: np.ndarray) -> int:
    """Distinct values between the 0.5th and 99.5th percentile, on a regular sample.

    Unit-free: a LUT or rescale maps stored values one to one, so the count is the same
    before and after it. A blank page with a marker or a faint ramp has a handful.
    """
    step = max(1, math.ceil(math.sqrt(values.size / LEVEL_SAMPLE)))
    ordered = np.sort(values[::step, ::step], axis=None)
    if ordered.size == 0:
        return 0
    last = ordered.size - 1  # nearest-rank percentiles: one sort serves both
    inside = ordered[round(0.005 * last) : round(0.995 * last) + 1]
    return int(np.count_nonzero(np.diff(inside))) + 1


def detail_share(values: np.ndarray) -> float | None:
    """Share of the image's variance in detail finer than DETAIL_SCALE pixels.

    Measured after the same robust window as the model input, on a copy whose longer side is
    at most ANALYSIS_SIZE: the variance of (image - the image reduced 8 times and enlarged
    back), over the variance of the image, a border of 8 pixels left out. White noise has
    nearly all its energy in fine detail (about 0.97); a radiograph's anatomy is mostly
    coarse (0.02-0.42); a smooth gradient has none (under 0.003). None: too small or flat.
    """
    rows, cols = values.shape
    if min(rows, cols) < 4 * DETAIL_SCALE:
        return None
    if max(rows, cols) > ANALYSIS_SIZE:
        rows, cols = fit_size(rows, cols, ANALYSIS_SIZE)
    unit = window(resize(values, rows, cols))
    coarse = resize(
        resize(unit, max(1, round(rows / DETAIL_SCALE)), max(1, round(cols / DETAIL_SCALE))),
        rows,
        cols,
    )
    m = DETAIL_SCALE
    core = unit[m:-m, m:-m]
    total = float(core.var(dtype=np.float64))
    if not total > 0:
        return None
    return float((core - coarse[m:-m, m:-m]).var(dtype=np.float64) / total)


def assess(values: np.ndarray, facts: ImageFacts) -> Verdict:
    """Run every check on decoded values (2-D, any float range) and the source's facts.

    ``values`` may be a reduced decode (large JPEGs): sizes come from ``facts``.
    """
    values = np.asarray(values, dtype=np.float32)
    if not np.isfinite(values).all():
        values = np.nan_to_num(values)
    failures: list[Failure] = []
    short = min(facts.rows, facts.cols)
    if short < MIN_SHORT_SIDE:
        failures.append(
            Failure(
                "size",
                f"too small for a radiograph: {facts.cols} x {facts.rows} px "
                f"(the shorter side must be at least {MIN_SHORT_SIDE} px)",
            )
        )
    if facts.photometric is not None and not is_greyscale(
        facts.photometric, facts.samples_per_pixel
    ):
        failures.append(
            Failure("greyscale", f"not a greyscale image (photometric {facts.photometric})")
        )
    if facts.colour_share > MAX_COLOUR_SHARE:
        failures.append(
            Failure(
                "greyscale",
                f"a colour picture, not a radiograph: {facts.colour_share:.0%} of its pixels "
                f"are coloured (at most {MAX_COLOUR_SHARE:.0%} allowed)",
            )
        )
    levels = grey_levels(values)
    detail = None
    if levels <= 1:
        failures.append(Failure("blank", "blank image: every pixel has the same value"))
    elif levels < MIN_GREY_LEVELS:
        failures.append(
            Failure(
                "blank",
                f"nearly blank image: only {levels} grey levels "
                f"(a radiograph has at least {MIN_GREY_LEVELS})",
            )
        )
    else:
        detail = detail_share(values)
    if detail is not None and detail > MAX_DETAIL_SHARE:
        failures.append(
            Failure(
                "noise",
                f"looks like random noise: {detail:.0%} of its contrast is pixel-scale detail "
                f"(a radiograph has at most {MAX_DETAIL_SHARE:.0%})",
            )
        )
    elif detail is not None and detail < MIN_DETAIL_SHARE:
        failures.append(
            Failure(
                "smooth",
                f"a smooth gradient without structure: {detail:.1%} of its contrast is fine "
                f"detail (a radiograph has at least {MIN_DETAIL_SHARE:.0%})",
            )
        )
    return Verdict(tuple(failures), short, levels, detail, facts.colour_share)
