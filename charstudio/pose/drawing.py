"""Drawing a skeleton the way the OpenPose ControlNet's training images were drawn."""

from __future__ import annotations

import colorsys
import math

import numpy as np

# Rendering conventions of the OpenPose ControlNet's training images: limbs in this order,
# each drawn as a filled ellipse of half-width 4 in 60% of its colour, then every joint as a
# disc of radius 4 in the full colour of its index. Pairs are 0-based COCO-18 indices.
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
JOINT_COLORS = _COLORS  # joint i's colour; limb k is drawn in colour k at 60% (the pose editor draws the same)
_STICK_HALF_WIDTH = 4
_JOINT_RADIUS = 4
# Hands: the 20 bones of each finger chain from the wrist, coloured around the hue circle.
_HAND_EDGES: tuple[tuple[int, int], ...] = tuple(
    (0 if j == 0 else 1 + 4 * f + j - 1, 1 + 4 * f + j) for f in range(5) for j in range(4)
)
_FACE_RADIUS = 3
# Line styles: "standard" draws as controlnet-aux does (what SD 1.5's OpenPose ControlNet and
# thibaud's SDXL one were trained on); "thick" as xinsir's SDXL OpenPose and union ControlNets ask
# on their model cards: limbs and joints 4 px times a factor that grows with the picture's longer
# side (1 below 500 px, then 2 up to 999, 3 up to 1999, ... at most 7).
POSE_LINES = ("standard", "thick")
THICK_LINE_CONTROLNETS = ("xinsir/",)  # hub ids (prefixes) whose ControlNets were trained on thick lines


def limb_scale(width: int, height: int, lines: str = "standard") -> int:
    """How many times the standard 4 px the limbs and joints are drawn, for `lines` at this size."""
    if lines == "standard":
        return 1
    side = max(int(width), int(height))
    return 1 if side < 500 else min(2 + side // 1000, 7)


def draw_body(canvas: np.ndarray, body: np.ndarray, scale: int = 1) -> None:
    import cv2

    present = body[:, 2] > 0
    for (a, b), colour in zip(LIMBS, _COLORS):
        if not (present[a] and present[b]):
            continue
        (xa, ya), (xb, yb) = body[a, :2], body[b, :2]
        # Whole-pixel truncation of centre, half-length and angle, as in the reference images.
        centre = (int((xa + xb) / 2), int((ya + yb) / 2))
        half_length = int(math.hypot(xa - xb, ya - yb) / 2)
        angle = int(math.degrees(math.atan2(ya - yb, xa - xb)))
        polygon = cv2.ellipse2Poly(centre, (half_length, _STICK_HALF_WIDTH * scale), angle, 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(c * 0.6) for c in colour])
    for i in np.flatnonzero(present):
        cv2.circle(canvas, (int(body[i, 0]), int(body[i, 1])), _JOINT_RADIUS * scale, _COLORS[i], thickness=-1)


def draw_hand(canvas: np.ndarray, hand: np.ndarray) -> None:
    import cv2

    present = hand[:, 2] > 0
    for k, (a, b) in enumerate(_HAND_EDGES):
        if present[a] and present[b]:
            rgb = [round(255 * c) for c in colorsys.hsv_to_rgb(k / len(_HAND_EDGES), 1.0, 1.0)]
            cv2.line(canvas, (int(hand[a, 0]), int(hand[a, 1])), (int(hand[b, 0]), int(hand[b, 1])), rgb, thickness=2)
    for i in np.flatnonzero(present):
        cv2.circle(canvas, (int(hand[i, 0]), int(hand[i, 1])), _JOINT_RADIUS, (0, 0, 255), thickness=-1)


def draw_face(canvas: np.ndarray, face: np.ndarray) -> None:
    import cv2

    for i in np.flatnonzero(face[:, 2] > 0):
        cv2.circle(canvas, (int(face[i, 0]), int(face[i, 1])), _FACE_RADIUS, (255, 255, 255), thickness=-1)
