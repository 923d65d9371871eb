"""The detail pass: redraw small parts (the face, the hands) at the model's own size.

A small face in a full-figure picture gets a few latent cells; redrawn on its own it gets all of
them. For each part, the box is placed from the pose the picture was drawn with (its recipe's
pose; no detector needed) or, for any other picture, from the OpenPose detector
(`Pose.from_image`). The part is cropped with a margin, upscaled so its longer side is the
model's native size, redrawn by img2img at a low strength with the picture's own recipe (prompt,
card, LoRA weights, seed; no pose: the ControlNet was trained on whole figures), scaled back and
pasted with a soft seam (`masks.soft_mask`). Outside each part's box, beyond the seam, no pixel
changes.

The recipe's ``detail`` field (checked and normalised by `charstudio.recipe.detail`) is
``{"parts": [...], "strength": 0.35, "steps": N, "padding": 0.15, "seam": 4}`` (``True`` means
these defaults, steps being the recipe's). Each redraw is an img2img run of ``steps`` at
``strength``: the last int(steps * strength) steps run, and at least one; where steps * strength
is under 1 the field records ``steps: 1``, the step that ran (the guard
`recipe.steps.img2img_steps`), which re-runs the same picture. `Studio.run`
(`workflows.run.run_recipe`) applies it after drawing, so a PNG re-runs it. In a sheet with
reference attention the redraws are ordinary runs made while the sheet's reference attention is
on: a layer uses the anchor's recording where its shapes match and runs plain where they do not.
The pass adds no reference of its own (its effect on a sheet's consistency is not measured).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable

from ..errors import ConfigError
from ..provenance import watermark as marks
from ..provenance.png import PARENT_KEY, parent_picture
from ..recipe.detail import DEFAULT_PARTS, DEFAULT_STRENGTH, check, check_parts  # noqa: F401 - importable here
from ..recipe.hires import picture_size
from .masks import Box, DEFAULT_PADDING, DEFAULT_SEAM, box_mask, paste, pose_boxes, soft_mask
from .shared import picture_pose, supported_rescale

if TYPE_CHECKING:
    from ..recipe.config import GenerationConfig
    from ..result import Result
    from ..studio import Studio

log = logging.getLogger(__name__)


def detail(studio: Studio, result: Any, parts: Iterable[str] | str = DEFAULT_PARTS, *,
           strength: float = DEFAULT_STRENGTH, steps: int | None = None, padding: float = DEFAULT_PADDING,
           seam: int = DEFAULT_SEAM, prompt: Any = None, seed: int | None = None, detector: Any = None,
           progress: Any = None, cancel: Any = None, watermark: bool = True) -> Any:
    """Redraw ``parts`` of each picture of ``result`` (a `Result`, a PNG path or a PIL image) and
    return a `Result` whose recipes record the pass (``detail``).

    A picture without a charstudio recipe (an outside PNG or a PIL image) needs ``prompt`` (a
    prompt or a card) and gets its boxes from the OpenPose detector (``detector``: a ready
    controlnet-aux detector, else the default one); its recipe records the pass, but running it
    alone draws a new picture, not that one; ``watermark=False`` leaves its result unmarked (a
    picture with a recipe follows its recipe's choice).
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
            recipe = studio.make_config(prompt, seed=seed, width=picture.width, height=picture.height,
                                        watermark=watermark)
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
    images = marks.mark(images, done)  # the final pictures, as a run of their recipes marks them
    # The parent(s) for the saved PNGs' manifests (c2pa.edited names them): the file, else the pictures.
    parents = [parent_picture(result)] if not isinstance(result, Result) or result.extras.get("path") else pictures
    return Result(images, done, {"before_detail": pictures, "detail_boxes": placed, PARENT_KEY: parents})


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
    return picture, recipe if picture_size(recipe) == picture.size else None


def part_boxes(picture: Any, recipe: GenerationConfig, detector: Any = None) -> list[tuple[str, Box]]:
    """(part, box) for each of the recipe's detail parts, from its pose or the detector."""
    spec = recipe.detail
    pose = picture_pose(picture, recipe.pose, detector)
    return [(part, box) for part in spec["parts"]
            for box in pose_boxes(pose, part, picture.width, picture.height, spec["padding"], "detail.parts")]


def apply_detail(studio: Studio, config: GenerationConfig, result: Result, progress: Any = None, cancel: Any = None,
                 boxes: list[list[tuple[str, Box]]] | None = None, detector: Any = None) -> Result:
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


def redraw_box(studio: Studio, recipe: GenerationConfig, picture: Any, box: Box, progress: Any = None,
               cancel: Any = None) -> Any:
    """Redraw one box of ``picture`` at the model's native size with ``recipe`` (its ``detail``
    settings) and paste it back; pixels beyond the seam around ``box`` are kept exactly."""
    from PIL import Image

    from ..models.vae import vae_factor

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
                         watermark=False, num_images=1, num_inference_steps=spec["steps"],
                         guidance_rescale=supported_rescale(studio, "img2img", recipe.guidance_rescale),
                         **studio.family.conditioning_defaults(tw, th))
    redrawn = studio.run(sub, init_image=patch, strength=spec["strength"], progress=progress,
                         cancel=cancel).images[0]
    # 4. Back to the crop's size, pasted with the soft seam around the box.
    candidate = picture.copy()
    candidate.paste(redrawn.resize((cw, ch), Image.LANCZOS), crop[:2])
    alpha = soft_mask(box_mask(box, width, height), spec["seam"])
    return paste(picture, candidate, alpha)
