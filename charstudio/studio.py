"""`Studio`: one set of SD 1.x components shared by the txt2img, ControlNet and img2img pipelines.

Data flows one way: a character card or prompt comes in, `generate` turns it into a
`GenerationConfig` (the recipe), `run` turns the recipe into pipeline calls, and a `Result`
holding the images and their recipes comes out.
"""

from __future__ import annotations

import inspect
import logging
import random
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

from .callbacks import CancelToken, StepCallback, StepProgress, chain
from .conditioning import EncodedPrompt
from .character import Character, compose_prompt, is_character, load_character
from .config import MAX_SEED, GenerationConfig
from .embeddings import DEFAULT_EMBEDDINGS_DIR
from .errors import ConfigError
from .limits import available_memory, check_picture_size
from .models.device import choose_low_vram, configure_attention, pick_device
from .models.family import PIPELINE_KINDS, detect_family, is_union_controlnet
from .models.loading import load_components, load_controlnet, resolve_model
from .models import vae as vae_codec
from .models.presets import PRESETS
from .models.vae import native_size, vae_factor  # noqa: F401  (re-exported for old imports)
from .result import Result
from .schedulers import DEFAULT_SCHEDULER, make_scheduler
from .validation import check_float, check_int, check_text

log = logging.getLogger(__name__)

PipelineKind = Literal["txt2img", "controlnet", "img2img", "controlnet_img2img"]


@dataclass
class LoadedLora:
    """One adapter a Studio has loaded: the file it came from, and its weight while on."""

    source: Path
    weight: float | None = None  # None: loaded but off


@dataclass
class LoadedEmbedding:
    """One textual-inversion embedding a Studio has loaded: its file, vector count and digest."""

    source: Path
    num_vectors: int
    sha256: str


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
        self.default_size = default_size
        self.default_steps = default_steps
        self.default_guidance = default_guidance
        self.attention = attention
        # Pictures beyond `limits.max_side(default_size)` a side need this opt-in (CLI: --allow-large).
        self.allow_large = False
        self.allow_pickle = False
        self.base_scheduler_config = dict(self.components["scheduler"].config)
        # SD 1.x or SDXL, read from the parts themselves: it owns everything family-specific.
        self.family = detect_family(self.components)
        self.encoder = self.family.make_encoder(self.components)
        self.controlnet_source = controlnet_source or self.family.openpose_controlnet
        self._pipelines: dict[str, Any] = {}
        # The one record of adapter state: what is loaded, from where, and what is on at which
        # weight. charstudio.lora's functions keep none; every change goes through _apply_weights.
        self._loras: dict[str, LoadedLora] = {}
        # Textual-inversion words loaded into the shared tokenizers/encoders (see load_embedding);
        # names in cards and recipes are looked up in embeddings_dir (relative to the working folder).
        self._embeddings: dict[str, LoadedEmbedding] = {}
        self.embeddings_dir: str | Path = DEFAULT_EMBEDDINGS_DIR
        self.max_batch = 8  # see the max_batch property
        self.low_vram = False  # see enable_low_vram
        self.speed = "default"  # see set_speed: "default" or "max" (the fast path)
        self._offloaded: str | None = None  # the pipeline kind whose offload hooks are installed

    @property
    def max_batch(self) -> int:
        """The most images one UNet call draws (a recipe's num_images, a sheet's poses); 1 draws
        each image in its own call. Low-VRAM mode sets 1. Checked when set: a whole number >= 1."""
        return self._max_batch

    @max_batch.setter
    def max_batch(self, value: Any) -> None:
        self._max_batch = check_int("max_batch", value, lo=1)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str = "mini", *, device: str | None = None, dtype: str | None = None,
                        controlnet: str | None = None, allow_pickle: bool = False,
                        attention: str = "auto", config: str | None = None,
                        prediction_type: str | None = None, low_vram: bool | None = None,
                        speed: str = "default") -> "Studio":
        """Load a model by preset name (`mini`, `tiny`, `sd15`), hub id, diffusers folder or `.safetensors` file.

        `controlnet` overrides the OpenPose ControlNet (hub id or folder); it loads on first use.
        Pickled `.ckpt` files load only with `allow_pickle=True`.
        `config` (single files only): diffusers folder or hub id of the base model whose configs,
        tokenizer and scheduler describe the file; needed offline unless SD 1.5's are cached.
        `prediction_type` ("epsilon" or "v_prediction") overrides what the model says; a
        v-prediction model also gets zero-terminal-SNR betas, trailing timesteps and, by
        default, CFG rescale 0.7 in its recipes.
        `low_vram`: keep the parts in CPU memory, move each to the GPU only while it runs (model CPU
        offload) and decode in tiles; None chooses it when the GPU has too little memory for the
        model (SDXL with a ControlNet on a 12 GB card). Same pictures, slower.
        `speed`: "default", or "max" for the fast path on a GPU (see `set_speed`).
        """
        from .models.speed import check_speed

        check_speed(speed)
        source = resolve_model(model, allow_pickle=allow_pickle)
        dev, dt = pick_device(device, dtype)
        log.info("loading %s (%s) on %s as %s", model, source.kind, dev, dt)
        components = load_components(source, dtype=dt, config=config, prediction_type=prediction_type)
        if controlnet is not None:  # the caller's ControlNet replaces a built-in model's own
            components.pop("controlnet", None)
        preset = PRESETS.get(model)
        offload = choose_low_vram(low_vram, dev, components, native_size(components))
        if not offload:
            for name in ("text_encoder", "text_encoder_2", "unet", "vae", "controlnet"):
                if components.get(name) is not None:
                    components[name].to(dev)
        studio = cls(components, model_id=source.name, device=dev, dtype=dt,
                     controlnet_source=controlnet or source.controlnet,
                     default_size=native_size(components),
                     default_steps=preset.default_steps if preset else 25,
                     default_guidance=preset.default_guidance if preset else 7.0)
        studio.allow_pickle = allow_pickle  # the ControlNet, loaded later, follows the model's opt-in
        if offload:
            studio.enable_low_vram()
        studio.attention = configure_attention(studio.pipeline("txt2img"), attention)
        if speed != "default":
            studio.set_speed(speed)
        return studio

    def enable_low_vram(self) -> None:
        """Low-VRAM mode: the parts stay in CPU memory and diffusers' model CPU offload moves each
        to `self.device` only while it runs (hooks re-installed for whichever pipeline runs), and
        the VAE decodes in tiles. Pictures are the same; runs are slower."""
        for name in ("text_encoder", "text_encoder_2", "unet", "vae", "controlnet"):
            if self.components.get(name) is not None:
                self.components[name].to("cpu")
        self.components["vae"].enable_tiling()
        self.low_vram = True
        self.max_batch = 1
        self._offloaded = None
        log.info("low-VRAM mode: model CPU offload to %s, tiled VAE decoding", self.device)

    def set_speed(self, speed: str = "max", *, compile_backend: str | None = None, compile_mode: str | None = None,
                  channels_last: bool | None = None, fused_qkv: bool | None = None,
                  max_compiles: int | None = None) -> list[str]:
        """The fast path: "max" switches on SDPA, fused QKV projections, channels_last and
        torch.compile of the UNet, ControlNet and VAE decoder (on CUDA; on the CPU only fused QKV,
        and compile when `compile_backend` or $CHARSTUDIO_COMPILE_BACKEND names a backend);
        "default" undoes it all. `compile_mode` is inductor's ("reduce-overhead": CUDA graphs,
        CUDA only); `channels_last`/`fused_qkv` None: the device's default; `max_compiles`: per
        part, after which it runs uncompiled. Returns what was done (also logged); see
        charstudio.models.speed."""
        from .models.speed import MAX_COMPILES, apply_speed, plan_speed

        plan = plan_speed(speed, self.device, low_vram=self.low_vram, compile_backend=compile_backend,
                          compile_mode=compile_mode, channels_last=channels_last, fused_qkv=fused_qkv,
                          max_compiles=MAX_COMPILES if max_compiles is None else max_compiles)
        done = apply_speed(self, plan)
        self.speed = plan.speed
        return done

    def offload_for(self, pipe: Any, kind: str) -> None:
        """Install `pipe`'s offload hooks on the shared parts (low-VRAM mode only)."""
        if self.low_vram and self._offloaded != kind:
            pipe.enable_model_cpu_offload(device=self.device)
            self._offloaded = kind

    @property
    def controlnet(self) -> Any:
        """The OpenPose ControlNet, loaded on first use for downloaded models."""
        if self.components.get("controlnet") is None:
            net = load_controlnet(self.controlnet_source, dtype=self.dtype, allow_pickle=self.allow_pickle,
                                  family=self.family).to("cpu" if self.low_vram else self.device)
            self.components["controlnet"] = net
            self._pipelines = {k: v for k, v in self._pipelines.items() if "controlnet" not in k}
            self._offloaded = None
        return self.components["controlnet"]

    def pipeline(self, kind: PipelineKind = "txt2img") -> Any:
        """The diffusers pipeline of `kind`, built once over the shared components."""
        if kind not in PIPELINE_KINDS:
            raise ConfigError("kind", kind, f"choose one of {', '.join(PIPELINE_KINDS)}")
        if kind not in self._pipelines:
            parts = {k: self.components[k] for k in self.family.component_names}
            if "controlnet" in kind:
                parts["controlnet"] = self.controlnet
            pipe = self.family.build_pipeline(kind, parts)
            pipe.set_progress_bar_config(disable=True)  # progress goes through our callbacks
            self._pipelines[kind] = pipe
        return self._pipelines[kind]

    @property
    def pose_lines(self) -> str:
        """How poses are drawn for this studio's ControlNet: "thick" for xinsir's SDXL ones, which
        were trained on thicker limbs, else "standard" (a recipe can say otherwise)."""
        from .pose.drawing import THICK_LINE_CONTROLNETS

        return "thick" if str(self.controlnet_source).startswith(THICK_LINE_CONTROLNETS) else "standard"

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: "epsilon" (most models) or "v_prediction" (NoobAI v-pred, ...)."""
        return str(self.base_scheduler_config.get("prediction_type") or "epsilon")

    @property
    def active_loras(self) -> dict[str, float]:
        """LoRA adapters in use, name -> weight (recorded in every recipe)."""
        return {name: rec.weight for name, rec in self._loras.items() if rec.weight is not None}

    @property
    def loaded_loras(self) -> dict[str, LoadedLora]:
        """Every loaded adapter, on or off, with the file it came from."""
        return {name: LoadedLora(rec.source, rec.weight) for name, rec in self._loras.items()}

    # -- generation ----------------------------------------------------------------------------
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
                 cancel: CancelToken | None = None) -> Result:
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
        """
        control_image = None
        if hasattr(pose, "getbands"):  # a ready control image (PIL): used as is, not recorded in the recipe
            control_image, pose = pose, None
        config = self.make_config(character_or_prompt, style=style, extra=extra, seed=seed,
                                  num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                  guidance_rescale=guidance_rescale, width=width, height=height, negative_prompt=negative_prompt,
                                  original_size=original_size, crops_coords_top_left=crops_coords_top_left,
                                  target_size=target_size,
                                  scheduler=scheduler, num_images=num_images, clip_skip=clip_skip, pose=pose,
                                  controlnet_conditioning_scale=controlnet_conditioning_scale,
                                  control_guidance_start=control_guidance_start,
                                  control_guidance_end=control_guidance_end, pose_lines=pose_lines,
                                  hires=hires, detail=detail, regions=regions)
        return self.run(config, callbacks=callbacks, progress=progress, cancel=cancel, control_image=control_image)

    def make_config(self, character_or_prompt: str | Character | None = None, *, style: str | None = None,
                    extra: str = "", seed: int | None = None, num_inference_steps: int | None = None,
                    width: int | None = None, height: int | None = None, negative_prompt: str | None = None,
                    pose: Any = None, **settings: Any) -> GenerationConfig:
        """Resolve a card/prompt, style and defaults into a validated recipe (without running it).

        It switches nothing on: the studio's active adapters are the same afterwards. A card that
        names a LoRA puts it in the recipe's `loras` at the card's weight (its file is loaded, off,
        when it is not loaded yet); `run` uses the recipe's adapters for that run only. A card's
        `embeddings` are loaded (they only add words); the recipe's `embeddings` record the loaded
        ones its prompts write.
        """
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
        loras = self.active_loras
        if card is not None and card.lora:
            loras[self._load_off(card.lora)] = float(card.lora_weight)
        for name in card.embeddings if card is not None else ():
            self.load_embedding(name)  # a no-op when it is loaded already
        prompt, negative = compose_prompt(card or character_or_prompt, style, extra)
        if negative_prompt is not None:
            negative = negative_prompt
        settings["embeddings"] = self._embeddings_written(
            [prompt, negative, *(p.get(k, "") for p in settings.get("style_mix") or () if isinstance(p, dict)
                                 for k in ("prompt", "negative_prompt"))])
        if seed is None:
            seed = card.seed if card is not None and card.seed is not None else random.randint(0, MAX_SEED - 64)
        width = self.default_size if width is None else width
        height = self.default_size if height is None else height
        if pose is not None:
            pose = self._pose_dict(pose, width, height)
        if settings.get("guidance_scale") is None:
            settings["guidance_scale"] = self.default_guidance
        if settings.get("guidance_rescale") is None:
            from .models.family import V_PREDICTION_GUIDANCE_RESCALE

            # diffusers' ControlNet pipelines have no CFG rescale, so a posed picture goes without.
            rescale = self.prediction_type == "v_prediction" and pose is None
            settings["guidance_rescale"] = V_PREDICTION_GUIDANCE_RESCALE if rescale else 0.0
        for key, value in self.family.conditioning_defaults(width, height).items():
            if settings.get(key) is None:
                settings[key] = value
        if settings.get("pose_lines") is None:
            settings["pose_lines"] = self.pose_lines
        return GenerationConfig(
            prompt=prompt, negative_prompt=negative, seed=seed,
            num_inference_steps=self.default_steps if num_inference_steps is None else num_inference_steps,
            width=width, height=height, model=self.model_id,
            character=card.name if card else None,
            style=style if style is not None else (card.style if card else None),
            loras=loras, pose=pose, **settings)

    @staticmethod
    def _pose_dict(pose: Any, width: int, height: int) -> dict:
        from .pose import Pose
        from .pose.compose import load_people

        p = pose if isinstance(pose, Pose) else load_people(pose)  # several people: a PoseGroup
        p.require_keypoints(pose if isinstance(pose, str) else "no keypoints")
        return p.fit(width, height).to_dict()

    def run(self, config: GenerationConfig, *, callbacks: Iterable[StepCallback] = (),
            progress: Callable[[StepProgress], None] | None = None, cancel: CancelToken | None = None,
            control_image: Any = None, latents: Any = None, embeddings: tuple[Any, Any] | None = None,
            init_image: Any = None, strength: float = 0.6) -> Result:
        """Run a recipe. `studio.run(result.recipe)` rebuilds `result.image` exactly (on CPU).

        `latents` (initial noise, unscaled) and `embeddings` (an `EncodedPrompt`)
        override the seed's noise and the prompt encoding; interpolation and style mixes use
        them, and their own recipes record how to rebuild them.

        `init_image` makes it img2img (SDEdit): the picture, resized to the recipe's size, is
        noised by `strength` (0..1] and denoised under the recipe's prompt (and pose). As in
        diffusers, the recipe's steps set the schedule and the last int(steps * strength) of them
        run; where that is none, one runs and the result's recipe records 1 step, which re-runs
        the same picture (`workflows.hires.img2img_steps`, the one guard of every img2img pass).
        """
        # 1. Check the recipe fits this studio.
        self._check_recipe(config)
        run_args = dict(callbacks=callbacks, progress=progress, cancel=cancel, control_image=control_image,
                        latents=latents, embeddings=embeddings, init_image=init_image, strength=strength)
        with self.using_loras(config.loras):
            # Workflows (charstudio.workflows): an inpainting recipe starts from its source
            # picture; otherwise draw (regions inside), then the hires fix, then the detail pass.
            if config.inpaint:
                from .workflows.inpaint import run_inpaint

                return run_inpaint(self, config, **run_args)
            return self._after_drawing(config, self.draw(config, **run_args), progress, cancel)

    def run_batch(self, configs: Iterable[GenerationConfig], *, callbacks: Iterable[StepCallback] = (),
                  progress: Callable[[StepProgress], None] | None = None,
                  cancel: CancelToken | None = None) -> Result:
        """Run several recipes, drawing those that differ only in seed, prompt and pose in one UNet
        batch (up to `max_batch`); returns their images in order, each with its recipe.

        Every image keeps its own seed's noise, so each equals its recipe run alone up to
        floating-point rounding (bit-identical where the backend's batched kernels are; see the
        README's "Batches"). A sheet's poses run this way.
        """
        configs = [c for conf in configs for c in
                   ([conf] if conf.num_images == 1 else
                    [conf.replace(seed=conf.seed + i, num_images=1) for i in range(conf.num_images)])]
        if not configs:
            raise ConfigError("configs", [], "at least one recipe")
        for c in configs:
            self._check_recipe(c)
        shared = ("seed", "prompt", "negative_prompt", "pose", "character", "style", "embeddings")

        def key(c: GenerationConfig) -> str:
            import json

            data = {k: v for k, v in c.to_dict().items() if k not in shared}
            return json.dumps([data, c.pose is None], sort_keys=True, default=str)

        results: dict[int, tuple[Any, GenerationConfig, Any]] = {}
        order = list(range(len(configs)))
        while order:
            group = [i for i in order if key(configs[i]) == key(configs[order[0]])]
            order = [i for i in order if i not in group]
            config = configs[group[0]]

            def report(p: StepProgress, offset: int = len(results)) -> None:
                progress(StepProgress(image=p.image + offset, images=len(configs), step=p.step, steps=p.steps,
                                      batch=p.batch))

            with self.using_loras(config.loras):
                if config.inpaint:
                    parts = [self.run(configs[i], callbacks=callbacks, cancel=cancel) for i in group]
                    done = Result([r.image for r in parts], [r.recipe for r in parts],
                                  {"latents": [r.extras.get("latents", [None])[0] for r in parts]})
                else:
                    done = self.draw(config, callbacks=callbacks, progress=report if progress else None,
                                     cancel=cancel, control_image=None, latents=None, embeddings=None,
                                     batch=[configs[i] for i in group])
                    if config.hires or config.detail:
                        done = _join([self._after_drawing(r, _one(done, j), None, cancel)
                                      for j, r in enumerate(done.recipes)])
            for j, i in enumerate(group):
                results[i] = (done.images[j], done.recipes[j], (done.extras.get("latents") or [None] * len(group))[j])
        ordered = [results[i] for i in range(len(configs))]
        return Result([im for im, _, _ in ordered], [r for _, r, _ in ordered],
                      {"latents": [lat for _, _, lat in ordered]})

    def _after_drawing(self, config: GenerationConfig, result: Result, progress: Any, cancel: Any) -> Result:
        """The workflows that follow the drawing: the hires fix, then the detail pass."""
        if config.hires:
            from .workflows.hires import apply_hires

            result = apply_hires(self, config, result, progress=progress, cancel=cancel)
        if config.detail:
            from .workflows.detail import apply_detail

            result = apply_detail(self, config, result, progress=progress, cancel=cancel)
        return result

    def _check_recipe(self, config: GenerationConfig) -> None:
        """Refuse a recipe this studio cannot run (size, adapters), load its embeddings."""
        if config.model and config.model != self.model_id:
            log.warning("recipe was made with model %r; running it on %r", config.model, self.model_id)
        check_picture_size(config.width, config.height, self.default_size, allow_large=self.allow_large,
                           memory_bytes=available_memory(self.device), model=repr(self.model_id))
        if config.hires:  # the picture the hires fix draws must fit too, before the first pass runs
            from .workflows.hires import check_size as check_hires_size

            check_hires_size(self, config)
        small = self.family.size_warning(config.width, config.height, self.default_size, repr(self.model_id))
        if small:
            warnings.warn(small, UserWarning, stacklevel=3)
        missing = set(config.loras) - set(self._loras)
        if missing:
            raise ConfigError("loras", config.loras, f"adapters {sorted(missing)} are not loaded; load them with studio.load_lora first")
        self._load_recipe_embeddings(config.embeddings)

    @contextmanager
    def using_loras(self, weights: dict[str, float]) -> Iterator[None]:
        """Use exactly these adapters and weights inside the block, then put the studio's back.

        `run` wraps every recipe in it: a recipe rebuilds its image only with the LoRA weights it
        was made with, whatever the studio has set since. Interpolation encodes each end's
        prompt under that end's weights.
        """
        before = self.active_loras
        if dict(weights) == before:
            yield
            return
        log.info("using the recipe's LoRA weights %s for this run (studio has %s)", dict(weights), before)
        self._apply_weights(weights)
        try:
            yield
        finally:
            self._apply_weights(before)

    def _apply_weights(self, weights: dict[str, float]) -> None:
        """Switch exactly these adapters on, at these weights, in the model and in the record."""
        from . import lora

        lora.set_loras(self.pipeline("txt2img"), weights)
        for name, rec in self._loras.items():
            rec.weight = float(weights[name]) if name in weights else None

    def draw(self, config: GenerationConfig, *, callbacks: Iterable[StepCallback], progress: Any, cancel: Any,
             control_image: Any, latents: Any, embeddings: Any, init_image: Any = None,
             strength: float = 0.6, batch: list[GenerationConfig] | None = None) -> Result:
        """The drawing engine: one recipe (or a batch of one-image recipes) through the diffusers
        pipeline it needs, with no workflow passes; `run` adds hires/detail/inpaint around it.
        Workflows call this for their own passes (`init_image` + `strength` make it img2img)."""
        import torch

        # 1. The images to draw: the recipe's num_images (seed + i), or a batch of one-image
        #    recipes that share everything but seed, prompt and pose (see run_batch).
        wanted = batch or [config.replace(seed=config.seed + i, num_images=1) for i in range(config.num_images)]

        # 2. Pick the pipeline: the ControlNet one when there is a pose or control image, the
        #    img2img one when there is a starting picture.
        controls = [control_image] * len(wanted)
        if control_image is None and config.pose is not None:
            controls = [self.render_pose(c) for c in wanted]
        if controls[0] is not None and controls[0].size != (config.width, config.height):
            raise ConfigError("control_image", f"{controls[0].size[0]}x{controls[0].size[1]}",
                              f"must match the output size {config.width}x{config.height}; "
                              "pass a Pose (fitted automatically) or resize the image")
        kind: PipelineKind = "controlnet" if controls[0] is not None else "txt2img"
        extra_args: dict[str, Any] = dict(width=config.width, height=config.height, latents=latents)
        schedule = config.num_inference_steps
        if init_image is not None:
            from .workflows.hires import img2img_steps

            # The one steps guard: at least one step runs, and the recipe records the steps that ran.
            strength = check_float("strength", strength, hi=1.0, above=0.0)
            guard = img2img_steps(config.num_inference_steps, strength)
            schedule = guard.schedule
            if guard.recorded != config.num_inference_steps:
                log.info("%d steps at strength %g run none: running 1 (a %d-step schedule) and recording 1",
                         config.num_inference_steps, strength, schedule)
                config = config.replace(num_inference_steps=guard.recorded)
                wanted = [c.replace(num_inference_steps=guard.recorded) for c in wanted]
            if latents is not None:
                raise ConfigError("latents", "given", "img2img starts from init_image's noised latents; pass one or the other")
            kind = "controlnet_img2img" if controls[0] is not None else "img2img"
            # A picture is resized to the recipe's size; a tensor is latents (the hires fix's upscaled
            # first pass), which diffusers' img2img pipelines take as they are (4 channels).
            image = init_image if hasattr(init_image, "shape") else init_image.convert("RGB").resize(
                (config.width, config.height))
            extra_args = dict(image=image, strength=strength)
            if controls[0] is not None:
                extra_args.update(width=config.width, height=config.height)
        pipe = self.pipeline(kind)
        self.offload_for(pipe, kind)
        params = inspect.signature(pipe.__call__).parameters
        control_key = "control_image" if "control_image" in params else "image"
        if controls[0] is not None:
            if "control_mode" in params:  # diffusers' union pipelines take a control mode too
                extra_args["control_mode"] = [self.family.union_openpose_mode]
            extra_args.update(controlnet_conditioning_scale=config.controlnet_conditioning_scale,
                              control_guidance_start=config.control_guidance_start,
                              control_guidance_end=config.control_guidance_end)
        extra_args.update(self.family.call_arguments(config))
        if config.guidance_rescale:
            if "guidance_rescale" not in params:
                raise ConfigError("guidance_rescale", config.guidance_rescale,
                                  f"diffusers' {type(pipe).__name__} has no CFG rescale: use 0 with poses or img2img here")
            extra_args["guidance_rescale"] = config.guidance_rescale

        # 3. Encode each prompt once (long prompts in 75-token chunks).
        if embeddings is None and config.style_mix:
            from .interpolation import style_mix_embeddings

            embeddings = style_mix_embeddings(self.encoder, config.style_mix, config.clip_skip)
        if embeddings is not None and not isinstance(embeddings, EncodedPrompt):
            raise ConfigError("embeddings", type(embeddings).__name__, "an EncodedPrompt, as studio.encoder.encode() "
                              "returns (SDXL's carries the pooled embeddings too)")
        from .prompt_syntax import schedule_callback

        encoded: dict[tuple[str, str], Any] = {}
        edits: dict[tuple[str, str], Any] = {}
        for c in wanted:
            key = (c.prompt, c.negative_prompt)
            if key not in encoded:
                encoded[key] = embeddings or self.encoder.encode(c.prompt, c.negative_prompt, clip_skip=c.clip_skip)
                # [from:to:when] prompt editing: swap the prompt embeddings mid-run (None when unused).
                edits[key] = None if embeddings is not None else schedule_callback(
                    self.encoder, c.prompt, c.num_inference_steps, encoded[key].num_chunks, c.clip_skip)

        # img2img starts part-way: diffusers runs the last int(schedule * strength) steps.
        steps_run = config.num_inference_steps if init_image is None else guard.run

        # 4. Group the images into UNet batches: one generator per image keeps each image's own
        #    noise, so a batched image matches its recipe run alone (see README "Batches").
        groups = self._batches(wanted, encoded, edits, controls, latents=latents)
        mix_texts = [p[k] for p in config.style_mix for k in ("prompt", "negative_prompt")]

        def used_embeddings(c: GenerationConfig) -> dict[str, str]:
            # Each recipe records the embeddings its own prompts write.
            return self._embeddings_written([c.prompt, c.negative_prompt, *mix_texts])

        from .workflows import drawing_context

        images, recipes, latents_out = [], [], []
        for group in groups:
            if cancel is not None:
                cancel.check()
            first = group[0]
            key = (wanted[first].prompt, wanted[first].negative_prompt)
            step_cbs = list(callbacks) + ([edits[key]] if edits[key] is not None else [])
            if cancel is not None:
                step_cbs.insert(0, lambda p, s, t, kw: cancel.check() or {})
            if progress is not None:
                step_cbs.append(_progress_callback(progress, first + 1, len(wanted), steps_run, len(group)))
            combined, tensor_inputs = chain(step_cbs)
            pipe.scheduler = make_scheduler(config.scheduler, self.base_scheduler_config)
            # CPU noise: the same on every device.
            generators = [torch.Generator("cpu").manual_seed(wanted[i].seed) for i in group]
            call_args = dict(extra_args)
            if controls[0] is not None:
                call_args[control_key] = controls[first] if len(group) == 1 else [controls[i] for i in group]
            embed_args = _stack_embeddings([encoded[(wanted[i].prompt, wanted[i].negative_prompt)] for i in group])
            with drawing_context(self, wanted[first]):
                out = pipe(**embed_args, num_inference_steps=schedule,
                           guidance_scale=config.guidance_scale,
                           generator=generators[0] if len(group) == 1 else generators, output_type="latent",
                           callback_on_step_end=combined, callback_on_step_end_tensor_inputs=tensor_inputs,
                           **call_args)
            for row, i in enumerate(group):
                image_latents = out.images[row:row + 1]
                images.extend(self.decode(image_latents))
                latents_out.append(image_latents)
                recipes.append(wanted[i].replace(num_images=1, model=self.model_id, loras=self.active_loras,
                                                 embeddings=used_embeddings(wanted[i])))
        extras: dict[str, Any] = {"latents": latents_out, "batches": [len(g) for g in groups]}
        if init_image is not None:
            extras.update(kind=kind, img2img_strength=strength)
        return Result(images, recipes, extras)

    def _batches(self, wanted: list[GenerationConfig], encoded: dict, edits: dict, controls: list[Any],
                 latents: Any) -> list[list[int]]:
        """Which images share a UNet call: up to `max_batch` in order, all with prompts of one
        length (chunk count) and no prompt editing; given latents, or a union ControlNet with
        several poses, draw one image a call."""
        size = 1 if latents is not None or self.max_batch <= 1 else self.max_batch
        if controls[0] is not None and len({id(c) for c in controls}) > 1 and is_union_controlnet(self.controlnet):
            size = 1
        groups: list[list[int]] = []
        for i, c in enumerate(wanted):
            key = (c.prompt, c.negative_prompt)
            last = groups[-1] if groups else None
            fits = (last is not None and len(last) < size and edits[key] is None
                    and edits[(wanted[last[0]].prompt, wanted[last[0]].negative_prompt)] is None
                    and encoded[key].num_chunks == encoded[(wanted[last[0]].prompt,
                                                            wanted[last[0]].negative_prompt)].num_chunks)
            if fits:
                last.append(i)
            else:
                groups.append([i])
        return groups

    def from_photo(self, character: Any, photo: Any, *, strength: float = 0.6, pose: Any = "detect",
                   detector: Any = None, detector_weights: str | None = None, seed: int | None = None,
                   controlnet_conditioning_scale: float = 1.0, progress: Callable[[StepProgress], None] | None = None,
                   cancel: CancelToken | None = None, **settings: Any) -> Result:
        """Turn a reference photo into the character (in the card's style) with SDEdit img2img.

        ``strength`` (0..1] is how far the photo is noised before denoising: low keeps the photo's
        layout and colours, high keeps only its pose. ``pose="detect"`` extracts the photo's pose
        with `Pose.from_image` and adds the OpenPose ControlNet; pass a Pose or a pose name to use
        another, or None for plain img2img. The recipe records the prompt and pose; the photo itself
        is not stored, so re-running the recipe alone gives a txt2img picture.
        """
        from .pose import Pose, load_pose

        strength = check_float("strength", strength, hi=1.0, above=0.0)  # before the pose detector runs
        photo = photo.convert("RGB")
        factor = vae_factor(self.components["vae"])
        settings.setdefault("width", photo.width // factor * factor)
        settings.setdefault("height", photo.height // factor * factor)
        # diffusers' img2img pipelines have no CFG rescale: a v-prediction model goes without it here.
        settings.setdefault("guidance_rescale", 0.0)
        if isinstance(pose, str) and pose == "detect":
            pose = Pose.from_image(photo, detector=detector, weights=detector_weights)
        config = self.make_config(character, seed=seed, pose=pose if pose is None else load_pose(pose),
                                  controlnet_conditioning_scale=controlnet_conditioning_scale, **settings)
        return self.run(config, init_image=photo, strength=strength, progress=progress, cancel=cancel)

    def render_pose(self, config: GenerationConfig) -> Any:
        """The recipe's pose drawn as the ControlNet's control image at the recipe's size."""
        from .pose.compose import load_people

        return load_people(config.pose).fit(config.width, config.height).render(config.width, config.height,
                                                                                 lines=config.pose_lines)

    def encode(self, images: Any) -> Any:
        """PIL image(s) -> latents scaled as the UNet sees them (the VAE's mean); `decode` inverts it."""
        return vae_codec.encode(self.components["vae"], self.pipeline("txt2img").image_processor, images)

    def decode(self, latents: Any) -> list[Any]:
        """Latents -> PIL images with the VAE. NaNs (fp16 overflow) trigger an fp32 retry and a warning."""
        return vae_codec.decode(self.components["vae"], self.pipeline("txt2img").image_processor, latents)

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

    # -- character sheets (charstudio.sheets) ---------------------------------------------
    def sheet(self, character_or_prompt: Any, poses: list[Any], *, seed: int | None = None,
              reference_strength: float = 0.0, same_noise: bool = True, **settings: Any) -> Any:
        """One character in N poses with a labelled grid and a consistency score; see sheets.make_sheet."""
        from .sheets import make_sheet

        return make_sheet(self, character_or_prompt, poses, seed=seed, reference_strength=reference_strength,
                          same_noise=same_noise, **settings)

    # -- character workflows (charstudio.workflows) ---------------------------------------------
    def inpaint(self, image_or_result: Any, mask: Any, prompt: Any = None, *, strength: float = 0.75,
                seed: int | None = None, **settings: Any) -> Result:
        """Redraw the masked part of a picture (a `Result`, a PNG path or a PIL image); see
        workflows.inpaint.inpaint. `mask`: a picture, a box (left, top, right, bottom) or a body
        region of the picture's pose ("face", "hands", "torso", "legs", "hair")."""
        from .workflows.inpaint import inpaint

        return inpaint(self, image_or_result, mask, prompt, strength=strength, seed=seed, **settings)

    def detail(self, result: Any, parts: Iterable[str] = ("face", "hands"), **options: Any) -> Result:
        """Redraw each part (face, hands, ...) of a picture at the model's size and paste it back;
        see workflows.detail.detail."""
        from .workflows.detail import detail

        return detail(self, result, parts, **options)

    def turnaround(self, character_or_prompt: Any, views: Any = None, **settings: Any) -> Any:
        """The character from the front, three-quarter, side and back; see workflows.turnaround."""
        from .workflows.turnaround import turnaround

        return turnaround(self, character_or_prompt, views, **settings)

    def expressions(self, character_or_prompt: Any, expressions: Any = None, **settings: Any) -> Any:
        """One character with N expressions in one labelled grid; see workflows.expressions."""
        from .workflows.expressions import expression_sheet

        return expression_sheet(self, character_or_prompt, expressions, **settings)

    # -- textual-inversion embeddings (charstudio.embeddings) -----------------------------------
    # Loaded once into the shared tokenizers and text encoders, so every pipeline sees the word.
    @property
    def loaded_embeddings(self) -> dict[str, Path]:
        """The loaded embedding words and the files they came from."""
        return {token: rec.source for token, rec in self._embeddings.items()}

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
        from . import embeddings as ti

        path = ti.resolve_embedding_path(path_or_name, embeddings_dir or self.embeddings_dir).resolve()
        token = ti.default_token(path) if token is None else token
        rec = self._embeddings.get(token) if isinstance(token, str) else None
        if rec is not None:
            if rec.source == path:
                return token
            raise ConfigError("token", token, f"already loaded from {str(rec.source)!r}: "
                              f"studio.unload_embedding({token!r}) first, or choose another token")
        parts = [(self.components[tok], self.components[enc]) for tok, enc in self.family.text_parts]
        ti.check_token(token, [tok for tok, _ in parts])
        emb = ti.read_embedding(path, allow_pickle=self.allow_pickle if allow_pickle is None else bool(allow_pickle))
        vectors = ti.vectors_for(emb, self.family, [enc.get_input_embeddings().weight.shape[1] for _, enc in parts])
        self._drop_offload_hooks()
        ti.install(self.pipeline("txt2img"), token, [(tok, enc, v) for (tok, enc), v in zip(parts, vectors)])
        self._embeddings[token] = LoadedEmbedding(path, emb.num_vectors, ti.file_digest(path))
        log.info("loaded embedding %r (%d vectors) from %s", token, emb.num_vectors, path)
        return token

    def unload_embedding(self, token: str) -> None:
        """Take a loaded embedding's word out of the tokenizers and text encoders."""
        from . import embeddings as ti

        rec = self._embeddings.get(token)
        if rec is None:
            raise ConfigError("token", token, "no embedding of that word is loaded; loaded: "
                              + (", ".join(sorted(self._embeddings)) or "(none)"))
        self._drop_offload_hooks()
        ti.uninstall(self.pipeline("txt2img"), token, rec.num_vectors,
                     [(self.components[tok], self.components[enc]) for tok, enc in self.family.text_parts])
        del self._embeddings[token]

    def _drop_offload_hooks(self) -> None:
        # Low-VRAM mode: diffusers' loader would re-install the hooks on the text encoder's current
        # device (the CPU); take them off instead, and the next run installs them again.
        if self.low_vram and self._offloaded is not None:
            self._pipelines[self._offloaded].remove_all_hooks()
            self._offloaded = None

    def _embeddings_written(self, texts: Iterable[str]) -> dict[str, str]:
        """The loaded embeddings these texts write, word -> file (what a recipe records)."""
        from .embeddings import tokens_in

        tokenizer = self.components[self.family.text_parts[0][0]]
        return {t: str(self._embeddings[t].source) for t in tokens_in(tokenizer, texts, self._embeddings)}

    def _load_recipe_embeddings(self, wanted: dict[str, str]) -> None:
        """Load a recipe's embeddings that are not loaded: from the recorded file, else by its file
        name from `embeddings_dir`; a word loaded from a file of other content is refused."""
        from .embeddings import file_digest

        for token, source in wanted.items():
            recorded = Path(source).expanduser()
            rec = self._embeddings.get(token)
            if rec is not None:
                if rec.source == (recorded.resolve() if recorded.exists() else recorded):
                    continue
                if recorded.is_file() and file_digest(recorded) != rec.sha256:
                    raise ConfigError("embeddings", {token: source}, f"the recipe's {token!r} is another file than "
                                      f"the loaded {str(rec.source)!r}: studio.unload_embedding({token!r}) to run it "
                                      "with the recipe's")
                if not recorded.is_file():
                    log.warning("the recipe's embedding %r came from %s (not here); using the loaded %s",
                                token, source, rec.source)
                continue
            fallback = Path(self.embeddings_dir).expanduser() / recorded.name
            path = recorded if recorded.is_file() else fallback if fallback.is_file() else None
            if path is None:
                raise ConfigError("embeddings", {token: source}, f"the recipe writes the embedding {token!r}, whose "
                                  f"file {source!r} is missing (nor is {str(fallback)!r} there): put the file back, "
                                  f"or load a copy with studio.load_embedding(path, token={token!r})")
            self.load_embedding(path, token=token)

    # -- LoRA adapters (charstudio.lora) -------------------------------------------------------
    # All pipelines share one UNet and text encoder, so adapters loaded through the txt2img
    # pipeline apply to every kind. `_loras` is the record of what is loaded and on.
    def load_lora(self, path_or_name: Any, weight: float = 1.0, adapter_name: str | None = None, *,
                  lora_dir: Any = None) -> str:
        """Load a LoRA and use it at `weight`; returns the adapter name.

        `path_or_name`: a trained LoRA's name (lora/NAME/), a folder, or a .safetensors file in
        our format, kohya/A1111 format or from civitai. Loading the same file under the same name
        again only sets its weight.
        """
        name = self._load_off(path_or_name, adapter_name, lora_dir=lora_dir, weight=weight)
        self.set_loras({**self.active_loras, name: weight})
        return name

    def _load_off(self, path_or_name: Any, adapter_name: str | None = None, *, lora_dir: Any = None,
                  weight: float = 1.0) -> str:
        """Load a LoRA's file unless it is loaded already, leaving what is on as it was."""
        from . import lora

        path = lora.resolve_lora_path(path_or_name, lora_dir or lora.DEFAULT_LORA_DIR).resolve()
        name = adapter_name or lora.default_adapter_name(path)
        rec = self._loras.get(name)
        if rec is not None and rec.source == path:
            return name
        active = self.active_loras
        name = lora.load_lora(self.pipeline("txt2img"), path, weight=weight, adapter_name=name, active=active)
        self._loras[name] = LoadedLora(path)
        self._apply_weights(active)
        return name

    def set_loras(self, weights: dict[str, float]) -> None:
        """Use exactly these loaded adapters at these weights, e.g. {"aiko": 0.8, "watercolor": 0.5}."""
        if dict(weights) != self.active_loras:
            self._apply_weights(dict(weights))

    def unload_loras(self, names: Iterable[str] | None = None) -> None:
        """Remove adapters (all by default); the base model's layers come back."""
        from . import lora

        names = None if names is None else list(names)
        lora.unload_loras(self.pipeline("txt2img"), names, active=self.active_loras)
        for n in list(self._loras) if names is None else names:
            self._loras.pop(n, None)

    def unload_lora(self, name: str) -> None:
        """Remove one adapter."""
        self.unload_loras([name])

    def fuse_loras(self) -> list[str]:
        """Merge the active adapters at their weights into the base weights (faster sampling).

        Weights cannot change while fused; `unfuse_loras` or `unload_loras` undo it.
        """
        from . import lora

        return lora.fuse_loras(self.pipeline("txt2img"), self.active_loras)

    def unfuse_loras(self) -> None:
        """Take fused adapters back out of the base weights."""
        from . import lora

        lora.unfuse_loras(self.pipeline("txt2img"))

    def train_lora(self, config: Any) -> Iterator[Any]:
        """Train a LoRA on this studio's model (`charstudio.training.train_lora` with its components).

        The studio's adapters are off while it trains (the new LoRA learns the base model) and
        back on, at their weights, afterwards. Yields the training step records.
        """
        from .training import train_lora

        with self.using_loras({}):
            yield from train_lora(config, components=self.components)


def _progress_callback(progress: Callable[[StepProgress], None], image: int, images: int, steps: int,
                       batch: int = 1) -> StepCallback:
    def report(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        progress(StepProgress(image=image, images=images, step=step + 1, steps=steps, batch=batch))
        return {}

    return report


def _one(result: Result, i: int) -> Result:
    """Image i of a result, as a result of its own (with its latents)."""
    latents = result.extras.get("latents")
    return Result([result.images[i]], [result.recipes[i]], {"latents": [latents[i]] if latents else []})


def _join(results: list[Result]) -> Result:
    """One result from several one-image results, in order."""
    return Result([r.image for r in results], [r.recipe for r in results],
                  {"latents": [lat for r in results for lat in r.extras.get("latents") or [None]]})


def _stack_embeddings(prompts: list[EncodedPrompt]) -> dict[str, Any]:
    """One pipeline call's embedding arguments for a batch: each image's rows, in order."""
    import torch

    if len(prompts) == 1:
        return prompts[0].pipeline_kwargs()
    parts = [p.pipeline_kwargs() for p in prompts]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
