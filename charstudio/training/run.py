"""One LoRA training run once its model is loaded (`TrainingRun`): the set-up steps, then the
optimizer steps as `TrainingStep` records; `train_lora` (``loop``) wraps it with the cleanup."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import ConfigError
from ..limits import max_side
from ..lora import TEXT_ENCODER_TARGET_MODULES
from ..models.family import ModelFamily, is_union_controlnet
from ..models.vae import vae_factor as factor_of
from .checkpoint import load_checkpoint, model_fingerprint, save_checkpoint, write_json
from .conditioning import TrainingConditioner
from .config import ADAPTER_NAME, UNET_LORA_LAYERS, LoraTrainingConfig, TrainingStep
from .data import (
    IMAGE_SUFFIXES,
    BatchPlan,
    bucket_sizes,
    image_size,
    load_controls,
    load_pixels,
    nearest_bucket,
    scan_dataset,
    size_conditioning,
    step_seed,
)
from .objective import check_prediction_type, loss_target, min_snr_weights
from .optimizer import lr_lambda, pick_optimizer
from .output import OutputPlan, save_final
from .identity import adapters_off, make_tracker
from .samples import make_class_images, validate

if TYPE_CHECKING:
    from ..callbacks import CancelToken
    from .loop import Parked

log = logging.getLogger(__name__)


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


class TrainingRun:
    """The body of ``train_lora`` once the model is loaded (split out so cleanup always runs):
    the set-up steps (models, dataset, class images, adapters, caches, optimizer, resume), then
    one `TrainingStep` per optimizer step from `steps`. ``cancel`` stops the pictures drawn along
    the way (validation, class images) within one denoising step."""

    def __init__(self, config: LoraTrainingConfig, comps: dict[str, Any], family: ModelFamily, accelerator: Any,
                 output: OutputPlan, weight_dtype: Any, mixed: str, own_components: bool, parked: Parked,
                 cancel: CancelToken | None = None):
        self.config, self.comps, self.family, self.accelerator = config, comps, family, accelerator
        self.output, self.weight_dtype, self.mixed = output, weight_dtype, mixed
        self.own_components, self.parked, self.cancel = own_components, parked, cancel
        self.out, self.resume_from = output.work, output.resume_from
        self.device, self.is_main = accelerator.device, accelerator.is_main_process
        self.unet, self.vae = comps["unet"], comps["vae"]
        # The family's text encoders (SD 1.x: one; SDXL: two), by component name, and those that train.
        self.text_encoders = {enc: comps[enc] for _, enc in family.text_parts}
        self.trained_text = [n for n in self.text_encoders if config.trains(n)]

    def steps(self) -> Iterator[TrainingStep]:
        """Set up, then train: one record per optimizer step (one only for a finished resume)."""
        self._place_models()  # 3
        self._load_dataset()  # 4
        self._load_class_images()  # 5
        self._add_adapters()  # 6
        self._build_caches()  # 7
        self._build_optimizer()  # 8
        self._resume()  # 9
        self.tracker = make_tracker(self.config.identity_scorer, [e.path for e in self.report.examples], self.out,
                                    self.config.model, resumed=self.start_step > 0) if self.is_main else None
        # 10. A run resumed from its final checkpoint (stopped while writing the outputs) just writes them.
        if self.start_step >= self.config.max_train_steps:
            yield self._finish_resumed()
            return
        yield from self._loop()  # 11

    # -- set-up ------------------------------------------------------------------------------------
    def _place_models(self) -> None:
        """3. (continued) The frozen parts on the device, the noise schedule, the resolution
        checked against the model, and the identity a checkpoint must match to resume."""
        import torch
        from diffusers import DDPMScheduler

        config, comps, unet, vae = self.config, self.comps, self.unet, self.vae
        for m in (*self.text_encoders.values(), unet, vae):
            m.requires_grad_(False)
        _move(unet, self.device, self.weight_dtype)
        for m in self.text_encoders.values():
            _move(m, self.device, self.weight_dtype)
        # Encoding is cheap next to the UNet, and fp32 avoids fp16 VAE overflow; a caller's VAE keeps its dtype.
        _move(vae, self.device, torch.float32 if self.own_components else next(vae.parameters()).dtype)
        self.noise_scheduler = DDPMScheduler.from_config(comps["scheduler"].config)
        self.prediction_type = check_prediction_type(self.noise_scheduler, config.model)
        vae_factor = factor_of(vae)
        native = int(unet.config.sample_size) * vae_factor
        resolution = config.resolution or native
        if resolution > max_side(native):
            raise ConfigError("resolution", resolution, f"the model was trained at {native}x{native}: train at up to "
                              f"{max_side(native)} (its native size is the usual choice)")
        divisor = vae_factor * 2 ** (len(unet.config.down_block_types) - 1)
        if resolution % divisor:
            raise ConfigError("resolution", resolution, f"use a multiple of {divisor} for this model")
        self.resolution, self.divisor = resolution, divisor
        self.fingerprint = model_fingerprint(unet, comps["text_encoder"], comps.get("text_encoder_2"))
        self.identity = {"model": config.model, "model_fingerprint": self.fingerprint, "rank": config.rank,
                         "alpha": float(config.alpha), "train_text_encoder": config.train_text_encoder,
                         "train_text_encoder_2": config.train_text_encoder_2,
                         "pose_conditioning": config.pose_conditioning, "lora_layers": config.lora_layers,
                         "trigger_word": config.trigger_word, "instance_prompt": config.resolved_instance_prompt}

    def _load_dataset(self) -> None:
        """4. The dataset: decode images once, pick buckets, keep pixels in memory (5-50 images).
        Each sample's size conditioning (SDXL's time ids) records the picture's size on disk and
        where its crop was cut, unflipped and mirrored."""
        config = self.config
        report = scan_dataset(config.data_dir, instance_prompt=config.resolved_instance_prompt,
                              min_size=config.min_image_size or self.resolution // 2)
        buckets = bucket_sizes(self.resolution, self.divisor, config.crop, self.family)
        bucket_of = [nearest_bucket(e.width, e.height, buckets) for e in report.examples]
        self.report, self.buckets, self.bucket_of = report, buckets, bucket_of
        self.pixels = [load_pixels(e.path, buckets[b]) for e, b in zip(report.examples, bucket_of)]
        self.size_conds = [{f: size_conditioning(e.width, e.height, buckets[b], flipped=f) for f in (False, True)}
                           for e, b in zip(report.examples, bucket_of)]
        self.captions = [e.caption for e in report.examples]
        self.validation_prompt = config.resolved_validation_prompt(report)
        self.controlnet, self.controls = None, []
        if config.pose_conditioning:
            self.controlnet = _pose_controlnet(config, self.comps, self.weight_dtype, self.family)
            _move(self.controlnet, self.device, self.weight_dtype)
            self.controls = [load_controls(e.path, buckets[b], config.flip) for e, b in zip(report.examples, bucket_of)]

    def _load_class_images(self) -> None:
        """5. Prior preservation: class images from the frozen base model (generated once, kept)."""
        config, resolution = self.config, self.resolution
        self.class_pixels: list[Any] = []
        self.class_conds: list[tuple[int, ...]] = []
        if not config.with_prior_preservation:
            return
        # Under the LoRA's real folder even while an overwrite is staged: class images are kept
        # across runs, and the swap carries them into the new folder.
        class_dir = (Path(config.class_data_dir).expanduser() if config.class_data_dir
                     else self.output.final / "class_images")
        if self.is_main:
            make_class_images(self.comps, self.family, config, class_dir, resolution, self.device, self.cancel)
        self.accelerator.wait_for_everyone()
        class_files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        class_files = class_files[: config.num_class_images]
        self.class_pixels = [load_pixels(p, (resolution, resolution)) for p in class_files]
        self.class_conds = [size_conditioning(*image_size(p), (resolution, resolution)) for p in class_files]

    def _add_adapters(self) -> None:
        """6. LoRA adapters. Seeded so the initial A matrices are the same on every run."""
        import torch
        from peft import LoraConfig

        config, unet, text_encoders, trained_text = self.config, self.unet, self.text_encoders, self.trained_text
        torch.manual_seed(config.seed)
        unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.lora_dropout,
                                    init_lora_weights="gaussian",
                                    target_modules=UNET_LORA_LAYERS[config.lora_layers]),
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
        self.trainable = {"unet": unet, **{n: text_encoders[n] for n in trained_text}}
        for m in self.trainable.values():
            for p in m.parameters():
                if p.requires_grad:
                    p.data = p.data.float()  # the adapters train in fp32 even when the base is fp16
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            for name in trained_text:
                text_encoders[name].gradient_checkpointing_enable()

    def _build_caches(self) -> None:
        """7. Caches: text embeddings of the frozen encoders and VAE latents. Captions are encoded
        as generation encodes prompts (the family's encoder: in 75-token chunks, never cut at 77)."""
        import torch

        config = self.config
        self.conditioner = TrainingConditioner.for_family(self.family, self.comps, self.trained_text,
                                                          cache=config.cache_text_embeddings)
        self.conditioner.prepare(self.captions + [config.resolved_class_prompt] * bool(self.class_pixels))
        self.latent_cache: dict[tuple[str, int, bool], tuple[Any, Any]] = {}
        if config.cache_latents:
            for kind, items in (("instance", self.pixels), ("class", self.class_pixels)):
                for i, px in enumerate(items):
                    for flipped in ((False, True) if config.flip else (False,)):
                        img = torch.flip(px, dims=[2]) if flipped else px
                        mean, std = self._encode_latent_dist(img[None])
                        self.latent_cache[(kind, i, flipped)] = (mean[0], std[0])
        # On a GPU, parts the caches leave idle wait in CPU memory (back for validation only).
        if self.device.type == "cuda":
            self.parked.park([self.comps[n] for n in ["vae"] * config.cache_latents + self.conditioner.idle_parts],
                             self.device)

    def _encode_latent_dist(self, batch: Any) -> tuple[Any, Any]:
        import torch

        vae = self.vae
        with torch.no_grad():
            dist = vae.encode(batch.to(self.device, vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    def _build_optimizer(self) -> None:
        """8. Optimizer and schedule; accelerate wraps the trained models (DDP when multi-process)."""
        import torch

        config = self.config
        self.groups = [{"params": [p for p in m.parameters() if p.requires_grad], "lr": config.learning_rate_of(name)}
                       for name, m in self.trainable.items()]
        optimizer, self.optimizer_name = pick_optimizer(config.optimizer, self.groups, config, self.device)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(config.lr_scheduler, config.lr_warmup_steps, config.max_train_steps))
        *prepared, self.optimizer = self.accelerator.prepare(*self.trainable.values(), optimizer)
        self.wrapped = dict(zip(self.trainable, prepared))
        self.unet_t = self.wrapped["unet"]
        # The lr scheduler stays unprepared: accelerate would step it once per process.

    def trained_parts(self) -> dict[str, Any]:
        """The unwrapped UNet and text encoders, as the sampling pipeline and save_lora take them."""
        unwrap = self.accelerator.unwrap_model
        return {"unet": unwrap(self.unet_t),
                **{n: unwrap(self.wrapped.get(n, m)) for n, m in self.text_encoders.items()}}

    def lora_parts(self) -> dict[str, Any]:
        """The parts whose adapters are saved: the UNet and the trained text encoders."""
        return {n: m for n, m in self.trained_parts().items() if n in self.trainable}

    def _resume(self) -> None:
        """9. Resume: adapter weights, optimizer, scheduler, RNG, loss history; then the run's
        ``training_config.json``."""
        comps = self.comps
        self.start_step, self.elapsed_before, self.history = 0, 0.0, []
        if self.resume_from is not None:
            self.start_step, self.elapsed_before, self.history = load_checkpoint(
                self.resume_from, self.identity, self.config, self.accelerator, self.unet, comps["text_encoder"],
                self.optimizer, self.lr_scheduler, text_encoder_2=comps.get("text_encoder_2"))
            log.info("resumed from %s (step %d)", self.resume_from, self.start_step)
        if self.is_main:
            self._write_training_config()

    def _write_training_config(self) -> None:
        config, report, family = self.config, self.report, self.family
        trainable = self.trainable
        resolved = {"resolution": self.resolution, "mixed_precision": self.mixed, "optimizer": self.optimizer_name,
                    "num_processes": self.accelerator.num_processes,
                    "buckets": sorted({self.buckets[b] for b in self.bucket_of}),
                    "family": family.name, "prediction_type": self.prediction_type,
                    "trained_components": list(trainable),
                    "learning_rates": {name: config.learning_rate_of(name) for name in trainable},
                    "instance_prompt": config.resolved_instance_prompt,
                    "validation_prompt": self.validation_prompt,
                    "class_prompt": config.resolved_class_prompt if self.class_pixels else None,
                    "num_class_images": len(self.class_pixels), "model_fingerprint": self.fingerprint}
        dataset_info = {"images": [str(e.path.name) for e in report.examples],
                        "captions_from_files": sum(1 for e in report.examples if e.caption_from_file),
                        "skipped": [[p.name, why] for p, why in report.skipped]}
        if family.micro_conditioning:
            dataset_info["size_conditioning"] = {e.path.name: list(c[False])
                                                 for e, c in zip(report.examples, self.size_conds)}
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "training_config.json",
                   {"config": config.to_dict(), "resolved": resolved, "dataset": dataset_info})

    def _finish_resumed(self) -> TrainingStep:
        """10. The final files of a run whose checkpoint is already at (or past) the last step."""
        config, start_step = self.config, self.start_step
        if start_step > config.max_train_steps:
            log.warning("the checkpoint is at step %d, past max_train_steps=%d; saving it as the result",
                        start_step, config.max_train_steps)
        files = {}
        if self.is_main:
            files = save_final(self.output, config, self.lora_parts(), self.history, self.resolution)
        self.accelerator.wait_for_everyone()
        last = self.history[-1] if self.history else (start_step, float("nan"), 0.0, self.elapsed_before)
        return TrainingStep(step=start_step, total_steps=config.max_train_steps, loss=last[1], lr=last[2],
                            elapsed=self.elapsed_before, epoch=0, done=True, files=files, is_main_process=self.is_main)

    # -- the loop ----------------------------------------------------------------------------------
    def _loop(self) -> Iterator[TrainingStep]:
        """11. The loop: an optimizer step, then validation, checkpoint and the final files."""
        config, accelerator = self.config, self.accelerator
        self.num_proc, self.proc = accelerator.num_processes, accelerator.process_index
        self.plan = BatchPlan(self.bucket_of, config.batch_size * self.num_proc, config.seed)
        self.accum = config.gradient_accumulation_steps
        self.scaling = self.vae.config.scaling_factor
        self.num_timesteps = self.noise_scheduler.config.num_train_timesteps
        self.params = [p for g in self.groups for p in g["params"]]

        start_time = time.perf_counter()
        step = self.start_step
        self.last_checkpoint: Path | None = self.resume_from
        for m in self.wrapped.values():
            m.train()
        try:
            for step in range(self.start_step + 1, config.max_train_steps + 1):
                step_loss, lr, epoch = self._optimizer_step(step)
                elapsed = self.elapsed_before + time.perf_counter() - start_time
                self.history.append((step, step_loss, lr, elapsed))
                yield self._after_step(step, step_loss, lr, epoch, elapsed)
        except (KeyboardInterrupt, GeneratorExit):
            log.warning("training stopped at step %d; last checkpoint: %s", step, self.last_checkpoint or "none")
            raise

    def _optimizer_step(self, step: int) -> tuple[float, float, int]:
        """11a. One optimizer step = `accum` micro-batches, each drawn from its own generator.
        Returns the step's loss (the mean over processes), its learning rate and epoch."""
        import torch

        config, accelerator, optimizer = self.config, self.accelerator, self.optimizer
        step_loss, epoch = 0.0, 0
        for micro in range(self.accum):
            loss, epoch = self._micro_batch(step, micro)
            step_loss += loss / self.accum
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(self.params, config.max_grad_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        self.lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"loss became {step_loss} at step {step}; lower learning_rate "
                                     f"(now {config.learning_rate}) or use mixed_precision='no'/'bf16'")
        if self.num_proc > 1:
            step_loss = accelerator.reduce(torch.tensor(step_loss, device=self.device), "mean").item()
        return step_loss, lr, epoch

    def _micro_batch(self, step: int, micro: int) -> tuple[float, int]:
        """One micro-batch's forward and backward pass; returns its loss and the batch's epoch."""
        import torch

        config, accelerator, accum, proc = self.config, self.accelerator, self.accum, self.proc
        counter = (step - 1) * accum + micro
        global_batch, epoch = self.plan.batch(counter)
        idx = global_batch[proc * config.batch_size:(proc + 1) * config.batch_size]
        g = torch.Generator().manual_seed(step_seed(config.seed, counter, proc))
        flips = (torch.rand(len(idx), generator=g) < 0.5).tolist() if config.flip else [False] * len(idx)
        sync = micro == accum - 1 or self.num_proc == 1
        with contextlib.ExitStack() as stack:
            if not sync:
                for m in self.wrapped.values():
                    stack.enter_context(accelerator.no_sync(m))
            latents = self._latents_for("instance", self.pixels, idx, flips, g)
            controls = self.controls
            cond = torch.stack([controls[i][f] for i, f in zip(idx, flips)]) if controls else None
            loss = self._denoise_loss(latents, [self.captions[i] for i in idx],
                                      [self.size_conds[i][f] for i, f in zip(idx, flips)], g, cond)
            if self.class_pixels:
                cidx = torch.randint(0, len(self.class_pixels), (len(idx),), generator=g).tolist()
                clat = self._latents_for("class", self.class_pixels, cidx, [False] * len(cidx), g)
                loss = loss + config.prior_loss_weight * self._denoise_loss(
                    clat, [config.resolved_class_prompt] * len(cidx), [self.class_conds[i] for i in cidx], g)
            accelerator.backward(loss / accum)
        return loss.detach().float().item(), epoch

    def _latents_for(self, kind: str, items: list[Any], idx: list[int], flips: list[bool], g: Any) -> Any:
        import torch

        if self.config.cache_latents:
            cache = self.latent_cache
            mean = torch.stack([cache[(kind, i, f)][0] for i, f in zip(idx, flips)])
            std = torch.stack([cache[(kind, i, f)][1] for i, f in zip(idx, flips)])
        else:
            batch = torch.stack([torch.flip(items[i], dims=[2]) if f else items[i] for i, f in zip(idx, flips)])
            mean, std = self._encode_latent_dist(batch)
        eps = torch.randn(mean.shape, generator=g).to(self.device)
        return (mean + std * eps) * self.scaling

    def _denoise_loss(self, latents: Any, texts: list[str], time_ids: list, g: Any, cond: Any = None) -> Any:
        import torch

        device, weight_dtype, noise_scheduler = self.device, self.weight_dtype, self.noise_scheduler
        noise = torch.randn(latents.shape, generator=g).to(device)
        t = torch.randint(0, self.num_timesteps, (latents.shape[0],), generator=g).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        target = loss_target(noise_scheduler, latents, noise, t)
        hidden, pooled = self.conditioner.encode(texts)
        hidden = hidden.to(weight_dtype)
        added = self.conditioner.unet_kwargs(pooled, time_ids, weight_dtype, device)  # SDXL: pooled + time ids
        residuals = {}
        if cond is not None:
            # Frozen, but not under no_grad: the text encoder's adapter learns through it too.
            down, mid = self.controlnet(noisy.to(weight_dtype), t, hidden, cond.to(device, weight_dtype),
                                        return_dict=False, **added)
            residuals = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        pred = self.unet_t(noisy.to(weight_dtype), t, hidden, **added, **residuals).sample
        per_sample = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if self.config.snr_gamma is not None:
            per_sample = per_sample * min_snr_weights(noise_scheduler, t, self.config.snr_gamma)
        return per_sample.mean()

    def _after_step(self, step: int, step_loss: float, lr: float, epoch: int, elapsed: float) -> TrainingStep:
        """11b. Validation, checkpoint, and the final files; the step's record."""
        config, accelerator, output = self.config, self.accelerator, self.output
        final = step == config.max_train_steps
        images = self._validation_images(step, final)
        identity = self._identity(step, images)
        checkpoint = None
        if step % config.checkpointing_steps == 0 or final:
            comps = self.comps
            checkpoint = save_checkpoint(self.out, step, self.identity, config, accelerator, self.unet,
                                         comps["text_encoder"], self.optimizer, self.lr_scheduler, self.history,
                                         elapsed, text_encoder_2=comps.get("text_encoder_2"))
            self.last_checkpoint = checkpoint or self.last_checkpoint
        files: dict[str, Path] = {}
        if final:
            accelerator.wait_for_everyone()
            if self.is_main:
                files = save_final(output, config, self.lora_parts(), self.history, self.resolution)
            accelerator.wait_for_everyone()
            if checkpoint is not None and output.staged:
                checkpoint = output.final / checkpoint.relative_to(output.work)
        return TrainingStep(step=step, total_steps=config.max_train_steps, loss=step_loss, lr=lr,
                            elapsed=elapsed, epoch=epoch, images=images, checkpoint=checkpoint, done=final,
                            files=files, is_main_process=self.is_main, identity=identity)

    def _validation_images(self, step: int, final: bool) -> list[Any]:
        config = self.config
        images: list[Any] = []
        if config.num_validation_images and ((config.validation_steps and step % config.validation_steps == 0)
                                             or final):
            if self.is_main:
                with self.parked.back():
                    images = validate(self.comps, self.family, self.trained_parts(), config, self.validation_prompt,
                                      self.resolution, step, self.out, self.accelerator, self.cancel)
            for m in self.wrapped.values():
                m.train()
        return images

    def _identity(self, step: int, images: list[Any]) -> dict[str, Any] | None:
        """11c. The validation pictures' identity against the training pictures; the first time, the
        same prompt and seeds at weight 0 (the base model) are drawn and scored once."""
        if self.tracker is None or not images:
            return None
        if self.tracker.base is None:
            parts = self.trained_parts()
            with self.parked.back(), adapters_off(self.lora_parts()):
                base = validate(self.comps, self.family, parts, self.config, self.validation_prompt, self.resolution,
                                step, self.out, self.accelerator, self.cancel, name="base")
            for m in self.wrapped.values():
                m.train()
            self.tracker.base = self.tracker.score(base[:len(images)]) if base else None
        return self.tracker.record(step, images)


def _move(model: Any, device: Any, dtype: Any) -> None:
    # diffusers warns on every dtype cast, so cast only when it changes something.
    p = next(model.parameters())
    if p.dtype != dtype:
        model.to(dtype=dtype)
    if p.device != device:
        model.to(device)
