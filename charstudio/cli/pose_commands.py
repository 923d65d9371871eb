"""`charstudio poses`, `charstudio pose render`, `charstudio sheet`."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    from charstudio.cli.options import add_hires_args, add_model_args, add_overwrite_arg, add_sampling_args, add_sheet_args

    p = sub.add_parser("poses", help="list the pose library")
    p.set_defaults(func=cmd_poses)

    pose = sub.add_parser("pose", help="work with poses (render)")
    pose_sub = pose.add_subparsers(dest="pose_command", metavar="ACTION")
    r = pose_sub.add_parser("render", help="draw a pose as an OpenPose control image",
                            description="Draw a library pose or a pose JSON file as the OpenPose control image.")
    r.add_argument("pose", metavar="NAME", help="pose name (see `charstudio poses`) or pose JSON file")
    r.add_argument("--out", required=True, help="PNG file to write")
    r.add_argument("--width", type=int, default=None, help="fit the pose into this width (default: its canvas)")
    r.add_argument("--height", type=int, default=None, help="fit the pose into this height (default: its canvas)")
    r.add_argument("--mirror", action="store_true", help="flip left and right")
    add_overwrite_arg(r, "an existing file")
    r.add_argument("--lines", default="standard", choices=["standard", "thick"],
                   help="limb width: standard (controlnet-aux's) or thick (for xinsir's SDXL ControlNets)")
    r.set_defaults(func=cmd_pose_render)
    pose.set_defaults(func=lambda args: (pose.print_help(), 0)[1])

    s = sub.add_parser("sheet", help="one character in several poses, with a labelled grid",
                       description="Draw a character card in several poses and save the images, a labelled grid "
                                   "and sheet.json (settings and consistency score). Under `accelerate launch` the "
                                   "poses are split across processes.")
    s.add_argument("card", metavar="CARD_OR_PROMPT", help="a card name (see `charstudio cards`), a card .yaml, or a prompt")
    s.add_argument("--poses", required=True, help="comma-separated pose names or JSON files, e.g. standing_front,walking")
    add_sampling_args(s)
    add_sheet_args(s, reference_default=0.0, first="pose (or --reference-image)", each="pose")
    s.add_argument("--reference-image", default=None, help="image whose look the poses share (needs --reference-strength)")
    from charstudio.models.family import FAMILIES

    def family_default(part: str) -> str:  # e.g. "SD 1.x: models, SDXL: sdxl_models"
        return ", ".join(f"{f.label}: {getattr(f.ip_adapter, part)}" for f in FAMILIES.values())

    s.add_argument("--ip-adapter", default=None,
                   help="IP-Adapter weights: a hub id or folder laid out like h94/IP-Adapter, or a weight file")
    s.add_argument("--ip-adapter-image", default=None, help="reference image for the IP-Adapter")
    s.add_argument("--ip-adapter-scale", type=float, default=0.6)
    s.add_argument("--ip-adapter-weight-name", default=None,
                   help=f"weight file in --ip-adapter-subfolder (default: the model family's; {family_default('weight_name')})")
    s.add_argument("--ip-adapter-subfolder", default=None,
                   help=f"folder of the weight file (default: the model family's; {family_default('subfolder')})")
    s.add_argument("--ip-adapter-image-encoder-folder", default=None,
                   help="CLIP image encoder: a folder name inside the subfolder, or a path from the root with a / "
                        f"(default: the model family's; {family_default('image_encoder_folder')})")
    add_hires_args(s)
    add_model_args(s)
    from charstudio.cli.draft_guard import add_compare_arg

    add_compare_arg(s)
    s.set_defaults(func=cmd_sheet)


def cmd_poses(args: argparse.Namespace) -> int:
    from charstudio.errors import CharstudioError
    from charstudio.pose import list_poses, user_pose_dir
    from charstudio.pose.compose import PoseGroup, load_people

    mine = user_pose_dir()
    for name in list_poses():
        where = "  (yours)" if (mine / f"{name}.json").is_file() else ""
        try:
            pose = load_people(name)
        except (CharstudioError, ValueError) as err:  # one broken file of the user's must not hide the rest
            print(f"{name:24s} unreadable: {str(err).splitlines()[0]}{where}")
            continue
        people = pose.people if isinstance(pose, PoseGroup) else [pose]
        points = "+".join(str(int(p.present.sum())) for p in people)
        who = f"{len(people)} people" if len(people) > 1 else "1 person"
        print(f"{name:24s} {who:9s} {points:>5s}/18 points  canvas {pose.canvas_width}x{pose.canvas_height}{where}")
    return 0


def cmd_pose_render(args: argparse.Namespace) -> int:
    from pathlib import Path

    from charstudio.errors import ConfigError
    from charstudio.io_utils import atomic_write, check_output_dir, ensure_dir, output_named
    from charstudio.pose import load_pose

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ConfigError("--out", args.out, "the control image is a PNG: give a path ending in .png")
    check_output_dir(out.parent if str(out.parent) else ".", field="--out's folder")
    pose = load_pose(args.pose)
    if args.mirror:
        pose = pose.mirror()
    image = pose.render(args.width, args.height, lines=args.lines)
    ensure_dir(out.parent if str(out.parent) else ".", field="--out's folder")  # only now that there is a picture
    with output_named("--out", args.out):
        path = atomic_write(Path(args.out), lambda tmp: image.save(tmp, format="PNG"), overwrite=args.overwrite)
    print(path)
    return 0


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def cmd_sheet(args: argparse.Namespace) -> int:
    from pathlib import Path

    from charstudio.cli.generate_commands import (draft_settings, hires_setting, load_loras, load_studio, precheck,
                                                  start_draft)
    from charstudio.cli.progress import StepBar
    from charstudio.errors import ConfigError

    # 1. Check everything cheap before loading a model.
    precheck(args)
    from charstudio.limits import check_list

    poses = check_list("--poses", [p.strip() for p in args.poses.split(",") if p.strip()], what="poses")
    if not poses:
        raise ConfigError("--poses", args.poses, "comma-separated pose names, e.g. standing_front,walking")
    from charstudio.pose import load_pose

    for p in poses:
        load_pose(p)  # fail on a typo now, not after the model load
    from charstudio.cli.options import identity_settings

    identity = identity_settings(args)
    from charstudio.cli.draft_guard import check_compare_arg

    check_compare_arg(args)
    out = check_sheet_out(args)
    images = {}
    for flag in ("reference_image", "ip_adapter_image"):
        if getattr(args, flag):
            from charstudio.io_utils import open_image

            path = Path(getattr(args, flag))
            if not path.is_file():
                raise ConfigError("--" + flag.replace("_", "-"), str(path), "an existing image file")
            images[flag] = open_image(path, "--" + flag.replace("_", "-")).convert("RGB")

    # 2. Under accelerate each process drives its own device.
    from charstudio.sheets import distributed_state

    state = distributed_state()
    if args.device is None and state is not None:
        args.device = str(state.device)
    studio = load_studio(args)
    load_loras(studio, args)
    start_draft(studio, args)
    embedder = args.embedder
    with StepBar("sheet", disable=not _is_main_process() or None) as bar:
        result = studio.sheet(
            args.card, poses, seed=args.seed, reference_strength=args.reference_strength,
            same_noise=not args.different_noise, reference_image=images.get("reference_image"),
            use_lora=not args.no_lora, ip_adapter_weights=args.ip_adapter,
            ip_adapter_image=images.get("ip_adapter_image"), ip_adapter_scale=args.ip_adapter_scale,
            ip_adapter_weight_name=args.ip_adapter_weight_name, ip_adapter_subfolder=args.ip_adapter_subfolder,
            ip_adapter_image_encoder_folder=args.ip_adapter_image_encoder_folder,
            embedder=embedder, compute_score=True if embedder else None, style=args.style, extra=args.add,
            num_inference_steps=args.steps, guidance_scale=args.guidance, guidance_rescale=args.guidance_rescale,
            width=args.width, height=args.height,
            negative_prompt=args.negative, scheduler=args.scheduler,
            controlnet_conditioning_scale=args.control_scale, hires=hires_setting(args),
            watermark=not args.no_watermark, progress=bar, **identity, **draft_settings(args))

    # 3. Only the main process writes (every process holds the gathered sheet).
    if not _is_main_process():
        return 0
    code = write_sheet(result, studio, args, out)
    from charstudio.cli.draft_guard import print_comparison

    print_comparison(studio, result, args)  # --compare-full: the draft's identity next to full quality
    return code


def check_sheet_out(args: argparse.Namespace):
    """--out of a sheet command, checked before the model loads (the folder is made when the first
    picture is written): the staging writer's own rule (`io_utils.check_staged_target`: no link,
    a writable parent), then a folder that holds a sheet already needs --overwrite."""
    from charstudio.errors import OutputError
    from charstudio.io_utils import check_output_dir, check_staged_target

    check_staged_target(args.out, field="--out")
    out = check_output_dir(args.out, field="--out")
    if not args.overwrite and any((out / n).exists() for n in ("grid.png", "sheet.json")):
        raise OutputError(f"--out={str(out)!r} already holds a sheet: pass --overwrite or choose another folder")
    return out


def write_sheet(result, studio, args: argparse.Namespace, out, against: str | None = None) -> int:
    """Save a sheet into --out (refusing an existing one unless --overwrite) and print its files;
    ``against`` says what the identity scores compare with (default: the first picture's label)."""
    from charstudio.cli.generate_commands import print_model_note
    from charstudio.io_utils import output_named

    with output_named("--out", args.out):
        for path in result.save(out, overwrite=args.overwrite, field="--out"):  # swapped in whole
            print(path)
    if result.score is not None:
        print(f"consistency score (mean pairwise CLIP cosine): {result.score:.4f}")
    report = result.identity
    if report is not None:
        scores = ", ".join(f"{label} {s:.3f}" for label, s in zip(result.labels, report.scores))
        print(f"identity against {against or repr(result.labels[report.anchor])} ({report.scorer}, same character at >= "
              f"{report.threshold:.3f}): {scores}")
    if result.identity_note:
        print(result.identity_note)  # the one line naming the views that never reached it
    if getattr(args, "record_identity", False):
        from charstudio.cast.history import record_identity

        print(f"identity history recorded in {record_identity(args.card, report, out)}")
    print_model_note(studio, result.recipes)
    return 0
