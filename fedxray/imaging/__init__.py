"""Decoding radiographs (DICOM, PNG, JPEG) into the square uint8 images models use."""

from fedxray.imaging.pipeline import Radiograph, check_image_size, load_radiograph
from fedxray.imaging.plausibility import ImageFacts, Verdict, assess
from fedxray.imaging.skip import SKIP_REASONS, SkipImage

__all__ = [
    "SKIP_REASONS",
    "ImageFacts",
    "Radiograph",
    "SkipImage",
    "Verdict",
    "assess",
    "check_image_size",
    "load_radiograph",
]
