"""The shared pixel pipeline: DICOM presentation transforms, PNG/JPEG, skips with reasons."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

from fedxray.imaging import SKIP_REASONS, SkipImage, load_radiograph
from fedxray.imaging.normalize import to_uint8
from tests.images import write_dicom

SIZE = 32


def _scene(rows: int = 48, cols: int = 40) -> np.ndarray:
    """A smooth test pattern with a bright square: values 0..1000."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    v = 200 + 500 * (xx / cols) + 100 * np.sin(yy / 5.0)
    v[10:20, 10:20] = 1000
    v[30:34, 5:9] = 0
    return v.astype(np.uint16)


_dicom = write_dicom


def _load(path) -> np.ndarray:
    return load_radiograph(path, SIZE).pixels.astype(int)


def _skip_reason(path) -> tuple[str, str]:
    with pytest.raises(SkipImage) as ei:
        load_radiograph(path, SIZE)
    assert ei.value.reason in SKIP_REASONS
    return ei.value.reason, ei.value.message


# ---- DICOM presentation ----------------------------------------------------------------


def test_dicom_basic_output_and_patient_token(tmp_path):
    _dicom(tmp_path / "a.dcm", _scene())
    r = load_radiograph(tmp_path / "a.dcm", SIZE)
    assert r.pixels.dtype == np.uint8 and r.pixels.shape == (SIZE, SIZE)
    assert r.kind == "dicom" and r.patient_token == "PAT-0001"
    assert r.source_shape == (48, 40)
    # the bright square is bright, the dark patch dark
    assert r.pixels[10, 12] == 255 and r.pixels.max() == 255


def test_monochrome1_is_exact_inverse(tmp_path):
    _dicom(tmp_path / "m2.dcm", _scene(48, 48))
    _dicom(tmp_path / "m1.dcm", _scene(48, 48), PhotometricInterpretation="MONOCHROME1")
    m2, m1 = _load(tmp_path / "m2.dcm"), _load(tmp_path / "m1.dcm")
    assert np.abs((255 - m2) - m1).max() <= 1
    assert m2.std() > 30  # a real picture, not a flat one where inversion is trivial


def test_presentation_lut_shape_inverse(tmp_path):
    _dicom(tmp_path / "m2.dcm", _scene(48, 48))
    _dicom(tmp_path / "inv.dcm", _scene(48, 48), PresentationLUTShape="INVERSE")
    _dicom(
        tmp_path / "m1inv.dcm",
        _scene(48, 48),
        PhotometricInterpretation="MONOCHROME1",
        PresentationLUTShape="INVERSE",
    )
    m2 = _load(tmp_path / "m2.dcm")
    assert np.abs((255 - m2) - _load(tmp_path / "inv.dcm")).max() <= 1
    # MONOCHROME1 with INVERSE (as DX requires) is one inversion, not two
    assert np.abs((255 - m2) - _load(tmp_path / "m1inv.dcm")).max() <= 1


def test_rescale_slope_is_applied(tmp_path):
    _dicom(tmp_path / "plain.dcm", _scene(48, 48))
    _dicom(tmp_path / "neg.dcm", _scene(48, 48), RescaleSlope="-2", RescaleIntercept="100")
    plain, neg = _load(tmp_path / "plain.dcm"), _load(tmp_path / "neg.dcm")
    # a negative slope flips the intensity order: the output is the inverse
    assert np.abs((255 - plain) - neg).max() <= 1


def test_window_centre_width_clips(tmp_path):
    scene = _scene(48, 48)
    _dicom(tmp_path / "plain.dcm", scene)
    # window covering only 0..400: everything above 400 must saturate
    _dicom(tmp_path / "win.dcm", scene, WindowCenter="200", WindowWidth="400")
    plain, win = _load(tmp_path / "plain.dcm"), _load(tmp_path / "win.dcm")
    assert (win == 255).sum() > 3 * (plain == 255).sum()
    assert (win == 255).mean() > 0.4


def test_voi_lut_sequence_is_applied(tmp_path):
    scene = _scene(48, 48)
    item = Dataset()
    item.LUTDescriptor = [1024, 0, 16]
    step = np.where(np.arange(1024) < 500, 0, 65535).astype("<u2")  # a hard threshold
    item.add_new(0x00283006, "OW", step.tobytes())
    _dicom(tmp_path / "lut.dcm", scene, VOILUTSequence=[item])
    out = _load(tmp_path / "lut.dcm")
    values = set(np.unique(out))
    # only black, white and the few anti-aliased pixels along the threshold's edges
    assert (np.isin(out, [0, 255])).mean() > 0.85
    assert 0 in values and 255 in values


def test_bits_stored_drops_junk_high_bits(tmp_path):
    scene = (_scene(48, 48) // 2).astype(np.uint16)  # fits in 10 bits
    junk = scene | np.uint16(0xF000) * (np.arange(scene.size).reshape(scene.shape) % 3 == 0)
    _dicom(tmp_path / "clean.dcm", scene, BitsStored=10, HighBit=9)
    _dicom(tmp_path / "junk.dcm", junk.astype(np.uint16), BitsStored=10, HighBit=9)
    assert np.array_equal(_load(tmp_path / "clean.dcm"), _load(tmp_path / "junk.dcm"))


def test_compressed_dicom_matches_uncompressed(tmp_path):
    _dicom(tmp_path / "raw.dcm", _scene())
    ds = pydicom.dcmread(tmp_path / "raw.dcm")
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(tmp_path / "rle.dcm")
    assert np.array_equal(_load(tmp_path / "raw.dcm"), _load(tmp_path / "rle.dcm"))


def test_dicom_without_preamble_or_meta(tmp_path):
    _dicom(tmp_path / "a.dcm", _scene())
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    del ds.file_meta
    ds.preamble = None
    ds.save_as(tmp_path / "raw.dcm", implicit_vr=True, little_endian=True)
    assert (tmp_path / "raw.dcm").read_bytes()[128:132] != b"DICM"
    assert np.array_equal(_load(tmp_path / "a.dcm"), _load(tmp_path / "raw.dcm"))


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ({"Modality": "CT"}, "wrong-modality"),
        ({"NumberOfFrames": 2}, "multi-frame"),
        ({"PhotometricInterpretation": "PALETTE COLOR"}, "colour-dicom"),
    ],
)
def test_dicom_skips(tmp_path, tags, reason):
    pixels = _scene(48, 48)
    if "NumberOfFrames" in tags:
        pixels = np.concatenate([pixels, pixels])  # two frames' worth of data
        pixels = pixels.reshape(2 * 48, 48)
    _dicom(tmp_path / "x.dcm", pixels, **tags)
    if "NumberOfFrames" in tags:
        ds = pydicom.dcmread(tmp_path / "x.dcm")
        ds.Rows = 48
        ds.save_as(tmp_path / "x.dcm")
    assert _skip_reason(tmp_path / "x.dcm")[0] == reason


def test_colour_dicom_rgb(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    _dicom(tmp_path / "c.dcm", rgb, SamplesPerPixel=3, PhotometricInterpretation="RGB")
    ds = pydicom.dcmread(tmp_path / "c.dcm")
    ds.PlanarConfiguration = 0
    ds.save_as(tmp_path / "c.dcm")
    assert _skip_reason(tmp_path / "c.dcm")[0] == "colour-dicom"


def test_dicom_without_modality_accepted_when_radiograph_class(tmp_path):
    _dicom(tmp_path / "a.dcm", _scene())
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    del ds.Modality
    ds.save_as(tmp_path / "a.dcm")
    assert load_radiograph(tmp_path / "a.dcm", SIZE).kind == "dicom"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ds.save_as(tmp_path / "a.dcm")
    assert _skip_reason(tmp_path / "a.dcm")[0] == "wrong-modality"


def test_damaged_files(tmp_path):
    _dicom(tmp_path / "a.dcm", _scene())
    data = (tmp_path / "a.dcm").read_bytes()
    (tmp_path / "trunc.dcm").write_bytes(data[: len(data) - 1000])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("Patient notes, not an image\n")
    (tmp_path / "no_pixels.dcm").write_bytes(b"")
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "cut.dcm")  # a CR header without its pixels: cut short
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR: never had pixels
    ds.Modality = "SR"
    ds.save_as(tmp_path / "no_pixels.dcm")
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(tmp_path / "p.png")
    png = (tmp_path / "p.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(png[: len(png) // 2])
    assert _skip_reason(tmp_path / "trunc.dcm") == (
        "unreadable",
        f"truncated DICOM file: pixel data has {48 * 40 * 2 - 1000} of {48 * 40 * 2} bytes",
    )
    assert _skip_reason(tmp_path / "empty.png") == ("unreadable", "empty file (0 bytes)")
    assert _skip_reason(tmp_path / "notes.txt")[0] == "not-an-image"
    assert _skip_reason(tmp_path / "no_pixels.dcm") == (
        "not-an-image",
        "DICOM file without pixel data (Basic Text SR Storage)",
    )
    assert _skip_reason(tmp_path / "cut.dcm")[0] == "unreadable"
    (tmp_path / "head.dcm").write_bytes(data[:300])  # cut inside the header
    assert _skip_reason(tmp_path / "head.dcm")[0] == "unreadable"
    assert _skip_reason(tmp_path / "trunc.png")[0] == "unreadable"
    assert _skip_reason(tmp_path)[0] == "not-an-image"  # a folder


# ---- PNG / JPEG ------------------------------------------------------------------------


def test_png_8_16_bit_and_rgb_agree(tmp_path):
    scene = _scene(64, 64).astype(np.float64) / 1000
    Image.fromarray(np.rint(scene * 255).astype(np.uint8)).save(tmp_path / "g8.png")
    Image.fromarray(np.rint(scene * 65535).astype(np.uint16)).save(tmp_path / "g16.png")
    grey = np.rint(scene * 255).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "rgb.png")
    g8, g16, rgb = (_load(tmp_path / n) for n in ("g8.png", "g16.png", "rgb.png"))
    assert load_radiograph(tmp_path / "g16.png", SIZE).kind == "png"
    assert np.abs(g8 - g16).mean() < 1.0
    assert np.array_equal(g8, rgb)


def test_jpeg_close_to_png(tmp_path):
    grey = np.rint(_scene(200, 160) / 1000 * 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "a.png")
    Image.fromarray(grey).save(tmp_path / "a.jpg", quality=95)
    r = load_radiograph(tmp_path / "a.jpg", SIZE)
    assert r.kind == "jpeg" and r.patient_token is None
    assert np.abs(_load(tmp_path / "a.png") - r.pixels.astype(int)).mean() < 3


def test_aspect_ratio_kept_with_black_padding(tmp_path):
    wide = np.full((50, 100), 200, np.uint8)
    wide[:, ::2] = 100  # some texture so the window is not degenerate
    Image.fromarray(wide).save(tmp_path / "wide.png")
    out = load_radiograph(tmp_path / "wide.png", 64).pixels
    # 100x50 -> 64x32, centred: 16 black rows above and below
    assert (out[:16] == 0).all() and (out[48:] == 0).all()
    assert out[16:48].mean() > 50


def test_window_ignores_outliers():
    v = np.tile(np.linspace(0, 1, 100, dtype=np.float32), (100, 1))
    v[0, 0] = 1e6  # one hot pixel must not darken the whole image
    out = to_uint8(v, 100)
    assert 100 < out.mean() < 155


def test_flat_image_is_black_not_an_error():
    assert not to_uint8(np.full((10, 10), 5.0, np.float32), 16).any()


def test_image_size_checked(tmp_path):
    with pytest.raises(ValueError):
        load_radiograph(tmp_path / "x.png", 4)


# ---- real DICOM files (../shared/data) --------------------------------------------------


@pytest.mark.shared_data
def test_real_jpeg2000_and_jpegls_agree(shared_data):
    chest = shared_data / "dicom" / "chest"
    a = load_radiograph(chest / "nema_wg04_RG1_CR_chest_PA_mono1_jpeg2000lossy.dcm", 128)
    b = load_radiograph(chest / "nema_wg04_RG1_CR_chest_PA_mono1_jpeglsnearlossless.dcm", 128)
    diff = np.abs(a.pixels.astype(int) - b.pixels.astype(int))
    assert diff.mean() < 2
    assert a.pixels.std() > 30
    # MONOCHROME1: lungs (centre-left and centre-right) darker than the mediastinum
    assert a.pixels[40:80, 25:50].mean() < a.pixels[40:80, 58:70].mean()


@pytest.mark.shared_data
def test_real_monochrome1_edit_is_exact_inverse(shared_data):
    chest = shared_data / "dicom" / "chest"
    siim = load_radiograph(chest / "siim_pneumothorax_CR_PA_jpegbaseline_mono2.dcm", 128)
    derived = load_radiograph(chest / "DERIVED_siim_tag-edited_to_MONOCHROME1.dcm", 128)
    assert np.abs((255 - siim.pixels.astype(int)) - derived.pixels.astype(int)).max() <= 1


@pytest.mark.shared_data
def test_real_12bit_jpeg_extended_is_undecodable(shared_data):
    path = shared_data / "dicom" / "other_cr_not_chest"
    path = path / "nema_wg04_RG3_CR_tibia_mono1_jpegextended_lossy.dcm"
    reason, message = _skip_reason(path)
    assert reason == "undecodable"
    assert "JPEG Extended" in message and "1.2.840.10008.1.2.4.51" in message


@pytest.mark.shared_data
def test_real_file_without_preamble(shared_data):
    path = (
        shared_data / "dicom" / "chest" / "barre_CR-MONO1-10-chest_PA_uncompressed_nopreamble.dcm"
    )
    r = load_radiograph(path, 64)
    assert r.source_shape == (440, 440) and r.patient_token is None
    assert r.pixels.std() > 30
