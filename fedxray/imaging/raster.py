"""PNG and JPEG radiographs (8 or 16 bit, grey or colour) to grey values, via Pillow."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fedxray.imaging.skip import SkipImage

FORMATS = {"png": "PNG", "jpeg": "JPEG"}
MAX_PIXELS = 100_000_000


def read_raster(path: Path, kind: str, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Grey values (float32, air dark) and the source (rows, cols), or raise SkipImage."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. DecompressionBombWarning, EXIF oddities
            with Image.open(path, formats=[FORMATS[kind]]) as im:
                source = (im.height, im.width)
                if source[0] * source[1] > MAX_PIXELS:
                    raise SkipImage("unreadable", f"image too large ({im.width} x {im.height})")
                if im.format == "JPEG" and im.mode in ("L", "RGB", "YCbCr"):
                    # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still leaves at
                    # least twice the output size: far less memory and time for big scans.
                    im.draft("L", (2 * image_size, 2 * image_size))
                im.load()
                im = ImageOps.exif_transpose(im)
                values = _grey(im)
    except SkipImage:
        raise
    except UnidentifiedImageError:
        # The file starts like a PNG/JPEG but Pillow cannot make sense of it.
        raise SkipImage("unreadable", f"damaged {FORMATS[kind]} file") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise SkipImage("unreadable", f"damaged {FORMATS[kind]} file: {e}") from None
    return values, source


def _grey(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return np.asarray(im).astype(np.float32)
    if mode in ("LA", "La"):
        im = im.getchannel("L")
    elif mode != "L":
        # RGB(A), palette, CMYK, 1-bit: ITU-R 601 luma (Pillow's L conversion).
        im = im.convert("RGB").convert("L") if mode not in ("RGB", "RGBA") else im.convert("L")
    return np.asarray(im).astype(np.float32)
