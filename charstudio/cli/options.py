"""The options several commands share, each declared once: the model, sampling (with
--no-watermark), LoRAs, embeddings, the hires fix, output (--out, --overwrite), the ControlNet scale and the sheets'
consistency options. A command module calls these in its `register` instead of declaring the
flags again, so a flag means the same, with the same default and help, wherever it appears."""

from __future__ import annotations

import argparse

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
    p.add_argument("--quantize", default=None, choices=["int8"],
                   help="int8: the UNet's and ControlNet's weights in int8 (about a quarter of fp32's memory, half "
                        "of fp16's; pictures a level or two off); counted by --low-vram's memory estimate")
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


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """What to draw and how: style, seed, steps, guidance, size, scheduler, negative and extra words."""
    p.add_argument("--style", default=None, help="style preset (see `charstudio styles`); 'none' for no style")
    add_seed_arg(p, "the card's seed")
    add_steps_arg(p, ", 25 for SD")
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
    add_watermark_arg(p)


def add_watermark_arg(p: argparse.ArgumentParser) -> None:
    """--no-watermark: leave the invisible watermark off the pictures (the recipe records it); pass
    `watermark=not args.no_watermark` on to the run."""
    p.add_argument("--no-watermark", action="store_true",
                   help="no invisible watermark (the recipe's short ID hidden in the pixels; on by default)")


def add_seed_arg(p: argparse.ArgumentParser, source: str) -> None:
    """--seed; without it the seed comes from `source` (the card's, the picture's), else at random."""
    p.add_argument("--seed", type=int, default=None, help=f"default: {source}, else random")


def add_steps_arg(p: argparse.ArgumentParser, example: str = "") -> None:
    """--steps: the denoising steps of a run (`example` adds to the default's description)."""
    p.add_argument("--steps", type=int, default=None, help=f"denoising steps (default: the model's{example})")


def add_out_arg(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    """--out: the output folder; required, or outputs/ by default."""
    if required:
        p.add_argument("--out", required=True, help="output folder")
    else:
        p.add_argument("--out", default="outputs", help="output folder (default: outputs)")


def add_overwrite_arg(p: argparse.ArgumentParser, what: str) -> None:
    """--overwrite: replace `what` (existing files in --out, an existing file, ...) instead of refusing."""
    p.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def add_lora_dir_arg(p: argparse.ArgumentParser) -> None:
    """--lora-dir: the folder named LoRAs are found in."""
    p.add_argument("--lora-dir", default="lora", help="where named LoRAs live (default: lora/)")


def add_control_scale_arg(p: argparse.ArgumentParser, note: str = "") -> None:
    """--control-scale: the OpenPose ControlNet's conditioning scale (`note` says when it applies)."""
    p.add_argument("--control-scale", type=float, default=1.0, help=f"ControlNet conditioning scale{note}")


def add_sheet_args(p: argparse.ArgumentParser, *, reference_default: float, first: str, each: str) -> None:
    """What every sheet command (sheet, turnaround, expressions) shares: consistency, the card's LoRA
    and others, the ControlNet scale, the score's embedder, and the output folder. ``first`` is what
    reference attention looks at, ``each`` what one picture of the sheet is."""
    p.add_argument("--reference-strength", type=float, default=reference_default,
                   help=f"reference attention to the first {first}, 0..1 (default {reference_default:g}; 0: off)")
    p.add_argument("--different-noise", action="store_true", help=f"seed + i per {each} instead of the same noise")
    p.add_argument("--no-lora", action="store_true", help="do not load the card's LoRA")
    add_lora_args(p)
    add_control_scale_arg(p)
    p.add_argument("--embedder", default=None,
                   help="CLIP vision model (hub id or folder) for the consistency score "
                        "(default: openai/clip-vit-large-patch14 when available)")
    add_identity_args(p, each)
    add_draft_args(p)
    p.add_argument("--record-identity", action="store_true",
                   help="append this sheet's identity scores (date, folder, scorer, mean, min) to the card's "
                        "identity_history; the card file is written back with its comments kept")
    add_out_arg(p, required=True)
    add_overwrite_arg(p, "existing files in --out")


def add_draft_args(p: argparse.ArgumentParser) -> None:
    """--draft, --draft-preset, --draft-file: draft mode (charstudio.speed.draft); pass
    `generate_commands.draft_settings(args)` on to the run."""
    p.add_argument("--draft", action="store_true",
                   help="draft mode: the fastest setting the model supports (a few-step LoRA that is loaded, named "
                        "with --draft-preset, or shipped: mini's own 4-step LoRA; else feature caching with fewer "
                        "steps); the recipe records it, and `charstudio finish PIC.png` re-draws a keeper at full "
                        "quality with the same seed")
    p.add_argument("--draft-preset", default=None, metavar="NAME",
                   help="the few-step LoRA preset to draft with (see `charstudio presets`; implies --draft); its "
                        "file comes from the hub cache unless --draft-file gives it")
    p.add_argument("--draft-file", default=None, metavar="PATH",
                   help="the --draft-preset's LoRA file (or a folder holding it) when it is not in the hub cache")


def add_identity_args(p: argparse.ArgumentParser, each: str = "picture") -> None:
    """--scorer, --min-identity, --max-tries: the identity score of every picture against the first,
    and re-rolls of the ones below it (charstudio.sheets.identity)."""
    p.add_argument("--scorer", default=None,
                   help="identity scorer: auto (the default: CCIP when its files are cached, else CLIP-I when "
                        "cached, else mini's own), ccip, clip, mini, a CCIP folder, or none (no identity scores)")
    p.add_argument("--min-identity", default=None, metavar="SCORE|auto",
                   help=f"re-roll each {each} (not the first) whose identity score against the first is below "
                        "SCORE (1 - the scorer's difference, e.g. 0.8) or that fails a check (palette, view), with "
                        "the next seed; auto: the scorer's own same-character threshold (default: no re-rolls)")
    p.add_argument("--max-tries", type=int, default=4,
                   help=f"tries per {each} in all, the first draw included, with --min-identity (default 4)")


def identity_settings(args: argparse.Namespace) -> dict:
    """The identity flags checked, and the scorer loaded, before the model loads: make_sheet's
    ``scorer``, ``min_identity`` and ``max_tries`` (a bad value raises ConfigError naming the flag)."""
    from charstudio.sheets.identity import check_max_tries, check_min_identity, resolve_scorer

    settings = {"min_identity": check_min_identity(args.min_identity, "--min-identity"),
                "max_tries": check_max_tries(args.max_tries, "--max-tries")}
    scorer = resolve_scorer(args.scorer, "--scorer", model=getattr(args, "model", None))
    return {**settings, "scorer": False if scorer is None else scorer}  # None here: none, or none available


def add_lora_args(p: argparse.ArgumentParser) -> None:
    """--lora (repeatable) and --lora-dir: LoRAs to load for a run."""
    p.add_argument("--lora", action="append", default=[], metavar="NAME[:WEIGHT]",
                   help="load a LoRA: a name under --lora-dir, a folder or a .safetensors file, at weight 1 unless "
                        "given (zorbi:0.8); repeat the flag for several")
    add_lora_dir_arg(p)


def add_embedding_args(p: argparse.ArgumentParser) -> None:
    """--embedding (repeatable) and --embeddings-dir: textual-inversion embeddings to load."""
    p.add_argument("--embedding", action="append", default=[], metavar="[WORD=]FILE_OR_NAME",
                   help="load a textual-inversion embedding (A1111 .safetensors, SD 1.x or SDXL): a name under "
                        "--embeddings-dir or a file; prompts write it as its file name unless WORD= is given "
                        "(easynegative, or neg=downloads/EasyNegative.safetensors); repeat for several")
    p.add_argument("--embeddings-dir", default="embeddings",
                   help="where named embeddings live, for --embedding and cards (default: embeddings/)")


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
