"""`charstudio generate`, `models`, `cards`, `styles`, `info`."""

from __future__ import annotations

import argparse
import sys

from charstudio.schedulers import DEFAULT_SCHEDULER, SCHEDULERS


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model/--device/--dtype/--allow-pickle, shared by every command that loads a model."""
    p.add_argument("--model", default="mini",
                   help="preset (mini, tiny, sd15), hub id, diffusers folder or .safetensors file "
                        "(default: mini, the built-in 64 px model; tiny draws noise)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="default: fp16 on GPU, fp32 on CPU")
    p.add_argument("--controlnet", default=None, help="OpenPose ControlNet hub id or folder (default: the model's)")
    p.add_argument("--prediction-type", default=None, choices=["epsilon", "v_prediction"],
                   help="override what the model predicts (v_prediction for NoobAI v-pred and the like; "
                        "single files that carry a v_pred key are detected)")
    p.add_argument("--low-vram", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the model in CPU memory and move each part to the GPU only while it runs, and decode "
                        "in tiles (SDXL on a 12 GB card); default: chosen from the GPU's memory")
    p.add_argument("--speed", default="default", choices=["default", "max"],
                   help="max: the fast path for a GPU (SDPA, fused QKV, channels_last, torch.compile of the UNet, "
                        "ControlNet and VAE decoder; the first picture of each size compiles, about a minute); "
                        "on the CPU only fused QKV. $CHARSTUDIO_COMPILE_BACKEND / $CHARSTUDIO_COMPILE_MODE choose "
                        "torch.compile's backend and mode")
    add_checkpoint_file_args(p)


def add_checkpoint_file_args(p: argparse.ArgumentParser) -> None:
    """--allow-pickle/--config: what a single-file (A1111/civitai) checkpoint may need to load."""
    p.add_argument("--allow-pickle", action="store_true", help="allow loading a pickled .ckpt you trust")
    p.add_argument("--config", default=None,
                   help="for a single-file checkpoint whose shapes are not SD 1.5's or SDXL's: diffusers folder or "
                        "hub id of its base model (standard checkpoints load offline with the configs charstudio "
                        "ships)")


def add_lora_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", action="append", default=[], metavar="NAME[:WEIGHT]",
                   help="load a LoRA: a name under --lora-dir, a folder or a .safetensors file, at weight 1 unless "
                        "given (zorbi:0.8); repeat the flag for several")
    p.add_argument("--lora-dir", default="lora", help="where named LoRAs live (default: lora/)")


def parse_loras(specs: list[str]) -> list[tuple[str, float]]:
    """`--lora` values as (source, weight); a trailing ':NUMBER' is the weight."""
    import math

    from charstudio.errors import ConfigError

    parsed = []
    for spec in specs:
        source, weight = spec, 1.0
        head, sep, tail = spec.rpartition(":")
        if sep and head.strip():
            try:
                weight, source = float(tail), head
            except ValueError:
                pass  # a ':' that is part of the path
        if not source.strip() or not math.isfinite(weight):
            raise ConfigError("--lora", spec, "NAME[:WEIGHT]: a LoRA name, folder or .safetensors file, "
                                              "optionally with a weight, e.g. zorbi or zorbi:0.8")
        parsed.append((source, weight))
    return parsed


def load_loras(studio, args: argparse.Namespace) -> None:
    for source, weight in parse_loras(args.lora):
        studio.load_lora(source, weight=weight, lora_dir=args.lora_dir)


def add_embedding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embedding", action="append", default=[], metavar="[WORD=]FILE_OR_NAME",
                   help="load a textual-inversion embedding (A1111 .safetensors, SD 1.x or SDXL): a name under "
                        "--embeddings-dir or a file; prompts write it as its file name unless WORD= is given "
                        "(easynegative, or neg=downloads/EasyNegative.safetensors); repeat for several")
    p.add_argument("--embeddings-dir", default="embeddings",
                   help="where named embeddings live, for --embedding and cards (default: embeddings/)")


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


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--style", default=None, help="style preset (see `charstudio styles`); 'none' for no style")
    p.add_argument("--seed", type=int, default=None, help="default: the card's seed, else random")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's, 25 for SD)")
    p.add_argument("--guidance-rescale", type=float, default=None,
                   help="CFG rescale 0..1 (default: 0.7 for v-prediction models, else 0)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: the model's; 7 for SD, 3 for mini)")
    p.add_argument("--width", type=int, default=None, help="multiple of 8 (default: the model's, 512 for SD)")
    p.add_argument("--height", type=int, default=None, help="multiple of 8 (default: the model's, 512 for SD)")
    p.add_argument("--scheduler", default=DEFAULT_SCHEDULER, help=f"one of {', '.join(SCHEDULERS)}")
    p.add_argument("--negative", default=None, help="negative prompt (replaces the card's and style's)")
    p.add_argument("--add", default="", help="extra words appended to the card's prompt, e.g. 'smiling, in a forest'")
    p.add_argument("--allow-large", action="store_true",
                   help="allow pictures over twice the model's native size a side (slow, and models repeat themselves)")


def add_hires_args(p: argparse.ArgumentParser) -> None:
    """The hires fix (charstudio.workflows.hires): draw at the model's size, upscale, redraw."""
    p.add_argument("--hires", type=float, default=None, metavar="FACTOR",
                   help="hires fix: draw at the model's size, upscale by FACTOR (> 1, e.g. 1.5) and redraw the large "
                        "picture with a second img2img pass; the saved PNG is the larger size")
    p.add_argument("--hires-strength", type=float, default=None,
                   help="how far the upscaled picture is noised before the redraw, 0..1 (default 0.4)")
    p.add_argument("--hires-steps", type=int, default=None,
                   help="steps the second pass runs (default: the same as --steps)")
    p.add_argument("--hires-upscaler", default=None, choices=["pixel", "latent"],
                   help="pixel: Lanczos on the picture, then the VAE (default); latent: bilinear on the latents")


def hires_setting(args: argparse.Namespace) -> dict | None:
    """The recipe's `hires` from the --hires flags (checked), or None without --hires."""
    from charstudio.errors import ConfigError
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
        return normalise(given)
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


def load_studio(args: argparse.Namespace):
    from charstudio import Studio

    studio = Studio.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                    controlnet=args.controlnet, allow_pickle=args.allow_pickle,
                                    config=getattr(args, "config", None),
                                    prediction_type=getattr(args, "prediction_type", None),
                                    low_vram=getattr(args, "low_vram", None),
                                    speed=getattr(args, "speed", "default"))
    studio.allow_large = bool(getattr(args, "allow_large", False))
    return studio


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="generate images of a character card or a prompt",
                       description="Generate images of a character card (by name or .yaml path) or a free prompt.")
    g.add_argument("subject", metavar="CARD_OR_PROMPT", nargs="?", default=None,
                   help="a card name (see `charstudio cards`), a card .yaml file, or a prompt")
    add_sampling_args(g)
    g.add_argument("-n", "--num-images", type=int, default=1)
    g.add_argument("--pose", default=None, help="pose name (see `charstudio poses`) or pose JSON file; "
                   "A+B places poses side by side in one picture (two characters: add --region)")
    g.add_argument("--region", action="append", default=[], metavar="BOX:PROMPT",
                   help="regional prompt: this part of the picture drawn from its own prompt, the main prompt "
                        "being the scene's; BOX is left, right, top, bottom or x0,y0,x1,y1 in pixels, PROMPT "
                        "text or @card, e.g. 'left:a girl with red hair', 'right:@aiko'; repeat for each region")
    g.add_argument("--pose-lines", default=None, choices=["standard", "thick"],
                   help="how the pose is drawn for the ControlNet (default: thick for xinsir's SDXL ControlNets, "
                        "which were trained on thicker limbs, else standard)")
    g.add_argument("--control-scale", type=float, default=1.0, help="ControlNet conditioning scale (with --pose)")
    add_hires_args(g)
    g.add_argument("--out", default="outputs", help="output folder (default: outputs)")
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
                                 progress=bar)
    with output_named("--out", args.out):
        for path in result.save(args.out):
            print(path)
    print_model_note(studio, result.recipes)
    return 0


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
