"""`Studio`: one set of SD 1.x components shared by the txt2img, ControlNet and img2img pipelines.

Data flows one way: a character card or prompt comes in, `generate` turns it into a
`GenerationConfig` (the recipe), `run` turns the recipe into pipeline calls, and a `Result`
holding the images and their recipes comes out.
"""

from __future__ import annotations

import logging
import random
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Literal

from .callbacks import CancelToken, StepCallback, StepProgress, chain
from .character import Character, compose_prompt, is_character, load_character
from .conditioning import PromptEncoder
from .config import MAX_SEED, GenerationConfig
from .errors import ConfigError, ModelLoadError
from .models.device import configure_attention, pick_device
from .models.loading import load_components, load_controlnet, resolve_model
from .models.presets import PRESETS
from .result import Result
from .schedulers import DEFAULT_SCHEDULER, make_scheduler
from .validation import check_text

log = logging.getLogger(__name__)

PipelineKind = Literal["txt2img", "controlnet", "img2img", "controlnet_img2img"]
_PIPELINE_CLASSES = {
    "txt2img": "StableDiffusionPipeline",
    "controlnet": "StableDiffusionControlNetPipeline",
    "img2img": "StableDiffusionImg2ImgPipeline",
    "controlnet_img2img": "StableDiffusionControlNetImg2ImgPipeline",
}


class Studio:
    """Generate characters with one loaded model.

    >>> studio = Studio.from_pretrained("tiny")
    >>> result = studio.generate("aiko", style="watercolor", seed=1)
    >>> result.save("outputs")
    """

    def __init__(self, components: dict[str, Any], *, model_id: str, device: Any, dtype: Any,
                 controlnet_source: str | None = None, default_size: int = 512, default_steps: int = 25,
                 default_guidance: float = 7.0, attention: str = "sdpa"):
        self.components = dict(components)
        self.components.setdefault("controlnet", None)
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.controlnet_source = controlnet_source
        self.default_size = default_size
        self.default_steps = default_steps
        self.default_guidance = default_guidance
        self.attention = attention
        self.base_scheduler_config = dict(self.components["scheduler"].config)
        self.encoder = PromptEncoder(self.components["tokenizer"], self.components["text_encoder"])
        self._pipelines: dict[str, Any] = {}
        self._lora_weights: dict[str, float] = {}  # adapter name -> weight, as used in recipes
        self._lora_sources: dict[str, Any] = {}  # adapter name -> the file it came from
        self._card_adapters: set[str] = set()  # adapters switched on by a card, not by the user

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str = "mini", *, device: str | None = None, dtype: str | None = None,
                        controlnet: str | None = None, allow_pickle: bool = False,
                        attention: str = "auto", config: str | None = None) -> "Studio":
        """Load a model by preset name (`mini`, `tiny`, `sd15`), hub id, diffusers folder or `.safetensors` file.

        `controlnet` overrides the OpenPose ControlNet (hub id or folder); it loads on first use.
        Pickled `.ckpt` files load only with `allow_pickle=True`.
        `config` (single files only): diffusers folder or hub id of the base model whose configs,
        tokenizer and scheduler describe the file; needed offline unless SD 1.5's are cached.
        """
        source = resolve_model(model, allow_pickle=allow_pickle)
        dev, dt = pick_device(device, dtype)
        log.info("loading %s (%s) on %s as %s", model, source.kind, dev, dt)
        components = load_components(source, dtype=dt, config=config)
        for name in ("text_encoder", "unet", "vae", "controlnet"):
            if components.get(name) is not None:
                components[name].to(dev)
        preset = PRESETS.get(model)
        studio = cls(components, model_id=source.name, device=dev, dtype=dt,
                     controlnet_source=controlnet or source.controlnet,
                     default_size=native_size(components),
                     default_steps=preset.default_steps if preset else 25,
                     default_guidance=preset.default_guidance if preset else 7.0)
        studio.attention = configure_attention(studio.pipeline("txt2img"), attention)
        return studio

    @property
    def controlnet(self) -> Any:
        """The OpenPose ControlNet, loaded on first use for downloaded models."""
        if self.components.get("controlnet") is None:
            if not self.controlnet_source:
                raise ModelLoadError(f"model {self.model_id!r} has no OpenPose ControlNet configured: "
                                     "pass controlnet='lllyasviel/control_v11p_sd15_openpose' (or a folder)")
            net = load_controlnet(self.controlnet_source, dtype=self.dtype).to(self.device)
            self.components["controlnet"] = net
            self._pipelines = {k: v for k, v in self._pipelines.items() if "controlnet" not in k}
        return self.components["controlnet"]

    def pipeline(self, kind: PipelineKind = "txt2img") -> Any:
        """The diffusers pipeline of `kind`, built once over the shared components."""
        if kind not in _PIPELINE_CLASSES:
            raise ConfigError("kind", kind, f"choose one of {', '.join(_PIPELINE_CLASSES)}")
        if kind not in self._pipelines:
            import diffusers

            parts = {k: self.components[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
            if "controlnet" in kind:
                parts["controlnet"] = self.controlnet
            pipe = getattr(diffusers, _PIPELINE_CLASSES[kind])(
                **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)  # progress goes through our callbacks
            self._pipelines[kind] = pipe
        return self._pipelines[kind]

    @property
    def active_loras(self) -> dict[str, float]:
        """LoRA adapters in use, name -> weight (recorded in every recipe)."""
        return dict(self._lora_weights)

    # -- generation ----------------------------------------------------------------------------
    def generate(self, character_or_prompt: str | Character | None = None, *, style: str | None = None,
                 extra: str = "", seed: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, width: int | None = None, height: int | None = None,
                 negative_prompt: str | None = None, scheduler: str = DEFAULT_SCHEDULER, num_images: int = 1,
                 clip_skip: int | None = None, pose: Any = None, controlnet_conditioning_scale: float = 1.0,
                 control_guidance_start: float = 0.0, control_guidance_end: float = 1.0,
                 callbacks: Iterable[StepCallback] = (), progress: Callable[[StepProgress], None] | None = None,
                 cancel: CancelToken | None = None) -> Result:
        """Generate `num_images` images of a character card (by name or object) or a prompt.

        The card's seed and style are used unless given. Image i uses seed `seed + i`.
        Steps and guidance default to the model's (`default_steps`, `default_guidance`).
        `pose` (a pose name, `Pose`, pose JSON dict, or a ready control image of the output size)
        switches on the OpenPose ControlNet.
        `negative_prompt`, when given, replaces the card's and style's negatives.
        """
        control_image = None
        if hasattr(pose, "getbands"):  # a ready control image (PIL): used as is, not recorded in the recipe
            control_image, pose = pose, None
        config = self.make_config(character_or_prompt, style=style, extra=extra, seed=seed,
                                  num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                  width=width, height=height, negative_prompt=negative_prompt,
                                  scheduler=scheduler, num_images=num_images, clip_skip=clip_skip, pose=pose,
                                  controlnet_conditioning_scale=controlnet_conditioning_scale,
                                  control_guidance_start=control_guidance_start,
                                  control_guidance_end=control_guidance_end)
        return self.run(config, callbacks=callbacks, progress=progress, cancel=cancel, control_image=control_image)

    def make_config(self, character_or_prompt: str | Character | None = None, *, style: str | None = None,
                    extra: str = "", seed: int | None = None, num_inference_steps: int | None = None,
                    width: int | None = None, height: int | None = None, negative_prompt: str | None = None,
                    pose: Any = None, **settings: Any) -> GenerationConfig:
        """Resolve a card/prompt, style and defaults into a validated recipe (without running it)."""
        if character_or_prompt is not None and not isinstance(character_or_prompt, (str, Character)):
            raise ConfigError("character_or_prompt", character_or_prompt,
                              "a card name, a prompt (str) or a Character, got " + type(character_or_prompt).__name__)
        check_text("style", style, "a style preset name", optional=True)
        check_text("extra", extra, "extra prompt words")
        check_text("negative_prompt", negative_prompt, "a negative prompt", optional=True)
        card = None
        if isinstance(character_or_prompt, Character):
            card = character_or_prompt
        elif isinstance(character_or_prompt, str) and is_character(character_or_prompt):
            card = load_character(character_or_prompt)
        self._apply_card_lora(card)  # the card's LoRA (and its trigger word, in the prompt) for this card only
        prompt, negative = compose_prompt(card or character_or_prompt, style, extra)
        if negative_prompt is not None:
            negative = negative_prompt
        if seed is None:
            seed = card.seed if card is not None and card.seed is not None else random.randint(0, MAX_SEED - 64)
        width = self.default_size if width is None else width
        height = self.default_size if height is None else height
        if pose is not None:
            pose = self._pose_dict(pose, width, height)
        if settings.get("guidance_scale") is None:
            settings["guidance_scale"] = self.default_guidance
        return GenerationConfig(
            prompt=prompt, negative_prompt=negative, seed=seed,
            num_inference_steps=self.default_steps if num_inference_steps is None else num_inference_steps,
            width=width, height=height, model=self.model_id,
            character=card.name if card else None,
            style=style if style is not None else (card.style if card else None),
            loras=self.active_loras, pose=pose, **settings)

    @staticmethod
    def _pose_dict(pose: Any, width: int, height: int) -> dict:
        from .pose import Pose, load_pose

        p = pose if isinstance(pose, Pose) else load_pose(pose)
        return p.fit(width, height).to_dict()

    def run(self, config: GenerationConfig, *, callbacks: Iterable[StepCallback] = (),
            progress: Callable[[StepProgress], None] | None = None, cancel: CancelToken | None = None,
            control_image: Any = None, latents: Any = None, embeddings: tuple[Any, Any] | None = None) -> Result:
        """Run a recipe. `studio.run(result.recipe)` rebuilds `result.image` exactly (on CPU).

        `latents` (initial noise, unscaled) and `embeddings` ((prompt, negative) embeddings)
        override the seed's noise and the prompt encoding; interpolation and style mixes use
        them, and their own recipes record how to rebuild them.
        """
        # 1. Check the recipe fits this studio.
        if config.model and config.model != self.model_id:
            log.warning("recipe was made with model %r; running it on %r", config.model, self.model_id)
        missing = set(config.loras) - set(self._lora_sources) - set(self._lora_weights)
        if missing:
            raise ConfigError("loras", config.loras, f"adapters {sorted(missing)} are not loaded; load them with studio.load_lora first")
        with self.using_loras(config.loras):
            return self._run(config, callbacks=callbacks, progress=progress, cancel=cancel,
                             control_image=control_image, latents=latents, embeddings=embeddings)

    @contextmanager
    def using_loras(self, weights: dict[str, float]) -> Iterator[None]:
        """Use exactly these adapters and weights inside the block, then put the studio's back.

        `run` wraps every recipe in it: a recipe rebuilds its image only with the LoRA weights it
        was made with, whatever the studio has set since. Interpolation encodes each end's
        prompt under that end's weights.
        """
        if weights == self._lora_weights:
            yield
            return
        from . import lora

        before = dict(self._lora_weights)
        log.info("using the recipe's LoRA weights %s for this run (studio has %s)", weights, before)
        lora.set_loras(self.pipeline("txt2img"), weights)
        self._lora_weights = dict(weights)
        try:
            yield
        finally:
            lora.set_loras(self.pipeline("txt2img"), before)
            self._lora_weights = before

    def _run(self, config: GenerationConfig, *, callbacks: Iterable[StepCallback], progress: Any, cancel: Any,
             control_image: Any, latents: Any, embeddings: Any) -> Result:
        import torch

        # 2. Pick the pipeline: the ControlNet one when there is a pose or control image.
        if control_image is None and config.pose is not None:
            control_image = self._render_pose(config)
        if control_image is not None and control_image.size != (config.width, config.height):
            raise ConfigError("control_image", f"{control_image.size[0]}x{control_image.size[1]}",
                              f"must match the output size {config.width}x{config.height}; "
                              "pass a Pose (fitted automatically) or resize the image")
        pipe = self.pipeline("controlnet" if control_image is not None else "txt2img")
        extra_args: dict[str, Any] = {}
        if control_image is not None:
            extra_args = dict(image=control_image, controlnet_conditioning_scale=config.controlnet_conditioning_scale,
                              control_guidance_start=config.control_guidance_start,
                              control_guidance_end=config.control_guidance_end)

        # 3. Encode the prompt once for all images (long prompts in 75-token chunks).
        if embeddings is None and config.style_mix:
            from .interpolation import style_mix_embeddings

            embeddings = style_mix_embeddings(self.encoder, config.style_mix, config.clip_skip)
        if embeddings is None:
            encoded = self.encoder.encode(config.prompt, config.negative_prompt, clip_skip=config.clip_skip)
            prompt_embeds, negative_embeds = encoded.prompt_embeds, encoded.negative_prompt_embeds
        else:
            prompt_embeds, negative_embeds = embeddings
        initial_latents = latents  # the loop below reuses the name `latents` for each image's output
        # [from:to:when] prompt editing: swap the prompt embeddings mid-run (None when unused).
        from .prompt_syntax import schedule_callback

        edit_cb = None if embeddings is not None else schedule_callback(
            self.encoder, config.prompt, config.num_inference_steps, encoded.num_chunks, config.clip_skip)

        # 4. One pipeline call per image, so each image's recipe (seed + i) reproduces it alone.
        images, recipes, latents_out = [], [], []
        for i in range(config.num_images):
            if cancel is not None:
                cancel.check()
            step_cbs = list(callbacks) + ([edit_cb] if edit_cb is not None else [])
            if cancel is not None:
                step_cbs.insert(0, lambda p, s, t, kw: cancel.check() or {})
            if progress is not None:
                step_cbs.append(_progress_callback(progress, i + 1, config.num_images, config.num_inference_steps))
            combined, tensor_inputs = chain(step_cbs)
            pipe.scheduler = make_scheduler(config.scheduler, self.base_scheduler_config)
            generator = torch.Generator("cpu").manual_seed(config.seed + i)  # CPU noise: same on every device
            out = pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, latents=initial_latents,
                       num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                       width=config.width, height=config.height, generator=generator, output_type="latent",
                       callback_on_step_end=combined, callback_on_step_end_tensor_inputs=tensor_inputs,
                       **extra_args)
            latents = out.images
            images.extend(self.decode(latents))
            latents_out.append(latents)
            recipes.append(config.replace(seed=config.seed + i, num_images=1, model=self.model_id,
                                          loras=self.active_loras))
        return Result(images, recipes, {"latents": latents_out})

    def _render_pose(self, config: GenerationConfig) -> Any:
        from .pose import Pose

        return Pose.from_dict(config.pose).fit(config.width, config.height).render(config.width, config.height)

    def encode(self, images: Any) -> Any:
        """PIL image(s) -> latents scaled as the UNet sees them (the VAE's mean); `decode` inverts it."""
        import torch

        vae = self.components["vae"]
        pixels = self.pipeline("txt2img").image_processor.preprocess(images).to(vae.device, vae.dtype)
        with torch.no_grad():
            return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor

    def decode(self, latents: Any) -> list[Any]:
        """Latents -> PIL images with the VAE. NaNs (fp16 overflow) trigger an fp32 retry and a warning."""
        import torch

        vae = self.components["vae"]
        with torch.no_grad():
            pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
            if not torch.isfinite(pixels).all() and vae.dtype != torch.float32:
                warnings.warn(f"the VAE produced NaNs in {vae.dtype}; upcasting it to float32 for this model",
                              RuntimeWarning, stacklevel=3)
                vae.to(torch.float32)
                pixels = vae.decode(latents.to(torch.float32) / vae.config.scaling_factor, return_dict=False)[0]
            if not torch.isfinite(pixels).all():
                warnings.warn("the image contains NaNs and will be black: try fp32 (dtype='fp32'), fewer steps "
                              "with another scheduler, or a lower guidance_scale", RuntimeWarning, stacklevel=3)
                pixels = torch.nan_to_num(pixels, nan=-1.0)
        images = self.pipeline("txt2img").image_processor.postprocess(pixels.float(), output_type="pil")
        for im in images:
            if im.getextrema() == ((0, 0), (0, 0), (0, 0)):
                warnings.warn("generated an all-black image", RuntimeWarning, stacklevel=3)
        return images

    # -- interpolation, style mixes, tracing (charstudio.interpolation / charstudio.trace) ---------
    def interpolate(self, a: Any, b: Any, frames: int = 8, method: str = "slerp", uniform: bool = False,
                    **settings: Any) -> Any:
        """Frames from design a to design b (cards, prompts, recipes); see interpolation.interpolate."""
        from .interpolation import interpolate

        return interpolate(self, a, b, frames=frames, method=method, uniform=uniform, **settings)

    def mix_styles(self, character_or_prompt: Any, styles: dict[str, float], **settings: Any) -> Any:
        """A design under an N-way weighted mix of style presets; see interpolation.mix_styles."""
        from .interpolation import mix_styles

        return mix_styles(self, character_or_prompt, styles, **settings)

    def pose_animation(self, character_or_prompt: Any, pose_a: Any, pose_b: Any, frames: int = 8,
                       **settings: Any) -> Result:
        """One character moving from pose A to pose B (same seed); see interpolation.pose_animation."""
        from .interpolation import pose_animation

        return pose_animation(self, character_or_prompt, pose_a, pose_b, frames, **settings)

    def lora_sweep(self, character_or_prompt: Any, adapter: str, weights: list[float], **settings: Any) -> Result:
        """The same design at several weights of one loaded LoRA; see interpolation.lora_sweep."""
        from .interpolation import lora_sweep

        return lora_sweep(self, character_or_prompt, adapter, weights, **settings)

    def trace(self, character_or_prompt: Any = None, *, attention: bool = True, **settings: Any) -> Any:
        """Generate one image while recording every step: returns (Trace, Result); see trace.trace_run."""
        from .trace import trace_run

        return trace_run(self, character_or_prompt, attention=attention, **settings)

    # -- character sheets (charstudio.consistency) ---------------------------------------------
    def sheet(self, character_or_prompt: Any, poses: list[Any], *, seed: int | None = None,
              reference_strength: float = 0.0, same_noise: bool = True, **settings: Any) -> Any:
        """One character in N poses with a labelled grid and a consistency score; see consistency.make_sheet."""
        from .consistency import make_sheet

        return make_sheet(self, character_or_prompt, poses, seed=seed, reference_strength=reference_strength,
                          same_noise=same_noise, **settings)

    # -- LoRA adapters (charstudio.lora) -------------------------------------------------------
    # All pipelines share one UNet and text encoder, so adapters loaded through the txt2img
    # pipeline apply to every kind. `_lora_weights` mirrors what is active for the recipes.
    def load_lora(self, path_or_name: Any, weight: float = 1.0, adapter_name: str | None = None, *,
                  lora_dir: Any = None) -> str:
        """Load a LoRA and use it at `weight`; returns the adapter name.

        `path_or_name`: a trained LoRA's name (lora/NAME/), a folder, or a .safetensors file in
        our format, kohya/A1111 format or from civitai. Loading the same file under the same name
        again only sets its weight.
        """
        from . import lora

        path = lora.resolve_lora_path(path_or_name, lora_dir or lora.DEFAULT_LORA_DIR).resolve()
        name = adapter_name or lora.default_adapter_name(path)
        sources = self._lora_sources
        self._card_adapters.discard(name)
        if sources.get(name) == path:
            self.set_loras({**self._lora_weights, name: weight})
            return name
        name = lora.load_lora(self.pipeline("txt2img"), path, weight=weight, adapter_name=name)
        sources[name] = path
        self._lora_weights = lora.active_loras(self.pipeline("txt2img"))
        return name

    def set_loras(self, weights: dict[str, float]) -> None:
        """Use exactly these loaded adapters at these weights, e.g. {"aiko": 0.8, "watercolor": 0.5}."""
        from . import lora

        lora.set_loras(self.pipeline("txt2img"), weights)
        self._lora_weights = lora.active_loras(self.pipeline("txt2img"))
        self._card_adapters.difference_update(weights)

    def unload_loras(self, names: Iterable[str] | None = None) -> None:
        """Remove adapters (all by default); the base model's layers come back."""
        from . import lora

        names = None if names is None else list(names)
        lora.unload_loras(self.pipeline("txt2img"), names)
        sources = self._lora_sources
        for n in list(sources) if names is None else names:
            sources.pop(n, None)
        self._lora_weights = lora.active_loras(self.pipeline("txt2img"))

    def unload_lora(self, name: str) -> None:
        """Remove one adapter."""
        self.unload_loras([name])

    def fuse_loras(self) -> list[str]:
        """Merge the active adapters at their weights into the base weights (faster sampling).

        Weights cannot change while fused; `unfuse_loras` or `unload_loras` undo it.
        """
        from . import lora

        return lora.fuse_loras(self.pipeline("txt2img"))

    def unfuse_loras(self) -> None:
        """Take fused adapters back out of the base weights."""
        from . import lora

        lora.unfuse_loras(self.pipeline("txt2img"))

    def _apply_card_lora(self, card: Any) -> None:
        """Use a card's LoRA for that card: adapters switched on by other cards are switched off.

        Adapters the user loaded or set directly are left alone.
        """
        from . import lora

        auto = self._card_adapters
        weights = {k: v for k, v in self._lora_weights.items() if k not in auto}
        if card is not None and getattr(card, "lora", None):
            user_active = set(weights)
            name = self.load_lora(card.lora, weight=card.lora_weight)
            weights[name] = float(card.lora_weight)
            if name not in user_active:
                auto.add(name)
        if weights != self._lora_weights:
            lora.set_loras(self.pipeline("txt2img"), weights)
            self._lora_weights = lora.active_loras(self.pipeline("txt2img"))


def native_size(components: dict[str, Any]) -> int:
    """The resolution the UNet was trained at: its latent size times the VAE's factor (512 for SD 1.5)."""
    return int(components["unet"].config.sample_size) * vae_factor(components["vae"])


def vae_factor(vae: Any) -> int:
    """How many pixels one latent spans per side (8 for SD 1.5's VAE, 4 for mini's)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _progress_callback(progress: Callable[[StepProgress], None], image: int, images: int, steps: int) -> StepCallback:
    def report(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        progress(StepProgress(image=image, images=images, step=step + 1, steps=steps))
        return {}

    return report
