"""Files that must never pass as radiographs, each with the plausibility check it must fail.

Used by the tests and by benchmarks/bench_plausibility.py (which counts what is refused).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.images import write_dicom


def _u8(a) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _u16(a) -> np.ndarray:
    return np.clip(np.rint(a), 0, 65535).astype(np.uint16)


def write_junk(folder: Path, seed: int = 0) -> dict[str, str]:
    """Write the junk files into ``folder``; returns file name -> the check it must fail."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    expect: dict[str, str] = {}

    def png(name, a, check):
        Image.fromarray(a).save(folder / f"{name}.png")
        expect[f"{name}.png"] = check

    def jpg(name, a, check, quality=75):
        Image.fromarray(a).save(folder / f"{name}.jpg", quality=quality)
        expect[f"{name}.jpg"] = check

    def dcm(name, a, check, photometric="MONOCHROME2", bits=None, rle=False):
        tags = {"PhotometricInterpretation": photometric}
        if bits:
            tags["BitsStored"] = bits
        write_dicom(folder / f"{name}.dcm", a, rle=rle, **tags)
        expect[f"{name}.dcm"] = check

    yy, xx = np.mgrid[0:256, 0:256]
    r2 = ((yy - 128) ** 2 + (xx - 128) ** 2) / 128**2
    # too small (whatever the content)
    png("size-1x1", np.full((1, 1), 128, np.uint8), "size")
    png("size-1x500-strip", np.full((1, 500), 128, np.uint8), "size")
    png("size-500x1-strip", np.full((500, 1), 90, np.uint8), "size")
    png("size-16px-icon", _u8(np.add.outer(np.arange(16), np.arange(16)) * 8), "size")
    png("size-40x300-noise", _u8(rng.normal(128, 40, (40, 300))), "size")
    # blank and nearly blank
    png("blank-black", np.zeros((256, 256), np.uint8), "blank")
    png("blank-white", np.full((300, 200), 255, np.uint8), "blank")
    jpg("blank-grey", np.full((200, 260), 128, np.uint8), "blank")
    dcm("blank-12bit", np.full((256, 256), 1000, np.uint16), "blank", bits=12)
    dcm("blank-mono1", np.full((128, 128), 77, np.uint8), "blank", photometric="MONOCHROME1")
    png("nearly-blank-grey-pm1", (128 + rng.integers(-1, 2, (256, 256))).astype(np.uint8), "blank")
    marker = np.full((256, 256), 60, np.uint8)
    marker[100:120, 100:120] = 255
    png("nearly-blank-marker", marker, "blank")
    halves = np.zeros((200, 200), np.uint8)
    halves[:, 100:] = 200
    png("nearly-blank-two-levels", halves, "blank")
    png("nearly-blank-salt-pepper", (rng.random((200, 200)) < 0.5).astype(np.uint8) * 255, "blank")
    png("nearly-blank-faint-ramp", _u8(100 + 3 * xx / 256), "blank")
    dcm("nearly-blank-12bit-pm2", (2000 + rng.integers(-2, 3, (256, 256))).astype(np.uint16),
        "blank", bits=12)  # fmt: skip
    # random noise
    png("noise-uniform", rng.integers(0, 256, (256, 256), dtype=np.uint8), "noise")
    png("noise-uniform-large", rng.integers(0, 256, (700, 600), dtype=np.uint8), "noise")
    png("noise-gauss", _u8(rng.normal(128, 40, (300, 300))), "noise")
    png("noise-uniform-80x100", rng.integers(0, 256, (100, 80), dtype=np.uint8), "noise")
    png("noise-16bit", rng.integers(0, 65536, (256, 256), dtype=np.uint16), "noise")
    jpg("noise-q75", rng.integers(0, 256, (300, 300), dtype=np.uint8), "noise")
    jpg("noise-q95", rng.integers(0, 256, (256, 256), dtype=np.uint8), "noise", quality=95)
    jpg("noise-gauss-q50-large", _u8(rng.normal(128, 50, (800, 800))), "noise", quality=50)
    dcm("noise-12bit", rng.integers(0, 4096, (256, 256), dtype=np.uint16), "noise", bits=12)
    dcm("noise-8bit-mono1", rng.integers(0, 256, (200, 200), dtype=np.uint8), "noise",
        photometric="MONOCHROME1")  # fmt: skip
    dcm("noise-16bit-rle", rng.integers(0, 65536, (128, 128), dtype=np.uint16), "noise", rle=True)
    dcm("noise-gauss-12bit-large", _u16(rng.normal(2000, 500, (600, 600))), "noise", bits=12)
    # smooth gradients
    png("gradient-horizontal", _u8(np.tile(np.linspace(0, 255, 256), (256, 1))), "smooth")
    png("gradient-diagonal", _u8((xx + yy) / 510 * 255), "smooth")
    png("gradient-radial", _u8(255 * np.clip(1 - r2, 0, 1)), "smooth")
    png("gradient-vignette", _u8(255 * np.cos(np.clip(np.sqrt(r2), 0, 1) * np.pi / 2) ** 2),
        "smooth")  # fmt: skip
    png("gradient-sigmoid", _u8(255 / (1 + np.exp(-(xx - 128) / 20))), "smooth")
    png("gradient-16bit", _u16(np.tile(np.linspace(0, 65535, 300)[:, None], (1, 250))), "smooth")
    jpg("gradient-q75", _u8(np.tile(np.linspace(30, 220, 300), (240, 1))), "smooth")
    dcm("gradient-12bit", _u16(np.tile(np.linspace(0, 4095, 256), (256, 1))), "smooth", bits=12)
    # colour pictures (PNG/JPEG); colour DICOM is refused earlier, as colour-dicom
    colour = np.stack([xx, yy, 255 - xx], -1)
    Image.fromarray(_u8(colour)).save(folder / "colour-gradient.png")
    expect["colour-gradient.png"] = "greyscale"
    blocks = rng.integers(0, 256, (8, 8, 3)).repeat(32, 0).repeat(32, 1).astype(np.uint8)
    Image.fromarray(blocks).save(folder / "colour-blocks.png")
    expect["colour-blocks.png"] = "greyscale"
    noise_rgb = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise_rgb).save(folder / "colour-noise.jpg", quality=75)
    expect["colour-noise.jpg"] = "greyscale"
    return expect
