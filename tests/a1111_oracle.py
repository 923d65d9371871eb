"""An independent reader of the A1111 `parameters` text in charstudio's PNGs: sd-parsers
(PyPI, MIT; its AUTOMATIC1111Parser), not charstudio.metadata. Tests compare what it reads,
field by field, with the recipe the picture was drawn from, with A1111's own meanings written
out here (not taken from charstudio's tables)."""

from __future__ import annotations

from typing import Any

# A1111's sampler labels (its sd_samplers_kdiffusion / sd_samplers_timesteps names, old style:
# the schedule folded into the label) for charstudio's scheduler names.
A1111_SAMPLERS = {"euler-a": "Euler a", "euler": "Euler", "dpm++2m": "DPM++ 2M", "dpm++2m-karras": "DPM++ 2M Karras",
                  "ddim": "DDIM", "unipc": "UniPC", "lcm": "LCM", "pndm": "PLMS", "heun": "Heun", "lms": "LMS"}
# A1111 counts CLIP layers from the last as 1; diffusers' clip_skip counts skipped layers from the
# family's default layer (SD 1.x: the last, "Clip skip: 1"; SDXL: the penultimate, "Clip skip: 2").
A1111_DEFAULT_CLIP_SKIP = {"sd1": 1, "sdxl": 2}
A1111_UPSCALER_NAMES = {"latent": "Latent", "pixel": "Lanczos"}


def read_png(path: Any) -> dict[str, Any]:
    """What sd-parsers reads from a PNG, flattened: prompt, negative prompt, sampler, model, the
    sampler parameters under A1111's own names, and every other field it found."""
    from sd_parsers import ParserManager
    from sd_parsers.data import Generators

    info = ParserManager().parse(str(path))
    assert info is not None and info.generator == Generators.AUTOMATIC1111, f"not read as A1111 text: {info}"
    (sampler,) = info.samplers
    names = {"cfg_scale": "CFG scale", "seed": "Seed", "steps": "Steps", "scheduler": "Schedule type"}
    out = {names.get(k, k): v for k, v in sampler.parameters.items()}
    out.update(info.metadata)
    out["prompt"] = info.full_prompt
    out["negative_prompt"] = info.full_negative_prompt
    out["Sampler"] = sampler.name
    out["Model"] = sampler.model.name if sampler.model else None
    return out


def expected_fields(recipe: Any, family: str) -> dict[str, Any]:
    """The A1111 fields a picture drawn from `recipe` must carry, in A1111's meanings."""
    fields: dict[str, Any] = {
        "prompt": recipe.prompt, "negative_prompt": recipe.negative_prompt or "",
        "Steps": recipe.num_inference_steps, "Sampler": A1111_SAMPLERS[recipe.scheduler],
        "CFG scale": float(recipe.guidance_scale), "Seed": recipe.seed, "Size": (recipe.width, recipe.height),
        "Model": recipe.model,
    }
    if recipe.clip_skip:
        fields["Clip skip"] = A1111_DEFAULT_CLIP_SKIP[family] + recipe.clip_skip
    if recipe.hires:
        fields["Denoising strength"] = float(recipe.hires["strength"])
        fields["Hires upscale"] = float(recipe.hires["scale"])
        if recipe.hires.get("steps"):
            fields["Hires steps"] = recipe.hires["steps"]
        fields["Hires upscaler"] = A1111_UPSCALER_NAMES[recipe.hires["upscaler"]]
    return fields


def _typed(key: str, text: str) -> Any:
    if key in ("Steps", "Seed", "Clip skip", "Hires steps"):
        return int(text)
    if key in ("CFG scale", "Denoising strength", "Hires upscale"):
        return float(text)
    if key == "Size":
        w, h = text.split("x")
        return int(w), int(h)
    return text


def assert_png_matches_recipe(path: Any, recipe: Any, family: str) -> dict[str, Any]:
    """sd-parsers reads every expected field of `recipe` from the PNG at `path`, with its value."""
    read = read_png(path)
    for key, value in expected_fields(recipe, family).items():
        assert key in read, f"{key!r} missing from what sd-parsers read: {read}"
        got = read[key] if key in ("prompt", "negative_prompt", "Model", "Sampler") else _typed(key, read[key])
        assert got == value, f"{key}: the PNG says {got!r}, the recipe {value!r}"
    if not recipe.clip_skip:
        assert "Clip skip" not in read or int(read["Clip skip"]) == A1111_DEFAULT_CLIP_SKIP[family]
    return read
