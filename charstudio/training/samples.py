"""Pictures drawn during training: fixed-seed validation samples with the current adapter, and
the class images of prior preservation, from the frozen base model. Both honour the run's cancel
token within one denoising step: cancelled validation pictures end the step's validation (the
run goes on to its checkpoint and record, where the caller stops), cancelled class images end
the run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import GenerationCancelled
from ..models.family import V_PREDICTION_GUIDANCE_RESCALE, ModelFamily
from ..provenance.png import write_png
from .config import LoraTrainingConfig
from .data import IMAGE_SUFFIXES, class_image_seed
from .output import VALIDATION_DIR

if TYPE_CHECKING:
    from ..callbacks import CancelToken

log = logging.getLogger(__name__)


def sampling_pipeline(comps: dict[str, Any], family: ModelFamily, models: dict[str, Any]) -> Any:
    """The family's txt2img pipeline over the model's parts, with ``models`` (the UNet and text
    encoders carrying the training adapter) in place of the plain ones, and a DDIM scheduler."""
    from diffusers import DDIMScheduler

    parts = {n: comps[n] for n in family.component_names}
    parts.update(models)
    parts["scheduler"] = DDIMScheduler.from_config(comps["scheduler"].config)
    pipe = family.build_pipeline("txt2img", parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw(pipe: Any, family: ModelFamily, prompt: str, resolution: int, seed: int, steps: int,
         cancel: CancelToken | None = None) -> Any:
    """One picture of ``prompt``, its embeddings made by the family's prompt encoder (as a
    Studio makes them: long prompts are not cut), with CFG rescale on v-prediction models.
    ``cancel`` is checked after every denoising step (GenerationCancelled)."""
    import torch

    parts = {n: getattr(pipe, n) for pair in family.text_parts for n in pair}
    embeds = family.make_encoder(parts).encode(prompt, "", parse_weights=False).pipeline_kwargs()
    rescale = V_PREDICTION_GUIDANCE_RESCALE if pipe.scheduler.config.prediction_type == "v_prediction" else 0.0
    g = torch.Generator(device="cpu").manual_seed(seed)
    stop = {} if cancel is None else {"callback_on_step_end": lambda p, i, t, kwargs: cancel.check() or {}}
    return pipe(**embeds, height=resolution, width=resolution, generator=g, num_inference_steps=steps,
                guidance_rescale=rescale, **stop).images[0]


def make_class_images(comps: dict[str, Any], family: ModelFamily, config: LoraTrainingConfig, class_dir: Path,
                      resolution: int, device: Any, cancel: CancelToken | None = None) -> None:
    """The missing class images in ``class_dir``, one file each as it is drawn (a stopped run keeps
    those it made). ``cancel`` ends the run (GenerationCancelled) within one denoising step."""
    import torch

    class_dir.mkdir(parents=True, exist_ok=True)
    have = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    missing = config.num_class_images - len(have)
    if missing <= 0:
        return
    log.info("generating %d class images for %r in %s", missing, config.resolved_class_prompt, class_dir)
    pipe = sampling_pipeline(comps, family, {})
    for i in range(len(have), config.num_class_images):
        if cancel is not None:
            cancel.check()
        with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
            image = draw(pipe, family, config.resolved_class_prompt, resolution,
                         class_image_seed(config.seed, i), config.validation_inference_steps, cancel)
        write_png(class_dir / f"class_{i:04d}.png", image, model=config.model)  # (with its C2PA manifest)


def validate(comps: dict[str, Any], family: ModelFamily, models: dict[str, Any], config: LoraTrainingConfig,
             prompt: str, resolution: int, step: int, out: Path, accelerator: Any,
             cancel: CancelToken | None = None, name: str | None = None) -> list[Any]:
    """Fixed-seed samples with the current adapter, saved under ``validation/`` (as
    ``stepNNNNNN_i.png``, or ``NAME_i.png`` with ``name``). Once ``cancel`` is set, within one
    denoising step, the pictures stop: those finished are returned."""
    import torch

    for m in models.values():
        m.eval()
    pipe = sampling_pipeline(comps, family, models)
    images = []
    folder = out / VALIDATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(config.num_validation_images):
        try:
            if cancel is not None:
                cancel.check()
            with torch.no_grad(), accelerator.autocast():
                image = draw(pipe, family, prompt, resolution, config.seed + i, config.validation_inference_steps,
                             cancel)
        except GenerationCancelled:
            log.info("validation pictures of step %d stopped after %d of %d", step, i, config.num_validation_images)
            break
        write_png(folder / f"{name or f'step{step:06d}'}_{i}.png", image, model=config.model, overwrite=True)
        images.append(image)
    return images
