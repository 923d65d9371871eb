"""train_lora: accelerate, the base model and the cleanup around a `TrainingRun` (``run``: the
set-up steps and the loop; ``samples``: validation samples and prior-preservation images)."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import ConfigError
from ..models.family import detect_family
from .config import ADAPTER_NAME, LoraTrainingConfig, TrainingStep
from .data import check_pose_files, list_dataset
from .output import prepare_output
from .run import TrainingRun

if TYPE_CHECKING:
    from ..callbacks import CancelToken

log = logging.getLogger(__name__)


def _load_base(config: LoraTrainingConfig, weight_dtype: Any) -> dict[str, Any]:
    from ..models.loading import load_components, resolve_model

    source = resolve_model(config.model, allow_pickle=config.allow_pickle)
    return load_components(source, dtype=weight_dtype, config=config.model_config)


def train_lora(config: LoraTrainingConfig, *, components: dict[str, Any] | None = None,
               cancel: CancelToken | None = None) -> Iterator[TrainingStep]:
    """Train a LoRA; yield one ``TrainingStep`` per optimizer step; write ``output_dir/name/``.

    ``components`` (tokenizer(s), text encoder(s), unet, vae, scheduler: an SD 1.x or SDXL model)
    reuses an already loaded model instead of loading ``config.model``; the training adapter is
    removed from it again when the generator finishes. Stopping early (break, Ctrl-C) keeps the
    last checkpoint, from which ``resume=True`` continues.

    ``cancel`` (the app's Stop) ends the pictures drawn along the way within one denoising step:
    a step's validation pictures stop and the step's checkpoint and record follow as usual (the
    caller stops there, as on any record); class images being made end the run
    (GenerationCancelled), keeping those already written.
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
    # Each text encoder the config trains must be one of the family's (SD 1.x has no second one).
    lacking = [name for name in config.trained_parts() if name not in ("unet", *text_names)]
    if lacking:
        count = "one text encoder" if len(text_names) == 1 else f"{len(text_names)} text encoders"
        raise ConfigError(f"train_{lacking[0]}", True, f"the model is {family.label}, which has {count}; "
                          "use train_text_encoder")
    from .. import lora as lora_mod

    holder = _ModelParts(comps)
    if lora_mod.loaded_adapters(holder):
        # Class images, cached text embeddings and the fingerprint must come from the base model.
        # They stay off afterwards: Studio.train_lora switches a studio's own back on.
        log.info("switching off the model's LoRA adapters %s for training", lora_mod.loaded_adapters(holder))
        lora_mod.set_loras(holder, {})
    parked = Parked()
    try:
        yield from TrainingRun(config, comps, family, accelerator, output, weight_dtype, mixed, own_components,
                               parked, cancel).steps()
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


class Parked:
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


