"""Palette anchors: does a picture keep the card's colours for hair, eyes, outfit and accent?

A card may give a hex colour per part (``palette: {hair: "#d72828", eyes: "#2864e6"}``). Each
part's colour is measured where the pose says that part is, as the *dominant* colour of that
region (`colour.dominant_colour`: the largest group of pixels within 12 of one another, so an
edge or a stripe does not pull it towards a colour nobody drew; background showing where the
figure does not fill the region is left out unless the asked colour is the background's), and
compared with CIEDE2000:

- **hair**: the head's top cap (`mini.measure.hair_region`: above the eyes,
  below a hat's brim), which shows hair from the front, the side and behind.
- **eyes**: round each eye the pose shows, a disc twice an eye's radius; an eye's worth of its
  pixels (a quarter) nearest the colour, their median, so a pupil a pixel off its keypoint is
  still found. The better-matching eye counts, so an eyepatch or a wink over one eye does not
  fail. Skipped when the pose shows no eye (a view from behind).
- **outfit**: the torso's two sides (below a scarf, inside the arms, beside the midline).
  Skipped without both shoulders and both hips, or side-on (the arm hides the torso).
- **accent**: a small detail anywhere on the figure (a scarf, a ribbon, a gem): the median of the
  figure's ``max(4, 0.5%)`` pixels nearest the colour, so a real patch of it passes and one
  blended edge pixel does not.

A part whose difference is over its tolerance (`DEFAULT_TOLERANCE`, overridable) fails the check.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..character import PALETTE_PARTS, Character
from ..errors import ConfigError
from ..mini.measure import eye_region, hair_region, skeleton_mask, torso_region
from .colour import delta_e, dominant_colour, hex_to_rgb, rgb_to_hex

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_TOLERANCE", "PALETTE_PARTS", "PaletteCheck", "check_palette"]

# CIEDE2000 per part. Flat colours drawn again land within ~1; a diffusion model's flat colour
# wanders by a few units; another hair colour of the world is 26 (brown vs black) to 70 away.
DEFAULT_TOLERANCE: dict[str, float] = {"hair": 12.0, "eyes": 20.0, "outfit": 12.0, "accent": 15.0}
BACKGROUND = 10.0  # a pixel this close to the border's median colour is background, not the part


@dataclass
class PaletteCheck:
    """One picture's colours against the card's palette: ``delta_e[part]`` (CIEDE2000) for each
    part measured, ``measured[part]`` the colour found (hex), ``skipped[part]`` why a part was not
    measured in this pose, ``tolerance[part]`` the most each part may differ."""

    palette: dict[str, str]
    delta_e: dict[str, float] = field(default_factory=dict)
    measured: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    tolerance: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        """The parts over their tolerance, in `PALETTE_PARTS` order."""
        return [p for p in PALETTE_PARTS if p in self.delta_e and self.delta_e[p] > self.tolerance[p]]

    @property
    def passed(self) -> bool:
        return not self.failed

    def reasons(self) -> list[str]:
        """One short reason per failed part, e.g. "hair colour off (ΔE 44.8 > 12)"."""
        return [f"{p} colour off (ΔE {self.delta_e[p]:.1f} > {self.tolerance[p]:g})" for p in self.failed]

    def to_dict(self) -> dict[str, Any]:
        return {"palette": dict(self.palette), "delta_e": dict(self.delta_e), "measured": dict(self.measured),
                "tolerance": {p: self.tolerance[p] for p in self.delta_e}, "skipped": dict(self.skipped),
                "failed": self.failed}


def resolve_tolerance(tolerance: float | dict[str, float] | None = None) -> dict[str, float]:
    """`DEFAULT_TOLERANCE` with ``tolerance`` applied: one number for every part, or some parts'."""
    merged = dict(DEFAULT_TOLERANCE)
    if tolerance is None:
        return merged
    given = tolerance if isinstance(tolerance, dict) else dict.fromkeys(PALETTE_PARTS, tolerance)
    for part, value in given.items():
        if part not in PALETTE_PARTS:
            raise ConfigError("tolerance", part, f"a palette part: {', '.join(PALETTE_PARTS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 200:
            raise ConfigError(f"tolerance[{part!r}]", value, "a CIEDE2000 difference above 0, such as 12")
        merged[part] = float(value)
    return merged


def _palette_of(palette: Character | dict[str, str]) -> dict[str, str]:
    colours = palette.palette if isinstance(palette, Character) else palette
    if not isinstance(colours, dict) or not colours:
        raise ConfigError("palette", colours, 'a mapping of part to hex colour, e.g. {"hair": "#d72828"}, '
                                              "or a card that has one")
    for part, value in colours.items():
        if part not in PALETTE_PARTS:
            raise ConfigError("palette", part, f"a palette part: {', '.join(PALETTE_PARTS)}")
        hex_to_rgb(value, f"palette[{part!r}]")
    return {p: colours[p].lower() for p in PALETTE_PARTS if p in colours}


def _part_colour(rgb: np.ndarray, mask: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The dominant colour in ``mask``, leaving out the background (the border's median colour)
    where the figure does not fill the region, unless the asked colour is the background's own
    (white hair on a white background) or fewer than 3 pixels would be left."""
    pixels = rgb[mask]
    border = np.median(np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]), axis=0)
    if float(delta_e(target, border)) > BACKGROUND:
        figure = pixels[delta_e(pixels, border) > BACKGROUND]
        pixels = figure if len(figure) >= 3 else pixels
    return dominant_colour(pixels)


def _measure(part: str, rgb: np.ndarray, pose: Any, target: np.ndarray) -> tuple[np.ndarray | None, str]:
    """(the colour measured for ``part``, or None with the reason it cannot be measured)."""
    size = (rgb.shape[1], rgb.shape[0])
    ok = np.asarray(pose.body)[:, 2] > 0
    if part == "hair":
        mask = hair_region(pose, size) if (ok[0] or ok[16] or ok[17]) else None
        return (_part_colour(rgb, mask, target), "") if mask is not None and mask.any() else (None, "no head in this pose")
    if part == "eyes":  # an eye's worth of pixels (a quarter of the area) nearest the colour
        areas = [m for m in eye_region(pose, size, radius=0.15) if m.any()]
        if not areas:
            return None, "no eyes in this pose (seen from behind)"
        found = [_nearest(rgb[m], target, max(2, int(round(m.sum() / 4)))) for m in areas]
        return min(found, key=lambda c: float(delta_e(c, target))), ""
    if part == "outfit":
        mask = torso_region(pose, size)
        return (_part_colour(rgb, mask, target), "") if mask.any() else (None, "no torso facing the viewer in this pose (no shoulders and hips, or side-on)")
    mask = skeleton_mask(pose, *size)  # accent: the pixels nearest it anywhere on the figure
    if not mask.any():
        return None, "no figure in this pose"
    return _nearest(rgb[mask], target, max(4, int(round(0.005 * mask.sum())))), ""


def _nearest(pixels: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """The median of the ``k`` pixels nearest ``target``: a detail of that colour, if there is one."""
    return np.median(pixels[np.argsort(delta_e(pixels, target))[:k]], axis=0)


def check_palette(image: Any, pose: Any, palette: Character | dict[str, str],
                  tolerance: float | dict[str, float] | None = None) -> PaletteCheck:
    """Measure ``image`` (PIL) in ``pose``'s regions against ``palette`` (a card, or a mapping of
    part to ``"#rrggbb"``). The pose is fitted to the picture's size. Parts the pose does not
    show are skipped with the reason; the others get their CIEDE2000 in ``delta_e``."""
    colours = _palette_of(palette)
    tol = resolve_tolerance(tolerance)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    pose = pose.fit(rgb.shape[1], rgb.shape[0])
    result = PaletteCheck(palette=colours, tolerance=tol)
    for part, value in colours.items():
        target = np.asarray(hex_to_rgb(value), dtype=np.float64)
        found, why = _measure(part, rgb, pose, target)
        if found is None:
            result.skipped[part] = why
            continue
        result.measured[part] = rgb_to_hex(found)
        result.delta_e[part] = round(float(delta_e(found, target)), 3)
    if result.skipped:
        log.debug("palette: skipped %s", result.skipped)
    return result

