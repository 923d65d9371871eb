"""`charstudio finish` (a draft picture re-drawn at full quality) and `charstudio presets` (the few-step
LoRA presets draft mode knows)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from charstudio.cli.options import add_lora_args, add_model_args, add_watermark_arg

    f = sub.add_parser("finish", help="re-draw a draft picture at full quality (same seed, prompt and pose)",
                       description="Read a draft PNG's recipe (made with --draft) and draw it again with the "
                                   "settings it was drafted from: the same seed, prompt, pose and LoRAs, without "
                                   "the few-step LoRA or the feature cache.")
    f.add_argument("image", metavar="PIC.png", help="a picture drawn with --draft (its recipe is in the PNG)")
    f.add_argument("-o", "--out", default=None, help="output folder (default: the picture's own folder)")
    add_lora_args(f)
    add_watermark_arg(f)
    add_model_args(f)
    f.set_defaults(func=cmd_finish, model=None)  # the model the recipe records, unless --model names one

    p = sub.add_parser("presets", help="list the few-step LoRA presets of draft mode (--draft-preset)")
    p.set_defaults(func=cmd_presets)


def cmd_finish(args: argparse.Namespace) -> int:
    from charstudio.cli.generate_commands import load_loras, load_studio
    from charstudio.cli.progress import StepBar
    from charstudio.errors import ConfigError
    from charstudio.io_utils import check_output_dir, output_named
    from charstudio.result import Result
    from charstudio.speed.draft import describe, finish

    # 1. The recipe, checked before a model loads.
    recipe = Result.from_png(args.image).recipe
    if not recipe.draft:
        raise ConfigError("image", args.image, "its recipe is no draft (made without --draft): it is at full "
                                               "quality already; re-run it with `charstudio generate` settings")
    full = finish(recipe)
    if args.no_watermark:
        full = full.replace(watermark=False)
    out = args.out or str(Path(args.image).parent)
    check_output_dir(out, field="--out")
    # 2. The model the recipe was drawn with (or --model), its LoRAs, then the full-quality drawing.
    args.model = args.model or recipe.model or "mini"
    studio = load_studio(args)
    load_loras(studio, args)
    print(f"{describe(recipe)} -> {describe(full)}", file=sys.stderr)
    with StepBar("finishing") as bar:
        result = studio.run(full, progress=bar)
    with output_named("--out", out):
        for path in result.save(out):
            print(path)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from charstudio.schedulers import SCHEDULERS
    from charstudio.speed.presets import PRESETS, cached

    for p in PRESETS.values():
        sampler = SCHEDULERS[p.scheduler].label
        where = f"{p.repo}/{p.filename}" if p.repo else "shipped with charstudio"
        here = "cached" if cached(p) else "not here"
        print(f"{p.name:22s} {p.family:4s} {p.steps} steps, {sampler}, CFG {max(p.guidance_scale, 1.0):g}"
              f"{', timesteps ' + str(list(p.timesteps)) if p.timesteps else ''}")
        print(f"{'':22s} {where} ({here}); licence {p.licence}{' - non-commercial' if p.non_commercial else ''}")
    print("\nUse one with --draft-preset NAME (and --draft-file PATH when it is not in the hub cache); the hub "
          "files come with `huggingface-cli download REPO FILE`.")
    return 0
