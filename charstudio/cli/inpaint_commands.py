"""`charstudio inpaint` (redraw a masked part of a picture) and `charstudio detail` (redraw the
face and hands at the model's size)."""

from __future__ import annotations

import argparse

from charstudio.cli.generate_commands import load_embeddings, load_loras, load_studio, precheck
from charstudio.cli.options import (add_embedding_args, add_lora_args, add_model_args, add_out_arg, add_seed_arg,
                                    add_steps_arg, add_watermark_arg)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="a PNG (a charstudio PNG re-runs from its recipe) or any picture")
    add_steps_arg(p)
    add_out_arg(p)
    add_lora_args(p)
    add_embedding_args(p)
    add_model_args(p)


def register(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("inpaint", help="redraw a masked part of a picture",
                       description="Redraw the masked part of a picture under a prompt or a card; beyond a soft "
                                   "seam the picture's pixels are kept. The PNG's recipe re-runs it.")
    _add_common(i)
    i.add_argument("--mask", required=True,
                   help="a body region of the picture's pose (face, hands, torso, legs, hair), a box "
                        "'left,top,right,bottom' in pixels, or a mask picture (white = redraw) of the same size")
    what = i.add_mutually_exclusive_group()
    what.add_argument("--prompt", default=None, help="what to draw there (default: the picture's own prompt)")
    what.add_argument("--card", default=None, help="a character card (a name from `charstudio cards`, or a card "
                                                   ".yaml) to draw there instead of a prompt")
    i.add_argument("--strength", type=float, default=0.75, help="how far the masked part is re-noised, 0..1 "
                                                                 "(default 0.75)")
    add_seed_arg(i, "the picture's seed")
    i.add_argument("--padding", type=float, default=0.15, help="a body region's padding, a share of its size")
    add_watermark_arg(i)
    i.set_defaults(func=cmd_inpaint)

    d = sub.add_parser("detail", help="redraw the face and hands of a picture at the model's size",
                       description="The detail pass: each part is cropped, redrawn at the model's size at a low "
                                   "strength with the picture's own recipe, and pasted back with a soft seam.")
    _add_common(d)
    d.add_argument("--parts", default="face,hands", help="comma-separated parts: face, hands, torso, legs, hair "
                                                         "(default: face,hands)")
    d.add_argument("--strength", type=float, default=0.35, help="redraw strength, 0..1 (default 0.35)")
    d.add_argument("--prompt", default=None, help="for a picture without a charstudio recipe: its prompt")
    d.set_defaults(func=cmd_detail)


def _picture(path: str):
    from charstudio.io_utils import open_image

    return open_image(path, "image")


def _check_strength(args: argparse.Namespace) -> None:
    """--strength by the recipe's own rule (`recipe.steps.img2img_steps`, which the detail and
    inpaint fields' schemas apply): 0 < strength <= 1, and high enough that one step runs."""
    from charstudio.recipe.steps import img2img_steps

    img2img_steps(args.steps or 1, args.strength, field="--strength")


def _check_mask(args: argparse.Namespace, size: tuple[int, int]) -> None:
    """Refuse a bad --mask before the model loads (a region the pose lacks is checked later,
    still before any drawing)."""
    from pathlib import Path

    from charstudio.errors import ConfigError
    from charstudio.workflows import masks

    spec = args.mask
    if spec in masks.REGIONS:
        return
    if "," in spec and not Path(spec).is_file():
        masks.check_box(spec, *size, field="--mask")
    elif Path(spec).is_file():
        masks.mask_from_picture(spec, *size, field="--mask")
    else:
        raise ConfigError("--mask", spec, f"one of {', '.join(masks.REGIONS)}, a box 'left,top,right,bottom' or a "
                                          "mask picture file")


def cmd_inpaint(args: argparse.Namespace) -> int:
    from charstudio.character import load_character
    from charstudio.cli.progress import StepBar
    from charstudio.io_utils import check_output_dir, output_named
    from charstudio.validation import check_float

    precheck(args)
    _check_strength(args)
    check_float("--padding", args.padding, 0.0, 2.0)
    picture = _picture(args.image)
    _check_mask(args, picture.size)
    # --card names a card, never a prompt: an unknown name is refused here, before the model loads.
    card = None if args.card is None else load_character(args.card, field="--card")
    check_output_dir(args.out, field="--out")
    studio = load_studio(args)
    load_loras(studio, args)
    load_embeddings(studio, args)
    settings = {"watermark": not args.no_watermark}
    if args.steps is not None:
        settings["num_inference_steps"] = args.steps
    with StepBar("inpainting") as bar:
        result = studio.inpaint(args.image, mask=args.mask, prompt=card or args.prompt, strength=args.strength,
                                seed=args.seed, padding=args.padding, progress=bar, **settings)
    with output_named("--out", args.out):
        for path in result.save(args.out, prefix="inpaint"):
            print(path)
    return 0


def cmd_detail(args: argparse.Namespace) -> int:
    from charstudio.cli.progress import StepBar
    from charstudio.io_utils import check_output_dir, output_named
    from charstudio.workflows.detail import check_parts

    precheck(args)
    _check_strength(args)
    parts = check_parts(args.parts)
    _picture(args.image)
    if args.prompt is None:  # a picture without a recipe needs its prompt: say so before the model loads
        from charstudio.errors import ConfigError, InputFileError
        from charstudio.result import Result

        try:
            Result.from_png(args.image)
        except (InputFileError, ConfigError):
            raise ConfigError("--prompt", None, f"the prompt of {args.image!r}: it carries no charstudio recipe "
                                                "to take one from") from None
    check_output_dir(args.out, field="--out")
    studio = load_studio(args)
    load_loras(studio, args)
    load_embeddings(studio, args)
    with StepBar("detail pass") as bar:
        result = studio.detail(args.image, parts=parts, strength=args.strength, steps=args.steps,
                               prompt=args.prompt, progress=bar)
    with output_named("--out", args.out):
        for path in result.save(args.out, prefix="detail"):
            print(path)
    return 0
