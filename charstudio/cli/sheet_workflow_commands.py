"""`charstudio turnaround` and `charstudio expressions`: sheets of views and of expressions."""

from __future__ import annotations

import argparse


def _add_sheet_args(p: argparse.ArgumentParser, reference_default: float) -> None:
    """What every sheet command shares with `charstudio sheet`: sampling, consistency, output, model."""
    from charstudio.cli.options import add_model_args, add_sampling_args, add_sheet_args

    add_sampling_args(p)
    add_sheet_args(p, reference_default=reference_default, first="picture", each="picture")
    add_model_args(p)


def register(sub: argparse._SubParsersAction) -> None:
    from charstudio.workflows.expressions import CROPS, DEFAULT_EXPRESSIONS
    from charstudio.workflows.expressions import DEFAULT_REFERENCE_STRENGTH as EXPRESSION_REFERENCE
    from charstudio.workflows.turnaround import DEFAULT_REFERENCE_STRENGTH as TURNAROUND_REFERENCE
    from charstudio.workflows.turnaround import DEFAULT_VIEWS

    t = sub.add_parser("turnaround", help="one character from the front, three-quarter, side and back",
                       description="Draw a character from several sides (a turnaround sheet): each view in its own "
                                   "pose with its view words in the prompt, sharing noise and reference attention. "
                                   "Saves the pictures (each re-runs from its PNG), a labelled grid and sheet.json.")
    t.add_argument("card", metavar="CARD_OR_PROMPT", help="a card name (see `charstudio cards`), a card .yaml, or a prompt")
    t.add_argument("--views", default=",".join(DEFAULT_VIEWS),
                   help=f"comma-separated views (default {','.join(DEFAULT_VIEWS)})")
    _add_sheet_args(t, TURNAROUND_REFERENCE)
    t.set_defaults(func=cmd_turnaround)

    e = sub.add_parser("expressions", help="one character with several facial expressions, in one labelled grid",
                       description="Draw a character once per expression (its words in the prompt), in one pose, "
                                   "sharing noise and reference attention to the first. The grid shows the face "
                                   "cropped from each picture; the pictures are saved whole (each re-runs from its PNG).")
    e.add_argument("card", metavar="CARD_OR_PROMPT", help="a card name (see `charstudio cards`), a card .yaml, or a prompt")
    e.add_argument("--expressions", default=",".join(DEFAULT_EXPRESSIONS),
                   help=f"comma-separated expressions (default {','.join(DEFAULT_EXPRESSIONS)}); any words work, "
                        "e.g. winking")
    e.add_argument("--pose", default=None,
                   help="'portrait' (the upper body), a pose name or a pose JSON file (default: portrait; "
                        "standing_front on models under 256 px such as mini, which draw whole figures only)")
    e.add_argument("--crop", default="portrait", choices=[*CROPS, "none"],
                   help="what the grid shows of each picture: the head and shoulders (portrait, the default), "
                        "the upper body, or the whole picture (none)")
    _add_sheet_args(e, EXPRESSION_REFERENCE)
    e.set_defaults(func=cmd_expressions)


def _sheet_settings(args: argparse.Namespace, bar, identity: dict) -> dict:
    from charstudio.cli.generate_commands import draft_settings

    return dict(**identity, seed=args.seed, reference_strength=args.reference_strength, same_noise=not args.different_noise,
                use_lora=not args.no_lora, embedder=args.embedder, compute_score=True if args.embedder else None,
                style=args.style, extra=args.add, num_inference_steps=args.steps, guidance_scale=args.guidance,
                guidance_rescale=args.guidance_rescale, width=args.width, height=args.height,
                negative_prompt=args.negative, scheduler=args.scheduler,
                controlnet_conditioning_scale=args.control_scale, watermark=not args.no_watermark, progress=bar,
                **draft_settings(args))


def _write(result, studio, args: argparse.Namespace, out) -> int:
    from charstudio.cli.pose_commands import write_sheet

    return write_sheet(result, studio, args, out)


def cmd_turnaround(args: argparse.Namespace) -> int:
    from charstudio.cli.generate_commands import load_loras, load_studio, precheck, start_draft
    from charstudio.cli.options import identity_settings
    from charstudio.cli.pose_commands import check_sheet_out
    from charstudio.cli.progress import StepBar
    from charstudio.pose import load_pose
    from charstudio.workflows.turnaround import resolve_views

    # 1. Check everything cheap before loading a model.
    precheck(args)
    views = resolve_views(args.views, field="--views")
    for view in views:
        load_pose(view.pose)
    identity = identity_settings(args)
    out = check_sheet_out(args)
    # 2. Draw, then write.
    studio = load_studio(args)
    load_loras(studio, args)
    start_draft(studio, args)
    with StepBar("turnaround") as bar:
        result = studio.turnaround(args.card, views, **_sheet_settings(args, bar, identity))
    return _write(result, studio, args, out)


def cmd_expressions(args: argparse.Namespace) -> int:
    from charstudio.cli.generate_commands import load_loras, load_studio, precheck, start_draft
    from charstudio.cli.options import identity_settings
    from charstudio.cli.pose_commands import check_sheet_out
    from charstudio.cli.progress import StepBar
    from charstudio.pose import load_pose
    from charstudio.workflows.expressions import PORTRAIT, resolve_expressions

    # 1. Check everything cheap before loading a model.
    precheck(args)
    expressions = resolve_expressions(args.expressions, field="--expressions")
    if args.pose is not None and args.pose.strip().lower() != PORTRAIT:
        load_pose(args.pose)  # a typo fails now, not after the model load
    identity = identity_settings(args)
    out = check_sheet_out(args)
    # 2. Draw, then write.
    studio = load_studio(args)
    load_loras(studio, args)
    start_draft(studio, args)
    with StepBar("expressions") as bar:
        result = studio.expressions(args.card, expressions, pose=args.pose,
                                    crop=None if args.crop == "none" else args.crop, **_sheet_settings(args, bar, identity))
    return _write(result, studio, args, out)
