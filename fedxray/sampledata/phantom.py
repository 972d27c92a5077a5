"""Synthetic paediatric chest radiograph phantoms (display values, air dark, bone bright).

An image is built as a density map: body soft tissue, two air-filled lungs, heart and
mediastinum, spine, ribs, clavicles, pulmonary vessels, diaphragm and stomach bubble.
Findings are added on top:

- bacterial: a focal lobar consolidation (dense, sharply bounded by a fissure on one side,
  with air bronchograms) in one lobe of one lung;
- viral: diffuse bilateral peribronchial/interstitial markings, densest around the hila,
  with hyperinflated lungs and flatter diaphragms (as in viral bronchiolitis);
- normal: none.

Anatomy, position, rotation, exposure and noise vary per image. Everything is drawn from
the numpy Generator passed in, so a seed reproduces an image exactly.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

LABELS = ("normal", "bacterial", "viral")


def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur through the FFT, with mirrored borders (no scipy at run time)."""
    if sigma <= 0:
        return a
    pad = int(3 * sigma) + 1
    p = np.pad(a, pad, mode="reflect")
    fy = np.fft.fftfreq(p.shape[0])[:, None]
    fx = np.fft.rfftfreq(p.shape[1])[None, :]
    transfer = np.exp(-2.0 * (math.pi * sigma) ** 2 * (fx**2 + fy**2))
    out = np.fft.irfft2(np.fft.rfft2(p) * transfer, s=p.shape)
    return out[pad:-pad, pad:-pad].astype(np.float32)


class _Canvas:
    """A float image to draw strokes and shapes on (Pillow mode 'F')."""

    def __init__(self, h: int, w: int):
        self.img = Image.new("F", (w, h), 0.0)
        self.draw = ImageDraw.Draw(self.img)

    def line(self, pts, value: float, width: float) -> None:
        self.draw.line(
            [(float(x), float(y)) for x, y in pts], fill=value, width=max(1, round(width))
        )

    def ellipse(self, cx, cy, rx, ry, value: float) -> None:
        self.draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=value)

    def array(self) -> np.ndarray:
        return np.asarray(self.img, dtype=np.float32).copy()


def render(rng: np.random.Generator, label: str, height: int, width: int) -> np.ndarray:
    """One phantom: float32 [height, width] in [0, 1], air dark."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}")
    h, w = height, width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Two streams: the same seed gives the same child, position and exposure whatever the
    # label, so phantoms of different classes can be compared pixel by pixel.
    rng, finding_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**63, size=2))

    # ---- geometry (pixels) ---------------------------------------------------------
    cx = w * (0.5 + rng.normal(0, 0.015))
    tw = w * rng.uniform(0.34, 0.42)  # half-width of the rib cage
    ytop = h * rng.uniform(0.10, 0.17)  # lung apices
    lung_h = h * rng.uniform(0.50, 0.58)
    dome = h * rng.uniform(0.05, 0.08)  # height of the diaphragm domes
    if label == "viral":  # hyperinflation: longer lungs, flatter domes
        lung_h *= finding_rng.uniform(1.04, 1.10)
        dome *= finding_rng.uniform(0.45, 0.7)
    ybot = ytop + lung_h
    mw = w * rng.uniform(0.065, 0.085)  # half-width of the mediastinum

    # ---- body ----------------------------------------------------------------------
    d = np.abs(xx - cx)
    t_sh = np.clip((yy - (ytop - 0.10 * h)) / (0.16 * h), 0, 1)
    t_sh = t_sh * t_sh * (3 - 2 * t_sh)  # smooth neck-to-shoulder transition
    body_hw = tw * (0.42 + 0.80 * t_sh) - tw * 0.08 * np.clip((yy - ybot) / (0.3 * h), 0, 1)
    inside = np.clip(1 - (d / body_hw) ** 2, 0, 1)
    density = (0.10 + 0.42 * np.sqrt(inside)) * (inside > 0)
    mediastinum = np.exp(-((d / (mw * 1.25)) ** 4)) * (yy > ytop - 0.12 * h)
    density = blur((density + 0.10 * mediastinum).astype(np.float32), 2.0)

    # ---- lungs ---------------------------------------------------------------------
    lung = np.zeros((h, w), np.float32)
    u = (yy - ytop) / lung_h
    for side in (-1, 1):
        s_d = side * (xx - cx)  # distance from the midline towards this side
        med = mw * (1.0 + 0.15 * np.clip(u, 0, 1))
        lat = tw * (0.35 + 0.60 * np.sqrt(np.clip(np.sin(np.clip(u, 0, 1) * math.pi / 2), 0, 1)))
        mid = (med + lat) / 2
        half = (lat - med) / 2 * np.sqrt(np.clip(u / 0.18, 0, 1))  # rounded apex
        across = np.abs(s_d - mid) / np.maximum(half, 1e-3)
        # right hemidiaphragm (image left, side -1) sits higher, above the liver
        base = (
            ybot
            - (0.025 * h if side < 0 else 0)
            + dome * (np.clip((s_d - (med + lat) / 2) / ((lat - med) / 2 + 1e-3), -1, 1) ** 2)
        )
        base = base + 0.04 * h * np.clip((s_d - mid) / (tw * 0.5), 0, 1)  # costophrenic angle
        m = (across < 1) & (yy > ytop) & (yy < base)
        prof = np.clip(1 - across**2, 0, 1) ** 0.35
        lung = np.maximum(lung, m * prof)
    # heart: an ellipse on the patient's left (image right), hiding lung behind it
    hx = cx + w * rng.uniform(0.03, 0.06)
    hy = ybot - h * rng.uniform(0.09, 0.13)
    hrx, hry = w * rng.uniform(0.15, 0.19), h * rng.uniform(0.10, 0.13)
    heart = np.clip(1 - ((xx - hx) / hrx) ** 2 - ((yy - hy) / hry) ** 2, 0, 1) ** 0.5
    heart = blur((heart > 0).astype(np.float32), 2.5)
    lung = blur(lung, 2.0) * (1 - 0.85 * heart)
    lung_mask = (lung > 0.25).astype(np.float32)
    density -= rng.uniform(0.30, 0.36) * lung

    # ---- stomach bubble, spine -----------------------------------------------------
    if rng.random() < 0.7:
        sb = np.clip(
            1
            - ((xx - cx - 0.17 * w) / (0.06 * w)) ** 2
            - ((yy - ybot - 0.06 * h) / (0.035 * h)) ** 2,
            0,
            1,
        )
        density -= 0.12 * blur((sb > 0).astype(np.float32), 1.5)
    vert = 1 + 0.25 * np.cos(2 * math.pi * yy / (h * rng.uniform(0.04, 0.05)))
    spine = np.exp(-(((xx - cx) / (0.032 * w)) ** 4)) * vert * (yy > ytop - 0.1 * h)
    density += 0.08 * spine

    # ---- ribs and clavicles --------------------------------------------------------
    ribs = _Canvas(h, w)
    spacing = lung_h / rng.uniform(8.0, 9.0)
    rib_w = max(2.0, 0.015 * h)
    for side in (-1, 1):
        for k in range(10):
            y0 = ytop - 0.04 * h + k * spacing
            pts = []
            for t in np.linspace(0, 1, 24):
                x = cx + side * (0.035 * w + t * tw * 1.02)
                y = y0 - 0.03 * h * math.sin(t * math.pi) + 0.12 * h * t**2
                pts.append((x, y))
            ribs.line(pts, 0.055, rib_w)
            # faint anterior rib, sloping down towards the midline
            pts = [
                (cx + side * tw * (1.0 - 0.6 * t), y0 + 0.05 * h + 0.08 * h * t)
                for t in np.linspace(0, 1, 12)
            ]
            ribs.line(pts, 0.02, rib_w * 0.8)
    cage = np.clip(1 - (d / (tw * 1.08)) ** 6, 0, 1) * np.clip(
        (ybot + 0.06 * h - yy) / (0.04 * h), 0, 1
    )
    clav = _Canvas(h, w)
    for side in (-1, 1):
        cy = ytop + rng.uniform(-0.01, 0.03) * h
        pts = [
            (cx + side * (0.04 * w + t * 0.36 * w), cy - 0.05 * h * t + 0.015 * h * math.sin(t * 6))
            for t in np.linspace(0, 1, 16)
        ]
        clav.line(pts, 0.10, 0.022 * h)
    density += blur(ribs.array(), 1.0) * cage + blur(clav.array(), 1.0) * (inside > 0.05)

    # ---- pulmonary vessels ---------------------------------------------------------
    vessels = _Canvas(h, w)
    hila = []
    for side in (-1, 1):
        hilum = (cx + side * (mw + 0.05 * w), ytop + lung_h * rng.uniform(0.40, 0.50))
        hila.append(hilum)
        for base_angle in (-60, -20, 20, 55, 85):
            ang = math.radians(base_angle + rng.normal(0, 8))
            _branch(vessels, rng, hilum, side, ang, 0.16 * w, 0.012 * w, 0.06, depth=4)
    density += blur(vessels.array(), 0.8) * lung_mask

    # ---- findings ------------------------------------------------------------------
    if label == "bacterial":
        density += _consolidation(finding_rng, xx, yy, cx, ytop, lung_h, tw, mw, lung, h, w)
    elif label == "viral":
        density += _interstitial(finding_rng, hila, lung, h, w)

    # ---- acquisition: marker, rotation, blur, exposure, noise ------------------------
    if rng.random() < 0.6:
        mx = w * (0.08 if rng.random() < 0.5 else 0.86)
        my = h * rng.uniform(0.04, 0.1)
        density[int(my) : int(my + 0.04 * h), int(mx) : int(mx + 0.04 * w)] = 0.95
    density = np.clip(density, 0, 1.2)
    img = Image.fromarray(density.astype(np.float32))
    img = img.rotate(rng.uniform(-6, 6), Image.Resampling.BICUBIC, fillcolor=float(density[0, 0]))
    v = blur(np.asarray(img, dtype=np.float32), rng.uniform(0.5, 1.1))
    lo, hi = 0.02 + rng.normal(0, 0.01), 0.95 + rng.normal(0, 0.04)
    v = np.clip((v - lo) / (hi - lo), 0, 1) ** rng.uniform(0.8, 1.25)
    v = v + rng.normal(0, 1, v.shape).astype(np.float32) * rng.uniform(0.008, 0.02) * (0.5 + v)
    return np.clip(v, 0, 1).astype(np.float32)


def _branch(canvas, rng, start, side, angle, length, width, value, depth) -> None:
    """A vessel tree: segments that fork, thin out and fade towards the periphery."""
    if depth == 0 or length < 3:
        return
    x0, y0 = start
    pts = [(x0, y0)]
    a = angle
    for _ in range(4):
        a += rng.normal(0, 0.12)
        x0 += side * math.cos(a) * length / 4
        y0 += math.sin(a) * length / 4
        pts.append((x0, y0))
    canvas.line(pts, value, width)
    for turn in (-0.45, 0.4):
        _branch(
            canvas,
            rng,
            (x0, y0),
            side,
            a + turn + rng.normal(0, 0.1),
            length * rng.uniform(0.55, 0.75),
            max(1.0, width * 0.7),
            value * 0.85,
            depth - 1,
        )


def _consolidation(rng, xx, yy, cx, ytop, lung_h, tw, mw, lung, h, w) -> np.ndarray:
    """Lobar pneumonia: a dense patch filling part of one lobe, flat along a fissure."""
    side = rng.choice((-1, 1))
    lobe = rng.choice(("upper", "lower", "lower"))
    s_d = side * (xx - cx)
    lateral_centre = mw + (tw - mw) * rng.uniform(0.35, 0.6)
    if lobe == "upper":
        cy, fissure = (
            ytop + lung_h * rng.uniform(0.22, 0.35),
            ytop + lung_h * rng.uniform(0.42, 0.5),
        )
        in_lobe = yy < fissure
    else:
        cy, fissure = (
            ytop + lung_h * rng.uniform(0.7, 0.85),
            ytop + lung_h * rng.uniform(0.45, 0.55),
        )
        in_lobe = yy > fissure
    rx, ry = (tw - mw) * rng.uniform(0.4, 0.6), lung_h * rng.uniform(0.18, 0.28)
    blob = np.exp(-((((s_d - lateral_centre) / rx) ** 2 + ((yy - cy) / ry) ** 2) ** 1.5))
    lumpy = blur(rng.normal(0, 1, xx.shape).astype(np.float32), 0.03 * w)
    lumpy = lumpy / (np.abs(lumpy).max() + 1e-6)
    patch = np.clip(blob * (1 + 0.5 * lumpy) - 0.25, 0, 1) / 0.75
    patch = blur(patch * in_lobe * (s_d > 0), 1.5) * np.clip(lung * 1.6, 0, 1)
    # air bronchograms: dark branching tubes inside the opacity
    tubes = _Canvas(*xx.shape)
    start = (cx + side * (mw + 0.04 * w), ytop + lung_h * 0.45)
    for base in (-40, 10, 50):
        ang = math.radians(base + rng.normal(0, 10))
        _branch(tubes, rng, start, side, ang, 0.15 * w, 0.01 * w, 1.0, depth=3)
    bronchi = blur(tubes.array(), 0.7) * patch
    # Dense enough to survive downscaling to the 32-64 px a DP-trained model sees.
    return rng.uniform(0.31, 0.46) * patch - 0.07 * bronchi


def _interstitial(rng, hila, lung, h, w) -> np.ndarray:
    """Viral pattern: bilateral perihilar streaks, reticular texture and bronchial cuffing."""
    streaks = _Canvas(h, w)
    for side, (hx, hy) in zip((-1, 1), hila, strict=True):
        for _ in range(int(rng.integers(70, 110))):
            ang = math.radians(rng.uniform(-80, 80))
            r0 = rng.uniform(0, 0.06 * w)
            length = rng.uniform(0.03, 0.10) * w
            x0 = hx + side * math.cos(ang) * r0
            y0 = hy + math.sin(ang) * r0 * 1.4
            x1 = x0 + side * math.cos(ang) * length
            y1 = y0 + math.sin(ang) * length * 1.4
            streaks.line([(x0, y0), (x1, y1)], rng.uniform(0.6, 1.0), 1.5)
            if rng.random() < 0.12:  # a thickened bronchial wall seen end-on
                streaks.ellipse(x0, y0, 0.012 * w, 0.012 * w, 0.5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    near = np.zeros((h, w), np.float32)
    for hx, hy in hila:
        near = np.maximum(
            near, np.exp(-(((xx - hx) / (0.22 * w)) ** 2 + ((yy - hy) / (0.28 * h)) ** 2))
        )
    reticular = blur(rng.normal(0, 1, (h, w)).astype(np.float32), 1.2)
    reticular = np.clip(reticular / (reticular.std() + 1e-6), 0, None)
    pattern = 0.55 * blur(streaks.array(), 0.8) + 0.25 * reticular * (0.4 + near) + 0.35 * near
    # Strong enough that the haze still shows at 32-64 px (the sample federation's sizes).
    return rng.uniform(0.135, 0.21) * pattern * np.clip(lung * 1.4, 0, 1)
