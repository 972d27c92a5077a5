"""DICOM radiographs to presentation values, with pydicom and its pylibjpeg plugins.

Only what the pixels need is read from the header; the one identifier that leaves this
module is the PatientID, and only so that prep can turn it into a keyed pseudonym.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGExtended12Bit,
)

from fedxray.imaging.plausibility import is_greyscale
from fedxray.imaging.skip import SkipImage

RADIOGRAPH_MODALITIES = {"CR", "DX"}
# Storage classes that may hold a projection radiograph when Modality is missing.
RADIOGRAPH_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage (digitised films)
}
MAX_PIXELS = 100_000_000
# Compressed pixel data that is one JPEG (SOI ... EOI) or JPEG 2000 (SOC ... EOC) codestream
# per frame: a missing start or end marker means damaged or cut-short data.
_JPEG_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
}
_J2K_SYNTAXES = {
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}
_JPEG_MARKERS = ((b"\xff\xd8",), b"\xff\xd9")
# A raw JPEG 2000 codestream (SOC, SIZ) or a JP2 file (signature box).
_J2K_MARKERS = ((b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  "), b"\xff\xd9")
_END_WINDOW = 16  # the end marker must be among a frame's last bytes
_HEADER_ERRORS = (ValueError, TypeError, IndexError, KeyError, AttributeError)


@dataclass(frozen=True)
class DicomPixels:
    values: np.ndarray  # float, after modality and VOI LUTs (before any inversion)
    invert: bool  # MONOCHROME1 or Presentation LUT Shape INVERSE: low values are white
    patient_token: str | None
    rows: int
    cols: int
    photometric: str  # MONOCHROME1 or MONOCHROME2 (anything else was skipped as colour)


def read_dicom(path: Path) -> DicomPixels:
    """Decode one single-frame greyscale CR/DX image or raise SkipImage."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _read_dataset(path)
        truncated = any("End of file" in str(w.message) for w in caught)
        _check_is_radiograph(ds, truncated)
        arr = _decode(ds)
        values = _presentation_values(arr, ds)
    return DicomPixels(
        values=values,
        invert=_is_inverted(ds),
        patient_token=_patient_token(ds),
        rows=int(arr.shape[0]),
        cols=int(arr.shape[1]),
        photometric=str(ds.PhotometricInterpretation).strip().upper(),
    )


def _read_dataset(path: Path) -> pydicom.Dataset:
    try:
        # force=True: files without preamble and meta header are common in old archives.
        ds = pydicom.dcmread(path, force=True)
    except Exception as e:  # pydicom raises many types on damaged input
        raise SkipImage("unreadable", f"damaged DICOM file: {_first_line(e)}") from None
    if ds.file_meta.get("TransferSyntaxUID") is None:
        # No meta header: pydicom guessed the encoding while reading; record it for decoding.
        implicit, little = ds.original_encoding
        if not isinstance(ds.file_meta, FileMetaDataset):
            ds.file_meta = FileMetaDataset()
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        elif little:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    return ds


def _check_is_radiograph(ds: pydicom.Dataset, truncated: bool) -> None:
    has_pixels = "PixelData" in ds
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    if not has_pixels:
        if truncated or modality in RADIOGRAPH_MODALITIES or sop in RADIOGRAPH_SOP_CLASSES:
            # A radiograph's header without its pixels: the file was cut short.
            raise SkipImage("unreadable", "truncated DICOM file: no pixel data after the header")
        if sop or modality:
            what = UID(sop).name if sop and UID(sop).is_valid else modality or sop
            raise SkipImage("not-an-image", f"DICOM file without pixel data ({what})")
        raise SkipImage("unreadable", "empty or damaged DICOM file")
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise SkipImage(
            "wrong-modality", f"modality {modality} is not a radiograph (expected CR or DX)"
        )
    if not modality and sop and sop not in RADIOGRAPH_SOP_CLASSES:
        name = UID(sop).name if UID(sop).is_valid else sop
        raise SkipImage("wrong-modality", f"no modality and not a radiograph ({name})")
    frames = _int(ds.get("NumberOfFrames", 1), 1)
    if frames > 1:
        raise SkipImage("multi-frame", f"multi-frame DICOM ({frames} frames)")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    samples = _int(ds.get("SamplesPerPixel", 1), 1)
    if samples == 1 and not photometric:
        raise SkipImage("unreadable", "DICOM image without Photometric Interpretation")
    if not is_greyscale(photometric, samples):
        raise SkipImage("colour-dicom", f"colour DICOM ({photometric or f'{samples} samples'})")
    rows, cols = _int(ds.get("Rows", 0), 0), _int(ds.get("Columns", 0), 0)
    if rows * cols > MAX_PIXELS:
        raise SkipImage("unreadable", f"image too large ({cols} x {rows} pixels)")


def _decode(ds: pydicom.Dataset) -> np.ndarray:
    ts = UID(ds.file_meta.TransferSyntaxUID)
    if not ts.is_compressed:
        _check_native_length(ds)
    try:
        arr = ds.pixel_array
    except Exception as e:
        if not ts.is_compressed:
            raise SkipImage("unreadable", f"damaged pixel data: {_first_line(e)}") from None
        raise _undecodable(ds, ts, e) from None
    if arr.ndim != 2:
        raise SkipImage("multi-frame", f"unexpected pixel array shape {arr.shape}")
    if not ts.is_compressed:
        arr = _respect_bits_stored(arr, _int(ds.get("BitsStored", 0), 0))
    return arr


def _check_native_length(ds: pydicom.Dataset) -> None:
    rows, cols = _int(ds.get("Rows", 0), 0), _int(ds.get("Columns", 0), 0)
    allocated = _int(ds.get("BitsAllocated", 0), 0)
    expected = (rows * cols * allocated + 7) // 8
    got = len(ds.PixelData or b"")
    if got < expected:
        raise SkipImage(
            "unreadable", f"truncated DICOM file: pixel data has {got} of {expected} bytes"
        )


def _undecodable(ds: pydicom.Dataset, ts: UID, error: Exception) -> SkipImage:
    """Why compressed pixel data did not decode: no codec, damaged data, or a codec gap."""
    bits = _int(ds.get("BitsStored", 0), 0)
    what = f"{ts.name} ({ts}{f', {bits} bits stored' if bits else ''})"
    convert = "convert it to uncompressed DICOM (e.g. gdcmconv --raw) to use it"
    try:
        available = get_decoder(ts).is_available
    except (NotImplementedError, ValueError):
        available = False
    if not available:
        return SkipImage(
            "undecodable", f"no decoder installed for transfer syntax {what}; {convert}"
        )
    damage = _codestream_damage(ds, ts)
    if damage is not None:
        return SkipImage("unreadable", f"damaged pixel data: {damage}")
    if ts == JPEGExtended12Bit and bits > 8:
        # pylibjpeg-libjpeg and Pillow both lack 12-bit JPEG Extended: a known gap.
        return SkipImage(
            "undecodable", f"the installed decoders cannot decode transfer syntax {what}; {convert}"
        )
    return SkipImage(
        "undecodable",
        f"the installed decoders failed on this {what} pixel data: it is damaged, or uses a "
        f"variant they lack ({_plugin_error(error)}); if other software opens the file, "
        f"{convert}",
    )


def _codestream_damage(ds: pydicom.Dataset, ts: UID) -> str | None:
    """What is visibly wrong with the first frame's codestream, or None if it looks whole."""
    if ts in _J2K_SYNTAXES:
        kind, (starts, end) = "JPEG 2000", _J2K_MARKERS
    elif ts in _JPEG_SYNTAXES:
        kind, (starts, end) = "JPEG", _JPEG_MARKERS
    else:
        return None
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    except Exception as e:  # pydicom raises several types on broken encapsulation
        return f"the encapsulated pixel data is broken ({_first_line(e)})"
    if not frame.startswith(starts):
        return f"the {kind} codestream does not start with a {kind} header"
    # Encoders pad after the end marker (0x00 or 0xFF to an even length, sometimes more).
    # Compressed data never holds the marker itself: JPEG stuffs 0xFF bytes, JPEG 2000
    # keeps the byte after 0xFF below 0x90.
    if end not in frame[-_END_WINDOW:]:
        return f"the {kind} codestream is cut short (its end marker is missing)"
    return None


def _plugin_error(error: Exception) -> str:
    """The first decoder's own complaint from pydicom's multi-line error."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return (lines[1] if len(lines) > 1 else _first_line(error))[:160]


def _respect_bits_stored(arr: np.ndarray, bits: int) -> np.ndarray:
    """Drop bits above BitsStored (overlays, junk) and sign-extend signed data."""
    if not bits or arr.dtype.kind not in "iu" or bits >= arr.dtype.itemsize * 8:
        return arr
    if arr.dtype.kind == "u":
        return arr & np.array((1 << bits) - 1, dtype=arr.dtype)
    shift = arr.dtype.itemsize * 8 - bits
    return (arr << shift) >> shift


def _presentation_values(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    try:
        values = apply_modality_lut(arr, ds)  # Rescale Slope/Intercept or Modality LUT
    except _HEADER_ERRORS as e:
        raise SkipImage(
            "unreadable", f"invalid modality LUT or rescale: {_first_line(e)}"
        ) from None
    # VOI LUT Sequence if present, else Window Center/Width (linear or sigmoid). A broken
    # window is ignored: the percentile window still applies.
    with contextlib.suppress(*_HEADER_ERRORS):
        values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
    return np.asarray(values, dtype=np.float32)


def _is_inverted(ds: pydicom.Dataset) -> bool:
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    # PS3.3 C.8.11.6: INVERSE is what a MONOCHROME1 image declares; it is one inversion,
    # not two. On a MONOCHROME2 image it asks for an inverted display.
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def _patient_token(ds: pydicom.Dataset) -> str | None:
    value = ds.get("PatientID")
    token = str(value).strip() if value is not None else ""
    return token or None


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]
