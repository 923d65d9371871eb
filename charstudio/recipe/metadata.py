"""PNG metadata: the recipe as A1111 `parameters` text, plus the full recipe as JSON.

A1111's PNG Info, civitai and most image hosts read the `parameters` text chunk:

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7.0, Seed: 42, Size: 512x512, Model: sd15

The `charstudio` chunk holds the exact `GenerationConfig` as JSON; reading prefers it, and
falls back to parsing `parameters`, so images made by A1111 load as recipes too.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from .config import GenerationConfig
from ..errors import ConfigError, FileFieldError, InputFileError
from ..models.family import family_of_recipe
from ..schedulers import SCHEDULERS, scheduler_spec
from .hires import A1111_UPSCALERS, DEFAULT_STRENGTH

log = logging.getLogger(__name__)

PARAMETERS_KEY = "parameters"
RECIPE_KEY = "charstudio"


def format_parameters(config: GenerationConfig) -> str:
    """The A1111 `parameters` text for one image's recipe."""
    lines = [config.prompt]
    if config.negative_prompt:
        lines.append(f"Negative prompt: {config.negative_prompt}")
    fields = [
        ("Steps", config.num_inference_steps),
        ("Sampler", SCHEDULERS[config.scheduler].a1111),
        # A1111 writes a non-default schedule beside the sampler (trailing timesteps: "SGM Uniform").
        *([("Schedule type", SCHEDULERS[config.scheduler].a1111_schedule)]
          if SCHEDULERS[config.scheduler].a1111_schedule else []),
        ("CFG scale", _num(config.guidance_scale)),
        ("Seed", config.seed),
        ("Size", f"{config.width}x{config.height}"),
        ("Model", config.model or "unknown"),
    ]
    if config.hires:
        # A1111 writes the hires fix's strength among its main fields, after "Model" (see
        # hires_fields); "Size" stays the first pass's size, as A1111's does.
        fields.append(("Denoising strength", _num(config.hires["strength"])))
    if config.clip_skip:
        # A1111 counts the last layer as 1. SD 1.x: diffusers' clip_skip=1 is "Clip skip: 2"; SDXL
        # already uses the penultimate layer ("Clip skip: 2"), so its clip_skip=1 is "Clip skip: 3".
        fields.append(("Clip skip", config.clip_skip + family_of_recipe(vars(config)).a1111_clip_skip))
    if config.guidance_rescale:
        fields.append(("CFG rescale", _num(config.guidance_rescale)))
    # SDXL's micro-conditioning, in A1111's WIDTHxHEIGHT order (the recipe keeps diffusers' (h, w)).
    for key, name in (("original_size", "Original size"), ("crops_coords_top_left", "Crop"),
                      ("target_size", "Target size")):
        value = getattr(config, key)
        if value is not None:
            fields.append((name, f"{value[1]}x{value[0]}"))
    fields.extend(hires_fields(config.hires))
    if config.pose is not None:
        fields.append(("ControlNet", f"openpose, weight {_num(config.controlnet_conditioning_scale)}, "
                                     f"guidance {_num(config.control_guidance_start)}-{_num(config.control_guidance_end)}"))
    text = ", ".join(f"{k}: {_quote(v)}" for k, v in fields)
    if config.loras:
        # A1111 writes LoRAs into the prompt as <lora:name:weight>; keep them readable here.
        text += ", Lora hashes: " + _quote(", ".join(f"{n}: {_num(w)}" for n, w in config.loras.items()))
    if config.cast:
        # The cards the prompt's @names came from; the prompt above already holds their words.
        text += ", Cast: " + _quote(", ".join(c["name"] for c in config.cast))
    lines.append(text)
    return "\n".join(lines)


def hires_fields(hires: dict | None) -> list[tuple[str, Any]]:
    """The hires fix's own A1111 fields. Names and forms as A1111 writes them (read in
    modules/processing.py of AUTOMATIC1111/stable-diffusion-webui, StableDiffusionProcessingTxt2Img:
    "Hires upscale" is the factor, "Hires steps" appears only when the second pass's step count
    was set, "Hires upscaler" names the upscaler: "Latent" is its bilinear latent mode, "Lanczos"
    its PIL Lanczos resize)."""
    if not hires:
        return []
    fields: list[tuple[str, Any]] = [("Hires upscale", _num(hires["scale"]))]
    if hires.get("steps"):
        fields.append(("Hires steps", hires["steps"]))
    fields.append(("Hires upscaler", A1111_UPSCALERS[hires["upscaler"]]))
    return fields


def _num(x: float) -> str:
    return f"{x:g}"


def _quote(value: Any) -> str:
    s = str(value)
    return json.dumps(s) if ("," in s or ":" in s) and not re.fullmatch(r"\d+x\d+", s) else s


def parse_parameters(text: str, family: Any = None) -> dict[str, Any]:
    """Parse A1111 `parameters` text into a dict of GenerationConfig fields (best effort).

    `family` (a ModelFamily) says how to read "Clip skip": on SDXL, 2 (Pony's "clip skip 2") is
    the default layer, on SD 1.x it is one layer back. None: SDXL when the text carries SDXL's
    micro-conditioning (Original size / Target size), else SD 1.x."""
    # 1. The prompt, the negative prompt and the settings line.
    prompt, negative, settings = _split_parameters(text)
    values = _settings_values(settings)
    out: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative}

    def field(key: str, convert: Any, expected: str) -> Any:
        try:
            return convert(values[key])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"parameters {key!r}", values[key], expected) from exc

    # 2. The settings, each read by its own rule.
    for name, key, convert, expected in _NUMBERS:
        if name in values:
            out[key] = field(name, convert, expected)
    if "Sampler" in values:
        _read_sampler(values, out)
    if "Size" in values:
        out["width"], out["height"] = field("Size", _size, "WIDTHxHEIGHT, e.g. 512x512")
    if "Model" in values:
        out["model"] = values["Model"]
    for key, name in (("original_size", "Original size"), ("crops_coords_top_left", "Crop"),
                      ("target_size", "Target size")):
        if name in values:
            w, h = field(name, _size, "WIDTHxHEIGHT, e.g. 1024x1024")
            out[key] = (h, w)
    if "Clip skip" in values:
        clip_skip = field("Clip skip", int, "a whole number, e.g. 2")
        default = (family or family_of_recipe(out)).a1111_clip_skip
        if clip_skip > default:
            out["clip_skip"] = clip_skip - default
    if values.get("Cast", "").strip():
        out["cast"] = [{"name": n.strip()} for n in values["Cast"].split(",") if n.strip()]
    if "Hires upscale" in values or "Hires resize" in values:
        hires = _parse_hires(values, out, field, _size)
        if hires is not None:
            out["hires"] = hires
    return out


# A1111 name, recipe field, type, what a bad value should have been.
_NUMBERS = (("Steps", "num_inference_steps", int, "a whole number of steps, e.g. 25"),
            ("CFG scale", "guidance_scale", float, "a number, e.g. 7"),
            ("Seed", "seed", int, "a whole number, e.g. 42"),
            ("CFG rescale", "guidance_rescale", float, "a number from 0 to 1, e.g. 0.7"))


def _split_parameters(text: str) -> tuple[str, str, str]:
    """(prompt, negative prompt, settings line): the last line holding "Steps:" is the settings
    line; everything before it is the prompt, then the negative prompt."""
    lines = text.strip().split("\n")
    idx = max((i for i, line in enumerate(lines) if re.match(r"\s*Steps:\s*\d+", line)), default=None)
    if idx is None:
        raise InputFileError("the image's 'parameters' text has no 'Steps:' line; it is not an A1111-style recipe")
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines[:idx]:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].lstrip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return "\n".join(prompt_lines), "\n".join(negative_lines), lines[idx]


def _settings_values(settings: str) -> dict[str, str]:
    """`Key: value, Key: "quoted, value", ...` as a dict."""
    values: dict[str, str] = {}
    for m in re.finditer(r'\s*([\w \-/+]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)', settings):
        key, val = m.group(1).strip(), m.group(2).strip()
        values[key] = json.loads(val) if val.startswith('"') else val
    return values


def _read_sampler(values: dict[str, str], out: dict[str, Any]) -> None:
    sampler = values["Sampler"]
    schedule = values.get("Schedule type", "").strip()
    if schedule.lower() == "karras" and "karras" not in sampler.lower():
        sampler += " Karras"
    elif schedule.lower() == "sgm uniform" and "sgm uniform" not in sampler.lower():
        # Trailing timesteps (euler-trailing, ddim-trailing); a sampler we have no trailing form of reads as itself.
        if any(spec.labels[1] == f"{sampler} SGM Uniform".lower() for spec in SCHEDULERS.values()):
            sampler += " SGM Uniform"
    try:
        out["scheduler"] = scheduler_spec(sampler).name
    except ValueError:
        log.warning("sampler %r has no charstudio equivalent; using the default", sampler)


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def _parse_hires(values: dict[str, str], out: dict[str, Any], field: Any, size: Any) -> dict[str, Any] | None:
    """The recipe's `hires` from A1111's hires fields (see hires_fields); None (with a warning)
    for a second pass at the first pass's size, which is no upscale."""
    if "Hires upscale" in values:
        scale = field("Hires upscale", float, "an upscale factor, e.g. 1.5")
    else:  # "Hires resize: WxH" (a target size instead of a factor); a 0 side follows the other
        w, h = field("Hires resize", size, "WIDTHxHEIGHT, e.g. 1024x1536")
        scale = w / out.get("width", 512) if w else h / out.get("height", 512)
    if scale <= 1:
        log.warning("the A1111 hires pass at %gx keeps the first pass's size; read without it", scale)
        return None
    steps = field("Hires steps", int, "a whole number of steps, e.g. 10") if "Hires steps" in values else 0
    name = values.get("Hires upscaler", "Latent")  # A1111's default upscaler is "Latent"
    upscaler = "latent" if name.lower().startswith("latent") else "pixel"
    if name not in ("Latent", "Lanczos"):
        log.warning("A1111's hires upscaler %r is read as charstudio's %r (%s)", name, upscaler,
                    "bilinear latents" if upscaler == "latent" else "Lanczos, then the VAE")
    strength = (field("Denoising strength", float, "a number from 0 to 1, e.g. 0.4")
                if "Denoising strength" in values else DEFAULT_STRENGTH)
    return {"scale": scale, "strength": strength, "steps": steps or None, "upscaler": upscaler}


def png_info(config: GenerationConfig):
    """The PngInfo holding both text chunks for `config`."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(config))
    info.add_text(RECIPE_KEY, json.dumps(config.to_dict(), ensure_ascii=False))
    return info


def read_recipe(path: str | Path, family: Any = None) -> tuple[Any, GenerationConfig]:
    """Read an image and its recipe (our JSON chunk, else A1111 `parameters`, read for `family`:
    see parse_parameters)."""
    from ..io_utils import open_image

    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"path={str(p)!r}: no such image file")
    image = open_image(p, "image")
    text = getattr(image, "text", {}) or {}
    broken = None
    try:
        if RECIPE_KEY in text:
            try:
                return image, GenerationConfig.from_dict(json.loads(text[RECIPE_KEY]))
            except json.JSONDecodeError as exc:
                broken = f"its {RECIPE_KEY!r} recipe chunk is not valid JSON ({exc.msg} at character {exc.pos})"
                log.warning("%s: %s; falling back to 'parameters'", p, broken)
        if PARAMETERS_KEY in text:
            return image, GenerationConfig(**parse_parameters(text[PARAMETERS_KEY], family))
    except ConfigError as exc:
        # The same error, told about the file it came from.
        raise FileFieldError(f"{str(p)!r}: {exc.field}", exc.value, exc.expected) from exc
    if broken:
        raise InputFileError(f"path={str(p)!r} carries no usable recipe: {broken}")
    raise InputFileError(f"path={str(p)!r} carries no recipe (no 'charstudio' or 'parameters' PNG text chunk)")
