"""The one pixel path shared by `prep` and `predict`: any supported file -> square uint8."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fedxray.geometry import DEFAULT_GEOMETRY
from fedxray.imaging.dicom import read_dicom
from fedxray.imaging.normalize import to_uint8
from fedxray.imaging.plausibility import ImageFacts, Verdict, assess
from fedxray.imaging.raster import read_raster
from fedxray.imaging.skip import SkipImage
from fedxray.imaging.sniff import read_head, sniff

MIN_IMAGE_SIZE = 8
MAX_IMAGE_SIZE = 2048

Kind = Literal["dicom", "png", "jpeg"]


@dataclass(frozen=True)
class Radiograph:
    """A decoded radiograph ready for a model."""

    pixels: np.ndarray  # uint8 [image_size, image_size], air dark, in the plan's geometry
    patient_token: str | None  # DICOM PatientID in clear: pseudonymise before storing
    kind: Kind
    source_shape: tuple[int, int]  # rows, columns of the source image
    plausibility: Verdict  # is it plausibly a radiograph? (prep skips it when not)


def check_image_size(image_size: int) -> int:
    if not isinstance(image_size, int) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"image size must be an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}, "
            f"got {image_size!r}"
        )
    return image_size


def load_radiograph(
    path: str | os.PathLike, image_size: int, geometry: str = DEFAULT_GEOMETRY
) -> Radiograph:
    """Decode a DICOM, PNG or JPEG radiograph in ``geometry`` (pad or stretch, see
    fedxray.imaging.normalize), or raise SkipImage saying why not.

    The plausibility checks run too, but only report: the caller decides (prep skips an
    implausible image, predict can flag it).
    """
    check_image_size(image_size)
    path = Path(path)
    try:
        head = read_head(path)
    except IsADirectoryError:
        raise SkipImage("not-an-image", "is a folder, not an image") from None
    except OSError as e:
        raise SkipImage("unreadable", f"cannot read file: {e.strerror or e}") from None
    if not head:
        raise SkipImage("unreadable", "empty file (0 bytes)")
    kind = sniff(head)
    if kind is None:
        raise SkipImage("not-an-image", "not a DICOM, PNG or JPEG image")
    if kind == "dicom":
        d = read_dicom(path)
        if d.values.size == 0:
            raise SkipImage("unreadable", "DICOM image has no pixels")
        pixels = to_uint8(d.values, image_size, invert=d.invert, geometry=geometry)
        verdict = assess(d.values, ImageFacts(d.rows, d.cols, photometric=d.photometric))
        return Radiograph(pixels, d.patient_token, "dicom", (d.rows, d.cols), verdict)
    r = read_raster(path, kind, image_size)
    if r.values.size == 0:
        raise SkipImage("unreadable", "image has no pixels")
    verdict = assess(r.values, ImageFacts(r.rows, r.cols, colour_share=r.colour_share))
    pixels = to_uint8(r.values, image_size, geometry=geometry)
    return Radiograph(pixels, None, kind, (r.rows, r.cols), verdict)
