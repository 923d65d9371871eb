"""train_lora: the accelerate training loop, validation samples and prior-preservation images."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError
from ..io_utils import atomic_write
from ..limits import max_side
from ..models.family import V_PREDICTION_GUIDANCE_RESCALE, ModelFamily, detect_family, is_union_controlnet
from ..models.vae import vae_factor as factor_of
from ..lora import TEXT_ENCODER_TARGET_MODULES
from .checkpoint import load_checkpoint, model_fingerprint, save_checkpoint, write_json
from .conditioning import TrainingConditioner
from .config import ADAPTER_NAME, UNET_LORA_LAYERS, LoraTrainingConfig, TrainingStep
from .data import (
    IMAGE_SUFFIXES,
    BatchPlan,
    bucket_sizes,
    check_pose_files,
    class_image_seed,
    image_size,
    list_dataset,
    load_controls,
    load_pixels,
    nearest_bucket,
    scan_dataset,
    size_conditioning,
    step_seed,
)
from .objective import check_prediction_type, loss_target, min_snr_weights
from .output import VALIDATION_DIR, OutputPlan, prepare_output, save_final

log = logging.getLogger(__name__)


def _pick_optimizer(kind: str, groups: list[dict], config: LoraTrainingConfig, device: Any) -> tuple[Any, str]:
    import torch

    kwargs = dict(betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.adam_weight_decay,
                  eps=config.adam_epsilon)
    if kind in ("auto", "adamw8bit"):
        try:
            import bitsandbytes as bnb

            if device.type != "cuda":
                raise RuntimeError("8-bit AdamW needs a CUDA GPU")
            probe = torch.nn.Parameter(torch.zeros(64, device=device))
            probe.grad = torch.ones_like(probe)
            bnb.optim.AdamW8bit([probe]).step()  # fails here when its kernels do not load
            return bnb.optim.AdamW8bit(groups, **kwargs), "adamw8bit"
        except Exception as exc:  # any failure means bitsandbytes is not usable here
            if kind == "adamw8bit":
                raise ConfigError("optimizer", kind, f"bitsandbytes 8-bit AdamW does not work here ({exc}); "
                                  "use 'adamw' or 'auto'") from exc
            log.info("8-bit AdamW unavailable (%s); using torch AdamW", exc)
    return torch.optim.AdamW(groups, **kwargs), "adamw"


def _lr_lambda(kind: str, warmup: int, total: int):
    def f(step: int) -> float:
        if warmup and step < warmup and kind != "constant":
            return (step + 1) / warmup
        if kind in ("constant", "constant_with_warmup"):
            return 1.0
        progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def _pose_controlnet(config: LoraTrainingConfig, comps: dict[str, Any], weight_dtype: Any,
                     family: ModelFamily) -> Any:
    """The frozen OpenPose ControlNet for ``pose_conditioning``: ``config.controlnet``, else the
    one loaded with the model (a Studio's, or tiny's), else the model's own (the family's)."""
    from ..models.loading import load_controlnet, resolve_model

    net = comps.get("controlnet") if config.controlnet is None else None
    if net is None:
        location = config.controlnet or resolve_model(config.model, allow_pickle=config.allow_pickle).controlnet
        if location is None:
            raise ConfigError("controlnet", None, f"a ControlNet for model={config.model!r}: pass controlnet= "
                              "(a hub id or folder of an OpenPose ControlNet)")
        net = load_controlnet(location, dtype=weight_dtype, allow_pickle=config.allow_pickle, family=family)
    if is_union_controlnet(net):
        raise ConfigError("controlnet", config.controlnet or type(net).__name__,
                          f"a union ControlNet cannot condition training yet; use an OpenPose ControlNet, e.g. "
                          f"{family.openpose_controlnet!r}")
    net.requires_grad_(False)
    net.eval()
    return net


def _load_base(config: LoraTrainingConfig, weight_dtype: Any) -> dict[str, Any]:
    from ..models.loading import load_components, resolve_model

    source = resolve_model(config.model, allow_pickle=config.allow_pickle)
    return load_components(source, dtype=weight_dtype, config=config.model_config)


def train_lora(config: LoraTrainingConfig, *, components: dict[str, Any] | None = None) -> Iterator[TrainingStep]:
    """Train a LoRA; yield one ``TrainingStep`` per optimizer step; write ``output_dir/name/``.

    ``components`` (tokenizer(s), text encoder(s), unet, vae, scheduler: an SD 1.x or SDXL model)
    reuses an already loaded model instead of loading ``config.model``; the training adapter is
    removed from it again when the generator finishes. Stopping early (break, Ctrl-C) keeps the
    last checkpoint, from which ``resume=True`` continues.
    """
    import torch
    from accelerate import Accelerator

    # 1. Accelerator first: only the main process touches the output folder.
    mixed = config.mixed_precision
    if components is not None:
        # A caller's model (a Studio's) keeps its dtype: training follows it instead of casting it.
        have = next(components["unet"].parameters()).dtype
        derived = {torch.float32: "no", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(have, "no")
        if mixed not in (None, derived):
            raise ConfigError("mixed_precision", mixed, f"the given model is in {have}; use {derived!r} or None")
        mixed = derived
    if mixed is None:
        mixed = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if torch.cuda.is_available() else "no"
    if mixed != "no" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision", config.mixed_precision, "fp16/bf16 training needs a CUDA GPU; use 'no'")
    accelerator = Accelerator(mixed_precision=mixed)
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed]

    # 2. Cheap checks before anything heavy: output folder state, dataset folder.
    output = prepare_output(config, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    images, _ = list_dataset(config.data_dir)
    if config.pose_conditioning:
        check_pose_files(images)

    # 3. Base model, frozen. Adapters are added below; only they train.
    own_components = components is None
    comps = _load_base(config, weight_dtype) if own_components else components
    family = detect_family(comps)
    text_names = [enc for _, enc in family.text_parts]
    if config.train_text_encoder_2 and "text_encoder_2" not in text_names:
        raise ConfigError("train_text_encoder_2", True, f"the model is {family.label}, which has one text encoder; "
                          "use train_text_encoder")
    from .. import lora as lora_mod

    holder = _ModelParts(comps)
    if lora_mod.loaded_adapters(holder):
        # Class images, cached text embeddings and the fingerprint must come from the base model.
        # They stay off afterwards: Studio.train_lora switches a studio's own back on.
        log.info("switching off the model's LoRA adapters %s for training", lora_mod.loaded_adapters(holder))
        lora_mod.set_loras(holder, {})
    parked = _Parked()
    try:
        yield from _train(config, comps, family, accelerator, output, weight_dtype, mixed, own_components, parked)
    except BaseException:
        # A folder this run made that has no checkpoint has nothing to resume: it goes.
        if accelerator.is_main_process:
            output.discard_if_unused()
        raise
    finally:
        parked.restore()  # parts moved to CPU memory while idle go back to the device
        if not own_components:
            # The caller's model goes back to how it came: no training adapter, frozen, eval mode.
            _detach_training_adapter(comps["unet"], {n: comps[n] for n in text_names}, config)
            if lora_mod.loaded_adapters(holder):
                lora_mod.set_loras(holder, {})  # peft switched a remaining adapter on when ours was deleted
        accelerator.free_memory()


class _ModelParts:
    """The LoRA-carrying parts of a model (UNet, text encoders), for charstudio.lora functions that take a pipe."""

    def __init__(self, comps: dict[str, Any]):
        self.unet = comps["unet"]
        self.text_encoder = comps.get("text_encoder")
        self.text_encoder_2 = comps.get("text_encoder_2")


def _train(config: LoraTrainingConfig, comps: dict[str, Any], family: ModelFamily, accelerator: Any,
           output: OutputPlan, weight_dtype: Any, mixed: str, own_components: bool,
           parked: "_Parked") -> Iterator[TrainingStep]:
    """The body of ``train_lora`` once the model is loaded (split out so cleanup always runs)."""
    import torch
    from diffusers import DDPMScheduler

    out, resume_from = output.work, output.resume_from
    device, is_main = accelerator.device, accelerator.is_main_process
    unet, vae = comps["unet"], comps["vae"]
    # The family's text encoders (SD 1.x: one; SDXL: two), by component name, and those that train.
    text_encoders = {enc: comps[enc] for _, enc in family.text_parts}
    trained_text = [n for n in text_encoders if config.trains(n)]
    for m in (*text_encoders.values(), unet, vae):
        m.requires_grad_(False)
    _move(unet, device, weight_dtype)
    for m in text_encoders.values():
        _move(m, device, weight_dtype)
    # Encoding is cheap next to the UNet, and fp32 avoids fp16 VAE overflow; a caller's VAE keeps its dtype.
    _move(vae, device, torch.float32 if own_components else next(vae.parameters()).dtype)
    noise_scheduler = DDPMScheduler.from_config(comps["scheduler"].config)
    prediction_type = check_prediction_type(noise_scheduler, config.model)
    vae_factor = factor_of(vae)
    native = int(unet.config.sample_size) * vae_factor
    resolution = config.resolution or native
    if resolution > max_side(native):
        raise ConfigError("resolution", resolution, f"the model was trained at {native}x{native}: train at up to "
                          f"{max_side(native)} (its native size is the usual choice)")
    divisor = vae_factor * 2 ** (len(unet.config.down_block_types) - 1)
    if resolution % divisor:
        raise ConfigError("resolution", resolution, f"use a multiple of {divisor} for this model")
    fingerprint = model_fingerprint(unet, comps["text_encoder"], comps.get("text_encoder_2"))
    identity = {"model": config.model, "model_fingerprint": fingerprint, "rank": config.rank,
                "alpha": float(config.alpha), "train_text_encoder": config.train_text_encoder,
                "train_text_encoder_2": config.train_text_encoder_2,
                "pose_conditioning": config.pose_conditioning, "lora_layers": config.lora_layers,
                "trigger_word": config.trigger_word, "instance_prompt": config.resolved_instance_prompt}

    # 4. The dataset: decode images once, pick buckets, keep pixels in memory (5-50 images).
    #    Each sample's size conditioning (SDXL's time ids) records the picture's size on disk and
    #    where its crop was cut, unflipped and mirrored.
    report = scan_dataset(config.data_dir, instance_prompt=config.resolved_instance_prompt,
                          min_size=config.min_image_size or resolution // 2)
    buckets = bucket_sizes(resolution, divisor, config.crop, family)
    bucket_of = [nearest_bucket(e.width, e.height, buckets) for e in report.examples]
    pixels = [load_pixels(e.path, buckets[b]) for e, b in zip(report.examples, bucket_of)]
    size_conds = [{f: size_conditioning(e.width, e.height, buckets[b], flipped=f) for f in (False, True)}
                  for e, b in zip(report.examples, bucket_of)]
    captions = [e.caption for e in report.examples]
    validation_prompt = config.resolved_validation_prompt(report)
    controlnet, controls = None, []
    if config.pose_conditioning:
        controlnet = _pose_controlnet(config, comps, weight_dtype, family)
        _move(controlnet, device, weight_dtype)
        controls = [load_controls(e.path, buckets[b], config.flip) for e, b in zip(report.examples, bucket_of)]

    # 5. Prior preservation: class images from the frozen base model (generated once, kept).
    class_pixels: list[Any] = []
    class_conds: list[tuple[int, ...]] = []
    if config.with_prior_preservation:
        # Under the LoRA's real folder even while an overwrite is staged: class images are kept
        # across runs, and the swap carries them into the new folder.
        class_dir = Path(config.class_data_dir).expanduser() if config.class_data_dir else output.final / "class_images"
        if is_main:
            _make_class_images(comps, family, config, class_dir, resolution, device)
        accelerator.wait_for_everyone()
        class_files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        class_files = class_files[: config.num_class_images]
        class_pixels = [load_pixels(p, (resolution, resolution)) for p in class_files]
        class_conds = [size_conditioning(*image_size(p), (resolution, resolution)) for p in class_files]

    # 6. LoRA adapters. Seeded so the initial A matrices are the same on every run.
    from peft import LoraConfig

    torch.manual_seed(config.seed)
    unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.lora_dropout,
                                init_lora_weights="gaussian", target_modules=UNET_LORA_LAYERS[config.lora_layers]),
                     adapter_name=ADAPTER_NAME)
    for name in trained_text:
        text_encoders[name].add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha,
                                                   lora_dropout=config.lora_dropout, init_lora_weights="gaussian",
                                                   target_modules=list(TEXT_ENCODER_TARGET_MODULES)),
                                        adapter_name=ADAPTER_NAME)
    # add_adapter activates only the new adapter, but layers switched off earlier (a Studio's
    # adapters, above) stay off until enabled.
    unet.enable_lora()
    if trained_text:
        from diffusers.loaders.lora_base import enable_lora_for_text_encoder

        for name in trained_text:
            enable_lora_for_text_encoder(text_encoders[name])
    trainable = {"unet": unet, **{n: text_encoders[n] for n in trained_text}}
    for m in trainable.values():
        for p in m.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # the adapters train in fp32 even when the base is fp16
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        for name in trained_text:
            text_encoders[name].gradient_checkpointing_enable()

    # 7. Caches: text embeddings of the frozen encoders and VAE latents. Captions are encoded
    #    as generation encodes prompts (the family's encoder: in 75-token chunks, never cut at 77).
    conditioner = TrainingConditioner.for_family(family, comps, trained_text, cache=config.cache_text_embeddings)
    conditioner.prepare(captions + [config.resolved_class_prompt] * bool(class_pixels))

    def encode_latent_dist(batch: Any) -> tuple[Any, Any]:
        with torch.no_grad():
            dist = vae.encode(batch.to(device, vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    latent_cache: dict[tuple[str, int, bool], tuple[Any, Any]] = {}
    if config.cache_latents:
        for kind, items in (("instance", pixels), ("class", class_pixels)):
            for i, px in enumerate(items):
                for flipped in ((False, True) if config.flip else (False,)):
                    img = torch.flip(px, dims=[2]) if flipped else px
                    mean, std = encode_latent_dist(img[None])
                    latent_cache[(kind, i, flipped)] = (mean[0], std[0])
    # On a GPU, parts the caches leave idle wait in CPU memory (back for validation only).
    if device.type == "cuda":
        parked.park([comps[n] for n in ["vae"] * config.cache_latents + conditioner.idle_parts], device)

    # 8. Optimizer and schedule; accelerate wraps the trained models (DDP when multi-process).
    groups = [{"params": [p for p in m.parameters() if p.requires_grad], "lr": config.learning_rate_of(name)}
              for name, m in trainable.items()]
    optimizer, optimizer_name = _pick_optimizer(config.optimizer, groups, config, device)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(config.lr_scheduler, config.lr_warmup_steps, config.max_train_steps))
    *prepared, optimizer = accelerator.prepare(*trainable.values(), optimizer)
    wrapped = dict(zip(trainable, prepared))
    unet_t = wrapped["unet"]
    # The lr scheduler stays unprepared: accelerate would step it once per process.

    def trained_parts() -> dict[str, Any]:
        """The unwrapped UNet and text encoders, as the sampling pipeline and save_lora take them."""
        return {"unet": accelerator.unwrap_model(unet_t),
                **{n: accelerator.unwrap_model(wrapped.get(n, m)) for n, m in text_encoders.items()}}

    def lora_parts() -> dict[str, Any]:
        """The parts whose adapters are saved: the UNet and the trained text encoders."""
        return {n: m for n, m in trained_parts().items() if n in trainable}

    # 9. Resume: adapter weights, optimizer, scheduler, RNG, loss history.
    start_step, elapsed_before, history = 0, 0.0, []
    if resume_from is not None:
        start_step, elapsed_before, history = load_checkpoint(
            resume_from, identity, config, accelerator, unet, comps["text_encoder"], optimizer, lr_scheduler,
            text_encoder_2=comps.get("text_encoder_2"))
        log.info("resumed from %s (step %d)", resume_from, start_step)
    if is_main:
        resolved = {"resolution": resolution, "mixed_precision": mixed, "optimizer": optimizer_name,
                    "num_processes": accelerator.num_processes, "buckets": sorted({buckets[b] for b in bucket_of}),
                    "family": family.name, "prediction_type": prediction_type,
                    "trained_components": list(trainable),
                    "learning_rates": {name: config.learning_rate_of(name) for name in trainable},
                    "instance_prompt": config.resolved_instance_prompt,
                    "validation_prompt": validation_prompt,
                    "class_prompt": config.resolved_class_prompt if class_pixels else None,
                    "num_class_images": len(class_pixels), "model_fingerprint": fingerprint}
        dataset_info = {"images": [str(e.path.name) for e in report.examples],
                        "captions_from_files": sum(1 for e in report.examples if e.caption_from_file),
                        "skipped": [[p.name, why] for p, why in report.skipped]}
        if family.micro_conditioning:
            dataset_info["size_conditioning"] = {e.path.name: list(c[False]) for e, c in zip(report.examples, size_conds)}
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "training_config.json",
                    {"config": config.to_dict(), "resolved": resolved, "dataset": dataset_info})

    # 10. A run resumed from its final checkpoint (stopped while writing the outputs) just writes them.
    if start_step >= config.max_train_steps:
        if start_step > config.max_train_steps:
            log.warning("the checkpoint is at step %d, past max_train_steps=%d; saving it as the result",
                        start_step, config.max_train_steps)
        files = {}
        if is_main:
            files = save_final(output, config, lora_parts(), history, resolution)
        accelerator.wait_for_everyone()
        last = history[-1] if history else (start_step, float("nan"), 0.0, elapsed_before)
        yield TrainingStep(step=start_step, total_steps=config.max_train_steps, loss=last[1], lr=last[2],
                           elapsed=elapsed_before, epoch=0, done=True, files=files, is_main_process=is_main)
        return

    # 11. The loop.
    num_proc, proc = accelerator.num_processes, accelerator.process_index
    plan = BatchPlan(bucket_of, config.batch_size * num_proc, config.seed)
    accum = config.gradient_accumulation_steps
    scaling = vae.config.scaling_factor
    num_timesteps = noise_scheduler.config.num_train_timesteps
    params = [p for g in groups for p in g["params"]]

    def latents_for(kind: str, items: list[Any], idx: list[int], flips: list[bool], g: Any) -> Any:
        if config.cache_latents:
            mean = torch.stack([latent_cache[(kind, i, f)][0] for i, f in zip(idx, flips)])
            std = torch.stack([latent_cache[(kind, i, f)][1] for i, f in zip(idx, flips)])
        else:
            batch = torch.stack([torch.flip(items[i], dims=[2]) if f else items[i] for i, f in zip(idx, flips)])
            mean, std = encode_latent_dist(batch)
        eps = torch.randn(mean.shape, generator=g).to(device)
        return (mean + std * eps) * scaling

    def denoise_loss(latents: Any, texts: list[str], time_ids: list, g: Any, cond: Any = None) -> Any:
        noise = torch.randn(latents.shape, generator=g).to(device)
        t = torch.randint(0, num_timesteps, (latents.shape[0],), generator=g).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        target = loss_target(noise_scheduler, latents, noise, t)
        hidden, pooled = conditioner.encode(texts)
        hidden = hidden.to(weight_dtype)
        added = conditioner.unet_kwargs(pooled, time_ids, weight_dtype, device)  # SDXL: pooled + time ids
        residuals = {}
        if cond is not None:
            # Frozen, but not under no_grad: the text encoder's adapter learns through it too.
            down, mid = controlnet(noisy.to(weight_dtype), t, hidden, cond.to(device, weight_dtype),
                                   return_dict=False, **added)
            residuals = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        pred = unet_t(noisy.to(weight_dtype), t, hidden, **added, **residuals).sample
        per_sample = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if config.snr_gamma is not None:
            per_sample = per_sample * min_snr_weights(noise_scheduler, t, config.snr_gamma)
        return per_sample.mean()

    start_time = time.perf_counter()
    step = start_step
    last_checkpoint: Path | None = resume_from
    for m in wrapped.values():
        m.train()
    try:
        for step in range(start_step + 1, config.max_train_steps + 1):
            # 11a. One optimizer step = `accum` micro-batches, each drawn from its own generator.
            step_loss, epoch = 0.0, 0
            for micro in range(accum):
                counter = (step - 1) * accum + micro
                global_batch, epoch = plan.batch(counter)
                idx = global_batch[proc * config.batch_size:(proc + 1) * config.batch_size]
                g = torch.Generator().manual_seed(step_seed(config.seed, counter, proc))
                flips = (torch.rand(len(idx), generator=g) < 0.5).tolist() if config.flip else [False] * len(idx)
                sync = micro == accum - 1 or num_proc == 1
                with contextlib.ExitStack() as stack:
                    if not sync:
                        for m in wrapped.values():
                            stack.enter_context(accelerator.no_sync(m))
                    latents = latents_for("instance", pixels, idx, flips, g)
                    cond = torch.stack([controls[i][f] for i, f in zip(idx, flips)]) if controls else None
                    loss = denoise_loss(latents, [captions[i] for i in idx],
                                        [size_conds[i][f] for i, f in zip(idx, flips)], g, cond)
                    if class_pixels:
                        cidx = torch.randint(0, len(class_pixels), (len(idx),), generator=g).tolist()
                        clat = latents_for("class", class_pixels, cidx, [False] * len(cidx), g)
                        loss = loss + config.prior_loss_weight * denoise_loss(
                            clat, [config.resolved_class_prompt] * len(cidx), [class_conds[i] for i in cidx], g)
                    accelerator.backward(loss / accum)
                step_loss += loss.detach().float().item() / accum
            if config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"loss became {step_loss} at step {step}; lower learning_rate "
                                         f"(now {config.learning_rate}) or use mixed_precision='no'/'bf16'")
            if num_proc > 1:
                step_loss = accelerator.reduce(torch.tensor(step_loss, device=device), "mean").item()
            elapsed = elapsed_before + time.perf_counter() - start_time
            history.append((step, step_loss, lr, elapsed))

            # 11b. Validation, checkpoint, and the final files.
            final = step == config.max_train_steps
            images: list[Any] = []
            if config.num_validation_images and ((config.validation_steps and step % config.validation_steps == 0)
                                                 or final):
                if is_main:
                    with parked.back():
                        images = _validate(comps, family, trained_parts(), config, validation_prompt,
                                           resolution, step, out, accelerator)
                for m in wrapped.values():
                    m.train()
            checkpoint = None
            if step % config.checkpointing_steps == 0 or final:
                checkpoint = save_checkpoint(out, step, identity, config, accelerator, unet, comps["text_encoder"],
                                              optimizer, lr_scheduler, history, elapsed,
                                              text_encoder_2=comps.get("text_encoder_2"))
                last_checkpoint = checkpoint or last_checkpoint
            files: dict[str, Path] = {}
            if final:
                accelerator.wait_for_everyone()
                if is_main:
                    files = save_final(output, config, lora_parts(), history, resolution)
                accelerator.wait_for_everyone()
                if checkpoint is not None and output.staged:
                    checkpoint = output.final / checkpoint.relative_to(output.work)
            yield TrainingStep(step=step, total_steps=config.max_train_steps, loss=step_loss, lr=lr,
                               elapsed=elapsed, epoch=epoch, images=images, checkpoint=checkpoint, done=final,
                               files=files, is_main_process=is_main)
    except (KeyboardInterrupt, GeneratorExit):
        log.warning("training stopped at step %d; last checkpoint: %s", step, last_checkpoint or "none")
        raise


def _move(model: Any, device: Any, dtype: Any) -> None:
    # diffusers warns on every dtype cast, so cast only when it changes something.
    p = next(model.parameters())
    if p.dtype != dtype:
        model.to(dtype=dtype)
    if p.device != device:
        model.to(device)


class _Parked:
    """Frozen parts moved to CPU memory while the caches make them idle (on a GPU only).

    ``back()`` brings them to the device for a while (validation images); ``restore()`` puts them
    back for good when training ends, so a caller's model is where it was.
    """

    def __init__(self) -> None:
        self.models: list[Any] = []
        self.device: Any = None

    def park(self, models: list[Any], device: Any) -> None:
        self.models, self.device = models, device
        self._to("cpu")
        if models:
            log.info("moved %d idle part(s) to CPU memory while training", len(models))

    def _to(self, where: Any) -> None:
        for m in self.models:
            m.to(where)
        if self.models and where == "cpu":
            import torch

            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def back(self) -> Iterator[None]:
        self._to(self.device)
        try:
            yield
        finally:
            self._to("cpu")

    def restore(self) -> None:
        self._to(self.device)
        self.models = []


def _detach_training_adapter(unet: Any, text_encoders: dict[str, Any], config: LoraTrainingConfig) -> None:
    from ..lora import remove_adapter

    remove_adapter(unet, text_encoders.get("text_encoder"), ADAPTER_NAME, text_encoders.get("text_encoder_2"))
    if config.gradient_checkpointing:
        unet.disable_gradient_checkpointing()
        for name, m in text_encoders.items():
            if config.trains(name):
                m.gradient_checkpointing_disable()
    for m in (unet, *text_encoders.values()):
        m.eval()
        m.requires_grad_(False)


def _sampling_pipeline(comps: dict[str, Any], family: ModelFamily, models: dict[str, Any]) -> Any:
    """The family's txt2img pipeline over the model's parts, with ``models`` (the UNet and text
    encoders carrying the training adapter) in place of the plain ones, and a DDIM scheduler."""
    from diffusers import DDIMScheduler

    parts = {n: comps[n] for n in family.component_names}
    parts.update(models)
    parts["scheduler"] = DDIMScheduler.from_config(comps["scheduler"].config)
    pipe = family.build_pipeline("txt2img", parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _draw(pipe: Any, family: ModelFamily, prompt: str, resolution: int, seed: int, steps: int) -> Any:
    """One picture of ``prompt``, its embeddings made by the family's prompt encoder (as a
    Studio makes them: long prompts are not cut), with CFG rescale on v-prediction models."""
    import torch

    parts = {n: getattr(pipe, n) for pair in family.text_parts for n in pair}
    embeds = family.make_encoder(parts).encode(prompt, "", parse_weights=False).pipeline_kwargs()
    rescale = V_PREDICTION_GUIDANCE_RESCALE if pipe.scheduler.config.prediction_type == "v_prediction" else 0.0
    g = torch.Generator(device="cpu").manual_seed(seed)
    return pipe(**embeds, height=resolution, width=resolution, generator=g, num_inference_steps=steps,
                guidance_rescale=rescale).images[0]


def _make_class_images(comps: dict[str, Any], family: ModelFamily, config: LoraTrainingConfig, class_dir: Path,
                       resolution: int, device: Any) -> None:
    import torch

    class_dir.mkdir(parents=True, exist_ok=True)
    have = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    missing = config.num_class_images - len(have)
    if missing <= 0:
        return
    log.info("generating %d class images for %r in %s", missing, config.resolved_class_prompt, class_dir)
    pipe = _sampling_pipeline(comps, family, {})
    for i in range(len(have), config.num_class_images):
        with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
            image = _draw(pipe, family, config.resolved_class_prompt, resolution,
                          class_image_seed(config.seed, i), config.validation_inference_steps)
        atomic_write(class_dir / f"class_{i:04d}.png", lambda tmp, im=image: im.save(tmp, format="PNG"))


def _validate(comps: dict[str, Any], family: ModelFamily, models: dict[str, Any], config: LoraTrainingConfig,
              prompt: str, resolution: int, step: int, out: Path, accelerator: Any) -> list[Any]:
    """Fixed-seed samples with the current adapter, saved under ``validation/``."""
    import torch

    for m in models.values():
        m.eval()
    pipe = _sampling_pipeline(comps, family, models)
    images = []
    folder = out / VALIDATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(config.num_validation_images):
        with torch.no_grad(), accelerator.autocast():
            image = _draw(pipe, family, prompt, resolution, config.seed + i, config.validation_inference_steps)
        atomic_write(folder / f"step{step:06d}_{i}.png", lambda tmp, im=image: im.save(tmp, format="PNG"),
                     overwrite=True)
        images.append(image)
    return images
