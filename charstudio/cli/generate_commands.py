"""`charstudio generate`, `models`, `cards`, `styles`, `info`."""

from __future__ import annotations

import argparse
import sys

from charstudio.cli.options import (add_control_scale_arg, add_draft_args, add_embedding_args, add_hires_args,
                                    add_lora_args, add_model_args, add_out_arg, add_sampling_args)


def parse_loras(specs: list[str], lora_dir: str = "lora") -> list[tuple[str, float]]:
    """`--lora` values as (source, weight); a trailing ':NUMBER' is the weight. A ':' is part of
    the path unless what comes before it names a LoRA (a file, a folder or a name in `lora_dir`):
    then what follows must be a number."""
    import math

    from charstudio.errors import ConfigError
    from charstudio.lora import resolve_lora_path

    parsed = []
    for spec in specs:
        source, weight = spec, 1.0
        head, sep, tail = spec.rpartition(":")
        if sep and head.strip():
            try:
                weight, source = float(tail), head
            except ValueError:
                try:  # a ':' that is part of the path, unless the part before it is a LoRA already
                    resolve_lora_path(spec, lora_dir)
                except ConfigError:
                    try:
                        resolve_lora_path(head, lora_dir)
                    except ConfigError:
                        pass
                    else:
                        raise ConfigError("--lora", spec, f"the weight {tail!r} after {head!r} is not a number; "
                                          "NAME[:WEIGHT]: a LoRA name, folder or .safetensors file, optionally "
                                          "with a weight, e.g. zorbi or zorbi:0.8") from None
        if not source.strip() or not math.isfinite(weight):
            raise ConfigError("--lora", spec, "NAME[:WEIGHT]: a LoRA name, folder or .safetensors file, "
                                              "optionally with a weight, e.g. zorbi or zorbi:0.8")
        parsed.append((source, weight))
    return parsed


def load_loras(studio, args: argparse.Namespace) -> None:
    for source, weight in parse_loras(args.lora, args.lora_dir):
        studio.load_lora(source, weight=weight, lora_dir=args.lora_dir)


def parse_embeddings(specs: list[str]) -> list[tuple[str, str | None]]:
    """`--embedding` values as (file or name, word or None); a leading 'WORD=' names the word."""
    parsed = []
    for spec in specs:
        head, sep, tail = spec.partition("=")
        parsed.append((tail, head) if sep and head.strip() and tail.strip() else (spec, None))
    return parsed


def load_embeddings(studio, args: argparse.Namespace) -> None:
    studio.embeddings_dir = args.embeddings_dir
    for source, token in parse_embeddings(args.embedding):
        studio.load_embedding(source, token=token)


def draft_settings(args: argparse.Namespace) -> dict:
    """make_config's ``speed``/``draft_preset`` from the --draft flags ({} without them)."""
    if not (getattr(args, "draft", False) or getattr(args, "draft_preset", None)):
        return {}
    return {"speed": "draft", "draft_preset": args.draft_preset}


def check_draft_args(args: argparse.Namespace) -> None:
    """The --draft flags checked before the model loads: a known preset, an existing --draft-file."""
    from charstudio.errors import ConfigError

    if getattr(args, "draft_file", None) and not getattr(args, "draft_preset", None):
        raise ConfigError("--draft-file", args.draft_file, "needs --draft-preset NAME (the preset the file is for)")
    if getattr(args, "draft_preset", None):
        from charstudio.speed.presets import get_preset, preset_file

        preset = get_preset(args.draft_preset, "--draft-preset")
        if args.draft_file:
            preset_file(preset, args.draft_file)


def start_draft(studio, args: argparse.Namespace) -> None:
    """With --draft: load the few-step LoRA it uses (from --draft-file when given) and say, on one
    line, how the pictures draw and under which licence."""
    if not draft_settings(args):
        return
    from charstudio.speed.draft import choose, describe_choice
    from charstudio.speed.presets import load_preset

    choice = choose(studio, args.draft_preset)
    if choice.preset is not None:
        load_preset(studio, choice.preset.name, args.draft_file if args.draft_preset else None, on=False)
    print(describe_choice(choice), file=sys.stderr)
    if choice.preset is not None:
        nc = " - non-commercial use only" if choice.preset.non_commercial else ""
        print(f"licence of {choice.preset.name}: {choice.preset.licence}{nc}", file=sys.stderr)


def hires_setting(args: argparse.Namespace) -> dict | None:
    """The recipe's `hires` from the --hires flags (checked), or None without --hires."""
    from charstudio.errors import ConfigError
    from charstudio.recipe.hires import check_second_pass
    from charstudio.workflows.hires import normalise

    flags = {"scale": "--hires", "strength": "--hires-strength", "steps": "--hires-steps",
             "upscaler": "--hires-upscaler"}
    given = {key: getattr(args, flag[2:].replace("-", "_"), None) for key, flag in flags.items()}
    given = {key: value for key, value in given.items() if value is not None}
    if "scale" not in given:
        if given:
            key = next(iter(given))
            raise ConfigError(flags[key], given[key], "needs --hires FACTOR (the upscale factor, e.g. --hires 1.5)")
        return None
    try:
        settings = normalise(given)
        # The second pass's steps at this strength (the recipe's check), when the flags give its
        # count: --hires-steps, else --steps (without either, the model's default counts).
        run = settings["steps"] if settings["steps"] is not None else getattr(args, "steps", None)
        if run is not None:
            check_second_pass(settings["strength"], run, steps_field="--hires-steps")
        return settings
    except ConfigError as exc:  # name the flag the user typed
        raise ConfigError(flags.get(exc.field.removeprefix("hires."), exc.field), exc.value, exc.expected) from None


class TwoPassBar:
    """Progress of a hires run: the first pass's steps on one bar, then the second pass's."""

    def __init__(self) -> None:
        from charstudio.cli.progress import StepBar

        self.bars = [StepBar("drawing"), StepBar("hires pass")]
        self.second = False

    def __call__(self, p) -> None:
        self.bars[self.second](p)
        self.second = self.second or p.done >= p.images * p.steps

    def __enter__(self) -> "TwoPassBar":
        return self

    def __exit__(self, *exc) -> None:
        for bar in self.bars:
            bar.close()


def precheck(args: argparse.Namespace) -> None:
    """Validate the numbers that don't depend on the model, so typos fail in a second."""
    from charstudio.config import check_size
    from charstudio.schedulers import scheduler_spec
    from charstudio.validation import check_int

    for name in ("width", "height"):
        if getattr(args, name, None) is not None:
            check_size(name, getattr(args, name))
    if getattr(args, "steps", None) is not None:
        check_int("steps", args.steps, 1, 1000)
    if getattr(args, "scheduler", None):
        scheduler_spec(args.scheduler)
    # Every list a flag gives (repeated --lora, --embedding, --region; --pose A+B) is bounded
    # first (limits.check_list), before any per-item work.
    from charstudio.limits import check_list

    for flag, what in (("lora", "LoRAs"), ("embedding", "embeddings")):
        check_list(f"--{flag}", getattr(args, flag, None) or [], what=what)
    if getattr(args, "region", None):
        from charstudio.workflows.regions import check_region_list

        check_region_list(args.region, "--region")
    if isinstance(getattr(args, "pose", None), str) and "+" in args.pose:
        check_list("--pose", args.pose.split("+"), what="poses")
    if getattr(args, "lora", None):
        from charstudio.lora import resolve_lora_path

        for source, _ in parse_loras(args.lora):
            resolve_lora_path(source, args.lora_dir)  # a typo fails now, not after the model load
    if getattr(args, "embedding", None):
        from charstudio.embeddings import resolve_embedding_path

        for source, _ in parse_embeddings(args.embedding):
            resolve_embedding_path(source, args.embeddings_dir)
    if getattr(args, "style", None) not in (None, "", "none"):
        from charstudio.character import get_style

        get_style(args.style)
    hires_setting(args)  # --hires flags (when the command has them)
    check_draft_args(args)
    if getattr(args, "embedder", None):
        check_embedder_folder(args.embedder)  # the sheet commands' score, computed after every picture


def check_embedder_folder(name: str) -> None:
    """A local --embedder folder, checked with the sheets' own folder check (`sheets.similarity`)
    before the model loads: the score that needs it is computed only after the sheet is drawn. A
    hub id is looked up when the score is computed."""
    from charstudio.sheets.similarity import check_embedder_folder as check

    check(name)


def load_studio(args: argparse.Namespace):
    from charstudio import Studio

    studio = Studio.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                    controlnet=args.controlnet, allow_pickle=args.allow_pickle,
                                    config=getattr(args, "config", None),
                                    prediction_type=getattr(args, "prediction_type", None),
                                    low_vram=getattr(args, "low_vram", None),
                                    speed=getattr(args, "speed", "default"),
                                    quantize=getattr(args, "quantize", None))
    studio.allow_large = bool(getattr(args, "allow_large", False))
    return studio


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="generate images of a character card or a prompt",
                       description="Generate images of a character card (by name or .yaml path) or a free prompt.")
    g.add_argument("subject", metavar="CARD_OR_PROMPT", nargs="?", default=None,
                   help="a card name (see `charstudio cards`), a card .yaml file, or a prompt")
    add_sampling_args(g)
    g.add_argument("-n", "--num-images", type=int, default=1,
                   help="how many pictures; picture i uses seed SEED+i (one batch). What varies between seeds is "
                        "the model's choice: on mini a card (every colour given) in a fixed --pose comes out nearly "
                        "the same from every seed, and the command says so; leave out --pose or describe less to "
                        "vary the figure or the colours")
    g.add_argument("--pose", default=None, help="pose name (see `charstudio poses`) or pose JSON file; "
                   "A+B places poses side by side in one picture (two characters: add --region)")
    g.add_argument("--region", action="append", default=[], metavar="BOX:PROMPT",
                   help="regional prompt: this part of the picture drawn from its own prompt, the main prompt "
                        "being the scene's; BOX is left, right, top, bottom or x0,y0,x1,y1 in pixels, PROMPT "
                        "text or @card, e.g. 'left:a girl with red hair', 'right:@aiko'; repeat for each region")
    g.add_argument("--pose-lines", default=None, choices=["standard", "thick"],
                   help="how the pose is drawn for the ControlNet (default: thick for xinsir's SDXL ControlNets, "
                        "which were trained on thicker limbs, else standard)")
    add_control_scale_arg(g, " (with --pose)")
    add_hires_args(g)
    add_draft_args(g)
    add_out_arg(g)
    add_lora_args(g)
    add_embedding_args(g)
    add_model_args(g)
    g.set_defaults(func=cmd_generate)

    m = sub.add_parser("models", help="list model presets")
    m.set_defaults(func=cmd_models)
    c = sub.add_parser("cards", help="list character cards")
    c.set_defaults(func=cmd_cards)
    s = sub.add_parser("styles", help="list style presets")
    s.set_defaults(func=cmd_styles)
    i = sub.add_parser("info", help="show the recipe stored in a PNG")
    i.add_argument("image")
    i.set_defaults(func=cmd_info)


def cmd_generate(args: argparse.Namespace) -> int:
    from charstudio.cli.progress import StepBar
    from charstudio.io_utils import check_output_dir, output_named

    # Fail on bad settings or a bad output folder before spending minutes on a model load; the
    # folder itself is made when the first picture is written.
    precheck(args)
    from charstudio.workflows.regions import parse_region

    regions = [parse_region(text) for text in args.region] or None  # typos fail before the model loads
    if regions and args.width and args.height:
        from types import SimpleNamespace

        from charstudio.workflows.regions import check as check_regions

        check_regions(regions, SimpleNamespace(width=args.width, height=args.height))  # boxes, overlaps, cards
    check_output_dir(args.out, field="--out")
    studio = load_studio(args)
    load_loras(studio, args)
    load_embeddings(studio, args)
    start_draft(studio, args)
    pose = args.pose
    if pose is not None and "+" in pose:  # two (or more) poses side by side in one control image
        from charstudio.pose.compose import side_by_side

        pose = side_by_side(*(p.strip() for p in pose.split("+")), width=args.width or studio.default_size,
                            height=args.height or studio.default_size)
    hires = hires_setting(args)
    with (StepBar("generating") if hires is None else TwoPassBar()) as bar:
        result = studio.generate(args.subject, style=args.style, extra=args.add, seed=args.seed,
                                 num_inference_steps=args.steps, guidance_scale=args.guidance,
                                 guidance_rescale=args.guidance_rescale, width=args.width,
                                 height=args.height, negative_prompt=args.negative, scheduler=args.scheduler,
                                 num_images=args.num_images, pose=pose, pose_lines=args.pose_lines,
                                 controlnet_conditioning_scale=args.control_scale, hires=hires, regions=regions,
                                 watermark=not args.no_watermark, progress=bar, **draft_settings(args))
    with output_named("--out", args.out):
        for path in result.save(args.out):
            print(path)
    print_model_note(studio, result.recipes)
    print_variety_note(result)
    return 0


NEAR_ALIKE_LEVELS = 10.0  # mean |difference| (8-bit levels) under which pictures of different seeds look alike


def mean_difference(images) -> float:
    """The mean absolute difference between the pictures, over every pair, in 8-bit levels."""
    import itertools

    import numpy as np

    arrays = [np.asarray(im.convert("RGB"), dtype=np.float64) for im in images]
    return float(np.mean([np.abs(a - b).mean() for a, b in itertools.combinations(arrays, 2)]))


def print_variety_note(result) -> None:
    """-n N draws seeds SEED..SEED+N-1; say so when the model made them nearly the same picture,
    which is what mini does with a full card in a fixed pose (the seed has nothing left to choose)."""
    if len(result.images) < 2 or len({im.size for im in result.images}) > 1:
        return
    diff = mean_difference(result.images)
    if diff < NEAR_ALIKE_LEVELS:
        seeds = [r.seed for r in result.recipes]
        print(f"note: these {len(seeds)} pictures (seeds {seeds[0]}-{seeds[-1]}) differ by only {diff:.1f} levels "
              "of 255 on average: the prompt and the pose leave the model little to choose (on mini, a card sets "
              "every colour and --pose the figure); leave out --pose or describe less for varied pictures",
              file=sys.stderr)


def print_model_note(studio, recipes) -> None:
    """Tell the user when the built-in model cannot have drawn what they asked for."""
    if studio.model_id in ("tiny", "tiny-sdxl"):
        print(f"note: the built-in {studio.model_id!r} model has random weights, so its images are noise; "
              "use --model mini (the default) offline, or --model sd15 (or a checkpoint) on a GPU", file=sys.stderr)
    elif studio.model_id == "mini":
        import re

        from charstudio.mini.world import vocabulary

        known = set(vocabulary())
        words = {w for r in recipes[:1] for w in re.findall(r"[a-z]+", f"{r.prompt} {r.negative_prompt}".lower())}
        unknown = sorted(words - known)
        if unknown:
            taught = " (unless a loaded LoRA taught them)" if studio.active_loras else ""
            print(f"note: the built-in 'mini' model has never seen the words {', '.join(unknown[:12])}"
                  f"{' ...' if len(unknown) > 12 else ''}{taught}; it knows hair, eye and outfit colours, hair styles, "
                  "outfits (dress, shirt and trousers, armour, robe), hats, glasses, scarves and backgrounds "
                  "(try `charstudio generate rin`)", file=sys.stderr)


def cmd_models(args: argparse.Namespace) -> int:
    from charstudio.models.presets import PRESETS

    for p in PRESETS.values():
        print(f"{p.name:13s} {p.description}")
        if p.repo:
            print(f"{'':13s}   base: {p.repo}; ControlNet: {p.controlnet}")
    print("\nAlso accepted: any SD 1.x or SDXL diffusers folder or .safetensors file (the family is read from the "
          "model), or an SD 1.x hub id (org/name).")
    return 0


def cmd_cards(args: argparse.Namespace) -> int:
    from charstudio.character import list_characters, load_character

    broken = 0
    for name in list_characters():
        try:
            card = load_character(name)
        except ValueError as exc:  # one bad card must not hide the others
            print(f"{name:10s} (cannot be used: {exc})", file=sys.stderr)
            broken += 1
            continue
        print(f"{name:10s} {card.description}  [style: {card.style or '-'}, seed: {card.seed}]")
    return 2 if broken else 0


def cmd_styles(args: argparse.Namespace) -> int:
    from charstudio.character import load_styles

    for name, style in sorted(load_styles().items()):
        print(f"{name:12s} {style.description}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from charstudio.metadata import format_parameters
    from charstudio.result import Result

    recipe = Result.from_png(args.image).recipe
    print(format_parameters(recipe))
    print(json.dumps(recipe.to_dict(), indent=2))
    return 0
