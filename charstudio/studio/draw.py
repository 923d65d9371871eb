"""The drawing engine: recipes through diffusers pipelines, one UNet batch at a time.

`run` runs one recipe with its workflows (charstudio.workflows.run_recipe: hires, detail, inpaint), `run_batch`
draws recipes that differ only in seed, prompt and pose together, and `draw` is the engine itself,
which the workflows call for their own passes.
"""

from __future__ import annotations

import inspect
import json
import logging
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..callbacks import CancelToken, StepCallback, StepProgress, chain
from ..conditioning import EncodedPrompt
from ..recipe.config import GenerationConfig
from ..errors import ConfigError
from ..limits import available_memory, check_picture_size
from ..models.family import is_union_controlnet
from ..models.vae import vae_factor
from ..result import Result
from ..schedulers import make_scheduler
from ..speed.draft import ensure_draft_lora
from ..validation import check_float

if TYPE_CHECKING:
    from . import Studio

log = logging.getLogger(__name__)

# What a batch's recipes may differ in (everything else must match to share a UNet call).
PER_IMAGE_FIELDS = ("seed", "prompt", "negative_prompt", "pose", "character", "style", "embeddings")


def run(studio: Studio, config: GenerationConfig, **run_args: Any) -> Result:
    """See `Studio.run`."""
    from ..workflows.run import run_recipe

    # 1. Check the recipe fits this studio; 2. its workflows, in their order, under its LoRAs.
    check_recipe(studio, config)
    with studio.using_loras(config.loras):
        return run_recipe(studio, config, **run_args)


def run_batch(studio: Studio, configs: Iterable[GenerationConfig], *, callbacks: Iterable[StepCallback] = (),
              progress: Callable[[StepProgress], None] | None = None, cancel: CancelToken | None = None) -> Result:
    """See `Studio.run_batch`."""
    # 1. One recipe per image, each checked.
    configs = [c for conf in configs for c in
               ([conf] if conf.num_images == 1 else
                [conf.replace(seed=conf.seed + i, num_images=1) for i in range(conf.num_images)])]
    if not configs:
        raise ConfigError("configs", [], "at least one recipe")
    for c in configs:
        check_recipe(studio, c)

    # 2. Group recipes that share everything but the per-image fields (in first-seen order; one
    #    key per recipe, computed once).
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(_batch_key(c), []).append(i)

    # 3. Draw each group (its workflows after), then put the images back in the callers' order.
    results: dict[int, tuple[Any, GenerationConfig, Any]] = {}
    for group in groups.values():
        done = _run_group(studio, [configs[i] for i in group], offset=len(results), total=len(configs),
                          callbacks=callbacks, progress=progress, cancel=cancel)
        lat = done.extras.get("latents") or [None] * len(group)
        for j, i in enumerate(group):
            results[i] = (done.images[j], done.recipes[j], lat[j])
    ordered = [results[i] for i in range(len(configs))]
    return Result([im for im, _, _ in ordered], [r for _, r, _ in ordered],
                  {"latents": [lat for _, _, lat in ordered]})


def _batch_key(c: GenerationConfig) -> str:
    data = {k: v for k, v in c.to_dict().items() if k not in PER_IMAGE_FIELDS}
    return json.dumps([data, c.pose is None], sort_keys=True, default=str)


def _run_group(studio: Studio, group: list[GenerationConfig], *, offset: int, total: int, callbacks: Any,
               progress: Any, cancel: Any) -> Result:
    config = group[0]

    def report(p: StepProgress) -> None:
        progress(StepProgress(image=p.image + offset, images=total, step=p.step, steps=p.steps, batch=p.batch))

    with studio.using_loras(config.loras):
        if config.inpaint:
            parts = [studio.run(c, callbacks=callbacks, cancel=cancel) for c in group]
            return Result([r.image for r in parts], [r.recipe for r in parts],
                          {"latents": [r.extras.get("latents", [None])[0] for r in parts]})
        done = studio.draw(config, callbacks=callbacks, progress=report if progress else None, cancel=cancel,
                           control_image=None, latents=None, embeddings=None, batch=group)
        from ..workflows.run import after_drawing

        return _join([after_drawing(studio, r, _one(done, j), None, cancel) for j, r in enumerate(done.recipes)])


def check_recipe(studio: Studio, config: GenerationConfig) -> None:
    """Refuse a recipe this studio cannot run (size, adapters), load its embeddings."""
    if config.model and config.model != studio.model_id:
        log.warning("recipe was made with model %r; running it on %r", config.model, studio.model_id)
    if config.model and config.quantize != studio.quantize:  # int8 weights move pixels by a level or two
        log.warning("recipe was drawn with quantize=%r; this studio's weights are %r", config.quantize, studio.quantize)
    check_picture_size(config.width, config.height, studio.default_size, allow_large=studio.allow_large,
                       memory_bytes=available_memory(studio.device), model=repr(studio.model_id))
    if config.hires:  # the picture the hires fix draws must fit too, before the first pass runs
        from ..workflows.hires import check_size as check_hires_size  # needs the studio's VAE

        check_hires_size(studio, config)
    small = studio.family.size_warning(config.width, config.height, studio.default_size, repr(studio.model_id))
    if small:
        warnings.warn(small, UserWarning, stacklevel=4)
    ensure_draft_lora(studio, config)  # a draft recipe read from a PNG loads its few-step LoRA by itself
    studio.lora_set.check_loaded(config.loras)
    studio.embedding_set.load_for_recipe(config.embeddings)


@dataclass
class _Call:
    """What every UNet call of one `draw` shares: the pipeline and its arguments."""

    kind: str
    pipe: Any
    args: dict[str, Any]
    control_key: str
    schedule: int  # the schedule length handed to diffusers
    steps_run: int  # the steps that run (img2img runs the last part of the schedule)
    strength: float | None = None
    controls: list[Any] = field(default_factory=list)


def draw(studio: Studio, config: GenerationConfig, *, callbacks: Iterable[StepCallback] = (), progress: Any = None,
         cancel: Any = None, control_image: Any = None, latents: Any = None, embeddings: Any = None,
         init_image: Any = None, strength: float = 0.6, batch: list[GenerationConfig] | None = None) -> Result:
    """See `Studio.draw`."""
    import torch

    # 1. The images to draw: the recipe's num_images (seed + i), or a batch of one-image
    #    recipes that share everything but seed, prompt and pose (see run_batch).
    wanted = batch or [config.replace(seed=config.seed + i, num_images=1) for i in range(config.num_images)]

    # 2. Pick the pipeline and its arguments (the img2img steps guard may change the recipes' steps).
    call, config, wanted = _plan_call(studio, config, wanted, control_image, latents, init_image, strength)

    # 3. Encode each prompt once (long prompts in 75-token chunks).
    encoded, edits = _encode_prompts(studio, config, wanted, embeddings)

    # 4. Group the images into UNet batches: one generator per image keeps each image's own
    #    noise, so a batched image matches its recipe run alone (see README "Batches").
    groups = _batches(studio, wanted, encoded, edits, call.controls, latents=latents)
    mix_texts = [p[k] for p in config.style_mix for k in ("prompt", "negative_prompt")]

    from ..workflows.run import drawing_context

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
            step_cbs.append(_progress_callback(progress, first + 1, len(wanted), call.steps_run, len(group)))
        combined, tensor_inputs = chain(step_cbs)
        call.pipe.scheduler = make_scheduler(config.scheduler, studio.base_scheduler_config)
        # CPU noise: the same on every device.
        generators = [torch.Generator("cpu").manual_seed(wanted[i].seed) for i in group]
        call_args = dict(call.args)
        if call.controls[0] is not None:
            call_args[call.control_key] = call.controls[first] if len(group) == 1 else [call.controls[i] for i in group]
        embed_args = _stack_embeddings([encoded[(wanted[i].prompt, wanted[i].negative_prompt)] for i in group])
        with drawing_context(studio, wanted[first]):
            out = call.pipe(**embed_args, num_inference_steps=call.schedule, guidance_scale=config.guidance_scale,
                            generator=generators[0] if len(group) == 1 else generators, output_type="latent",
                            callback_on_step_end=combined, callback_on_step_end_tensor_inputs=tensor_inputs,
                            **call_args)
        for row, i in enumerate(group):
            image_latents = out.images[row:row + 1]
            images.extend(studio.decode(image_latents))
            latents_out.append(image_latents)
            # Each recipe records the embeddings its own prompts write.
            written = studio.embedding_set.written([wanted[i].prompt, wanted[i].negative_prompt, *mix_texts])
            recipes.append(wanted[i].replace(num_images=1, model=studio.model_id, loras=studio.active_loras,
                                             embeddings=written))
    extras: dict[str, Any] = {"latents": latents_out, "batches": [len(g) for g in groups]}
    if init_image is not None:
        extras.update(kind=call.kind, img2img_strength=call.strength)
    return Result(images, recipes, extras)


def _plan_call(studio: Studio, config: GenerationConfig, wanted: list[GenerationConfig], control_image: Any,
               latents: Any, init_image: Any, strength: float) -> tuple[_Call, GenerationConfig, list[GenerationConfig]]:
    """The pipeline (the ControlNet one when there is a pose or control image, the img2img one
    when there is a starting picture) and the arguments every call of this draw shares."""
    controls = [control_image] * len(wanted)
    if control_image is None and config.pose is not None:
        controls = [studio.render_pose(c) for c in wanted]
    posed = controls[0] is not None
    if posed and controls[0].size != (config.width, config.height):
        raise ConfigError("control_image", f"{controls[0].size[0]}x{controls[0].size[1]}",
                          f"must match the output size {config.width}x{config.height}; "
                          "pass a Pose (fitted automatically) or resize the image")
    kind = "controlnet" if posed else "txt2img"
    args: dict[str, Any] = dict(width=config.width, height=config.height, latents=latents)
    schedule = steps_run = config.num_inference_steps
    if init_image is not None:
        from ..recipe.steps import img2img_steps

        # The one steps guard: at least one step runs, and the recipe records the steps that ran.
        strength = check_float("strength", strength, hi=1.0, above=0.0)
        guard = img2img_steps(config.num_inference_steps, strength)
        schedule, steps_run = guard.schedule, guard.run
        if guard.recorded != config.num_inference_steps:
            log.info("%d steps at strength %g run none: running 1 (a %d-step schedule) and recording 1",
                     config.num_inference_steps, strength, schedule)
            config = config.replace(num_inference_steps=guard.recorded)
            wanted = [c.replace(num_inference_steps=guard.recorded) for c in wanted]
        if latents is not None:
            raise ConfigError("latents", "given", "img2img starts from init_image's noised latents; pass one or the other")
        kind = "controlnet_img2img" if posed else "img2img"
        # A picture is resized to the recipe's size; a tensor is latents (the hires fix's upscaled
        # first pass), which diffusers' img2img pipelines take as they are (4 channels).
        image = init_image if hasattr(init_image, "shape") else init_image.convert("RGB").resize(
            (config.width, config.height))
        args = dict(image=image, strength=strength)
        if posed:
            args.update(width=config.width, height=config.height)
    pipe = studio.pipeline(kind)
    studio.offload_for(pipe, kind)
    params = inspect.signature(pipe.__call__).parameters
    if posed:
        if "control_mode" in params:  # diffusers' union pipelines take a control mode too
            args["control_mode"] = [studio.family.union_openpose_mode]
        args.update(controlnet_conditioning_scale=config.controlnet_conditioning_scale,
                    control_guidance_start=config.control_guidance_start,
                    control_guidance_end=config.control_guidance_end)
    args.update(studio.family.call_arguments(config))
    if config.timesteps and init_image is None:
        # A few-step LoRA's own timesteps (DMD2's 999, 749, 499, 249); img2img passes (hires, detail) run the
        # scheduler's spacing of their steps, as their strength cuts the schedule.
        if "timesteps" not in params:
            raise ConfigError("timesteps", config.timesteps, f"diffusers' {type(pipe).__name__} takes no timesteps: "
                              "use None (the scheduler's spacing)")
        args["timesteps"] = list(config.timesteps)
    if config.guidance_rescale:
        if "guidance_rescale" not in params:
            raise ConfigError("guidance_rescale", config.guidance_rescale,
                              f"diffusers' {type(pipe).__name__} has no CFG rescale: use 0 with poses or img2img here")
        args["guidance_rescale"] = config.guidance_rescale
    control_key = "control_image" if "control_image" in params else "image"
    call = _Call(kind, pipe, args, control_key, schedule, steps_run,
                 strength if init_image is not None else None, controls)
    return call, config, wanted


def _encode_prompts(studio: Studio, config: GenerationConfig, wanted: list[GenerationConfig],
                    embeddings: Any) -> tuple[dict, dict]:
    """Each distinct (prompt, negative) encoded once, and its [from:to:when] editing callback."""
    if embeddings is None and config.style_mix:
        from ..interpolation import style_mix_embeddings

        embeddings = style_mix_embeddings(studio.encoder, config.style_mix, config.clip_skip)
    if embeddings is not None and not isinstance(embeddings, EncodedPrompt):
        raise ConfigError("embeddings", type(embeddings).__name__, "an EncodedPrompt, as studio.encoder.encode() "
                          "returns (SDXL's carries the pooled embeddings too)")
    from ..prompt_syntax import schedule_callback

    encoded: dict[tuple[str, str], Any] = {}
    edits: dict[tuple[str, str], Any] = {}
    for c in wanted:
        key = (c.prompt, c.negative_prompt)
        if key not in encoded:
            encoded[key] = embeddings or studio.encoder.encode(c.prompt, c.negative_prompt, clip_skip=c.clip_skip)
            # [from:to:when] prompt editing: swap the prompt embeddings mid-run (None when unused).
            edits[key] = None if embeddings is not None else schedule_callback(
                studio.encoder, c.prompt, c.num_inference_steps, encoded[key].num_chunks, c.clip_skip)
    return encoded, edits


def _batches(studio: Studio, wanted: list[GenerationConfig], encoded: dict, edits: dict, controls: list[Any],
             latents: Any) -> list[list[int]]:
    """Which images share a UNet call: up to `max_batch` in order, all with prompts of one
    length (chunk count) and no prompt editing; given latents, or a union ControlNet with
    several poses, draw one image a call."""
    size = 1 if latents is not None or studio.max_batch <= 1 else studio.max_batch
    if controls[0] is not None and len({id(c) for c in controls}) > 1 and is_union_controlnet(studio.controlnet):
        size = 1
    groups: list[list[int]] = []
    for i, c in enumerate(wanted):
        key = (c.prompt, c.negative_prompt)
        last = groups[-1] if groups else None
        head = (wanted[last[0]].prompt, wanted[last[0]].negative_prompt) if last else None
        fits = (last is not None and len(last) < size and edits[key] is None and edits[head] is None
                and encoded[key].num_chunks == encoded[head].num_chunks)
        if fits:
            last.append(i)
        else:
            groups.append([i])
    return groups


def from_photo(studio: Studio, character: Any, photo: Any, *, strength: float = 0.6, pose: Any = "detect",
               detector: Any = None, detector_weights: str | None = None, seed: int | None = None,
               controlnet_conditioning_scale: float = 1.0, progress: Any = None, cancel: Any = None,
               **settings: Any) -> Result:
    """See `Studio.from_photo`."""
    from ..pose import Pose, load_pose

    strength = check_float("strength", strength, hi=1.0, above=0.0)  # before the pose detector runs
    photo = photo.convert("RGB")
    factor = vae_factor(studio.components["vae"])
    settings.setdefault("width", photo.width // factor * factor)
    settings.setdefault("height", photo.height // factor * factor)
    # diffusers' img2img pipelines have no CFG rescale: a v-prediction model goes without it here.
    settings.setdefault("guidance_rescale", 0.0)
    if isinstance(pose, str) and pose == "detect":
        pose = Pose.from_image(photo, detector=detector, weights=detector_weights)
    config = studio.make_config(character, seed=seed, pose=pose if pose is None else load_pose(pose),
                                controlnet_conditioning_scale=controlnet_conditioning_scale, **settings)
    return studio.run(config, init_image=photo, strength=strength, progress=progress, cancel=cancel)


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
