"""Small synthetic radiographs for tests: sample-data phantoms pass prep's plausibility checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from fedxray.sampledata import render


def phantom(seed: int, shape: tuple[int, int] = (80, 72), label: str = "normal") -> np.ndarray:
    """A chest phantom as uint8 [rows, cols]; another seed gives another image."""
    values = render(np.random.default_rng(seed), label, *shape)
    return np.rint(values * 255).astype(np.uint8)


def phantom_png(
    path: Path, seed: int, shape: tuple[int, int] = (80, 72), label: str = "normal"
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(phantom(seed, shape, label)).save(path)
    return path


def write_dicom(path, pixels: np.ndarray, *, rle: bool = False, **tags) -> None:
    """A minimal single-frame CR DICOM of ``pixels`` (uint8 or uint16); ``tags`` override."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Modality = "CR"
    ds.PatientID = "PAT-0001"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.BitsAllocated = 16 if pixels.dtype == np.uint16 else 8
    ds.BitsStored = tags.get("BitsStored", ds.BitsAllocated)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.tobytes()
    if rle:
        ds.compress(RLELossless, pixels)
    ds.save_as(path, enforce_file_format=True)
