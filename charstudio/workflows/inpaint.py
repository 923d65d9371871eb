"""Inpainting: redraw the masked part of a picture under a prompt (or a card), keep the rest.

The recipe's ``inpaint`` field (checked and normalised by `charstudio.recipe.inpaint`, whose
docstring shows its form) records everything a re-run needs: the source picture (its recipe, or an
outside file and its pixel digest), the mask (a box, a body region of the source's pose, or a
picture), the strength and the seam.

`Studio.run` on such a recipe (`workflows.run.run_recipe`) re-draws the source from its recipe (or reads the outside file,
refusing it when it is gone or its pixels changed), resolves the mask, and redraws:

- a 4-channel UNet runs the img2img path with a step callback that puts the source's latents,
  noised to the next timestep, back outside the latent mask at every step;
- a 9-channel inpainting UNet (``unet.config.in_channels == 9``) runs diffusers' inpainting
  pipeline (the family's ``"inpaint"`` kind).

On both, the last int(steps * strength) of the recipe's steps run, and at least one: where
that is none, one runs and the recipe records 1 step, which re-runs the same picture (the one
img2img steps guard, `recipe.steps.img2img_steps`).

Either way the decoded picture is pasted over the source with a soft seam (`masks.soft_mask`):
inside the mask the redrawn pixels, then a ``seam``-pixel fade, and beyond it the source's
pixels exactly. A picture mask is stored in the recipe itself (a 1-bit PNG, base64), so the PNG
re-runs anywhere. A region's box is placed from the pose the source was drawn with (its
recipe's), else from the OpenPose detector (`Pose.from_image`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, InputFileError
from ..provenance.png import PARENT_KEY, parent_picture
from ..recipe.config import GenerationConfig
from ..recipe.hires import picture_size
from ..recipe.inpaint import DEFAULT_STRENGTH, check, check_mask_spec  # noqa: F401 - importable here
from ..recipe.steps import img2img_steps
from ..validation import check_float, check_int
from .masks import (
    DEFAULT_PADDING,
    DEFAULT_SEAM,
    REGIONS,
    box_mask,
    check_box,
    check_not_empty,
    decode_mask,
    encode_mask,
    latent_mask,
    mask_from_picture,
    mask_sha256,
    paste,
    picture_sha256,
    region_mask,
    soft_mask,
)
from .shared import picture_pose, supported_rescale

if TYPE_CHECKING:
    from ..result import Result
    from ..studio import Studio

log = logging.getLogger(__name__)


# -- the public call -----------------------------------------------------------------------
def inpaint(studio: Studio, image_or_result: Any, mask: Any, prompt: Any = None, *,
            strength: float = DEFAULT_STRENGTH, seed: int | None = None, seam: int = DEFAULT_SEAM,
            padding: float = DEFAULT_PADDING, detector: Any = None, progress: Any = None, cancel: Any = None,
            **settings: Any) -> Result:
    """Redraw the masked part of a picture; everything beyond ``seam`` pixels outside the mask
    keeps the picture's pixels exactly.

    ``image_or_result``: a `Result` (its first picture), a PNG path (a charstudio PNG re-runs
    from its recipe; any other picture is recorded by path and pixel digest) or a PIL image
    (recorded by digest only: re-run it with ``studio.run(recipe, init_image=picture)``).
    ``mask``: a picture (white = redraw) of the same size, a box ``(left, top, right, bottom)``
    or ``"x0,y0,x1,y1"``, or a body region of the picture's pose (`masks.REGIONS`).
    ``prompt``: a prompt or a card (None: the source recipe's prompt). ``settings`` are
    `Studio.make_config` arguments (steps, guidance, style, pose, ...); the source recipe's pose,
    when it has one, guides the redraw unless ``pose`` is given.
    """
    # 1. The source picture and what records it.
    image, source_recipe, source = _read_source(image_or_result)
    width, height = image.size
    check_float("strength", strength, hi=1.0, above=0.0)
    check_int("seam", seam, 0, 64)
    # 2. The mask, checked against the picture before any model work.
    spec, mask_array = _mask_spec(mask, width, height, padding)
    if "region" in spec:
        pose = settings.get("pose") or (source_recipe.pose if source_recipe is not None else None)
        if pose is None:
            # Detected once: the pose goes into the recipe, so it guides the redraw and a re-run
            # finds the region without the detector.
            pose = settings["pose"] = picture_pose(image, None, detector)
        _resolve_mask(spec, width, height, image, pose, detector)  # a region the pose lacks fails here
    # 3. The recipe: the prompt (or card), the source's pose and seed unless given.
    if prompt is None:
        if source_recipe is None:
            raise ConfigError("prompt", None, "a prompt or a card: the picture has no recipe to take one from")
        prompt = source_recipe.prompt
        settings.setdefault("negative_prompt", source_recipe.negative_prompt)
    if source_recipe is not None:
        settings.setdefault("pose", source_recipe.pose)
        seed = source_recipe.seed if seed is None else seed
    settings.setdefault("pose_lines", source_recipe.pose_lines if source_recipe is not None else None)
    config = studio.make_config(prompt, seed=seed, width=width, height=height, **settings)
    kind = "inpaint" if int(studio.components["unet"].config.in_channels) == 9 else (
        "img2img" if config.pose is None else "controlnet_img2img")
    config = config.replace(guidance_rescale=supported_rescale(studio, kind, config.guidance_rescale),
                            inpaint={"source": source, "mask": spec, "strength": strength, "seam": seam})
    if mask_array is not None:
        log.info("inpainting %dx%d with a picture mask of %d pixels", width, height, int(mask_array.sum()))
    # 4. Run it as any recipe runs (Studio.run -> run_inpaint). The picture goes along, so a
    #    source with a recipe is not drawn again (a re-run from the PNG draws it).
    result = studio.run(config, init_image=image, progress=progress, cancel=cancel)
    # 5. The parent picture, for the saved PNG's C2PA manifest (c2pa.edited names it).
    result.extras[PARENT_KEY] = parent_picture(image_or_result)
    return result


def _read_source(item: Any) -> tuple[Any, Any, dict]:
    """(picture, its charstudio recipe or None, the recipe's `source` record)."""
    from PIL import Image

    from ..io_utils import open_image
    from ..result import Result

    if isinstance(item, Result):
        if len(item) != 1:
            log.info("inpainting the first of %d pictures", len(item))
        recipe = item.recipes[0]
        if recipe.inpaint or recipe.num_images != 1:
            recipe = recipe.replace(num_images=1)
        return item.images[0].convert("RGB"), recipe, {"recipe": recipe.to_dict()}
    if isinstance(item, Image.Image):
        image = item.convert("RGB")
        return image, None, {"path": None, "sha256": picture_sha256(image)}
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        image = open_image(path, "image").convert("RGB")
        try:
            recipe = Result.from_png(path).recipe
        except (InputFileError, ConfigError):
            recipe = None  # an outside picture (or one whose recipe is unreadable): recorded by digest
        if recipe is not None and picture_size(recipe) == image.size:
            return image, recipe, {"recipe": recipe.to_dict()}
        return image, None, {"path": str(path.resolve()), "sha256": picture_sha256(image)}
    raise ConfigError("image", type(item).__name__, "a Result, a PNG path or a PIL image")


def _mask_spec(mask: Any, width: int, height: int, padding: float) -> tuple[dict, np.ndarray | None]:
    """The recipe's mask record for what the caller gave, and the mask array for a picture."""
    from PIL import Image

    if isinstance(mask, str) and mask in REGIONS:
        return {"region": mask, "padding": check_float("padding", padding, 0.0, 2.0)}, None
    is_file = isinstance(mask, (str, os.PathLike)) and Path(mask).is_file()
    if isinstance(mask, (tuple, list)) or (isinstance(mask, str) and "," in mask and not is_file):
        return {"box": list(check_box(mask, width, height))}, None
    if isinstance(mask, (Image.Image, np.ndarray, os.PathLike)) or isinstance(mask, str):
        if not is_file and not isinstance(mask, (Image.Image, np.ndarray)):
            raise ConfigError("mask", mask, f"one of {', '.join(REGIONS)}, a box 'left,top,right,bottom' or "
                                            "a mask picture file")
        array = mask_from_picture(mask, width, height)
        return {"picture": encode_mask(array), "sha256": mask_sha256(array)}, array
    raise ConfigError("mask", type(mask).__name__, f"a mask picture, a box (left, top, right, bottom) or one of "
                                                   f"{', '.join(REGIONS)}")


def _resolve_mask(spec: dict, width: int, height: int, image: Any, pose: Any, detector: Any = None) -> np.ndarray:
    if "box" in spec:
        return box_mask(tuple(spec["box"]), width, height)
    if "picture" in spec:
        return check_not_empty(decode_mask(spec["picture"]))
    return region_mask(picture_pose(image, pose, detector), spec["region"], width, height, spec["padding"])


# -- running a recipe ----------------------------------------------------------------------
def run_inpaint(studio: Studio, config: GenerationConfig, *, callbacks: Any = (), progress: Any = None,
                cancel: Any = None, control_image: Any = None, latents: Any = None, embeddings: Any = None,
                init_image: Any = None, strength: float = 0.6) -> Result:
    """Run an inpainting recipe (`workflows.run.run_recipe` calls this): get the source, redraw the mask, paste."""
    from ..result import Result

    spec = config.inpaint
    # 1. The source picture.
    source = _source_picture(studio, spec["source"], init_image, progress, cancel)
    if source.size != (config.width, config.height):
        raise ConfigError("inpaint.source", f"{source.width}x{source.height}",
                          f"a picture of the recipe's size, {config.width}x{config.height}")
    source_pose = spec["source"].get("recipe", {}).get("pose") if "recipe" in spec["source"] else None
    # 2. The mask and its soft seam.
    mask = _resolve_mask(spec["mask"], config.width, config.height, source, config.pose or source_pose)
    alpha = soft_mask(mask, spec["seam"])
    # 3. Redraw, then paste over the source.
    plain = config.replace(inpaint=None, detail=None, watermark=False)  # (marked once, at the end: run_recipe)
    if int(studio.components["unet"].config.in_channels) == 9:
        drawn = _run_inpaint_pipeline(studio, plain, source, alpha, spec["strength"], callbacks, progress, cancel)
    else:
        drawn = _run_latent_blend(studio, plain, source, alpha, spec["strength"], callbacks, progress, cancel)
    images = [paste(source, im, alpha) for im in drawn.images]
    recipes = [r.replace(inpaint=spec, detail=config.detail, watermark=config.watermark) for r in drawn.recipes]
    # (A detail pass recorded with it comes after: run_recipe runs it.)
    # The parent for the saved PNG's manifest: the source file when the recipe names one, else the source picture.
    parent = parent_picture(spec["source"].get("path")) or source
    return Result(images, recipes, {**drawn.extras, "source_image": source, "mask": alpha, PARENT_KEY: parent})


def _source_picture(studio: Studio, source: dict, given: Any, progress: Any, cancel: Any) -> Any:
    """The source picture: ``given`` (checked against an outside picture's digest), else drawn
    again from its recipe, else read from its file and checked."""
    from ..io_utils import open_image

    if "recipe" in source and given is not None:
        return given.convert("RGB")  # the picture that recipe drew (inpaint() passes it along)
    if "recipe" in source:
        return studio.run(GenerationConfig.from_dict(source["recipe"]), progress=progress,
                          cancel=cancel).images[0].convert("RGB")
    if given is not None:
        picture = given.convert("RGB")
        where = "the picture given"
    else:
        path = source["path"]
        if path is None:
            raise ConfigError("inpaint.source", "an in-memory picture",
                              "the picture itself: studio.run(recipe, init_image=picture)")
        if not Path(path).is_file():
            raise InputFileError(f"inpaint.source.path={path!r}: the source picture is gone; put it back or "
                                 "pass it with studio.run(recipe, init_image=picture)")
        picture = open_image(path, "inpaint source").convert("RGB")
        where = repr(path)
    if picture_sha256(picture) != source["sha256"]:
        raise InputFileError(f"inpaint.source.sha256={source['sha256'][:12]}...: {where} is not the picture this "
                             "recipe inpainted (its pixels changed)")
    return picture


def _run_latent_blend(studio: Studio, config: GenerationConfig, source: Any, alpha: np.ndarray, strength: float,
                      callbacks: Any, progress: Any, cancel: Any) -> Result:
    """img2img from the source with the latents outside the mask reset to the source's, noised to
    each step's level (a 4-channel UNet)."""
    import torch

    from ..models.vae import vae_factor

    original = studio.encode(source)  # (1, 4, h, w), scaled as the UNet sees it
    cells = latent_mask(alpha, vae_factor(studio.components["vae"]))
    keep_new = torch.from_numpy(cells).to(original.device, original.dtype)[None, None]
    noise = torch.randn(original.shape, generator=torch.Generator("cpu").manual_seed(config.seed),
                        dtype=torch.float32).to(original.device, original.dtype)

    def blend(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        latents = kwargs["latents"]
        scheduler = pipe.scheduler
        timesteps = scheduler.timesteps
        after = (getattr(scheduler, "begin_index", None) or 0) + step + 1
        if after < len(timesteps):  # the source at the next step's noise level
            known = scheduler.add_noise(original, noise, timesteps[after:after + 1])
        else:  # the last step: the clean source
            known = original
        known = known.to(latents.device, latents.dtype)
        mask = keep_new.to(latents.device, latents.dtype)
        return {"latents": latents * mask + known * (1 - mask)}

    return studio.run(config, init_image=source, strength=strength, callbacks=[*callbacks, blend],
                      progress=progress, cancel=cancel)


def _run_inpaint_pipeline(studio: Studio, config: GenerationConfig, source: Any, alpha: np.ndarray, strength: float,
                          callbacks: Any, progress: Any, cancel: Any) -> Result:
    """diffusers' inpainting pipeline (a 9-channel UNet): the UNet sees the mask and the masked
    source itself. One call per image, image i with seed + i."""
    import torch
    from PIL import Image

    from ..callbacks import chain
    from ..result import Result
    from ..schedulers import make_scheduler

    if config.pose is not None:
        log.info("the inpainting pipeline runs without the ControlNet: the pose is not used")
    # The one steps guard, as on the img2img path: at least one step runs; the recipe records the steps.
    guard = img2img_steps(config.num_inference_steps, strength, "inpaint.strength")
    config = config.replace(num_inference_steps=guard.recorded)
    pipe = studio.pipeline("inpaint")
    studio.offload_for(pipe, "inpaint")
    mask_image = Image.fromarray(((alpha > 0) * 255).astype(np.uint8), "L")
    embed_args = studio.encoder.encode(config.prompt, config.negative_prompt, clip_skip=config.clip_skip).pipeline_kwargs()
    images, recipes = [], []
    for i in range(config.num_images):
        step_cbs = list(callbacks)
        if cancel is not None:
            step_cbs.insert(0, lambda p, s, t, kw: cancel.check() or {})
        if progress is not None:
            from ..callbacks import StepProgress

            step_cbs.append(lambda p, s, t, kw, i=i, n=guard.run: progress(
                StepProgress(image=i + 1, images=config.num_images, step=s + 1, steps=n)) or {})
        combined, tensor_inputs = chain(step_cbs)
        pipe.scheduler = make_scheduler(config.scheduler, studio.base_scheduler_config)
        out = pipe(**embed_args, image=source, mask_image=mask_image, strength=strength,
                   width=config.width, height=config.height, num_inference_steps=guard.schedule,
                   guidance_scale=config.guidance_scale, output_type="latent",
                   generator=torch.Generator("cpu").manual_seed(config.seed + i),
                   callback_on_step_end=combined, callback_on_step_end_tensor_inputs=tensor_inputs,
                   **({"guidance_rescale": config.guidance_rescale} if config.guidance_rescale else {}),
                   **studio.family.call_arguments(config))
        images.extend(studio.decode(out.images))
        recipes.append(config.replace(seed=config.seed + i, num_images=1, model=studio.model_id,
                                      loras=studio.active_loras))
    return Result(images, recipes, {"kind": "inpaint"})
