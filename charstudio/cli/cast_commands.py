"""`charstudio pack`: every outfit x expression of a card, as sprites a game engine reads."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from charstudio.cast.pack import DEFAULT_POSE, DEFAULT_REFERENCE_STRENGTH
    from charstudio.cli.options import (add_control_scale_arg, add_identity_args, add_lora_args, add_model_args,
                                        add_overwrite_arg, add_sampling_args)

    p = sub.add_parser("pack", help="every outfit x expression of a card: sprites, a labelled grid and index.json",
                       description="Draw every outfit of a card's wardrobe in every expression, all from the same "
                                   "seed with reference attention to the card's reference picture (or the first "
                                   "sprite), each scored against its outfit's first sprite and re-rolled below "
                                   "the scorer's threshold (--min-identity auto, the default for packs; none: "
                                   "scores only). Writes <card>_<outfit>_<expression>.png per sprite (each re-runs "
                                   "from its PNG), grid.png and index.json. Under `accelerate launch` the sprites "
                                   "are split across processes.")
    p.add_argument("card", metavar="CARD", help="a card name (see `charstudio cards`) or a card .yaml")
    p.add_argument("--outfits", default="all", help="'all' (the card's wardrobe) or comma-separated outfit names")
    p.add_argument("--expressions", default="all",
                   help="'all' (the card's expressions, else neutral,smiling,angry,surprised,sad,embarrassed) or "
                        "comma-separated names (the card's, or any words, e.g. winking)")
    p.add_argument("--pose", default=DEFAULT_POSE, help=f"pose name or pose JSON file (default {DEFAULT_POSE})")
    p.add_argument("--reference", default=None,
                   help="picture the sprites share the look of (default: the card's first reference picture, "
                        "else the first sprite)")
    p.add_argument("--reference-strength", type=float, default=DEFAULT_REFERENCE_STRENGTH,
                   help=f"reference attention, 0..1 (default {DEFAULT_REFERENCE_STRENGTH:g}; 0: off)")
    add_sampling_args(p)
    p.add_argument("--no-lora", action="store_true", help="do not load the card's LoRA")
    add_lora_args(p)
    add_control_scale_arg(p)
    p.add_argument("--max-batch", type=int, default=None,
                   help="sprites per UNet call (default: the model's, 8). Under `accelerate launch` each process "
                        "draws whole batches (so its sprites come out as in one process): lower it to split a small "
                        "pack over the processes")
    add_identity_args(p, "sprite")
    p.set_defaults(min_identity="auto")  # a pack re-rolls at the scorer's threshold unless told otherwise
    p.add_argument("--out", default=None, help="output folder (default: packs/<card>)")
    add_overwrite_arg(p, "an existing pack in --out")
    add_model_args(p)
    p.set_defaults(func=cmd_pack)


def cmd_pack(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from charstudio.cast.pack import make_pack, resolve_outfits, resolve_pack_expressions
    from charstudio.character import load_character
    from charstudio.cli.generate_commands import load_loras, load_studio, precheck
    from charstudio.cli.options import identity_settings
    from charstudio.cli.pose_commands import write_sheet
    from charstudio.cli.progress import StepBar
    from charstudio.errors import ConfigError, OutputError
    from charstudio.io_utils import check_output_dir, check_staged_target, open_image
    from charstudio.pose import load_pose
    from charstudio.sheets.distributed import distributed_state, is_main

    # 1. Check everything cheap before loading a model.
    precheck(args)
    if isinstance(args.min_identity, str) and args.min_identity.strip().lower() in ("none", "off"):
        args.min_identity = None  # scores only, no re-rolls
    card = load_character(args.card, field="card")
    resolve_outfits(card, args.outfits, field="--outfits")
    resolve_pack_expressions(card, args.expressions, field="--expressions")
    load_pose(args.pose)
    identity = identity_settings(args)
    reference = "card"
    if args.reference is not None:
        if not Path(args.reference).is_file():
            raise ConfigError("--reference", args.reference, "an existing picture file")
        reference = open_image(Path(args.reference), "--reference").convert("RGB")
    out_arg = args.out or os.path.join("packs", card.name)
    check_staged_target(out_arg, field="--out")
    out = check_output_dir(out_arg, field="--out")
    if not args.overwrite and any((out / n).exists() for n in ("grid.png", "index.json")):
        raise OutputError(f"--out={str(out)!r} already holds a pack: pass --overwrite or choose another folder")
    args.out = out_arg

    # 2. Draw (under accelerate each process drives its own device and draws its share).
    state = distributed_state()
    if args.device is None and state is not None:
        args.device = str(state.device)
    studio = load_studio(args)
    if args.max_batch is not None:
        studio.max_batch = args.max_batch  # checked there: a whole number >= 1
    load_loras(studio, args)
    with StepBar("pack", disable=not is_main(state) or None) as bar:
        result = make_pack(studio, card, args.outfits, args.expressions, seed=args.seed, pose=args.pose,
                           reference=reference, reference_strength=args.reference_strength,
                           use_lora=not args.no_lora, style=args.style, extra=args.add, num_inference_steps=args.steps,
                           guidance_scale=args.guidance, guidance_rescale=args.guidance_rescale, width=args.width,
                           height=args.height, negative_prompt=args.negative, scheduler=args.scheduler,
                           controlnet_conditioning_scale=args.control_scale, progress=bar, **identity)

    # 3. Only the main process writes (every process holds the gathered pack).
    if not is_main(state):
        return 0
    return write_sheet(result, studio, args, out, against="each outfit's first sprite")
