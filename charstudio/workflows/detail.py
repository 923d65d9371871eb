"""The detail pass: redraw small parts (the face, the hands) at the model's own size.

A small face in a full-figure picture gets a few latent cells; redrawn on its own it gets all of
them. For each part, the box is placed from the pose the picture was drawn with (its recipe's
pose; no detector needed) or, for any other picture, from the OpenPose detector
(`Pose.from_image`). The part is cropped with a margin, upscaled so its longer side is the
model's native size, redrawn by img2img at a low strength with the picture's own recipe (prompt,
card, LoRA weights, seed; no pose: the ControlNet was trained on whole figures), scaled back and
pasted with a soft seam (`masks.soft_mask`). Outside each part's box, beyond the seam, no pixel
changes.

The recipe's ``detail`` field is ``{"parts": [...], "strength": 0.35, "steps": N, "padding":
0.15, "seam": 4}`` (``True`` means these defaults, steps being the recipe's). Each redraw is an
img2img run of ``steps`` at ``strength``: the last int(steps * strength) steps run, and at least
one; where steps * strength is under 1 the field records ``steps: 1``, the step that ran (the
guard `hires.img2img_steps`), which re-runs the same picture. `Studio.run`
applies it after drawing, so a PNG re-runs it. In a sheet with reference attention the redraws
are ordinary runs made while the sheet's reference attention is on: a layer uses the anchor's
recording where its shapes match and runs plain where they do not. The pass adds no reference of
its own (its effect on a sheet's consistency is not measured).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from ..errors import ConfigError
from ..validation import check_float, check_int
from . import masks as M

log = logging.getLogger(__name__)

DEFAULT_PARTS = ("face", "hands")
DEFAULT_STRENGTH = 0.35


def check(value: Any, config: Any) -> dict:
    """Validate and normalise a recipe's ``detail`` field; parts the recipe's pose lacks are
    refused here, before anything is drawn."""
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError("detail", value, "True, or a dict with parts, strength, steps, padding, seam")
    unknown = set(value) - {"parts", "strength", "steps", "padding", "seam"}
    if unknown:
        raise ConfigError("detail", sorted(unknown), "only the keys parts, strength, steps, padding, seam")
    from .hires import img2img_steps

    parts = check_parts(value.get("parts", DEFAULT_PARTS))
    strength = check_float("detail.strength", value.get("strength", DEFAULT_STRENGTH), hi=1.0, above=0.0)
    steps = check_int("detail.steps", value.get("steps", config.num_inference_steps), 1, 1000)
    spec = {"parts": parts, "strength": strength,
            # The steps that run: at least one (the one img2img steps guard; see the module docstring).
            "steps": img2img_steps(steps, strength, "detail.strength").recorded,
            "padding": check_float("detail.padding", value.get("padding", M.DEFAULT_PADDING), 0.0, 2.0),
            "seam": check_int("detail.seam", value.get("seam", M.DEFAULT_SEAM), 0, 64)}
    if config.pose is not None:
        for part in parts:
            M.pose_boxes(config.pose, part, config.width, config.height, spec["padding"], "detail.parts")
    return spec


def check_parts(parts: Any) -> list[str]:
    """Part names as a list: from a list or ``"face,hands"``; each one of `masks.REGIONS`, once."""
    if isinstance(parts, str):
        parts = [p.strip() for p in parts.split(",") if p.strip()]
    if not isinstance(parts, (list, tuple)) or not parts or not all(isinstance(p, str) for p in parts):
        raise ConfigError("detail.parts", parts, f"one or more of {', '.join(M.REGIONS)}, e.g. ['face', 'hands']")
    for part in parts:
        if part not in M.REGIONS:
            raise ConfigError("detail.parts", part, f"one of {', '.join(M.REGIONS)}")
    if len(set(parts)) != len(parts):
        raise ConfigError("detail.parts", list(parts), "each part once")
    return list(parts)


def detail(studio: Any, result: Any, parts: Iterable[str] | str = DEFAULT_PARTS, *,
           strength: float = DEFAULT_STRENGTH, steps: int | None = None, padding: float = M.DEFAULT_PADDING,
           seam: int = M.DEFAULT_SEAM, prompt: Any = None, seed: int | None = None, detector: Any = None,
           progress: Any = None, cancel: Any = None) -> Any:
    """Redraw ``parts`` of each picture of ``result`` (a `Result`, a PNG path or a PIL image) and
    return a `Result` whose recipes record the pass (``detail``).

    A picture without a charstudio recipe (an outside PNG or a PIL image) needs ``prompt`` (a
    prompt or a card) and gets its boxes from the OpenPose detector (``detector``: a ready
    controlnet-aux detector, else the default one); its recipe records the pass, but running it
    alone draws a new picture, not that one.
    """
    from PIL import Image

    from ..result import Result

    # 1. The pictures and their recipes.
    outside = False
    if isinstance(result, Result):
        pictures, recipes = [im.convert("RGB") for im in result.images], list(result.recipes)
    elif isinstance(result, Image.Image) or isinstance(result, str) or hasattr(result, "__fspath__"):
        picture, recipe = _outside(result)
        if recipe is None:
            if prompt is None:
                raise ConfigError("prompt", None, "a prompt or a card: the picture has no recipe to take one from")
            recipe = studio.make_config(prompt, seed=seed, width=picture.width, height=picture.height)
            outside = True
        pictures, recipes = [picture], [recipe]
    else:
        raise ConfigError("result", type(result).__name__, "a Result, a PNG path or a PIL image")
    # 2. The pass's settings, checked against each picture's pose before anything is drawn.
    raw = {"parts": check_parts(parts), "strength": strength, "padding": padding, "seam": seam}
    if steps is not None:
        raw["steps"] = steps
    recipes = [r.replace(detail=raw, num_images=1) for r in recipes]
    if outside:
        log.warning("the picture has no recipe: the detail pass is recorded, but its recipe alone does not "
                    "re-draw this picture")
    # 3. Redraw, picture by picture (each with its own recipe's seed, prompt and LoRA weights).
    images, done, placed = [], [], []
    for picture, recipe in zip(pictures, recipes):
        boxes = part_boxes(picture, recipe, detector)
        out = apply_detail(studio, recipe, Result([picture], [recipe]), progress=progress, cancel=cancel,
                           boxes=[boxes])
        images += out.images
        done += out.recipes
        placed.append(boxes)
    return Result(images, done, {"before_detail": pictures, "detail_boxes": placed})


def _outside(item: Any) -> tuple[Any, Any]:
    """(picture, its charstudio recipe or None) for a PNG path or a PIL image."""
    from ..errors import InputFileError
    from ..io_utils import open_image
    from ..result import Result

    if hasattr(item, "convert"):
        return item.convert("RGB"), None
    picture = open_image(item, "image").convert("RGB")
    try:
        recipe = Result.from_png(item).recipe
    except (InputFileError, ConfigError):
        return picture, None
    from .hires import picture_size

    return picture, recipe if picture_size(recipe) == picture.size else None


def part_boxes(picture: Any, recipe: Any, detector: Any = None) -> list[tuple[str, M.Box]]:
    """(part, box) for each of the recipe's detail parts, from its pose or the detector."""
    from .inpaint import picture_pose

    spec = recipe.detail
    pose = picture_pose(picture, recipe.pose, detector)
    return [(part, box) for part in spec["parts"]
            for box in M.pose_boxes(pose, part, picture.width, picture.height, spec["padding"], "detail.parts")]


def apply_detail(studio: Any, config: Any, result: Any, progress: Any = None, cancel: Any = None,
                 boxes: list[list[tuple[str, M.Box]]] | None = None, detector: Any = None) -> Any:
    """Run the recipe's detail pass over each picture of ``result`` (`Studio.run` calls this after
    drawing); the recipes keep their ``detail`` field. ``boxes``: per picture, (part, box) pairs
    already placed (else from each recipe's pose, or the detector)."""
    from ..result import Result

    images, recipes, placed = [], [], []
    for i, (picture, recipe) in enumerate(zip(result.images, result.recipes)):
        if recipe.detail != config.detail:
            recipe = recipe.replace(detail=config.detail)
        picture = picture.convert("RGB")
        mine = boxes[i] if boxes is not None else part_boxes(picture, recipe, detector)
        for part, box in mine:
            log.info("detail pass: %s at %s", part, box)
            picture = redraw_box(studio, recipe, picture, box, progress=progress, cancel=cancel)
        images.append(picture)
        recipes.append(recipe)
        placed.append(mine)
    return Result(images, recipes, {**result.extras, "before_detail": list(result.images), "detail_boxes": placed})


def redraw_box(studio: Any, recipe: Any, picture: Any, box: M.Box, progress: Any = None, cancel: Any = None) -> Any:
    """Redraw one box of ``picture`` at the model's native size with ``recipe`` (its ``detail``
    settings) and paste it back; pixels beyond the seam around ``box`` are kept exactly."""
    from PIL import Image

    from ..models.vae import vae_factor
    from .inpaint import supported_rescale

    spec = recipe.detail
    width, height = picture.size
    # 1. The crop: the box with a margin (the seam and some context), as square as fits.
    margin = spec["seam"] + 2
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) + 2 * margin
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    cw, ch = min(side, width), min(side, height)
    left = int(min(max(round(cx - cw / 2), 0), width - cw))
    top = int(min(max(round(cy - ch / 2), 0), height - ch))
    crop = (left, top, left + cw, top + ch)
    # 2. Upscale so the longer side is the model's size (both sides multiples of the VAE's factor
    #    times 2, as the UNet's down-sampling needs).
    native, unit = studio.default_size, vae_factor(studio.components["vae"]) * 2
    scale = native / max(cw, ch)
    tw, th = (max(unit, int(round(v * scale / unit)) * unit) for v in (cw, ch))
    patch = picture.crop(crop).resize((tw, th), Image.LANCZOS)
    # 3. Redraw it with the picture's own recipe, without the pose and the workflows.
    sub = recipe.replace(width=tw, height=th, pose=None, detail=None, hires=None, inpaint=None, regions=[],
                         num_images=1, num_inference_steps=spec["steps"],
                         guidance_rescale=supported_rescale(studio, "img2img", recipe.guidance_rescale),
                         **studio.family.conditioning_defaults(tw, th))
    redrawn = studio.run(sub, init_image=patch, strength=spec["strength"], progress=progress,
                         cancel=cancel).images[0]
    # 4. Back to the crop's size, pasted with the soft seam around the box.
    candidate = picture.copy()
    candidate.paste(redrawn.resize((cw, ch), Image.LANCZOS), crop[:2])
    alpha = M.soft_mask(M.box_mask(box, width, height), spec["seam"])
    return M.paste(picture, candidate, alpha)
