"""PNG and JPEG radiographs (8 or 16 bit, grey or colour) to grey values, via Pillow."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fedxray.imaging.plausibility import ANALYSIS_SIZE, COLOUR_CHROMA
from fedxray.imaging.skip import SkipImage

FORMATS = {"png": "PNG", "jpeg": "JPEG"}
MAX_PIXELS = 100_000_000
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")
_COLOUR_SAMPLE = 128  # the colour share is measured on at most about 128 x 128 pixels


@dataclass(frozen=True)
class RasterPixels:
    values: np.ndarray  # float32 grey values, air dark (possibly a reduced decode)
    rows: int  # of the source image
    cols: int
    colour_share: float  # share of clearly coloured pixels (0 for greyscale)


def read_raster(path: Path, kind: str, image_size: int) -> RasterPixels:
    """Grey values, the source size and how colourful it is, or raise SkipImage."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. DecompressionBombWarning, EXIF oddities
            with Image.open(path, formats=[FORMATS[kind]]) as im:
                source = (im.height, im.width)
                if source[0] * source[1] > MAX_PIXELS:
                    raise SkipImage("unreadable", f"image too large ({im.width} x {im.height})")
                if im.format == "JPEG" and im.mode in ("L", "RGB", "YCbCr"):
                    # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still leaves at
                    # least twice the output size (and all the plausibility checks look
                    # at): far less memory and time for big scans. Colour JPEGs stay
                    # YCbCr: Y is the luma, Cb and Cr tell how colourful the picture is.
                    least = max(2 * image_size, ANALYSIS_SIZE)
                    im.draft("L" if im.mode == "L" else "YCbCr", (least, least))
                im.load()
                im = ImageOps.exif_transpose(im)
                colour = _colour_share(im)
                values = _grey(im)
    except SkipImage:
        raise
    except UnidentifiedImageError:
        # The file starts like a PNG/JPEG but Pillow cannot make sense of it.
        raise SkipImage("unreadable", f"damaged {FORMATS[kind]} file") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise SkipImage("unreadable", f"damaged {FORMATS[kind]} file: {e}") from None
    return RasterPixels(values, source[0], source[1], colour)


def _colour_share(im: Image.Image) -> float:
    """Share of pixels whose chroma (Cb, Cr distance from grey, 0..255 scale) is visible."""
    if im.mode not in _COLOUR_MODES:
        return 0.0
    step = max(1, math.ceil(max(im.size) / _COLOUR_SAMPLE))
    ycc = im if im.mode == "YCbCr" else im.convert("RGB").convert("YCbCr")
    chroma = np.asarray(ycc)[::step, ::step, 1:].astype(np.int32) - 128
    squared = chroma[..., 0] ** 2 + chroma[..., 1] ** 2
    return float((squared > COLOUR_CHROMA**2).mean())


def _grey(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return np.asarray(im).astype(np.float32)
    if mode in ("LA", "La"):
        im = im.getchannel("L")
    elif mode == "YCbCr":
        im = im.getchannel("Y")  # what libjpeg's own grey output would be
    elif mode != "L":
        # RGB(A), palette, CMYK, 1-bit: ITU-R 601 luma (Pillow's L conversion).
        im = im.convert("RGB").convert("L") if mode not in ("RGB", "RGBA") else im.convert("L")
    return np.asarray(im).astype(np.float32)
