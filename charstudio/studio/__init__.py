"""`Studio`: the facade over one loaded model (SD 1.x or SDXL).

A card or prompt comes in, `generate` turns it into a `GenerationConfig` (the recipe), `run` turns
the recipe into pipeline calls, and a `Result` holding the images and their recipes comes out.
The work is done in session.py (loading, device, pipelines, the VAE codec), recipes.py (recipes
from cards and defaults), draw.py (the engine) and adapters.py (the LoRA and embedding sets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..callbacks import CancelToken, StepCallback, StepProgress
from ..character import Character
from ..recipe.config import GenerationConfig
from ..embeddings import DEFAULT_EMBEDDINGS_DIR
from ..models.vae import native_size, vae_factor
from ..result import Result
from ..schedulers import DEFAULT_SCHEDULER
from . import draw as engine
from . import recipes
from .adapters import EmbeddingSet, LoadedEmbedding, LoadedLora, LoraSet
from .session import PipelineKind, Session

__all__ = ["Studio", "LoadedLora", "LoadedEmbedding", "EmbeddingSet", "LoraSet", "PipelineKind", "native_size",
           "vae_factor"]


class Studio(Session):
    """Generate characters with one loaded model.

    >>> studio = Studio.from_pretrained("tiny")
    >>> result = studio.generate("aiko", style="watercolor", seed=1)
    >>> result.save("outputs")
    """

    def __init__(self, components: dict[str, Any], **settings: Any):
        super().__init__(components, **settings)
        # Names in cards and recipes are looked up in embeddings_dir (relative to the working folder).
        self.embeddings_dir: str | Path = DEFAULT_EMBEDDINGS_DIR
        self.lora_set = LoraSet(self)
        self.embedding_set = EmbeddingSet(self, lambda: self.embeddings_dir)

    # -- recipes and drawing (recipes.py, draw.py) -----------------------------------------------
    def generate(self, character_or_prompt: str | Character | None = None, *, style: str | None = None,
                 extra: str = "", seed: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, width: int | None = None, height: int | None = None,
                 negative_prompt: str | None = None, scheduler: str = DEFAULT_SCHEDULER, num_images: int = 1,
                 guidance_rescale: float | None = None, original_size: tuple[int, int] | None = None,
                 crops_coords_top_left: tuple[int, int] | None = None, target_size: tuple[int, int] | None = None,
                 clip_skip: int | None = None, pose: Any = None, controlnet_conditioning_scale: float = 1.0,
                 control_guidance_start: float = 0.0, control_guidance_end: float = 1.0,
                 pose_lines: str | None = None, hires: Any = None, detail: Any = None, regions: Any = None,
                 callbacks: Iterable[StepCallback] = (), progress: Callable[[StepProgress], None] | None = None,
                 cancel: CancelToken | None = None, watermark: bool = True, speed: str | None = None,
                 draft_preset: str | None = None) -> Result:
        """Generate `num_images` images of a character card (by name or object) or a prompt.

        The card's seed and style are used unless given. Image i uses seed `seed + i`.
        Steps and guidance default to the model's (`default_steps`, `default_guidance`).
        `pose` (a pose name, `Pose`, pose JSON dict, or a ready control image of the output size)
        switches on the OpenPose ControlNet; `pose_lines` ("standard" or "thick") says how it is
        drawn (default: thick for xinsir's SDXL ControlNets, see `Studio.pose_lines`).
        `negative_prompt`, when given, replaces the card's and style's negatives.
        SDXL only: `original_size`, `crops_coords_top_left`, `target_size` ((height, width) /
        (top, left), diffusers' micro-conditioning) default to an uncropped picture of the output size.
        Workflows (charstudio.workflows), all recorded in the recipe: `hires` (an upscale factor
        such as 1.5, or a dict of the hires fix's settings) draws at the native size and redraws
        larger; `detail` (True, or a dict with `parts`) redraws the face and hands; `regions` (a
        list of {prompt or card, box}) gives each region of the picture its own prompt.
        `watermark=False`: no invisible watermark on the pictures (charstudio.provenance.watermark).
        """
        # A ready control image (PIL) is used as is, not recorded in the recipe.
        control_image, pose = (pose, None) if hasattr(pose, "getbands") else (None, pose)
        config = self.make_config(
            character_or_prompt, style=style, extra=extra, seed=seed, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, width=width, height=height,
            negative_prompt=negative_prompt, original_size=original_size, crops_coords_top_left=crops_coords_top_left,
            target_size=target_size, scheduler=scheduler, num_images=num_images, clip_skip=clip_skip, pose=pose,
            controlnet_conditioning_scale=controlnet_conditioning_scale, control_guidance_start=control_guidance_start,
            control_guidance_end=control_guidance_end, pose_lines=pose_lines, hires=hires, detail=detail,
            regions=regions, watermark=watermark, speed=speed, draft_preset=draft_preset)
        return self.run(config, callbacks=callbacks, progress=progress, cancel=cancel, control_image=control_image)

    def make_config(self, character_or_prompt: str | Character | None = None, **settings: Any) -> GenerationConfig:
        """Resolve a card/prompt, style and defaults into a validated recipe (without running it).

        It switches nothing on: the studio's active adapters are the same afterwards. A card that
        names a LoRA puts it in the recipe's `loras` at the card's weight (its file is loaded, off,
        when it is not loaded yet); `run` uses the recipe's adapters for that run only. A card's
        `embeddings` are loaded (they only add words); the recipe's `embeddings` record the loaded
        ones its prompts write. Settings: style, extra, seed, num_inference_steps, width, height,
        negative_prompt, pose, loras (the recipe's weights instead of the active ones), and any
        GenerationConfig field.
        """
        return recipes.make_config(self, character_or_prompt, **settings)

    def run(self, config: GenerationConfig, *, callbacks: Iterable[StepCallback] = (),
            progress: Callable[[StepProgress], None] | None = None, cancel: CancelToken | None = None,
            control_image: Any = None, latents: Any = None, embeddings: Any = None,
            init_image: Any = None, strength: float = 0.6) -> Result:
        """Run a recipe. `studio.run(result.recipe)` rebuilds `result.image` exactly (on CPU).

        `latents` (initial noise, unscaled) and `embeddings` (an `EncodedPrompt`)
        override the seed's noise and the prompt encoding; interpolation and style mixes use
        them, and their own recipes record how to rebuild them.

        `init_image` makes it img2img (SDEdit): the picture, resized to the recipe's size, is
        noised by `strength` (0..1] and denoised under the recipe's prompt (and pose). As in
        diffusers, the recipe's steps set the schedule and the last int(steps * strength) of them
        run; where that is none, one runs and the result's recipe records 1 step, which re-runs
        the same picture (`recipe.steps.img2img_steps`, the one guard of every img2img pass).
        """
        return engine.run(self, config, callbacks=callbacks, progress=progress, cancel=cancel,
                          control_image=control_image, latents=latents, embeddings=embeddings,
                          init_image=init_image, strength=strength)

    def run_batch(self, configs: Iterable[GenerationConfig], *, callbacks: Iterable[StepCallback] = (),
                  progress: Callable[[StepProgress], None] | None = None,
                  cancel: CancelToken | None = None) -> Result:
        """Run several recipes, drawing those that differ only in seed, prompt and pose in one UNet
        batch (up to `max_batch`); returns their images in order, each with its recipe. Each image
        keeps its own seed's noise, so it equals its recipe run alone up to floating-point rounding
        (README "Batches"). A sheet's poses run this way."""
        return engine.run_batch(self, configs, callbacks=callbacks, progress=progress, cancel=cancel)

    def draw(self, config: GenerationConfig, **run_args: Any) -> Result:
        """The drawing engine: one recipe (or `batch`, a list of one-image recipes) through the
        diffusers pipeline it needs, with no workflow passes; `run` adds hires/detail/inpaint around
        it. Workflows call this for their own passes (`init_image` + `strength` make it img2img).
        Arguments as `run`'s, plus `batch`."""
        return engine.draw(self, config, **run_args)

    def render_pose(self, config: GenerationConfig) -> Any:
        """The recipe's pose drawn as the ControlNet's control image at the recipe's size."""
        return recipes.render_pose(config)

    def from_photo(self, character: Any, photo: Any, *, strength: float = 0.6, pose: Any = "detect", **settings: Any) -> Result:
        """Turn a reference photo into the character (in the card's style) with SDEdit img2img.

        ``strength`` (0..1] is how far the photo is noised before denoising: low keeps the photo's
        layout and colours, high keeps only its pose. ``pose="detect"`` extracts the photo's pose
        with `Pose.from_image` (`detector`, `detector_weights`) and adds the OpenPose ControlNet;
        pass a Pose or a pose name to use another, or None for plain img2img. The recipe records the
        prompt and pose; the photo itself is not stored, so re-running the recipe alone gives a
        txt2img picture. Other settings: seed, controlnet_conditioning_scale, progress, cancel, and
        any `make_config` setting.
        """
        return engine.from_photo(self, character, photo, strength=strength, pose=pose, **settings)

    # -- features: one-liners into charstudio.interpolation, trace, sheets, workflows, training ---
    def interpolate(self, a: Any, b: Any, frames: int = 8, method: str = "slerp", uniform: bool = False,
                    **settings: Any) -> Any:
        """Frames from design a to design b (cards, prompts, recipes); see interpolation.interpolate."""
        from ..interpolation import interpolate

        return interpolate(self, a, b, frames=frames, method=method, uniform=uniform, **settings)

    def mix_styles(self, character_or_prompt: Any, styles: dict[str, float], **settings: Any) -> Any:
        """A design under an N-way weighted mix of style presets; see interpolation.mix_styles."""
        from ..interpolation import mix_styles

        return mix_styles(self, character_or_prompt, styles, **settings)

    def pose_animation(self, character_or_prompt: Any, pose_a: Any, pose_b: Any, frames: int = 8,
                       **settings: Any) -> Result:
        """One character moving from pose A to pose B (same seed); see interpolation.pose_animation."""
        from ..interpolation import pose_animation

        return pose_animation(self, character_or_prompt, pose_a, pose_b, frames, **settings)

    def lora_sweep(self, character_or_prompt: Any, adapter: str, weights: list[float], **settings: Any) -> Result:
        """The same design at several weights of one loaded LoRA; see interpolation.lora_sweep."""
        from ..interpolation import lora_sweep

        return lora_sweep(self, character_or_prompt, adapter, weights, **settings)

    def trace(self, character_or_prompt: Any = None, *, attention: bool = True, **settings: Any) -> Any:
        """Generate one image while recording every step: returns (Trace, Result); see trace.trace_run."""
        from ..trace import trace_run

        return trace_run(self, character_or_prompt, attention=attention, **settings)

    def sheet(self, character_or_prompt: Any, poses: list[Any], *, seed: int | None = None,
              reference_strength: float = 0.0, same_noise: bool = True, **settings: Any) -> Any:
        """One character in N poses with a labelled grid and identity scores (re-rolls with min_identity=);
        see sheets.make_sheet."""
        from ..sheets import make_sheet

        return make_sheet(self, character_or_prompt, poses, seed=seed, reference_strength=reference_strength,
                          same_noise=same_noise, **settings)

    def inpaint(self, image_or_result: Any, mask: Any, prompt: Any = None, *, strength: float = 0.75,
                seed: int | None = None, **settings: Any) -> Result:
        """Redraw the masked part of a picture (a `Result`, a PNG path or a PIL image); see
        workflows.inpaint.inpaint. `mask`: a picture, a box (left, top, right, bottom) or a body
        region of the picture's pose ("face", "hands", "torso", "legs", "hair")."""
        from ..workflows.inpaint import inpaint

        return inpaint(self, image_or_result, mask, prompt, strength=strength, seed=seed, **settings)

    def detail(self, result: Any, parts: Iterable[str] = ("face", "hands"), **options: Any) -> Result:
        """Redraw each part (face, hands, ...) of a picture at the model's size and paste it back;
        see workflows.detail.detail."""
        from ..workflows.detail import detail

        return detail(self, result, parts, **options)

    def turnaround(self, character_or_prompt: Any, views: Any = None, **settings: Any) -> Any:
        """The character from the front, three-quarter, side and back; see workflows.turnaround."""
        from ..workflows.turnaround import turnaround

        return turnaround(self, character_or_prompt, views, **settings)

    def expressions(self, character_or_prompt: Any, expressions: Any = None, **settings: Any) -> Any:
        """One character with N expressions in one labelled grid; see workflows.expressions."""
        from ..workflows.expressions import expression_sheet

        return expression_sheet(self, character_or_prompt, expressions, **settings)

    def train_lora(self, config: Any, *, cancel: CancelToken | None = None) -> Iterator[Any]:
        """Train a LoRA on this model (`charstudio.training.train_lora`, `cancel` stops its sample pictures),
        with the studio's adapters off while it trains (the new LoRA learns the base model)."""
        from ..training import train_lora

        with self.using_loras({}):
            yield from train_lora(config, components=self.components, cancel=cancel)

    # -- textual-inversion embeddings (adapters.EmbeddingSet) ----------------------------------
    @property
    def loaded_embeddings(self) -> dict[str, Path]:
        """The loaded embedding words and the files they came from."""
        return {token: rec.source for token, rec in self.embedding_set.records.items()}

    def load_embedding(self, path_or_name: Any, token: str | None = None, *, allow_pickle: bool | None = None,
                       embeddings_dir: Any = None) -> str:
        """Load a textual-inversion embedding and return the word that writes it in prompts.

        `path_or_name`: a .safetensors file (A1111's SD 1.x `emb_params` or SDXL `clip_l` +
        `clip_g`, diffusers' learned_embeds), or a name in `embeddings_dir` (default
        `studio.embeddings_dir`, "embeddings/"). `token` defaults to the file's name, as in
        A1111. Pickled .pt/.bin files need `allow_pickle=True` (default: the studio's
        `allow_pickle`) and are read with weights_only=True. Loading the same file under the same
        word again does nothing. A file for the other family, of the wrong width, or a word the
        tokenizer knows already is refused and leaves the model as it was.
        """
        return self.embedding_set.load(path_or_name, token, allow_pickle=allow_pickle, embeddings_dir=embeddings_dir)

    def unload_embedding(self, token: str) -> None:
        """Take a loaded embedding's word out of the tokenizers and text encoders."""
        self.embedding_set.unload(token)

    # -- LoRA adapters (adapters.LoraSet) --------------------------------------------------------
    @property
    def active_loras(self) -> dict[str, float]:
        """LoRA adapters in use, name -> weight (recorded in every recipe)."""
        return self.lora_set.active

    @property
    def loaded_loras(self) -> dict[str, LoadedLora]:
        """Every loaded adapter, on or off, with the file it came from."""
        return self.lora_set.loaded

    def load_lora(self, path_or_name: Any, weight: float = 1.0, adapter_name: str | None = None, *,
                  lora_dir: Any = None) -> str:
        """Load a LoRA and use it at `weight`; returns the adapter name. `path_or_name`: a trained
        LoRA's name (lora/NAME/), a folder, or a .safetensors file in our format, kohya/A1111 format
        or from civitai. Loading the same file under the same name again only sets its weight."""
        name = self.lora_set.load_off(path_or_name, adapter_name, lora_dir=lora_dir, weight=weight)
        self.set_loras({**self.active_loras, name: weight})
        return name

    def set_loras(self, weights: dict[str, float]) -> None:
        """Use exactly these loaded adapters at these weights, e.g. {"aiko": 0.8, "watercolor": 0.5}."""
        self.lora_set.set(weights)

    def using_loras(self, weights: dict[str, float]) -> Any:
        """Exactly these adapters and weights inside the block, then the studio's again: `run` wraps
        every recipe in it, so a recipe rebuilds its image with the weights it was made with."""
        return self.lora_set.using(weights)

    def unload_loras(self, names: Iterable[str] | None = None) -> None:
        """Remove adapters (all by default); the base model's layers come back."""
        self.lora_set.unload(names)

    def unload_lora(self, name: str) -> None:
        """Remove one adapter."""
        self.lora_set.unload([name])

    def fuse_loras(self) -> list[str]:
        """Merge the active adapters into the base weights (faster; `unfuse_loras` undoes it)."""
        return self.lora_set.fuse()

    def unfuse_loras(self) -> None:
        """Take fused adapters back out of the base weights."""
        self.lora_set.unfuse()
