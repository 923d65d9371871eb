"""Turnaround checks: a back view that is not a mirror of the front, and one-sided features
that stay on their side.

An identity scorer is pose- and flip-invariant by design, so it cannot tell a mirrored front from
a true back: both are "the same character". The pose can. A view from behind has no face
keypoints, so:

- **Mirror** (`check_view`'s ``mirror``): when the anchor shows a face and the view's pose does
  not, the view is compared with hflip(anchor) on the anchor's *face marks* (the pixels of its
  eye areas unlike its skin: eyes, an eyepatch, glasses). ``face_delta_e`` is their mean
  CIEDE2000, at the flipped place and at the flipped place moved onto the view's neck (whichever
  is smaller). A true back shows hair or skin there (a large difference); a mirrored front shows
  the same face (near 0). The face is there when ``face_delta_e`` is at most the tolerance and
  at most half ``mark_contrast`` (how far the marks are from the skin). The scorer's identity
  score of the view against hflip(anchor) is the second signal: the view is "a mirror of the
  front" when the face is there and, if a scorer is given, the score is at or above its
  threshold. Both numbers are recorded.
- **One-sided features** (``sides``, a card's ``left:`` / ``right:``): the feature's region on
  its side (by the pose's COCO-18 labels, so the person's left is the same side from the front
  and from behind) and the same region on the other side. The feature's colour is what the
  anchor's own side shows that its other side does not; the check fails when the view shows that
  colour more on the other side than on the feature's side ("eyepatch on the wrong side"), or,
  for a feature on the face, on a head the pose says is turned away.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..character import Character
from ..errors import ConfigError
from ..mini.measure import SIDE_KEYPOINTS, eye_region, hair_region, has_face, head_region, side_region
from .base import Scorer
from .colour import ciede2000, image_lab

log = logging.getLogger(__name__)

__all__ = ["MIRROR_TOLERANCE", "ViewCheck", "check_view", "feature_region"]

MIRROR_TOLERANCE = 8.0  # mean CIEDE2000 on the front's face marks at or below which the face is there
MARK_CONTRAST = 8.0  # a face mark differs from the face's own skin by more than this
MATCH = 12.0  # a pixel shows the feature when it is within this of the feature's colour
SHOWN = 0.3  # ... and the feature "shows" where at least this share of the anchor's amount is found

# Which region a feature's words point at, first match wins; anything else: the whole side.
_FEATURE_WORDS = (
    ("eye", ("eye", "monocle")),
    ("ear", ("ear",)),
    ("upper_arm", ("armband", "armlet", "sleeve", "shoulder", "pauldron", "badge")),
    ("arm", ("arm", "hand", "glove", "gauntlet", "bracelet", "wrist", "watch", "ring", "sword", "blade", "katana",
             "shield", "bow", "staff", "wand", "spear", "gun", "pistol", "bag", "book")),
    ("leg", ("leg", "knee", "thigh", "boot", "sock", "stocking", "garter", "holster", "ankle", "foot", "shoe")),
)


def feature_region(feature: str) -> str:
    """The kind of region (`mini.measure.SIDE_REGIONS`) a one-sided feature is looked for in:
    a word of it starting with "eye" or "monocle" -> "eye", "ear" -> "ear", "armband" ->
    "upper_arm", "sword" or "glove" -> "arm", "boot" -> "leg", anything else -> "body"."""
    words = re.findall(r"[a-z]+", feature.lower())
    for kind, starts in _FEATURE_WORDS:
        if any(w.startswith(s) for w in words for s in starts):
            return kind
    return "body"


@dataclass
class ViewCheck:
    """What `check_view` found: ``failed`` holds one short reason per failed check ("mirror of
    the front", "eyepatch on the wrong side"); ``mirror`` and ``sides`` the numbers behind them;
    ``notes`` the checks that could not be made here and why."""

    failed: list[str] = field(default_factory=list)
    mirror: dict[str, Any] = field(default_factory=dict)
    sides: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed": list(self.failed), "mirror": dict(self.mirror),
                "sides": [dict(s) for s in self.sides], "notes": list(self.notes)}


def _sides_of(sides: Mapping[str, str | None] | Character | None) -> dict[str, str]:
    if sides is None:
        return {}
    if isinstance(sides, Character):
        sides = {"left": sides.left, "right": sides.right}
    if not isinstance(sides, Mapping):
        raise ConfigError("sides", sides, 'a mapping such as {"left": "eyepatch"}, or a card with left:/right:')
    out = {}
    for side, feature in sides.items():
        if side not in SIDE_KEYPOINTS:
            raise ConfigError("sides", side, "'left' or 'right' (the character's own side)")
        if feature is not None and not (isinstance(feature, str) and feature.strip()):
            raise ConfigError(f"sides[{side!r}]", feature, "the feature's name, such as 'eyepatch'")
        if feature:
            out[side] = feature.strip()
    return out


def _resolve_scorer(scorer: Any) -> Scorer | None:
    if scorer is None or isinstance(scorer, Scorer):
        return scorer
    from .select import get_scorer  # a name or a CCIP folder: the one resolver

    return get_scorer(scorer)


def _shift(arr: np.ndarray, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray]:
    """``arr`` moved by (dx, dy) pixels, and where the moved picture has pixels."""
    h, w = arr.shape[:2]
    out = np.zeros_like(arr)
    valid = np.zeros((h, w), bool)
    if abs(dx) >= w or abs(dy) >= h:
        return out, valid
    ys, yd = slice(max(0, -dy), min(h, h - dy)), slice(max(0, dy), min(h, h + dy))
    xs, xd = slice(max(0, -dx), min(w, w - dx)), slice(max(0, dx), min(w, w + dx))
    out[yd, xd] = arr[ys, xs]
    valid[yd, xd] = True
    return out, valid


def _face_marks(lab: np.ndarray, pose: Any) -> tuple[np.ndarray, float]:
    """The anchor's face marks: pixels of its eye areas unlike the face's skin (the median colour
    of the head below the hair cap and outside the eye areas), and their mean difference from it."""
    size = (lab.shape[1], lab.shape[0])
    eyes = np.zeros(lab.shape[:2], bool)
    for m in eye_region(pose, size, radius=0.16):
        eyes |= m
    face = head_region(pose, size) & ~hair_region(pose, size) & ~eyes
    if not face.any() or not eyes.any():
        return np.zeros_like(eyes), 0.0
    contrast = np.zeros(eyes.shape)
    contrast[eyes] = ciede2000(lab[eyes], np.median(lab[face], axis=0))
    marks = contrast > MARK_CONTRAST
    return marks, float(contrast[marks].mean()) if marks.any() else 0.0


def _neck(pose: Any) -> np.ndarray | None:
    body = np.asarray(pose.body)
    return body[1, :2] if body[1, 2] > 0 else None


def _check_mirror(anchor: Any, anchor_lab: np.ndarray, anchor_pose: Any, image: Any, lab: np.ndarray, pose: Any,
                  scorer: Scorer | None, tolerance: float, result: ViewCheck) -> None:
    """Is ``image`` (posed from behind) hflip(anchor)? Fills ``result.mirror``, fails "mirror of the front"."""
    from PIL import ImageOps

    if not has_face(anchor_pose) or has_face(pose):
        why = "the view's pose shows a face (not a back view)" if has_face(anchor_pose) else "the anchor shows no face"
        result.mirror = {"checked": False, "why": why}
        return
    # 1. The anchor's face marks, flipped: where a mirrored front shows its face.
    marks, contrast = _face_marks(anchor_lab, anchor_pose)
    marks = marks[:, ::-1]
    if marks.sum() < 3:
        result.mirror = {"checked": False, "why": "the anchor's face shows no marks (eyes) to look for"}
        result.notes.append("mirror check skipped: the anchor's face shows no marks (eyes) to look for")
        return
    # 2. Compare there, and there moved onto the view's neck (a model draws the figure where the pose is).
    offsets = {(0, 0)}
    a, b = _neck(anchor_pose.mirror()), _neck(pose)
    if a is not None and b is not None:
        offsets.add((int(round(b[0] - a[0])), int(round(b[1] - a[1]))))
    best = np.inf
    for dx, dy in sorted(offsets):
        ref, valid = _shift(anchor_lab[:, ::-1], dx, dy)
        moved, _ = _shift(marks, dx, dy)
        where = moved & valid
        if where.sum() >= 3:
            best = min(best, float(ciede2000(lab[where], ref[where]).mean()))
    # A face found there differs from the front's by less than the tolerance, and by less than
    # half what its marks differ from the skin (a back showing skin there differs by all of it).
    same_face = bool(best <= min(tolerance, contrast / 2))
    result.mirror = {"checked": True, "face_delta_e": round(best, 3), "tolerance": tolerance,
                     "mark_contrast": round(contrast, 3)}
    # 3. The scorer's second signal: is the view the same character as the mirrored front?
    same_character = True
    if scorer is not None:
        emb = scorer.embed([image, ImageOps.mirror(anchor)])
        score = float(1.0 - scorer.difference(emb[:1], emb[1:])[0, 0])
        same_character = score >= scorer.min_score
        result.mirror.update(identity=round(score, 6), scorer=scorer.name, min_identity=round(scorer.min_score, 6))
    result.mirror["mirrored"] = same_face and same_character
    if same_face and same_character:
        result.failed.append("mirror of the front")


def _matches(lab: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> int:
    return int((ciede2000(lab[mask], colour) < MATCH).sum()) if mask.any() else 0


def _regions(pose: Any, side: str, kind: str, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(this side's region, the other side's), without the pixels both share."""
    other = "right" if side == "left" else "left"
    own, opp = side_region(pose, side, kind, size), side_region(pose, other, kind, size)
    both = own & opp
    return own & ~both, opp & ~both


def _sample(pixels: np.ndarray, limit: int = 400) -> np.ndarray:
    """At most ``limit`` of ``pixels``, evenly spaced (pairwise differences stay cheap)."""
    return pixels[:: max(1, len(pixels) // limit)]


def _feature_colour(lab: np.ndarray, own: np.ndarray, opp: np.ndarray) -> np.ndarray | None:
    """The colour the anchor shows on the feature's side and hardly on the other: of the colours
    on its side, the one whose share of pixels near it there, less twice its share on the other
    side, is largest (the median of its near pixels); None when that colour covers fewer than
    3 pixels or less than 3 times its share on the other side."""
    here, there = _sample(lab[own]), _sample(lab[opp])
    if len(here) < 3:
        return None
    near_here = ciede2000(here[:, None, :], here[None, :, :]) < MATCH
    near_there = (ciede2000(here[:, None, :], there[None, :, :]) < MATCH if len(there)
                  else np.zeros((len(here), 1), bool))
    n_here = near_here.sum(1)
    share_here, share_there = n_here / len(here), near_there.sum(1) / max(1, len(there))
    best = int(np.argmax(share_here - 2 * share_there))
    if n_here[best] < 3 or share_here[best] < 3 * share_there[best]:
        return None
    return np.median(here[near_here[best]], axis=0)


def _check_side(anchor_lab: np.ndarray, anchor_pose: Any, lab: np.ndarray, pose: Any, side: str, feature: str,
                result: ViewCheck) -> None:
    """Is ``feature`` (on the person's ``side`` in the anchor) on the same side in the view?"""
    kind = feature_region(feature)
    record: dict[str, Any] = {"side": side, "feature": feature, "region": kind}
    result.sides.append(record)
    size = (lab.shape[1], lab.shape[0])
    # 1. The feature's colour, learnt from the anchor: on its side, not on the other.
    a_own, a_opp = _regions(anchor_pose, side, kind, size)
    if not a_own.any():
        record["checked"] = False
        result.notes.append(f"{feature}: the anchor's pose shows no {side} {kind}")
        return
    colour = _feature_colour(anchor_lab, a_own, a_opp)
    if colour is None:
        record["checked"] = False
        result.notes.append(f"{feature}: the anchor shows nothing on its {side} {kind} that the other side lacks")
        return
    anchor_count = _matches(anchor_lab, a_own, colour)
    record.update(checked=True, colour_lab=[round(float(v), 2) for v in colour], anchor=anchor_count)
    # 2. A feature of the face, on a head turned away: it should not show at all.
    if kind == "eye" and not has_face(pose):
        face = head_region(pose, size) & ~hair_region(pose, size)
        if _matches(anchor_lab, hair_region(anchor_pose, size) & ~a_own, colour) >= SHOWN * anchor_count:
            record["checked"] = False
            result.notes.append(f"{feature}: its colour is the hair's; a face turned away is not checked")
            return
        record["turned_away"] = count = _matches(lab, face, colour)
        if count >= SHOWN * anchor_count:
            result.failed.append(f"{feature} on a face turned away")
        return
    # 3. Otherwise: more of it on the other side than on its own is the wrong side.
    own, opp = _regions(pose, side, kind, size)
    if not own.any() and not opp.any():
        record["checked"] = False
        result.notes.append(f"{feature}: the view's pose has no {kind} on either side")
        return
    record["own"], record["other"] = here, there = _matches(lab, own, colour), _matches(lab, opp, colour)
    if there >= SHOWN * anchor_count and there > here:
        result.failed.append(f"{feature} on the wrong side")


def check_view(anchor_image: Any, anchor_pose: Any, image: Any, pose: Any, *, scorer: Any = None,
               sides: Mapping[str, str | None] | Character | None = None,
               mirror_tolerance: float = MIRROR_TOLERANCE) -> ViewCheck:
    """Check one view of a turnaround against the anchor view (usually the front).

    ``anchor_image`` / ``image`` are PIL pictures, ``anchor_pose`` / ``pose`` the poses they were
    drawn in (fitted to each picture's size). ``scorer`` (a `Scorer`, or a name for
    `get_scorer`; None: the pixel check alone) adds its identity score against hflip(anchor) to
    the mirror check. ``sides`` names one-sided features ({"left": "eyepatch"}, or a card with
    ``left:``/``right:``). Checks that cannot be made in these poses are listed in ``notes``.
    """
    features = _sides_of(sides)
    if isinstance(mirror_tolerance, bool) or not isinstance(mirror_tolerance, (int, float)) or not mirror_tolerance > 0:
        raise ConfigError("mirror_tolerance", mirror_tolerance, "a CIEDE2000 difference above 0, such as 8")
    scorer = _resolve_scorer(scorer)
    width, height = image.size
    anchor_pose = anchor_pose.fit(*anchor_image.size)
    if anchor_image.size != image.size:  # compare on the view's pixels
        anchor_pose = anchor_pose.resize(width, height)
        anchor_image = anchor_image.resize((width, height))
    anchor = anchor_image.convert("RGB")
    pose = pose.fit(width, height)
    anchor_lab, lab = image_lab(anchor), image_lab(image)
    result = ViewCheck()
    _check_mirror(anchor, anchor_lab, anchor_pose, image.convert("RGB"), lab, pose, scorer, float(mirror_tolerance),
                  result)
    for side, feature in features.items():
        _check_side(anchor_lab, anchor_pose, lab, pose, side, feature, result)
    if result.failed:
        log.info("view check failed: %s", "; ".join(result.failed))
    return result
