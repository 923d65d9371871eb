"""LoRA fine-tuning on a character: ``train_lora(config)`` is a generator of step records.

It trains real peft LoRA adapters on the UNet attention projections (and optionally the text
encoders) through accelerate, so one CPU, one GPU or several processes run the same code
(``accelerate launch --num_processes N``). It never prints: the CLI draws a progress bar and
the notebook a loss plot from the records it yields.

SD 1.x and SDXL models train through the same code: what differs comes from the model's family
(`charstudio.models.family`): its prompt encoder (SDXL: two encoders and a pooled embedding),
whether its UNet takes size conditioning (SDXL's time ids: each picture's original size, crop
and bucket), its bucket sizes and its sampling pipeline. The scheduler's ``prediction_type``
picks the loss target (noise or velocity).

Reproducibility is by construction rather than by saving generator states: every random draw
of optimizer step ``s`` (which images, flips, noise, timesteps) comes from a generator seeded
with ``(seed, s, process)``. A checkpoint therefore only needs the adapter weights, the
optimizer and lr-scheduler states and the global torch RNG (used by LoRA dropout), and a run
stopped at step k and resumed ends with the same weights as one that never stopped.

Where things live: ``config`` (LoraTrainingConfig, the step record), ``data`` (the dataset,
buckets, crops and size conditioning, the batch plan), ``conditioning`` (captions to UNet
conditioning, as generation makes it), ``objective`` (loss target, min-SNR weights),
``checkpoint`` (checkpoints and resume), ``output`` (the LoRA folder, staged overwrites),
``optimizer`` (the optimizer and lr schedule), ``samples`` (validation and class images), ``run``
(`TrainingRun`: a run's set-up steps and its loop) and ``loop`` (train_lora itself).

Output layout (``lora/NAME/``)::

    pytorch_lora_weights.safetensors   diffusers/peft format (pipe.load_lora_weights)
    NAME.safetensors                   kohya/A1111 format (A1111, ComfyUI)
    training_config.json               this config, resolved values and the dataset report
    loss.csv                           step, loss, lr, elapsed_s
    validation/step000100_0.png        fixed-seed samples during training
    checkpoints/checkpoint-000100/     for resume=True (the newest few are kept)
"""

from .checkpoint import (
    CHECKPOINT_DIR,
    flatten_optimizer,
    list_checkpoints,
    load_checkpoint,
    model_fingerprint,
    save_checkpoint,
    unflatten_optimizer,
    write_json,
    write_loss_csv,
)
from .conditioning import TrainingConditioner
from .config import ADAPTER_NAME, UNET_LORA_LAYERS, LoraTrainingConfig, TrainingStep
from .data import (
    IMAGE_SUFFIXES,
    BatchPlan,
    DatasetReport,
    TrainingExample,
    bucket_sizes,
    check_pose_files,
    class_image_seed,
    cover_crop_box,
    list_dataset,
    load_controls,
    load_pixels,
    mix_seed,
    nearest_bucket,
    plan_seed,
    scan_dataset,
    size_conditioning,
    step_seed,
)
from .loop import train_lora
from .objective import loss_target, min_snr_weights
from .output import (
    VALIDATION_DIR,
    OutputPlan,
    final_files,
    is_finished,
    prepare_output,
    save_final,
    staging_dir,
    weight_files,
)

__all__ = [
    "ADAPTER_NAME",
    "BatchPlan",
    "CHECKPOINT_DIR",
    "DatasetReport",
    "IMAGE_SUFFIXES",
    "LoraTrainingConfig",
    "OutputPlan",
    "TrainingConditioner",
    "TrainingExample",
    "TrainingStep",
    "UNET_LORA_LAYERS",
    "VALIDATION_DIR",
    "bucket_sizes",
    "check_pose_files",
    "cover_crop_box",
    "final_files",
    "flatten_optimizer",
    "is_finished",
    "list_checkpoints",
    "list_dataset",
    "load_checkpoint",
    "load_controls",
    "load_pixels",
    "loss_target",
    "min_snr_weights",
    "class_image_seed",
    "mix_seed",
    "plan_seed",
    "step_seed",
    "model_fingerprint",
    "nearest_bucket",
    "prepare_output",
    "save_checkpoint",
    "save_final",
    "scan_dataset",
    "size_conditioning",
    "staging_dir",
    "train_lora",
    "unflatten_optimizer",
    "weight_files",
    "write_json",
    "write_loss_csv",
]
