"""A procedural character world: flat-colour characters drawn from a Pose and attributes.

This is the world the `mini` model is trained on, so it can draw what it was taught and the
studio's behaviours (text, pose, consistency, LoRA, interpolation) can be measured on pictures
whose truth is known. Everything is deterministic: the same seed gives the same picture.

    >>> from charstudio.mini.world import random_character, render
    >>> attrs, pose = random_character(seed=3, size=64)
    >>> image = render(attrs, pose)          # a 64x64 PIL image
    >>> attrs.caption()                       # "a girl with long red hair and green eyes, ..."

Pose keypoints are our COCO-18 `Pose`; the figure is drawn around its skeleton, so the picture
and the OpenPose control image of the same Pose line up pixel for pixel.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from ..errors import ConfigError
from .held_out import CAPE, HELD_OUT_ACCESSORIES, ORANGE, STRIPE_WHITE, draw_boots, draw_striped_scarf  # noqa: F401 (re-exported)
from .shapes import RGB, disc, expand, limb


HAIR_COLOURS: dict[str, RGB] = {
    "black": (35, 32, 40), "brown": (115, 70, 40), "blonde": (240, 205, 80), "red": (215, 40, 40),
    "blue": (45, 90, 225), "green": (40, 165, 70), "pink": (245, 120, 185), "white": (238, 238, 242),
}
HAIR_STYLES = ("short", "long", "twin tails", "spiky")
EYE_COLOURS: dict[str, RGB] = {
    "blue": (40, 100, 230), "green": (30, 160, 60), "brown": (100, 60, 30), "red": (200, 30, 30),
    "purple": (130, 50, 180),
}
OUTFIT_COLOURS: dict[str, RGB] = {
    "red": (200, 45, 50), "blue": (50, 80, 200), "green": (45, 150, 70), "yellow": (235, 200, 50),
    "purple": (130, 60, 170), "white": (240, 240, 240), "black": (40, 40, 45), "pink": (240, 140, 190),
}
OUTFIT_TYPES = ("dress", "shirt and trousers", "armour", "robe")
ACCESSORIES = ("none", "hat", "glasses", "scarf")
# HELD_OUT_ACCESSORIES (held_out.py) are drawn only on request (LoRA fine-tuning data); the base model never sees them.
SKIN_TONES: dict[str, RGB] = {"light": (250, 222, 198), "tan": (222, 178, 138), "dark": (140, 95, 65)}
BACKGROUNDS: dict[str, RGB] = {
    "white": (246, 246, 246), "grey": (175, 175, 180), "light blue": (198, 222, 246),
    "yellow": (246, 236, 168), "light green": (206, 236, 200), "pink": (246, 214, 226),
}
WHO = ("girl", "boy")

TROUSERS: RGB = (55, 58, 85)
STEEL: RGB = (150, 152, 165)
SHOES: RGB = (70, 45, 30)
HAT: RGB = (95, 62, 40)
GLASSES: RGB = (20, 20, 20)
SCARF: RGB = (30, 140, 140)
# One-sided features, drawn only on request (render's ``sides=``): no caption or random draw names them.
ONE_SIDED: dict[str, RGB] = {"eyepatch": (120, 0, 60), "armband": (0, 255, 255)}

SUPERSAMPLE = 4  # drawn at 4x, then box-filtered down: smooth edges, still flat colours


@dataclass(frozen=True)
class Attributes:
    """What a character looks like; every field is a name from the tables above."""

    hair_colour: str = "black"
    hair_style: str = "short"
    eye_colour: str = "brown"
    outfit_colour: str = "blue"
    outfit_type: str = "shirt and trousers"
    accessory: str = "none"
    skin: str = "light"
    background: str = "white"
    who: str = "girl"

    def __post_init__(self) -> None:
        tables = {
            "hair_colour": HAIR_COLOURS, "hair_style": HAIR_STYLES, "eye_colour": EYE_COLOURS,
            "outfit_colour": OUTFIT_COLOURS, "outfit_type": OUTFIT_TYPES,
            "accessory": ACCESSORIES + HELD_OUT_ACCESSORIES, "skin": SKIN_TONES, "background": BACKGROUNDS,
            "who": WHO,
        }
        for name, table in tables.items():
            value = getattr(self, name)
            if value not in table:
                raise ConfigError(name, value, f"one of {', '.join(map(repr, table))}")

    def phrases(self) -> dict[str, str]:
        """The caption's parts, worded as a card's traits would be ("" for no accessory)."""
        c = self.hair_colour
        hair = {"short": f"short {c} hair", "long": f"long {c} hair", "twin tails": f"{c} hair in twin tails",
                "spiky": f"spiky {c} hair"}[self.hair_style]
        o = self.outfit_colour
        outfit = {"dress": f"a {o} dress", "shirt and trousers": f"a {o} shirt and trousers",
                  "armour": f"{o} armour", "robe": f"a {o} robe"}[self.outfit_type]
        accessory = {"none": "", "hat": "a hat", "glasses": "glasses", "scarf": "a scarf",
                     "orange striped scarf": "an orange striped scarf", "red cape": "a red cape",
                     "orange boots": "orange boots"}[self.accessory]
        return {"who": f"a {self.who}", "hair": hair, "eyes": f"{self.eye_colour} eyes", "skin": f"{self.skin} skin",
                "outfit": outfit, "accessory": accessory, "background": f"{self.background} background"}

    def caption(self) -> str:
        """The training caption, written from the attributes."""
        p = self.phrases()
        extra = f" and {p['accessory']}" if p["accessory"] else ""
        return f"{p['who']} with {p['hair']} and {p['eyes']}, {p['skin']}, wearing {p['outfit']}{extra}, {p['background']}"

    def caption_variant(self, rng: random.Random) -> str:
        """A caption in one of the ways people write prompts: the full sentence (half the time), or
        comma-separated tags in any order with some attributes left out. Training on these lets
        the model follow short prompts and card-style prompts, not just one sentence pattern."""
        if rng.random() < 0.5:
            return self.caption()
        parts = self.phrases()
        tags = [parts["hair"]] + [parts[k] for k in ("eyes", "skin", "outfit", "accessory", "background")
                                  if parts[k] and rng.random() > 0.3]
        if rng.random() < 0.5:
            rng.shuffle(tags)
        return ", ".join([parts["who"]] + tags)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def replace(self, **changes: Any) -> Attributes:
        return replace(self, **changes)


def vocabulary() -> list[str]:
    """Every word a caption can contain, sorted (the `mini` tokenizer's word list)."""
    words: set[str] = set()
    # The held-out accessory's words stay out: to the base model they are unknown words.
    rng = [HAIR_COLOURS, HAIR_STYLES, EYE_COLOURS, OUTFIT_COLOURS, OUTFIT_TYPES, SKIN_TONES, BACKGROUNDS, WHO]
    for table in rng:
        for key in table:
            words.update(key.split())
    for a in ACCESSORIES:
        for t in OUTFIT_TYPES:
            for h in HAIR_STYLES:
                cap = Attributes(outfit_type=t, accessory=a, hair_style=h).caption()
                words.update(cap.replace(",", " ").split())
    words -= {"none"}
    return sorted(words)


def random_attributes(rng: random.Random, *, accessories: tuple[str, ...] = ACCESSORIES) -> Attributes:
    return Attributes(
        hair_colour=rng.choice(list(HAIR_COLOURS)), hair_style=rng.choice(HAIR_STYLES),
        eye_colour=rng.choice(list(EYE_COLOURS)), outfit_colour=rng.choice(list(OUTFIT_COLOURS)),
        outfit_type=rng.choice(OUTFIT_TYPES), accessory=rng.choice(accessories),
        skin=rng.choice(list(SKIN_TONES)), background=rng.choice(list(BACKGROUNDS)), who=rng.choice(WHO),
    )


def random_pose(rng: random.Random, size: int = 64, names: list[str] | None = None):
    """A library pose, maybe mirrored, fitted to a ``size`` square, scaled 0.72-0.92 and shifted
    within the canvas, with a little jitter on every keypoint."""
    from ..pose.library import load_pose, shipped_poses

    name = rng.choice(names or shipped_poses())  # the shipped ones: the world must not change with a user's poses
    pose = load_pose(name)
    if rng.random() < 0.5:
        pose = pose.mirror()
    pose = pose.fit(size, size)
    pose = pose.scale(rng.uniform(0.72, 0.92))
    x0, y0, x1, y1 = pose.bbox()
    margin, top = 0.05 * size, 0.14 * size  # room for hair and hats above the head keypoints
    dx = rng.uniform(min(0.0, margin - x0), max(0.0, size - margin - x1))
    dy = rng.uniform(min(0.0, top - y0), max(0.0, size - margin - y1))
    pose = pose.translate(dx, dy)
    body = pose.body.copy()
    jitter = np.array([[rng.gauss(0, 0.008 * size), rng.gauss(0, 0.008 * size)] for _ in range(len(body))])
    body[:, :2] = np.clip(body[:, :2] + jitter * (body[:, 2:3] > 0), 0, size - 1e-3)
    return type(pose)(body=body, canvas_width=size, canvas_height=size)


def random_character(seed: int, size: int = 64, **kwargs: Any):
    """(Attributes, Pose) for one seed: the same seed always gives the same character and pose."""
    rng = random.Random(seed)
    return random_attributes(rng, **kwargs), random_pose(rng, size)


class Figure:
    """Geometry derived from a pose's keypoints, in supersampled pixels."""

    def __init__(self, pose: Any, scale: float):
        body = np.asarray(pose.body, dtype=np.float64)
        self.p = body[:, :2] * scale
        self.ok = body[:, 2] > 0
        neck = self.p[1] if self.ok[1] else None
        hips = [self.p[i] for i in (8, 11) if self.ok[i]]
        if neck is not None and hips:
            self.torso = float(np.linalg.norm(np.mean(hips, axis=0) - neck))
        else:
            ys = self.p[self.ok, 1]
            self.torso = float(ys.max() - ys.min()) / 2.6 if len(ys) else 10.0 * scale
        self.torso = max(self.torso, 4.0 * scale)
        self.head_r = 0.42 * self.torso
        self.arm_w = 0.26 * self.torso
        self.leg_w = 0.30 * self.torso
        # Head centre and its "up" direction.
        if self.ok[0] and neck is not None:
            up = self.p[0] - neck
            n = np.linalg.norm(up)
            up = up / n if n > 1e-6 else np.array([0.0, -1.0])
            self.head = self.p[0] + 0.15 * self.torso * up
        elif neck is not None:
            ears = [self.p[i] for i in (16, 17) if self.ok[i]]
            up = np.array([0.0, -1.0])
            self.head = np.mean(ears, axis=0) if ears else neck + up * 0.45 * self.torso
            if ears:
                v = self.head - neck
                if np.linalg.norm(v) > 1e-6:
                    up = v / np.linalg.norm(v)
        else:
            up = np.array([0.0, -1.0])
            self.head = self.p[0] if self.ok[0] else np.array([0.0, 0.0])
        self.up = up
        self.right = np.array([-up[1], up[0]])  # perpendicular, in image coordinates

    def has(self, *idx: int) -> bool:
        return all(self.ok[i] for i in idx)

    def cape(self) -> list[tuple[float, float]] | None:
        """A cape's outline: from the shoulders down the body's axis to about knee height, flaring
        out to either side (None without both shoulders)."""
        if not self.has(2, 5):
            return None
        top = (self.p[2] + self.p[5]) / 2
        hips = [self.p[i] for i in (8, 11) if self.ok[i]]
        axis = (np.mean(hips, axis=0) - top) if hips else -self.up * self.torso
        length = float(np.linalg.norm(axis))
        axis = axis / length if length > 1e-6 else -self.up
        across = np.array([-axis[1], axis[0]])
        half = max(abs(float(np.dot(self.p[5] - self.p[2], across))) / 2, 0.3 * self.torso)
        bottom = top + axis * 1.75 * self.torso
        wide = half + 0.55 * self.torso
        pts = [top - across * half, top + across * half, bottom + across * wide, bottom - across * wide]
        return [(float(q[0]), float(q[1])) for q in pts]

    def local(self, side: float, up: float) -> tuple[float, float]:
        """A point in the head's frame, in head radii."""
        q = self.head + self.head_r * (side * self.right + up * self.up)
        return float(q[0]), float(q[1])

    def arc(self, radius: float, a0: float, a1: float, n: int = 24) -> list[tuple[float, float]]:
        """Points on a circle around the head (angles in degrees from "up")."""
        pts = []
        for k in range(n + 1):
            a = math.radians(a0 + (a1 - a0) * k / n)
            pts.append(self.local(radius * math.sin(a), radius * math.cos(a)))
        return pts


def render(attrs: Attributes, pose: Any, size: int | None = None, *, sides: dict[str, str] | None = None) -> Any:
    """Draw ``attrs`` in ``pose`` as a PIL RGB image of the pose's canvas size (or ``size``); ``sides``
    adds `ONE_SIDED` features on the person's own side (COCO-18 labels), e.g. {"left": "eyepatch"}."""
    from PIL import Image, ImageDraw

    if size is not None:
        pose = pose.fit(size, size)
    width, height = int(pose.canvas_width), int(pose.canvas_height)
    s = SUPERSAMPLE
    img = Image.new("RGB", (width * s, height * s), BACKGROUNDS[attrs.background])
    d = ImageDraw.Draw(img)
    f = Figure(pose, s)
    # Back to front: each step paints over the ones before it.
    _draw_behind(d, f, attrs)  # 1. a cape, then hair, that hang behind the body
    _draw_legs(d, f, attrs)  # 2. legs, then the skirt or robe over them
    _draw_torso(d, f, attrs)  # 3. torso
    _draw_arms(d, f, attrs)  # 4. arms and hands
    _draw_neck_and_head(d, f, attrs)  # 5. neck, scarf, head
    _draw_hair_on_top(d, f, attrs)  # 6. hair on top of the head
    _draw_eyes_and_hat(d, f, attrs)  # 7. eyes (and glasses), hat
    for side, feature in (sides or {}).items():  # 8. one-sided features, on request
        _draw_one_sided(d, f, side, feature)
    return img.resize((width, height), Image.BOX)


def _draw_behind(d: Any, f: Figure, attrs: Attributes) -> None:
    """A cape, then hair, that hang behind the body."""
    hair = HAIR_COLOURS[attrs.hair_colour]
    if attrs.accessory == "red cape":
        cape = f.cape()
        if cape:
            d.polygon(cape, fill=CAPE)
    if attrs.hair_style == "long":
        d.polygon([f.local(-1.12, 0.2), f.local(1.12, 0.2), f.local(1.25, -2.3), f.local(-1.25, -2.3)], fill=hair)
    elif attrs.hair_style == "twin tails":
        for side in (-1, 1):
            d.polygon([f.local(side * (1.0 + 0.45 * math.sin(t)), -0.9 + 1.4 * math.cos(t))
                       for t in np.linspace(0, 2 * math.pi, 20)], fill=hair)


def _draw_legs(d: Any, f: Figure, attrs: Attributes) -> None:
    """Legs, then the skirt or robe over them."""
    p, kind = f.p, attrs.outfit_type
    skin, outfit = SKIN_TONES[attrs.skin], OUTFIT_COLOURS[attrs.outfit_colour]
    leg_colour = {"dress": skin, "shirt and trousers": TROUSERS, "armour": STEEL, "robe": outfit}[kind]
    for hip, knee, ankle in ((8, 9, 10), (11, 12, 13)):
        chain = [p[i] for i in (hip, knee, ankle) if f.ok[i]]
        if len(chain) >= 2:
            limb(d, chain, f.leg_w, leg_colour)
        if f.ok[ankle]:
            disc(d, p[ankle], f.leg_w * 0.6, SHOES)
    shoulders_ok, hips_ok = f.has(2, 5), f.has(8, 11)
    if kind == "robe" and shoulders_ok and hips_ok:
        low = [p[i] for i in (10, 13) if f.ok[i]] or [p[8], p[11]]
        bottom = max(q[1] for q in low)
        xs = [p[2][0], p[5][0], p[8][0], p[11][0]] + [q[0] for q in low]
        spread = 0.35 * f.torso
        d.polygon([tuple(p[2]), tuple(p[5]), (max(xs) + spread, bottom), (min(xs) - spread, bottom)], fill=outfit)
    if kind == "dress" and hips_ok:
        knees = [p[i] for i in (9, 12) if f.ok[i]] or [p[8] + np.array([0, 0.6 * f.torso]), p[11] + np.array([0, 0.6 * f.torso])]
        hem = max(q[1] for q in knees)
        xs = [p[8][0], p[11][0]] + [q[0] for q in knees]
        spread = 0.45 * f.torso
        top = min(p[8][1], p[11][1]) - 0.1 * f.torso
        d.polygon([(min(p[8][0], p[11][0]) - 0.15 * f.torso, top), (max(p[8][0], p[11][0]) + 0.15 * f.torso, top),
                   (max(xs) + spread, hem), (min(xs) - spread, hem)], fill=outfit)
    if attrs.accessory == "orange boots":
        draw_boots(d, f)


def _draw_torso(d: Any, f: Figure, attrs: Attributes) -> None:
    p, outfit = f.p, OUTFIT_COLOURS[attrs.outfit_colour]
    if f.has(2, 5) and f.has(8, 11):
        torso = expand([p[2], p[5], p[11], p[8]], 1.12)
        d.polygon(torso, fill=outfit)
        if attrs.outfit_type == "armour":
            mid_top, mid_bottom = (p[2] + p[5]) / 2, (p[8] + p[11]) / 2
            limb(d, [mid_top + (mid_bottom - mid_top) * 0.15, mid_bottom - (mid_bottom - mid_top) * 0.1],
                  0.18 * f.torso, STEEL)
            d.line([tuple(p[8]), tuple(p[11])], fill=STEEL, width=max(1, int(0.15 * f.torso)))
    elif f.ok[1]:
        disc(d, p[1], 0.4 * f.torso, outfit)


def _draw_arms(d: Any, f: Figure, attrs: Attributes) -> None:
    """Arms and hands."""
    p, kind, skin = f.p, attrs.outfit_type, SKIN_TONES[attrs.skin]
    arm_colour = skin if kind == "dress" else OUTFIT_COLOURS[attrs.outfit_colour]
    for shoulder, elbow, wrist in ((2, 3, 4), (5, 6, 7)):
        chain = [p[i] for i in (shoulder, elbow, wrist) if f.ok[i]]
        if len(chain) >= 2:
            limb(d, chain, f.arm_w, arm_colour)
        if kind == "armour" and f.ok[shoulder]:
            disc(d, p[shoulder], f.arm_w * 0.75, STEEL)
        if f.ok[wrist]:
            disc(d, p[wrist], f.arm_w * 0.6, skin)


def _draw_neck_and_head(d: Any, f: Figure, attrs: Attributes) -> None:
    """Neck, scarf, head."""
    p, skin = f.p, SKIN_TONES[attrs.skin]
    if f.ok[1]:
        limb(d, [p[1], p[1] + (f.head - p[1]) * 0.5], 0.22 * f.torso, skin)
    if attrs.accessory in ("scarf", "orange striped scarf") and f.ok[1]:
        ends = [p[i] + (p[1] - p[i]) * 0.35 for i in (2, 5) if f.ok[i]]
        if len(ends) == 2:
            path = [ends[0], p[1], ends[1]]
        else:
            path = [p[1] - f.right * 0.35 * f.torso, p[1] + f.right * 0.35 * f.torso]
        sw = 0.24 * f.torso
        if attrs.accessory == "scarf":
            limb(d, path, sw, SCARF)
        else:
            draw_striped_scarf(d, f, path, sw)
    disc(d, f.head, f.head_r, skin)


def _draw_hair_on_top(d: Any, f: Figure, attrs: Attributes) -> None:
    hair = HAIR_COLOURS[attrs.hair_colour]
    cap = f.arc(1.12, -82, 82)
    d.polygon(cap, fill=hair)
    if attrs.hair_style == "spiky":
        for a in (-64, -32, 0, 32, 64):
            base = f.arc(1.0, a - 14, a + 14, n=2)
            tip = f.arc(1.65, a, a, n=1)[0]
            d.polygon([base[0], tip, base[-1]], fill=hair)
    if attrs.hair_style in ("long", "twin tails"):
        for side in (-1, 1):  # side locks framing the face
            d.polygon([f.local(side * 0.8, 0.6), f.local(side * 1.12, 0.3), f.local(side * 1.12, -0.7),
                       f.local(side * 0.85, -0.6)], fill=hair)


def _draw_eyes_and_hat(d: Any, f: Figure, attrs: Attributes) -> None:
    """Eyes (and glasses), hat."""
    p = f.p
    for i in (14, 15):
        if f.ok[i]:
            disc(d, p[i], 0.075 * f.torso, EYE_COLOURS[attrs.eye_colour])
    if attrs.accessory == "glasses":
        eyes = [p[i] for i in (14, 15) if f.ok[i]]
        for e in eyes:
            r = 0.14 * f.torso
            d.ellipse([e[0] - r, e[1] - r, e[0] + r, e[1] + r], outline=GLASSES, width=max(1, int(0.05 * f.torso)))
        if len(eyes) == 2:
            d.line([tuple(eyes[0]), tuple(eyes[1])], fill=GLASSES, width=max(1, int(0.04 * f.torso)))
    if attrs.accessory == "hat":
        d.polygon([f.local(-1.5, 0.72), f.local(1.5, 0.72), f.local(1.5, 0.95), f.local(-1.5, 0.95)], fill=HAT)
        d.polygon([f.local(-0.85, 0.9), f.local(0.85, 0.9), f.local(0.7, 1.75), f.local(-0.7, 1.75)], fill=HAT)


def _draw_one_sided(d: Any, f: Figure, side: str, feature: str) -> None:
    """An eyepatch over the eye (strap to the head's edge), or a band round the upper arm, of ``side``."""
    if side not in ("left", "right") or feature not in ONE_SIDED:
        raise ConfigError(f"sides[{side!r}]", feature, f"'left' or 'right': one of {', '.join(map(repr, ONE_SIDED))}")
    eye, shoulder, elbow = (15, 5, 6) if side == "left" else (14, 2, 3)
    if feature == "eyepatch" and f.ok[eye]:
        out = 1.0 if float(np.dot(f.p[eye] - f.head, f.right)) >= 0 else -1.0  # towards the head's edge
        limb(d, [f.p[eye], f.local(out * 0.95, 0.35)], 0.04 * f.torso, ONE_SIDED[feature])
        disc(d, f.p[eye], 0.1 * f.torso, ONE_SIDED[feature])
    elif feature == "armband" and f.has(shoulder, elbow):
        a, b = f.p[shoulder], f.p[elbow]
        limb(d, [a + (b - a) * 0.4, a + (b - a) * 0.6], f.arm_w * 1.1, ONE_SIDED[feature])


SCARF_CHARACTER = Attributes(hair_colour="black", hair_style="short", eye_colour="brown", outfit_colour="white",
                             outfit_type="shirt and trousers", accessory="none", skin="light", background="grey",
                             who="boy")


def lora_prompt(attrs: Attributes, trigger: str) -> str:
    """The caption of a LoRA training picture: the trigger word, then what the base model knows."""
    return f"{trigger}, {attrs.caption()}"


def write_lora_dataset(folder: str | Any, *, trigger: str = "zorbi", attrs: Attributes = SCARF_CHARACTER,
                       count: int = 8, size: int = 64, seed: int = 0, accessory: str = "red cape") -> list[Any]:
    """Write ``count`` pictures of ``attrs`` wearing a held-out ``accessory`` (one of
    `HELD_OUT_ACCESSORIES`, which base training never draws), in varied poses, each with a ``.txt``
    caption of `lora_prompt` (which leaves the accessory to the trigger word) and its pose as
    ``.pose.json`` (for ``pose_conditioning``).

    Returns the image paths. Refuses a folder that already holds pictures.
    """
    from pathlib import Path

    from ..io_utils import atomic_write, ensure_dir
    from ..pose import POSE_SUFFIX, pose_file

    if accessory not in HELD_OUT_ACCESSORIES:
        raise ConfigError("accessory", accessory, f"one of {', '.join(map(repr, HELD_OUT_ACCESSORIES))} (held out of base training)")
    folder = ensure_dir(Path(folder))
    if any(p.suffix.lower() in (".png", ".jpg", ".jpeg", ".txt") or p.name.endswith(POSE_SUFFIX) for p in folder.iterdir()):
        raise ConfigError("folder", str(folder), "an empty or new folder (it already holds pictures, captions or poses)")
    rng = random.Random(seed)
    wearing = attrs.replace(accessory=accessory)
    paths = []
    for i in range(count):
        pose = random_pose(rng, size)
        image = render(wearing, pose)
        path = folder / f"{trigger}_{i:02d}.png"
        atomic_write(path, lambda tmp, im=image: im.save(tmp, format="PNG"))
        atomic_write(path.with_suffix(".txt"), lambda tmp: tmp.write_text(lora_prompt(attrs, trigger) + "\n"))
        pose.save(pose_file(path))  # for LoraTrainingConfig(pose_conditioning=True)
        paths.append(path)
    return paths
