"""Rendering an interpolation with a Studio: the two ends, the frames, and their re-runnable
recipes."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..errors import ConfigError
from ..media import contact_sheet, save_gif, save_mp4, to_pil
from ..models.vae import vae_factor
from .maths import Method, blend, blend_embeddings, blend_loras, check_t, frame_ts, noise_shape, seed_noise
from .smoothness import Smoothness, respace, smoothness

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)


@dataclass
class FrameRecipe:
    """How one in-between frame was made: the two endpoint recipes and t.

    `run_frame(studio, recipe)` rebuilds the frame. At t=0 and t=1 it is the endpoint's own
    recipe (up to the prompt being padded to the other's 75-token chunk count).
    """

    a: Any  # GenerationConfig
    b: Any  # GenerationConfig
    t: float
    method: str = "slerp"  # text embeddings
    noise_method: str = "slerp"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "interpolation", "a": self.a.to_dict(), "b": self.b.to_dict(), "t": self.t,
                "method": self.method, "noise_method": self.noise_method,
                "loras": blend_loras(self.a.loras, self.b.loras, self.t)}  # the frame's own (read-only)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FrameRecipe":
        from ..config import GenerationConfig

        return cls(GenerationConfig.from_dict(dict(data["a"])), GenerationConfig.from_dict(dict(data["b"])),
                   float(data["t"]), data.get("method", "slerp"), data.get("noise_method", "slerp"))


@dataclass
class Interpolation:
    """Frames from a to b with their t values, recipes and measured smoothness."""

    frames: list[Any]
    ts: list[float]
    recipes: list[Any]  # FrameRecipe per frame
    smoothness: Smoothness
    before: Smoothness | None = None  # uniform spacing, when re-spaced with uniform=True
    renders: int = 0

    def contact_sheet(self, cols: int | None = None) -> Any:
        return contact_sheet(self.frames, self.ts, cols)

    def save_gif(self, path: str | os.PathLike, fps: float = 8.0, boomerang: bool = True,
                 overwrite: bool = False) -> Path:
        return save_gif(self.frames, path, fps=fps, boomerang=boomerang, overwrite=overwrite)

    def save_mp4(self, path: str | os.PathLike, fps: float = 8.0, overwrite: bool = False) -> Path:
        return save_mp4(self.frames, path, fps=fps, overwrite=overwrite)

    def save(self, directory: str | os.PathLike, prefix: str = "frame", overwrite: bool = False, *,
             gif: str | None = None, fps: float = 8.0, field: str = "directory") -> list[Path]:
        """Frames as PNGs, each carrying its FrameRecipe as JSON (`load_frame_recipe` reads it),
        plus `<prefix>s.json` with every t, recipe and the smoothness figures, and with ``gif``
        (a file name) the animation too. The folder is built in a staging folder and swapped in
        whole (`io_utils.staged_folder`): a kill or a full disk leaves all the frames or none."""
        import json

        from ..errors import OutputError
        from ..io_utils import atomic_write, refuse_package_path, staged_folder
        from ..provenance.png import write_png

        target = refuse_package_path(directory, field)
        names = [f"{prefix}_{i:03d}.png" for i in range(len(self.frames))]
        index = f"{prefix}s.json"
        taken = [n for n in [*names, index, *([gif] if gif else [])] if (target / n).exists()]
        if taken and not overwrite:
            raise OutputError(f"{field}={str(target)!r}: {str(target / taken[0])!r} already exists: pass "
                              "overwrite=True or choose another directory")

        def old_frames(old: Path) -> list[str]:
            # The old index's frames go with it (it may have had more of them).
            try:
                count = len(json.loads((old / index).read_text(encoding="utf-8")).get("ts") or [])
            except (OSError, ValueError, AttributeError, TypeError):
                count = 0
            return [index, *(f"{prefix}_{i:03d}.png" for i in range(count))]

        with staged_folder(target, overwrite=overwrite, field=field, replaces=old_frames) as stage:
            for name, frame, recipe in zip(names, self.frames, self.recipes):
                write_png(stage / name, to_pil(frame), text={FRAME_RECIPE_KEY: json.dumps(recipe.to_dict())},
                          model=getattr(getattr(recipe, "a", None), "model", None))
            summary = {"ts": self.ts, "recipes": [r.to_dict() for r in self.recipes],
                       "smoothness": self.smoothness.to_dict(),
                       "before": self.before.to_dict() if self.before is not None else None, "renders": self.renders}
            atomic_write(stage / index, lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))
            if gif:
                self.save_gif(stage / gif, fps=fps)
        return [target / n for n in names]


FRAME_RECIPE_KEY = "charstudio_interpolation"


def load_frame_recipe(path: str | os.PathLike) -> FrameRecipe:
    """The FrameRecipe stored in a frame PNG written by `Interpolation.save`."""
    import json

    from ..io_utils import open_image

    with open_image(path, "frame PNG") as im:
        text = im.text.get(FRAME_RECIPE_KEY) if hasattr(im, "text") else None
    if text is None:
        raise ConfigError("path", str(path), "a frame PNG written by Interpolation.save (it has no frame recipe)")
    return FrameRecipe.from_dict(json.loads(text))


def _as_recipe(studio: Studio, x: Any, name: str, settings: Mapping[str, Any]) -> Any:
    """A GenerationConfig from a recipe, a Result, a FrameRecipe-free card/prompt."""
    from ..config import GenerationConfig

    if isinstance(x, GenerationConfig):
        return x.replace(num_images=1)
    if hasattr(x, "recipes") and getattr(x, "recipes", None):
        return x.recipes[0]
    from ..character import Character

    if not isinstance(x, (str, Character)):
        raise ConfigError(name, x, "a character card, a prompt, a recipe (GenerationConfig) or a Result, got "
                          + type(x).__name__)
    return studio.make_config(x, **{**dict(settings), "num_images": 1})


def _check_pair(studio: Studio, a: Any, b: Any) -> None:
    models = {m for m in (a.model, b.model) if m}
    if len(models) > 1 or (models and studio.model_id not in models):
        raise ConfigError("b.model", b.model, f"both ends must come from the loaded model {studio.model_id!r} "
                          f"(a: {a.model!r}); interpolating across models has no shared latent space")
    if (a.width, a.height) != (b.width, b.height):
        raise ConfigError("b.size", f"{b.width}x{b.height}",
                          f"must equal a's {a.width}x{a.height}: noise of different shapes cannot be blended")
    if a.pose is not None or b.pose is not None:
        if a.pose != b.pose:
            raise ConfigError("b.pose", "differs", "use pose_animation() to move between poses")
    for f in ("num_inference_steps", "scheduler", "clip_skip"):
        if getattr(a, f) != getattr(b, f):
            log.warning("interpolation uses a's %s=%r (b has %r)", f, getattr(a, f), getattr(b, f))


def encode_to_one_length(encoder: Any, pairs: Sequence[tuple[str, str]], clip_skip: int | None,
                          contexts: Sequence[Any] | None = None) -> list[Any]:
    """`EncodedPrompt`s of (prompt, negative) pairs, all padded to the chunk count of the longest
    text so they blend; pair i is encoded inside ``contexts[i]`` (a LoRA setting, say). Each
    family's encoder makes its own (SDXL: both encoders, pooled, zeros for an empty negative)."""
    import contextlib

    from ..conditioning import chunk_count
    from ..prompt_syntax import parse_weighted

    chunks = max(chunk_count(encoder, parse_weighted(x or "")) for pair in pairs for x in pair)
    out = []
    for i, (prompt, negative) in enumerate(pairs):
        with contexts[i] if contexts is not None else contextlib.nullcontext():
            out.append(encoder.encode(prompt, negative or "", clip_skip=clip_skip, min_chunks=chunks))
    return out


def _encode_pair(studio: Studio, a: Any, b: Any) -> tuple[Any, Any]:
    """The encoded prompts of a and b, padded to one chunk count; each end's under its own LoRA
    weights (a text-encoder LoRA changes them)."""
    contexts = [studio.using_loras(a.loras), studio.using_loras(b.loras)]
    enc_a, enc_b = encode_to_one_length(studio.encoder, [(a.prompt, a.negative_prompt), (b.prompt, b.negative_prompt)],
                                        a.clip_skip, contexts)
    return enc_a, enc_b


def _latent_shape(studio: Studio, cfg: Any) -> tuple[int, ...]:
    unet, vae = studio.components["unet"], studio.components["vae"]
    factor = vae_factor(vae)
    return noise_shape(cfg.width, cfg.height, int(unet.config.in_channels), factor)


def _is_ancestral(name: str) -> bool:
    from ..schedulers import scheduler_spec

    return "Ancestral" in scheduler_spec(name).class_name


class _FrameRenderer:
    """Renders frames between two recipes; noise and embeddings are computed once."""

    def __init__(self, studio: Studio, a: Any, b: Any, method: str, noise_method: str):
        self.studio, self.a, self.b = studio, a, b
        self.method, self.noise_method = method, noise_method
        self.enc_a, self.enc_b = _encode_pair(studio, a, b)
        shape = _latent_shape(studio, a)
        dtype = self.enc_a.prompt_embeds.dtype
        self.noise_a = seed_noise(a.seed, shape, dtype)
        self.noise_b = seed_noise(b.seed, shape, dtype)
        if _is_ancestral(a.scheduler):
            log.warning("scheduler %r adds fresh noise every step: in-between frames use one end's seed for "
                        "it and will not change smoothly; a deterministic scheduler (ddim, dpm++2m) works better",
                        a.scheduler)

    def recipe(self, t: float) -> FrameRecipe:
        return FrameRecipe(self.a, self.b, float(t), self.method, self.noise_method)

    def __call__(self, t: float) -> Any:
        t = check_t(t)
        noise = blend(self.noise_a, self.noise_b, t, self.noise_method)
        # every embedding blends, the pooled ones (SDXL) too, per vector
        encoded = self.enc_a.map(lambda x, y: blend_embeddings(x, y, t, self.method), self.enc_b)  # type: ignore[arg-type]
        end = self.a if t < 0.5 else self.b
        cfg = self.a.replace(
            guidance_scale=(1 - t) * self.a.guidance_scale + t * self.b.guidance_scale,
            seed=end.seed,  # only ancestral samplers draw from the generator after the start
            loras=blend_loras(self.a.loras, self.b.loras, t),  # run() applies them; the UNet's share moves with t
        )
        result = self.studio.run(cfg, latents=noise, embeddings=encoded)
        return result.images[0]


def interpolate(studio: Studio, a: Any, b: Any, frames: int = 8, method: Method = "slerp",
                uniform: bool = False, *, noise_method: Method = "slerp",
                embedder: Callable[[Sequence[Any]], Any] | None = None, max_renders: int | None = None,
                **settings: Any) -> Interpolation:
    """Frames morphing design a into design b: starting noise and text embeddings together.

    `a` and `b` are character cards (names or objects), prompts, recipes or Results;
    `settings` (steps, size, scheduler, guidance_scale, ...) apply to cards and prompts.
    `uniform=True` re-spaces t so adjacent frames change by similar amounts and reports
    evenness before and after; it costs `max_renders` (default 3 x `frames`) renders to map
    the path plus up to `frames` - 2 for the re-spaced frames.
    """
    # 1. Resolve and check the two ends.
    frame_ts(frames)
    if method not in ("slerp", "lerp") or noise_method not in ("slerp", "lerp"):
        raise ConfigError("method", method if method not in ("slerp", "lerp") else noise_method,
                          "choose 'slerp' or 'lerp'")
    ra, rb = _as_recipe(studio, a, "a", settings), _as_recipe(studio, b, "b", settings)
    _check_pair(studio, ra, rb)
    render = _FrameRenderer(studio, ra, rb, method, noise_method)
    # 2. Render: uniform t, or adaptively re-spaced.
    if uniform:
        res = respace(render, frames, embedder, max_renders)
        return Interpolation(res.frames, res.ts, [render.recipe(t) for t in res.ts], res.after,
                             res.before, res.renders)
    ts = frame_ts(frames)
    images = [render(t) for t in ts]
    return Interpolation(images, ts, [render.recipe(t) for t in ts], smoothness(images, embedder), None, len(ts))


def run_frame(studio: Studio, recipe: FrameRecipe | Mapping[str, Any]) -> Any:
    """Rebuild one interpolation frame from its recipe."""
    r = recipe if isinstance(recipe, FrameRecipe) else FrameRecipe.from_dict(recipe)
    _check_pair(studio, r.a, r.b)
    return _FrameRenderer(studio, r.a, r.b, r.method, r.noise_method)(r.t)
