"""The world's held-out features: accessories drawn only on request (LoRA fine-tuning data and the
checks that measure a LoRA), never by base training's random draws. ``world.render`` draws them;
``measure`` finds where they are with the same geometry."""

from __future__ import annotations

from typing import Any

import numpy as np

from .shapes import RGB, disc, limb

HELD_OUT_ACCESSORIES = ("orange striped scarf", "red cape", "orange boots")
ORANGE: RGB = (255, 135, 0)
CAPE: RGB = (200, 30, 40)
STRIPE_WHITE: RGB = (250, 250, 250)
BOOTS: RGB = ORANGE


def draw_striped_scarf(d: Any, f: Any, path: list[Any], sw: float) -> None:
    """The held-out orange scarf along ``path`` (``sw`` wide), with white stripes and a hanging end."""
    limb(d, path, sw, ORANGE)
    # White stripes across the scarf, evenly spaced along its length.
    pts = [np.asarray(q, dtype=np.float64) for q in path]
    for a, b in zip(pts, pts[1:]):
        seg = b - a
        n = np.linalg.norm(seg)
        if n < 1e-6:
            continue
        normal = np.array([-seg[1], seg[0]]) / n
        for t in np.arange(0.25, 1.0, 0.5):
            c = a + seg * t
            d.line([tuple(c - normal * sw * 0.5), tuple(c + normal * sw * 0.5)], fill=STRIPE_WHITE,
                   width=max(1, int(sw * 0.3)))
    # Hanging end.
    tail = pts[1] - f.up * 0.45 * f.torso + f.right * 0.15 * f.torso
    limb(d, [pts[1], tail], sw * 0.8, ORANGE)
    mid = (pts[1] + tail) / 2
    d.line([tuple(mid - f.right * sw * 0.4), tuple(mid + f.right * sw * 0.4)], fill=STRIPE_WHITE,
           width=max(1, int(sw * 0.3)))


def boot_shapes(f: Any) -> list[tuple[list[Any], float]]:
    """Each boot as (shaft points, width) for a `world.Figure` ``f``: from 35% of the way down the
    shin to the ankle, wider than the leg, for every leg whose ankle the pose shows."""
    shapes = []
    for knee, ankle in ((9, 10), (12, 13)):
        if not f.ok[ankle]:
            continue
        foot = f.p[ankle]
        top = f.p[knee] + (foot - f.p[knee]) * 0.35 if f.ok[knee] else foot + f.up * 0.45 * f.torso
        shapes.append(([top, foot], 1.25 * f.leg_w))
    return shapes


def draw_boots(d: Any, f: Any, colour: RGB = BOOTS) -> None:
    """The held-out orange boots over the shins and feet (drawn over the legs, a skirt or a robe)."""
    for shaft, width in boot_shapes(f):
        limb(d, shaft, width, colour)
        disc(d, shaft[-1], 0.8 * f.leg_w, colour)
