"""Writing phantoms the way different scanners and PACS exports would.

Each style is a real DICOM encoding (or a PNG/JPEG export), with fake but realistic
identifying headers so that de-identification can be seen working.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


@dataclass(frozen=True)
class FakeStudy:
    """Invented identifying data: none of it may ever reach a shard."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_date: str
    study_time: str
    accession: str
    institution: str
    referring: str
    station: str
    study_uid: str
    series_uid: str
    sop_uid: str

    def phi_values(self) -> list[str]:
        """The header values a de-identification check looks for."""
        return [
            self.patient_name,
            self.patient_id,
            self.birth_date,
            self.study_date,
            self.accession,
            self.institution,
            self.referring,
            self.station,
            self.study_uid,
            self.series_uid,
            self.sop_uid,
        ]


@dataclass(frozen=True)
class Style:
    suffix: str
    modality: str | None  # None: a PNG/JPEG export
    photometric: str = "MONOCHROME2"
    bits: int = 8
    encoding: str = "raw"  # raw, rle, j2k, jpeg, nometa, png, jpg
    voi: str = "window"  # window, lut, none
    rescale: bool = False
    size_factor: float = 1.0  # lossless styles of noisy images are big: keep them smaller


STYLES: dict[str, Style] = {
    "cr-mono1-12bit-j2k": Style(".dcm", "CR", "MONOCHROME1", 12, "j2k"),
    "cr-mono2-8bit-jpeg": Style(".dcm", "CR", "MONOCHROME2", 8, "jpeg", voi="none"),
    "cr-mono2-8bit-rle": Style(".dcm", "CR", "MONOCHROME2", 8, "rle", voi="none", size_factor=0.75),
    "cr-mono1-10bit-nometa": Style(".dcm", "CR", "MONOCHROME1", 10, "nometa", size_factor=0.75),
    "dx-mono2-16bit-j2k": Style(".dcm", "DX", "MONOCHROME2", 16, "j2k", rescale=True),
    "dx-mono1-16bit-rle": Style(
        ".dcm", "DX", "MONOCHROME1", 16, "rle", rescale=True, size_factor=0.7
    ),
    "dx-mono2-12bit-voilut": Style(".dcm", "DX", "MONOCHROME2", 12, "j2k", voi="lut"),
    "png-8bit": Style(".png", None, bits=8, encoding="png"),
    "png-16bit": Style(".png", None, bits=16, encoding="png"),
    "jpeg": Style(".jpg", None, bits=8, encoding="jpg"),
}
J2K_RATIO = 14.0
JPEG_QUALITY = 88


def write_image(path: Path, values: np.ndarray, style: Style, study: FakeStudy, rng) -> None:
    """values: float [H, W] in [0, 1], air dark."""
    if style.modality is None:
        _write_export(path, values, style)
    else:
        _write_dicom(path, values, style, study, rng)


def _quantise(values: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    q = np.rint(np.clip(values, 0, 1) * top)
    return q.astype(np.uint8 if bits <= 8 else np.uint16)


def _write_export(path: Path, values: np.ndarray, style: Style) -> None:
    if style.encoding == "png":
        Image.fromarray(_quantise(values, style.bits)).save(path, format="PNG", optimize=True)
    else:
        Image.fromarray(_quantise(values, 8)).save(path, format="JPEG", quality=JPEG_QUALITY)


def _write_dicom(path: Path, values: np.ndarray, style: Style, study: FakeStudy, rng) -> None:
    # A detector rarely uses its full range: place the image somewhere inside it.
    lo = rng.uniform(0.02, 0.12) if style.bits > 8 else 0.0
    hi = rng.uniform(0.75, 0.95) if style.bits > 8 else 1.0
    v = lo + (hi - lo) * values
    if style.photometric == "MONOCHROME1":
        v = 1.0 - v  # MONOCHROME1 stores air as high values (displayed white-is-low)
    stored = _quantise(v, style.bits)

    ds = Dataset()
    sop_class = CR_STORAGE if style.modality == "CR" else DX_STORAGE
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = study.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = study.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = study.study_time
    ds.AccessionNumber = study.accession
    ds.Modality = style.modality
    ds.Manufacturer = "FEDXRAY PHANTOM WORKS"
    ds.InstitutionName = study.institution
    ds.ReferringPhysicianName = study.referring
    ds.StationName = study.station
    ds.StudyDescription = "CHEST PAEDIATRIC"
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "AP" if rng.random() < 0.6 else "PA"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = study.series_uid
    ds.StudyID = study.accession[-4:]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["R", "F"] if ds.ViewPosition == "AP" else ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = style.photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 8 if style.bits <= 8 else 16
    ds.BitsStored = style.bits
    ds.HighBit = style.bits - 1
    ds.PixelRepresentation = 0
    if style.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PresentationLUTShape = "INVERSE" if style.photometric == "MONOCHROME1" else "IDENTITY"
    slope, intercept = (1.0, 0.0)
    if style.rescale:
        slope, intercept = 0.5, -1024.0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "0.5", "-1024", "US"
    if style.voi == "window":
        lo_s, hi_s = float(stored.min()), float(stored.max())
        ds.WindowCenter = f"{((lo_s + hi_s) / 2) * slope + intercept:.1f}"
        ds.WindowWidth = f"{max(1.0, (hi_s - lo_s) * slope):.1f}"
    elif style.voi == "lut":
        ds.VOILUTSequence = [_gamma_lut(style.bits, rng)]
    ds.PixelData = stored.tobytes()

    if style.encoding == "nometa":
        # An old export: implicit VR, no preamble, no file meta header.
        ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
        return
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = study.sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if style.encoding == "rle":
        ds.compress(RLELossless, generate_instance_uid=False)
    elif style.encoding == "j2k":
        ds.compress(JPEG2000, j2k_cr=[J2K_RATIO], generate_instance_uid=False)
        _mark_lossy(ds, J2K_RATIO, "ISO_15444_1")
    elif style.encoding == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(stored).save(buf, format="JPEG", quality=JPEG_QUALITY)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        _mark_lossy(ds, stored.nbytes / len(buf.getvalue()), "ISO_10918_1")
    ds.save_as(path, enforce_file_format=True)


def _mark_lossy(ds: Dataset, ratio: float, method: str) -> None:
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{ratio:.1f}"
    ds.LossyImageCompressionMethod = method


def _gamma_lut(bits: int, rng) -> Dataset:
    """A VOI LUT (as some DX vendors ship instead of a window): a gentle gamma curve.

    One entry per stored value, so the LUT indexes stored values directly.
    """
    entries = 1 << bits
    x = np.arange(entries) / (entries - 1)
    lut = np.rint((x ** rng.uniform(0.7, 0.9)) * 4095).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [entries, 0, 12]
    item.LUTExplanation = "PHANTOM GAMMA"
    item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())  # LUT Data
    return item


def fake_study(rng, site_name: str, institution: str, patient: FakePatient, index: int):
    """Invented study header data for one image of one patient (deterministic from rng)."""
    study = np.datetime64(patient.first_study) + np.timedelta64(
        index * int(rng.integers(3, 40)), "D"
    )
    hh, mm, ss = int(rng.integers(7, 19)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
    hhmmss = f"{hh:02d}{mm:02d}{ss:02d}"
    key = [site_name, patient.patient_id, str(index)]
    return FakeStudy(
        patient_name=patient.name,
        patient_id=patient.patient_id,
        birth_date=patient.birth_date,
        sex=patient.sex,
        study_date=str(study).replace("-", ""),
        study_time=hhmmss,
        accession=f"ACC{int(rng.integers(10**7, 10**8))}",
        institution=institution,
        referring=f"{_pick(rng, SURNAMES)}^{_pick(rng, GIVEN)}^^DR",
        station=f"XR{site_name[-1].upper()}{int(rng.integers(10, 99))}",
        study_uid=generate_uid(entropy_srcs=[*key, "study"]),
        series_uid=generate_uid(entropy_srcs=[*key, "series"]),
        sop_uid=generate_uid(entropy_srcs=[*key, "image"]),
    )


@dataclass(frozen=True)
class FakePatient:
    name: str
    patient_id: str
    birth_date: str
    sex: str
    first_study: str  # YYYY-MM-DD; the child is 1 to 5 years old then


# Invented name parts (deliberately unusual, so a leak is easy to spot).
SURNAMES = (
    "ABERCROMBIE", "BRIGHTWATER", "CALLOWAY", "DUNSWORTH", "ELLINGHAM", "FAIRCLOUGH",
    "GOLDTHWAITE", "HAZELRIGG", "IRONMONGER", "JESSAMINE", "KETTLEWELL", "LONGBOTTOM",
    "MERRIWEATHER", "NETHERCOTT", "OAKENSHIELD", "PENNYFEATHER", "QUICKSILVER", "RAVENSCROFT",
    "STONEBRIDGE", "THISTLEWOOD", "UNDERHILL", "VANTERPOOL", "WINTERBOTTOM", "YARDLEY",
)  # fmt: skip
GIVEN = (
    "ALBA", "BRAM", "CLEO", "DARIO", "EDDA", "FINN", "GRETA", "HUGO", "ISLA", "JONAS",
    "KAJA", "LEVI", "MILA", "NOAH", "OTTO", "PIA", "QUINN", "RUBEN", "SIRI", "TEO",
)  # fmt: skip


def _pick(rng, seq) -> str:
    return seq[int(rng.integers(0, len(seq)))]


def fake_patient(rng, prefix: str, used: set[str]) -> FakePatient:
    while True:
        pid = f"{prefix}{int(rng.integers(100000, 999999))}"
        if pid not in used:
            used.add(pid)
            break
    first = np.datetime64("2019-01-02") + np.timedelta64(int(rng.integers(0, 4 * 365)), "D")
    born = first - np.timedelta64(int(rng.integers(365, 5 * 365)), "D")
    return FakePatient(
        name=f"{_pick(rng, SURNAMES)}^{_pick(rng, GIVEN)}",
        patient_id=pid,
        birth_date=str(born).replace("-", ""),
        sex="F" if rng.random() < 0.5 else "M",
        first_study=str(first),
    )
