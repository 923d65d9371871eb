"""Colour differences as people see them: sRGB to CIELAB (D65) and CIEDE2000.

CIEDE2000 follows Sharma, Wu and Dalal, "The CIEDE2000 color-difference formula: implementation
notes, supplementary test data, and mathematical observations" (Color Research & Application
30(1), 2005), equations (1)-(17), with kL = kC = kH = 1. About 1 is the smallest difference an eye
notices side by side; flat colours a picture should keep are within a few units.

numpy only; every function takes arrays of any leading shape (..., 3).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..errors import ConfigError

HEX_RE = re.compile(r"^#[0-9a-fA-F]{6}$")

# D65 white point (2-degree observer) and the sRGB -> XYZ matrix of IEC 61966-2-1.
_WHITE = np.array([0.95047, 1.0, 1.08883])
_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])


def hex_to_rgb(value: str, field: str = "colour") -> tuple[int, int, int]:
    """``"#d72828"`` -> ``(215, 40, 40)``; anything else is refused naming ``field``."""
    if not isinstance(value, str) or not HEX_RE.match(value):
        raise ConfigError(field, value, 'a hex colour "#rrggbb", such as "#d72828"')
    return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)


def rgb_to_hex(rgb: Any) -> str:
    r, g, b = (int(round(float(np.clip(c, 0, 255)))) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def rgb_to_lab(rgb: Any) -> np.ndarray:
    """CIELAB (D65) of sRGB values in 0-255, shape (..., 3) -> (..., 3) float64."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _WHITE
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def ciede2000(lab1: Any, lab2: Any) -> np.ndarray:
    """CIEDE2000 difference between CIELAB colours (broadcasting over the leading axes)."""
    lab1, lab2 = np.asarray(lab1, dtype=np.float64), np.asarray(lab2, dtype=np.float64)
    L1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    L2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    # 1. a' stretched by G, from the mean chroma (eqs. 2-5).
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    # 2. Differences in lightness, chroma and hue (eqs. 8-11); hue is 0 where a chroma is 0.
    dLp, dCp = L2 - L1, c2p - c1p
    zero = (c1p * c2p) == 0
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(zero, 0.0, dh)
    dHp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2)
    # 3. Means (eqs. 12-14); the mean hue goes the short way round the circle.
    Lbp, Cbp = (L1 + L2) / 2, (c1p + c2p) / 2
    hsum = h1p + h2p
    far = np.abs(h1p - h2p) > 180
    hbp = np.where(far, np.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2), hsum / 2)
    hbp = np.where(zero, hsum, hbp)
    # 4. Weights and the rotation term (eqs. 15-22).
    t = (1 - 0.17 * np.cos(np.radians(hbp - 30)) + 0.24 * np.cos(np.radians(2 * hbp))
         + 0.32 * np.cos(np.radians(3 * hbp + 6)) - 0.20 * np.cos(np.radians(4 * hbp - 63)))
    d_theta = 30 * np.exp(-(((hbp - 275) / 25) ** 2))
    rc = 2 * np.sqrt(Cbp**7 / (Cbp**7 + 25.0**7))
    sl = 1 + 0.015 * (Lbp - 50) ** 2 / np.sqrt(20 + (Lbp - 50) ** 2)
    sc = 1 + 0.045 * Cbp
    sh = 1 + 0.015 * Cbp * t
    rt = -np.sin(np.radians(2 * d_theta)) * rc
    return np.sqrt((dLp / sl) ** 2 + (dCp / sc) ** 2 + (dHp / sh) ** 2 + rt * (dCp / sc) * (dHp / sh))


def delta_e(rgb1: Any, rgb2: Any) -> np.ndarray:
    """CIEDE2000 between sRGB colours (0-255), broadcasting."""
    return ciede2000(rgb_to_lab(rgb1), rgb_to_lab(rgb2))


def image_lab(image: Any) -> np.ndarray:
    """A PIL picture as an (H, W, 3) CIELAB array."""
    return rgb_to_lab(np.asarray(image.convert("RGB"), dtype=np.float64))


def dominant_colour(rgb_pixels: Any, radius: float = 12.0, limit: int = 400) -> np.ndarray:
    """The most common colour of (N, 3) sRGB pixels: the median of the largest group within
    ``radius`` (CIEDE2000) of one of them. Unlike a per-channel median, a stripe of another
    colour or blended edges do not pull it towards a colour nobody drew. At most ``limit``
    evenly spaced pixels are compared pairwise."""
    pixels = np.asarray(rgb_pixels, dtype=np.float64).reshape(-1, 3)
    if not len(pixels):
        raise ConfigError("pixels", "none", "at least one pixel to measure")
    pixels = pixels[:: max(1, len(pixels) // limit)]
    lab = rgb_to_lab(pixels)
    near = ciede2000(lab[:, None, :], lab[None, :, :]) <= radius
    return np.median(pixels[near[int(np.argmax(near.sum(1)))]], axis=0)
