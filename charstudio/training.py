"""LoRA fine-tuning on a character: ``train_lora(config)`` is a generator of step records.

It trains real peft LoRA adapters on the UNet attention projections (and optionally the text
encoder) through accelerate, so one CPU, one GPU or several processes run the same code
(``accelerate launch --num_processes N``). It never prints: the CLI draws a progress bar and
the notebook a loss plot from the records it yields.

Reproducibility is by construction rather than by saving generator states: every random draw
of optimizer step ``s`` (which images, flips, noise, timesteps) comes from a generator seeded
with ``(seed, s, process)``. A checkpoint therefore only needs the adapter weights, the
optimizer and lr-scheduler states and the global torch RNG (used by LoRA dropout), and a run
stopped at step k and resumed ends with the same weights as one that never stopped.

Output layout (``lora/NAME/``)::

    pytorch_lora_weights.safetensors   diffusers/peft format (pipe.load_lora_weights)
    NAME.safetensors                   kohya/A1111 format (A1111, ComfyUI)
    training_config.json               this config, resolved values and the dataset report
    loss.csv                           step, loss, lr, elapsed_s
    validation/step000100_0.png        fixed-seed samples during training
    checkpoints/checkpoint-000100/     for resume=True (the newest few are kept)
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Literal

from .errors import ConfigError, OutputError
from .io_utils import atomic_write
from .lora import LORA_WEIGHTS_NAME, TEXT_ENCODER_TARGET_MODULES, UNET_TARGET_MODULES
from .pose import POSE_SUFFIX, pose_file  # noqa: F401  (POSE_SUFFIX: part of this module's API)
from .validation import check_choice, check_float, check_int

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# The UNet modules each `lora_layers` choice adapts (peft target_modules).
UNET_LORA_LAYERS = {
    "attention": list(UNET_TARGET_MODULES),
    "transformer": [*UNET_TARGET_MODULES, "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"],
}
ADAPTER_NAME = "charstudio_train"  # unlikely to clash with adapters a Studio has loaded
CHECKPOINT_DIR = "checkpoints"
VALIDATION_DIR = "validation"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


# --------------------------------------------------------------------------------------------
# Settings and records
# --------------------------------------------------------------------------------------------


@dataclass
class LoraTrainingConfig:
    """Settings for one LoRA training run; saved as ``training_config.json`` beside the LoRA.

    Data: ``data_dir`` holds 5-50 images of one character. A ``.txt`` file beside an image is
    its caption (kohya convention); images without one use ``instance_prompt``, which defaults
    to "a picture of {trigger_word} {class_word}" (DreamBooth style).

    Defaults follow common practice for SD 1.5 character LoRAs: rank 16, alpha 16, lr 1e-4,
    AdamW (8-bit when bitsandbytes works on a CUDA GPU), batch 1, and the model's native
    resolution (512 for SD 1.5, 128 for ``tiny``).

    Attributes:
        data_dir: Folder of training images (and optional ``.txt`` captions).
        name: The LoRA's name; output goes to ``output_dir/name/``.
        model: Base model: a preset (``mini``, ``tiny``, ``sd15``), hub id, diffusers folder, or a
            single-file checkpoint (A1111/civitai ``.safetensors``; ``.ckpt`` with ``allow_pickle``).
        model_config: For a single-file ``model`` only: a diffusers folder or hub id of its base
            model, whose component configs describe the file (needed offline unless SD 1.5's
            configs are cached); the same as ``Studio.from_pretrained(config=)``.
        allow_pickle: Allow a pickled ``.ckpt`` base model you trust (read with weights only).
        output_dir: Where LoRA folders are created.
        trigger_word: Rare token that names the character in prompts.
        class_word: What the character is ("girl", "robot"); used in the default prompts.
        instance_prompt: Caption for images without a ``.txt`` file.
        resolution: Training size in pixels; None means the model's native size.
        crop: "center" crops every image to a square; "buckets" keeps aspect ratios by
            batching images of similar shape at about the same pixel count.
        flip: Randomly mirror images horizontally (doubles the variety of poses).
        min_image_size: Images whose shorter side is smaller are skipped; None = resolution/2.
        max_train_steps: Optimizer steps to train.
        batch_size: Images per step per process.
        gradient_accumulation_steps: Micro-batches summed into one optimizer step.
        rank: LoRA rank (size of the low-rank update).
        lora_layers: Which UNet layers get adapters: "attention" (the attention projections
            to_q/to_k/to_v/to_out, the usual choice) or "transformer" (also the transformer
            blocks' feed-forward layers and their proj_in/proj_out): more to learn a new object with.
        alpha: LoRA alpha; the update is scaled by alpha/rank. None (the default): equal to rank.
        lora_dropout: Dropout on the LoRA path.
        train_text_encoder: Also train LoRA on the text encoder's attention projections.
        learning_rate: Peak learning rate for the UNet adapter.
        text_encoder_lr: Learning rate for the text-encoder adapter (None = learning_rate).
        lr_scheduler: Learning-rate schedule after warmup.
        lr_warmup_steps: Steps of linear warmup.
        optimizer: "auto" uses 8-bit AdamW when bitsandbytes works, else torch AdamW.
        adam_beta1, adam_beta2, adam_weight_decay, adam_epsilon: AdamW settings.
        max_grad_norm: Gradient clipping norm (0 disables clipping).
        snr_gamma: Min-SNR-gamma loss weighting (5.0 is the usual value); None disables it.
        pose_conditioning: Run the model's OpenPose ControlNet (frozen) in every training step,
            fed each image's pose from ``NAME.pose.json`` beside it (the JSON `Pose.save`
            writes; `Pose.from_image` detects one). The adapter then learns the character's
            look instead of where the limbs go, which suits a LoRA used with poses. Class
            images (prior preservation) and validation images are drawn without poses.
        controlnet: The ControlNet for ``pose_conditioning`` (hub id or folder); None uses the
            model's own (mini's bundled one; SD 1.5's OpenPose ControlNet for other models).
        gradient_checkpointing: Trade compute for memory in the UNet (and text encoder).
        cache_latents: Encode every image with the VAE once instead of at each step.
        mixed_precision: "no", "fp16" or "bf16"; None picks bf16/fp16 on CUDA and "no" on CPU.
        seed: Seeds adapter initialisation, data order, noise and timesteps.
        with_prior_preservation: Also train on class images made by the base model, so the
            class ("girl") keeps its general look.
        class_prompt: Prompt for class images (default "a picture of a {class_word}").
        class_data_dir: Folder of class images (default ``output_dir/name/class_images``);
            missing ones are generated.
        num_class_images: How many class images to use.
        prior_loss_weight: Weight of the class-image loss.
        validation_prompt: Prompt for validation images (and the Train app's before/after).
            Default: the first image's ``.txt`` caption when captions exist (the words the data
            is written in, so it suits a model such as ``mini`` that knows only its own),
            else the instance prompt.
        validation_steps: Render validation images every N steps (0 = only at the end).
        num_validation_images: Images per validation.
        validation_inference_steps: Sampling steps for validation and class images.
        checkpointing_steps: Save a checkpoint every N steps (one is always saved at the end).
        checkpoints_total_limit: Keep at most this many checkpoints (None = all).
        resume: Continue from the newest checkpoint in ``output_dir/name/checkpoints``.
        overwrite: Replace an existing LoRA of the same name.
    """

    data_dir: str
    name: str
    model: str = "mini"
    model_config: str | None = None
    allow_pickle: bool = False
    output_dir: str = "lora"
    trigger_word: str = "sks"
    class_word: str = "person"
    instance_prompt: str | None = None
    resolution: int | None = None
    crop: Literal["center", "buckets"] = "center"
    flip: bool = False
    min_image_size: int | None = None
    max_train_steps: int = 500
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    rank: int = 16
    lora_layers: Literal["attention", "transformer"] = "attention"
    alpha: float | None = None
    lora_dropout: float = 0.0
    train_text_encoder: bool = False
    learning_rate: float = 1e-4
    text_encoder_lr: float | None = None
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    lr_warmup_steps: int = 0
    optimizer: Literal["auto", "adamw", "adamw8bit"] = "auto"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    snr_gamma: float | None = None
    pose_conditioning: bool = False
    controlnet: str | None = None
    gradient_checkpointing: bool = False
    cache_latents: bool = True
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None
    seed: int = 0
    with_prior_preservation: bool = False
    class_prompt: str | None = None
    class_data_dir: str | None = None
    num_class_images: int = 50
    prior_loss_weight: float = 1.0
    validation_prompt: str | None = None
    validation_steps: int = 100
    num_validation_images: int = 2
    validation_inference_steps: int = 25
    checkpointing_steps: int = 100
    checkpoints_total_limit: int | None = 2
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        # Paths may arrive as Path objects from notebooks; the JSON record wants strings.
        self.data_dir = str(self.data_dir)
        self.output_dir = str(self.output_dir)
        if self.class_data_dir is not None:
            self.class_data_dir = str(self.class_data_dir)
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigError("name", self.name, "use letters, digits, '_' and '-' (it becomes a folder name)")
        if not self.data_dir.strip():
            raise ConfigError("data_dir", self.data_dir, "give the folder that holds the training images")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model", self.model, "give a preset ('mini', 'tiny', 'sd15'), a hub id, a folder or a file")
        if self.model_config is not None and (not isinstance(self.model_config, str) or not self.model_config.strip()):
            raise ConfigError("model_config", self.model_config, "give the diffusers folder or hub id of the "
                              "single-file checkpoint's base model, or leave it unset")
        if not self.trigger_word or any(c.isspace() for c in self.trigger_word):
            raise ConfigError("trigger_word", self.trigger_word, "use one word without spaces, e.g. 'sks'")
        check_choice("crop", self.crop, ("center", "buckets"))
        check_choice("lora_layers", self.lora_layers, tuple(UNET_LORA_LAYERS))
        check_choice("lr_scheduler", self.lr_scheduler, ("constant", "constant_with_warmup", "linear", "cosine"))
        check_choice("optimizer", self.optimizer, ("auto", "adamw", "adamw8bit"))
        check_choice("mixed_precision", self.mixed_precision, (None, "no", "fp16", "bf16"))
        if self.resolution is not None:
            self.resolution = check_int("resolution", self.resolution, 16)
            if self.resolution % 8:
                raise ConfigError("resolution", self.resolution, "use a multiple of 8 (e.g. 512, or 128 for tiny)")
        if self.min_image_size is not None:
            self.min_image_size = check_int("min_image_size", self.min_image_size, 1)
        self.max_train_steps = check_int("max_train_steps", self.max_train_steps, 1)
        self.batch_size = check_int("batch_size", self.batch_size, 1)
        self.gradient_accumulation_steps = check_int("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        self.rank = check_int("rank", self.rank, 1)
        self.alpha = float(self.rank) if self.alpha is None else check_float("alpha", self.alpha, above=0)
        self.lora_dropout = check_float("lora_dropout", self.lora_dropout)
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError("lora_dropout", self.lora_dropout, "use a value in [0, 1)")
        self.learning_rate = check_float("learning_rate", self.learning_rate, above=0)
        if self.text_encoder_lr is not None:
            self.text_encoder_lr = check_float("text_encoder_lr", self.text_encoder_lr, above=0)
        self.lr_warmup_steps = check_int("lr_warmup_steps", self.lr_warmup_steps, 0)
        for name in ("adam_beta1", "adam_beta2"):
            value = check_float(name, getattr(self, name))
            setattr(self, name, value)
            if not 0 <= value < 1:
                raise ConfigError(name, value, "use a value in [0, 1)")
        self.adam_weight_decay = check_float("adam_weight_decay", self.adam_weight_decay, 0)
        self.adam_epsilon = check_float("adam_epsilon", self.adam_epsilon, above=0)
        self.max_grad_norm = check_float("max_grad_norm", self.max_grad_norm, 0)
        if self.snr_gamma is not None:
            self.snr_gamma = check_float("snr_gamma", self.snr_gamma, above=0)
        if self.controlnet is not None and not self.pose_conditioning:
            raise ConfigError("controlnet", self.controlnet, "set pose_conditioning=True to use it, or leave it unset")
        self.seed = check_int("seed", self.seed, 0)
        self.num_class_images = check_int("num_class_images", self.num_class_images, 1)
        self.prior_loss_weight = check_float("prior_loss_weight", self.prior_loss_weight, 0)
        self.validation_steps = check_int("validation_steps", self.validation_steps, 0)
        self.num_validation_images = check_int("num_validation_images", self.num_validation_images, 0)
        self.validation_inference_steps = check_int("validation_inference_steps", self.validation_inference_steps, 1)
        self.checkpointing_steps = check_int("checkpointing_steps", self.checkpointing_steps, 1)
        if self.checkpoints_total_limit is not None:
            self.checkpoints_total_limit = check_int("checkpoints_total_limit", self.checkpoints_total_limit, 1)

    # Prompts derived from the trigger and class words.
    @property
    def resolved_instance_prompt(self) -> str:
        return self.instance_prompt or f"a picture of {self.trigger_word} {self.class_word}"

    @property
    def resolved_class_prompt(self) -> str:
        return self.class_prompt or f"a picture of a {self.class_word}"

    def resolved_validation_prompt(self, report: DatasetReport | None = None) -> str:
        """`validation_prompt`, else the first caption file of ``report``'s images, else the instance prompt."""
        if self.validation_prompt:
            return self.validation_prompt
        captioned = [e.caption for e in (report.examples if report else []) if e.caption_from_file]
        return captioned[0] if captioned else self.resolved_instance_prompt

    @property
    def lora_dir(self) -> Path:
        """The folder this run writes: ``output_dir/name``."""
        return Path(self.output_dir).expanduser() / self.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoraTrainingConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], data[unknown[0]], f"not a LoraTrainingConfig field (fields: {sorted(known)})")
        return cls(**data)


@dataclass
class TrainingStep:
    """One optimizer step's report. ``images`` are validation samples (main process only)."""

    step: int
    total_steps: int
    loss: float
    lr: float
    elapsed: float  # seconds of training so far, including time before a resume
    epoch: int
    images: list = field(default_factory=list)
    checkpoint: Path | None = None
    done: bool = False
    files: dict[str, Path] = field(default_factory=dict)  # final outputs, on the last record
    is_main_process: bool = True


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingExample:
    """One usable training image and its caption."""

    path: Path
    caption: str
    width: int
    height: int
    caption_from_file: bool = False


@dataclass
class DatasetReport:
    """What ``scan_dataset`` found: usable examples and skipped files with the reason."""

    examples: list[TrainingExample]
    skipped: list[tuple[Path, str]]


def list_dataset(data_dir: str | os.PathLike) -> tuple[list[Path], dict[str, Path]]:
    """Image files and caption files in ``data_dir``, checked for the mistakes that need a person.

    Raises for a missing or empty folder and for a caption file with no image beside it.
    """
    folder = Path(data_dir).expanduser()
    if not folder.exists():
        raise ConfigError("data_dir", str(data_dir), "no such folder; point it at a folder of 5-50 images")
    if not folder.is_dir():
        raise ConfigError("data_dir", str(data_dir), "is a file; point it at a folder of 5-50 images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    captions = {p.stem: p for p in files if p.suffix.lower() == ".txt"}
    if not images:
        raise ConfigError("data_dir", str(data_dir), "holds no images (" + ", ".join(IMAGE_SUFFIXES)
                          + "); add 5-50 pictures of the character")
    stems = {p.stem for p in images}
    orphans = sorted(p.name for stem, p in captions.items() if stem not in stems)
    if orphans:
        raise ConfigError("data_dir", str(data_dir), f"caption file {orphans[0]} has no image beside it "
                          f"(expected {Path(orphans[0]).stem}.png or .jpg); add the image or remove the caption"
                          + (f" ({len(orphans) - 1} more)" if len(orphans) > 1 else ""))
    return images, captions


def check_pose_files(images: list[Path]) -> None:
    """Raise when ``pose_conditioning`` cannot run: an image without its ``NAME.pose.json``."""
    missing = [p.name for p in images if not pose_file(p).is_file()]
    if missing:
        raise ConfigError("pose_conditioning", True,
                          f"a pose file beside every image; {len(missing)} of {len(images)} have none "
                          f"(e.g. {pose_file(Path(missing[0])).name} for {missing[0]}): save each with "
                          "Pose.save, detect one with Pose.from_image(image).save(...), or turn pose_conditioning off")


def scan_dataset(data_dir: str | os.PathLike, *, instance_prompt: str, min_size: int) -> DatasetReport:
    """Read every image once; skip unreadable, corrupt and too-small ones with a warning.

    Raises when no usable image remains. Captions come from ``NAME.txt`` beside ``NAME.png``;
    an image without one (or with an empty one) gets ``instance_prompt``.
    """
    from PIL import Image, UnidentifiedImageError

    images, captions = list_dataset(data_dir)
    examples: list[TrainingExample] = []
    skipped: list[tuple[Path, str]] = []
    for path in images:
        try:
            with Image.open(path) as im:
                im.load()  # decodes fully: catches truncated files that open() alone accepts
                width, height = im.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            skipped.append((path, f"unreadable ({type(exc).__name__}: {exc})"))
            continue
        if min(width, height) < min_size:
            skipped.append((path, f"too small ({width}x{height}; the shorter side must be >= {min_size})"))
            continue
        text = ""
        if path.stem in captions:
            text = " ".join(captions[path.stem].read_text(encoding="utf-8", errors="replace").split())
        examples.append(TrainingExample(path, text or instance_prompt, width, height, bool(text)))
    for path, why in skipped:
        log.warning("skipping %s: %s", path.name, why)
    if skipped:
        log.warning("skipped %d of %d images in %s", len(skipped), len(images), data_dir)
    if not examples:
        reasons = "; ".join(f"{p.name}: {why}" for p, why in skipped[:3])
        raise ConfigError("data_dir", str(data_dir), f"none of its {len(images)} images is usable ({reasons}); "
                          f"add readable images at least {min_size} px on the shorter side")
    if len(examples) < 5:
        log.warning("only %d usable image(s) in %s: a character LoRA usually needs 5-50 varied images "
                    "(poses, angles, backgrounds) to generalise instead of copying them", len(examples), data_dir)
    return DatasetReport(examples, skipped)


def _bucket_sizes(resolution: int, divisor: int, mode: str) -> list[tuple[int, int]]:
    """(width, height) training sizes: one square, or aspect-ratio buckets of about resolution**2 pixels."""
    if mode == "center":
        return [(resolution, resolution)]
    sizes = set()
    area = resolution * resolution
    w = max(divisor, (resolution // 2) // divisor * divisor)
    while w <= resolution * 2:
        h = (area // w) // divisor * divisor
        if h >= divisor and 0.5 <= w / h <= 2.0:
            sizes.add((w, h))
        w += divisor
    sizes.add((resolution, resolution))
    return sorted(sizes)


def _nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> int:
    ratio = math.log(width / height)
    return min(range(len(buckets)), key=lambda i: (abs(math.log(buckets[i][0] / buckets[i][1]) - ratio), i))


def _cover_crop(im: Any, size: tuple[int, int]) -> Any:
    """A PIL image resized to cover ``size`` and centre-cropped to it."""
    from PIL import Image

    bw, bh = size
    scale = max(bw / im.width, bh / im.height)
    new = (max(bw, round(im.width * scale)), max(bh, round(im.height * scale)))
    im = im.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - bw) // 2, (new[1] - bh) // 2
    return im.crop((left, top, left + bw, top + bh))


def _to_chw(im: Any, low: float) -> Any:
    """A PIL RGB image as a float CHW tensor in [low, 1]."""
    import numpy as np
    import torch

    arr = np.asarray(im, dtype=np.float32) / 255.0 * (1.0 - low) + low
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _load_pixels(path: Path, size: tuple[int, int]):
    """The image resized to cover ``size`` and centre-cropped to it, as a CHW tensor in [-1, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        return _to_chw(_cover_crop(im.convert("RGB"), size), -1.0)


def _load_controls(path: Path, size: tuple[int, int], flip: bool) -> dict[bool, Any]:
    """The OpenPose control images (CHW in [0, 1], as the pipelines feed them) of training image
    ``path`` cropped exactly as its pixels are, unflipped and, with ``flip``, mirrored."""
    from PIL import Image

    from .pose import Pose

    with Image.open(path) as im:
        width, height = im.size
    pose = Pose.from_json(pose_file(path))
    if (pose.canvas_width, pose.canvas_height) != (width, height):
        pose = pose.resize(width, height)  # a pose saved for the same picture at another size
    # The mirrored pose (left and right swapped), not a mirrored drawing: OpenPose colours differ by side.
    return {mirrored: _to_chw(_cover_crop((pose.mirror() if mirrored else pose).render(), size), 0.0)
            for mirrored in ((False, True) if flip else (False,))}


def _mix(*parts: int) -> int:
    """A 63-bit seed from several integers (stable across runs and machines)."""
    h = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


class _BatchPlan:
    """Which examples form each global batch, as a pure function of (seed, epoch).

    Batches never mix buckets; a bucket smaller than a batch repeats its images. Because the
    plan is recomputed from the seed, a resumed run sees the same batches as an unbroken one.
    """

    def __init__(self, bucket_of: list[int], global_batch: int, seed: int):
        self.members: dict[int, list[int]] = {}
        for i, b in enumerate(bucket_of):
            self.members.setdefault(b, []).append(i)
        self.global_batch = global_batch
        self.seed = seed
        self.batches_per_epoch = sum(math.ceil(len(m) / global_batch) for m in self.members.values())
        self._cache: tuple[int, list[list[int]]] | None = None

    def _plan(self, epoch: int) -> list[list[int]]:
        import torch

        if self._cache and self._cache[0] == epoch:
            return self._cache[1]
        g = torch.Generator().manual_seed(_mix(self.seed, epoch, 7))
        chunks: list[list[int]] = []
        for b in sorted(self.members):
            idx = self.members[b]
            perm = [idx[i] for i in torch.randperm(len(idx), generator=g).tolist()]
            n = math.ceil(len(perm) / self.global_batch)
            padded = (perm * math.ceil(n * self.global_batch / len(perm)))[: n * self.global_batch]
            chunks += [padded[i * self.global_batch:(i + 1) * self.global_batch] for i in range(n)]
        order = torch.randperm(len(chunks), generator=g).tolist()
        plan = [chunks[i] for i in order]
        self._cache = (epoch, plan)
        return plan

    def batch(self, counter: int) -> tuple[list[int], int]:
        epoch, pos = divmod(counter, self.batches_per_epoch)
        return self._plan(epoch)[pos], epoch


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def list_checkpoints(lora_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``lora_dir/checkpoints``, oldest first (temp folders are ignored)."""
    root = Path(lora_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _CHECKPOINT_RE.match(d.name)
        if m and d.is_dir() and (d / "trainer_state.json").is_file():
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found)]


def flatten_optimizer(state: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and the rest (for JSON)."""
    import torch

    tensors: dict[str, Any] = {}
    meta_state: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        meta_state[str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                name = f"{idx}.{key}"
                tensors[name] = value.detach().cpu().contiguous()
                meta_state[str(idx)][key] = {"tensor": name}
            else:
                meta_state[str(idx)][key] = {"value": value}
    return tensors, {"state": meta_state, "param_groups": state["param_groups"]}


def unflatten_optimizer(tensors: dict[str, Any], meta: dict[str, Any]) -> dict:
    state = {}
    for idx, entry in meta["state"].items():
        state[int(idx)] = {k: tensors[v["tensor"]] if "tensor" in v else v["value"] for k, v in entry.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def write_json(path: Path, data: Any, overwrite: bool = True) -> Path:
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"), overwrite=overwrite)


def _write_loss_csv(path: Path, history: list[tuple[int, float, float, float]]) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["step", "loss", "lr", "elapsed_s"])
            for step, loss, lr, elapsed in history:
                w.writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{elapsed:.3f}"])
    return atomic_write(path, write, overwrite=True)


def _model_fingerprint(unet: Any, text_encoder: Any) -> str:
    """A short hash of the base model's architecture and a few weights, to refuse mixing bases."""
    import torch

    h = hashlib.sha256()
    cfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    # fp16 bytes so that fp32 and fp16 loads of the same checkpoint agree.
    with torch.no_grad():
        h.update(unet.conv_in.weight.detach().to("cpu", torch.float16).numpy().tobytes())
        emb = text_encoder.get_input_embeddings().weight[:16]
        h.update(emb.detach().to("cpu", torch.float16).numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


# The files that make a finished LoRA folder; it is finished only when all of them are there.
def weight_files(lora_dir: Path, name: str) -> list[Path]:
    """The LoRA's weights in both formats (diffusers/peft, kohya/A1111)."""
    return [lora_dir / LORA_WEIGHTS_NAME, lora_dir / f"{name}.safetensors"]


def final_files(lora_dir: Path, name: str) -> list[Path]:
    """The files a finished ``lora/NAME`` holds: both weight files and the config."""
    return [*weight_files(lora_dir, name), lora_dir / "training_config.json"]


def is_finished(lora_dir: Path, name: str) -> bool:
    """True when every final file of the LoRA is there (a kill between them leaves it unfinished)."""
    return all(p.is_file() for p in final_files(lora_dir, name))


# What a run writes into lora/NAME; anything else there (class_images, a user's notes) is kept
# across an overwrite.
def _run_outputs(name: str) -> set[str]:
    return {p.name for p in final_files(Path(), name)} | {"loss.csv", CHECKPOINT_DIR, VALIDATION_DIR}


def staging_dir(lora_dir: Path) -> Path:
    """Where an overwriting run builds the new LoRA; it replaces ``lora_dir`` only once complete."""
    return lora_dir.with_name(f".{lora_dir.name}.overwrite")


def _replaced_dir(lora_dir: Path) -> Path:
    return lora_dir.with_name(f".{lora_dir.name}.replaced")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_checkpoint_leftovers(lora_dir: Path) -> None:
    """Temp folders that a killed checkpoint write left (``.tmp-*`` / ``.old-*`` of a dead process)."""
    root = lora_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return
    for d in root.iterdir():
        m = re.match(r"^\.(tmp|old)-(checkpoint-\d+)-(\d+)$", d.name)
        if not m or not d.is_dir() or _pid_alive(int(m.group(3))):
            continue
        kind, target = m.group(1), root / m.group(2)
        if kind == "old" and not target.exists():
            # Killed between moving the old checkpoint aside and moving the new one in: the old
            # one is complete, so it goes back.
            os.replace(d, target)
            log.info("restored %s from an interrupted checkpoint write", target)
        else:
            shutil.rmtree(d, ignore_errors=True)
            log.info("removed %s, left by an interrupted checkpoint write", d)


def _swap_into_place(staged: Path, lora_dir: Path, name: str) -> None:
    """Replace ``lora_dir`` by the complete ``staged`` folder.

    The user's own files in the old folder (class images, notes) move into the new one first.
    Every step can be interrupted: `_recover_swap` finishes the job on the next run, because the
    staged folder is complete before this starts.
    """
    replaced = _replaced_dir(lora_dir)
    if lora_dir.is_dir():
        keep = _run_outputs(name)
        for entry in lora_dir.iterdir():
            if entry.name not in keep and not (staged / entry.name).exists():
                os.replace(entry, staged / entry.name)
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(lora_dir, replaced)
    os.replace(staged, lora_dir)
    shutil.rmtree(replaced, ignore_errors=True)


def _recover_swap(lora_dir: Path, name: str) -> None:
    """Finish an overwrite that a kill interrupted while it swapped folders."""
    staged, replaced = staging_dir(lora_dir), _replaced_dir(lora_dir)
    if staged.is_dir() and is_finished(staged, name):
        log.info("finishing an interrupted overwrite of %s", lora_dir)
        _swap_into_place(staged, lora_dir, name)
    elif replaced.is_dir():
        if lora_dir.exists():
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            os.replace(replaced, lora_dir)


@dataclass
class _OutputPlan:
    """Where a run writes (``work``), where its LoRA ends up (``final``) and what it resumes."""

    work: Path
    final: Path
    resume_from: Path | None

    @property
    def staged(self) -> bool:
        return self.work != self.final


def _prepare_output(config: LoraTrainingConfig, is_main: bool) -> _OutputPlan:
    """Check what is already in ``lora/NAME`` against resume/overwrite, and plan the run.

    Nothing of an existing LoRA is deleted here. An overwrite trains into a staging folder
    beside it (`staging_dir`), which replaces the old folder only when its files are complete.
    """
    out = config.lora_dir
    if out.exists() and not out.is_dir():
        raise OutputError(f"output_dir={str(out)!r} is a file: remove it or choose another name")
    if is_main:
        _recover_swap(out, config.name)
        _clean_checkpoint_leftovers(out)
        _clean_checkpoint_leftovers(staging_dir(out))
    staged = staging_dir(out)
    finished = is_finished(out, config.name)
    some_final = any(p.is_file() for p in weight_files(out, config.name))
    checkpoints = list_checkpoints(out)
    if config.resume:
        # An overwrite that was stopped continues in its staging folder, the old LoRA untouched.
        staged_checkpoints = list_checkpoints(staged)
        if staged_checkpoints:
            return _OutputPlan(staged, out, staged_checkpoints[-1])
        if finished and not config.overwrite:
            raise OutputError(f"{str(out)!r} already holds a finished LoRA: pass overwrite=True (CLI: --overwrite) "
                              "to train it further, or choose another name")
        if not checkpoints:
            log.warning("resume=True but %s has no checkpoint; starting from step 0", out / CHECKPOINT_DIR)
            return _OutputPlan(out, out, None)
        # A half-written LoRA (stopped between its final files) resumes from its last
        # checkpoint, which training writes before the final files, and completes them.
        return _OutputPlan(out, out, checkpoints[-1])
    leftovers = some_final or bool(checkpoints) or (out / "training_config.json").exists()
    if leftovers and not config.overwrite:
        if finished:
            what, hint = "a LoRA", ""
        elif some_final:
            what, hint = "a LoRA whose final files were not all written", ", or resume=True (CLI: --resume) to complete it"
        else:
            what, hint = "checkpoints of an earlier run", ", or resume=True (CLI: --resume) to continue it"
        raise OutputError(f"{str(out)!r} already holds {what}: pass overwrite=True (CLI: --overwrite) to replace it"
                          + hint)
    if leftovers:
        # Start over in the staging folder; an earlier unfinished overwrite there is dropped.
        if is_main:
            shutil.rmtree(staged, ignore_errors=True)
        return _OutputPlan(staged, out, None)
    return _OutputPlan(out, out, None)


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


def _pose_controlnet(config: LoraTrainingConfig, comps: dict[str, Any], weight_dtype: Any) -> Any:
    """The frozen OpenPose ControlNet for ``pose_conditioning``: ``config.controlnet``, else the
    one loaded with the model (a Studio's, or tiny's), else the model's own."""
    from .models.loading import load_controlnet, resolve_model

    net = comps.get("controlnet") if config.controlnet is None else None
    if net is None:
        location = config.controlnet or resolve_model(config.model, allow_pickle=config.allow_pickle).controlnet
        if location is None:
            raise ConfigError("controlnet", None, f"a ControlNet for model={config.model!r}: pass controlnet= "
                              "(a hub id or folder of an OpenPose ControlNet)")
        net = load_controlnet(location, dtype=weight_dtype)
    net.requires_grad_(False)
    net.eval()
    return net


def _load_base(config: LoraTrainingConfig, weight_dtype: Any) -> dict[str, Any]:
    from .models.loading import load_components, resolve_model

    source = resolve_model(config.model, allow_pickle=config.allow_pickle)
    return load_components(source, dtype=weight_dtype, config=config.model_config)


def train_lora(config: LoraTrainingConfig, *, components: dict[str, Any] | None = None) -> Iterator[TrainingStep]:
    """Train a LoRA; yield one ``TrainingStep`` per optimizer step; write ``output_dir/name/``.

    ``components`` (tokenizer, text_encoder, unet, vae, scheduler) reuses an already loaded
    model instead of loading ``config.model``; the training adapter is removed from it again
    when the generator finishes. Stopping early (break, Ctrl-C) keeps the last checkpoint,
    from which ``resume=True`` continues.
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
    output = _prepare_output(config, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    images, _ = list_dataset(config.data_dir)
    if config.pose_conditioning:
        check_pose_files(images)

    # 3. Base model, frozen. Adapters are added below; only they train.
    own_components = components is None
    comps = _load_base(config, weight_dtype) if own_components else components
    from . import lora as lora_mod

    holder = _ModelPair(comps["unet"], comps["text_encoder"])
    previous_mix = lora_mod.active_loras(holder)  # a Studio's own adapters, switched back on afterwards
    has_adapters = bool(getattr(comps["unet"], "peft_config", None)
                        or getattr(comps["text_encoder"], "peft_config", None))
    if has_adapters:
        # Class images, cached text embeddings and the fingerprint must come from the base model.
        lora_mod.set_loras(holder, {})
    try:
        yield from _train(config, comps, accelerator, output, weight_dtype, mixed, own_components)
    except BaseException:
        # A staged overwrite that failed before its first checkpoint has nothing to resume:
        # drop it. The old LoRA was never touched.
        if output.staged and accelerator.is_main_process and not list_checkpoints(output.work):
            shutil.rmtree(output.work, ignore_errors=True)
        raise
    finally:
        if not own_components:
            # The caller's model goes back to how it came: no training adapter, frozen, eval mode.
            _detach_training_adapter(comps["unet"], comps["text_encoder"], config.gradient_checkpointing)
            if has_adapters:
                lora_mod.set_loras(holder, previous_mix)
        accelerator.free_memory()


class _ModelPair:
    """The two LoRA-carrying parts of a pipeline, for charstudio.lora functions that take a pipe."""

    def __init__(self, unet: Any, text_encoder: Any):
        self.unet, self.text_encoder = unet, text_encoder


def _train(config: LoraTrainingConfig, comps: dict[str, Any], accelerator: Any, output: _OutputPlan,
           weight_dtype: Any, mixed: str, own_components: bool) -> Iterator[TrainingStep]:
    """The body of ``train_lora`` once the model is loaded (split out so cleanup always runs)."""
    import torch
    from diffusers import DDPMScheduler

    out, resume_from = output.work, output.resume_from
    device, is_main = accelerator.device, accelerator.is_main_process
    tokenizer, text_encoder, unet, vae = comps["tokenizer"], comps["text_encoder"], comps["unet"], comps["vae"]
    for m in (text_encoder, unet, vae):
        m.requires_grad_(False)
    _move(unet, device, weight_dtype)
    _move(text_encoder, device, weight_dtype)
    # Encoding is cheap next to the UNet, and fp32 avoids fp16 VAE overflow; a caller's VAE keeps its dtype.
    _move(vae, device, torch.float32 if own_components else next(vae.parameters()).dtype)
    noise_scheduler = DDPMScheduler.from_config(comps["scheduler"].config)
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    resolution = config.resolution or int(unet.config.sample_size) * vae_factor
    divisor = vae_factor * 2 ** (len(unet.config.down_block_types) - 1)
    if resolution % divisor:
        raise ConfigError("resolution", resolution, f"use a multiple of {divisor} for this model")
    fingerprint = _model_fingerprint(unet, text_encoder)
    identity = {"model": config.model, "model_fingerprint": fingerprint, "rank": config.rank,
                "alpha": float(config.alpha), "train_text_encoder": config.train_text_encoder,
                "pose_conditioning": config.pose_conditioning, "lora_layers": config.lora_layers,
                "trigger_word": config.trigger_word, "instance_prompt": config.resolved_instance_prompt}

    # 4. The dataset: decode images once, pick buckets, keep pixels in memory (5-50 images).
    report = scan_dataset(config.data_dir, instance_prompt=config.resolved_instance_prompt,
                          min_size=config.min_image_size or resolution // 2)
    buckets = _bucket_sizes(resolution, divisor, config.crop)
    bucket_of = [_nearest_bucket(e.width, e.height, buckets) for e in report.examples]
    pixels = [_load_pixels(e.path, buckets[b]) for e, b in zip(report.examples, bucket_of)]
    captions = [e.caption for e in report.examples]
    validation_prompt = config.resolved_validation_prompt(report)
    controlnet, controls = None, []
    if config.pose_conditioning:
        controlnet = _pose_controlnet(config, comps, weight_dtype)
        _move(controlnet, device, weight_dtype)
        controls = [_load_controls(e.path, buckets[b], config.flip) for e, b in zip(report.examples, bucket_of)]

    # 5. Prior preservation: class images from the frozen base model (generated once, kept).
    class_pixels: list[Any] = []
    if config.with_prior_preservation:
        # Under the LoRA's real folder even while an overwrite is staged: class images are kept
        # across runs, and the swap carries them into the new folder.
        class_dir = Path(config.class_data_dir).expanduser() if config.class_data_dir else output.final / "class_images"
        if is_main:
            _make_class_images(comps, config, class_dir, resolution, device)
        accelerator.wait_for_everyone()
        class_files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        class_pixels = [_load_pixels(p, (resolution, resolution)) for p in class_files[: config.num_class_images]]

    # 6. LoRA adapters. Seeded so the initial A matrices are the same on every run.
    from peft import LoraConfig

    torch.manual_seed(config.seed)
    unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.lora_dropout,
                                init_lora_weights="gaussian", target_modules=UNET_LORA_LAYERS[config.lora_layers]),
                     adapter_name=ADAPTER_NAME)
    if config.train_text_encoder:
        text_encoder.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.lora_dropout,
                                            init_lora_weights="gaussian",
                                            target_modules=list(TEXT_ENCODER_TARGET_MODULES)),
                                 adapter_name=ADAPTER_NAME)
    # add_adapter activates only the new adapter, but layers switched off earlier (a Studio's
    # adapters, above) stay off until enabled.
    unet.enable_lora()
    if config.train_text_encoder:
        from diffusers.loaders.lora_base import enable_lora_for_text_encoder

        enable_lora_for_text_encoder(text_encoder)
    trainable = [unet] + ([text_encoder] if config.train_text_encoder else [])
    for m in trainable:
        for p in m.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # the adapters train in fp32 even when the base is fp16
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()

    # 7. Caches: text embeddings (when the text encoder is frozen) and VAE latents.
    # Captions are encoded as generation encodes prompts: in 75-token chunks, never cut at 77.
    from .conditioning import PromptEncoder

    encode_text = PromptEncoder(tokenizer, text_encoder).encode_texts

    text_cache: dict[str, Any] = {}
    if not config.train_text_encoder:
        for text in dict.fromkeys(captions + [config.resolved_class_prompt] * bool(class_pixels)):
            text_cache[text] = encode_text([text])[0]
        empty_chunk = encode_text([""])[0]  # pads a short caption to a long one's chunks in a batch

    def cached_text(texts: list[str]) -> Any:
        hidden = [text_cache[x] for x in texts]
        longest = max(h.shape[0] for h in hidden)
        return torch.stack([h if h.shape[0] == longest else torch.cat(
            [h] + [empty_chunk] * ((longest - h.shape[0]) // empty_chunk.shape[0])) for h in hidden])

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

    # 8. Optimizer and schedule; accelerate wraps the trained models (DDP when multi-process).
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": config.learning_rate}]
    if config.train_text_encoder:
        groups.append({"params": [p for p in text_encoder.parameters() if p.requires_grad],
                       "lr": config.text_encoder_lr or config.learning_rate})
    optimizer, optimizer_name = _pick_optimizer(config.optimizer, groups, config, device)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(config.lr_scheduler, config.lr_warmup_steps, config.max_train_steps))
    if config.train_text_encoder:
        unet_t, text_encoder_t, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    else:
        unet_t, optimizer = accelerator.prepare(unet, optimizer)
        text_encoder_t = text_encoder
    # The lr scheduler stays unprepared: accelerate would step it once per process.

    # 9. Resume: adapter weights, optimizer, scheduler, RNG, loss history.
    start_step, elapsed_before, history = 0, 0.0, []
    if resume_from is not None:
        start_step, elapsed_before, history = _load_checkpoint(
            resume_from, identity, config, accelerator, unet, text_encoder, optimizer, lr_scheduler)
        log.info("resumed from %s (step %d)", resume_from, start_step)
    if is_main:
        resolved = {"resolution": resolution, "mixed_precision": mixed, "optimizer": optimizer_name,
                    "num_processes": accelerator.num_processes, "buckets": sorted({buckets[b] for b in bucket_of}),
                    "instance_prompt": config.resolved_instance_prompt,
                    "validation_prompt": validation_prompt,
                    "class_prompt": config.resolved_class_prompt if class_pixels else None,
                    "num_class_images": len(class_pixels), "model_fingerprint": fingerprint}
        dataset_info = {"images": [str(e.path.name) for e in report.examples],
                        "captions_from_files": sum(1 for e in report.examples if e.caption_from_file),
                        "skipped": [[p.name, why] for p, why in report.skipped]}
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
            files = _save_final(output, config, accelerator.unwrap_model(unet_t),
                                accelerator.unwrap_model(text_encoder_t), history, resolution)
        accelerator.wait_for_everyone()
        last = history[-1] if history else (start_step, float("nan"), 0.0, elapsed_before)
        yield TrainingStep(step=start_step, total_steps=config.max_train_steps, loss=last[1], lr=last[2],
                           elapsed=elapsed_before, epoch=0, done=True, files=files, is_main_process=is_main)
        return

    # 11. The loop.
    num_proc, proc = accelerator.num_processes, accelerator.process_index
    plan = _BatchPlan(bucket_of, config.batch_size * num_proc, config.seed)
    accum = config.gradient_accumulation_steps
    scaling = vae.config.scaling_factor
    prediction_type = noise_scheduler.config.prediction_type
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

    def denoise_loss(latents: Any, texts: list[str], g: Any, cond: Any = None) -> Any:
        noise = torch.randn(latents.shape, generator=g).to(device)
        t = torch.randint(0, num_timesteps, (latents.shape[0],), generator=g).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        target = noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, t)
        if config.train_text_encoder:
            hidden = encode_text(texts, grad=True)
        else:
            hidden = cached_text(texts)
        residuals = {}
        if cond is not None:
            # Frozen, but not under no_grad: the text encoder's adapter learns through it too.
            down, mid = controlnet(noisy.to(weight_dtype), t, hidden.to(weight_dtype), cond.to(device, weight_dtype),
                                   return_dict=False)
            residuals = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        pred = unet_t(noisy.to(weight_dtype), t, hidden.to(weight_dtype), **residuals).sample
        per_sample = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if config.snr_gamma is not None:
            from diffusers.training_utils import compute_snr

            snr = compute_snr(noise_scheduler, t)
            clipped = torch.clamp(snr, max=config.snr_gamma)
            per_sample = per_sample * (clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1))
        return per_sample.mean()

    start_time = time.perf_counter()
    step = start_step
    last_checkpoint: Path | None = resume_from
    unet_t.train()
    if config.train_text_encoder:
        text_encoder_t.train()
    try:
        for step in range(start_step + 1, config.max_train_steps + 1):
            # 11a. One optimizer step = `accum` micro-batches, each drawn from its own generator.
            step_loss, epoch = 0.0, 0
            for micro in range(accum):
                counter = (step - 1) * accum + micro
                global_batch, epoch = plan.batch(counter)
                idx = global_batch[proc * config.batch_size:(proc + 1) * config.batch_size]
                g = torch.Generator().manual_seed(_mix(config.seed, counter, proc))
                flips = (torch.rand(len(idx), generator=g) < 0.5).tolist() if config.flip else [False] * len(idx)
                sync = micro == accum - 1 or num_proc == 1
                with contextlib.ExitStack() as stack:
                    if not sync:
                        for m in [unet_t] + ([text_encoder_t] if config.train_text_encoder else []):
                            stack.enter_context(accelerator.no_sync(m))
                    latents = latents_for("instance", pixels, idx, flips, g)
                    cond = torch.stack([controls[i][f] for i, f in zip(idx, flips)]) if controls else None
                    loss = denoise_loss(latents, [captions[i] for i in idx], g, cond)
                    if class_pixels:
                        cidx = torch.randint(0, len(class_pixels), (len(idx),), generator=g).tolist()
                        clat = latents_for("class", class_pixels, cidx, [False] * len(cidx), g)
                        loss = loss + config.prior_loss_weight * denoise_loss(
                            clat, [config.resolved_class_prompt] * len(cidx), g)
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
                    images = _validate(comps, accelerator.unwrap_model(unet_t),
                                       accelerator.unwrap_model(text_encoder_t), config, validation_prompt,
                                       resolution, step, out, accelerator)
                unet_t.train()
            checkpoint = None
            if step % config.checkpointing_steps == 0 or final:
                checkpoint = _save_checkpoint(out, step, identity, config, accelerator, unet, text_encoder,
                                              optimizer, lr_scheduler, history, elapsed)
                last_checkpoint = checkpoint or last_checkpoint
            files: dict[str, Path] = {}
            if final:
                accelerator.wait_for_everyone()
                if is_main:
                    files = _save_final(output, config, accelerator.unwrap_model(unet_t),
                                        accelerator.unwrap_model(text_encoder_t), history, resolution)
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


def _detach_training_adapter(unet: Any, text_encoder: Any, checkpointing: bool) -> None:
    from .lora import remove_adapter

    remove_adapter(unet, text_encoder, ADAPTER_NAME)
    if checkpointing:
        unet.disable_gradient_checkpointing()
    unet.eval()
    text_encoder.eval()
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)


def _sampling_pipeline(comps: dict[str, Any], unet: Any, text_encoder: Any):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=comps["vae"], text_encoder=text_encoder, tokenizer=comps["tokenizer"], unet=unet,
        scheduler=DDIMScheduler.from_config(comps["scheduler"].config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _make_class_images(comps: dict[str, Any], config: LoraTrainingConfig, class_dir: Path, resolution: int,
                       device: Any) -> None:
    import torch

    class_dir.mkdir(parents=True, exist_ok=True)
    have = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    missing = config.num_class_images - len(have)
    if missing <= 0:
        return
    log.info("generating %d class images for %r in %s", missing, config.resolved_class_prompt, class_dir)
    pipe = _sampling_pipeline(comps, comps["unet"], comps["text_encoder"])
    for i in range(len(have), config.num_class_images):
        g = torch.Generator(device="cpu").manual_seed(_mix(config.seed, i, 11))
        with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
            image = pipe(config.resolved_class_prompt, height=resolution, width=resolution, generator=g,
                         num_inference_steps=config.validation_inference_steps).images[0]
        atomic_write(class_dir / f"class_{i:04d}.png", lambda tmp, im=image: im.save(tmp, format="PNG"))


def _validate(comps: dict[str, Any], unet: Any, text_encoder: Any, config: LoraTrainingConfig, prompt: str,
              resolution: int, step: int, out: Path, accelerator: Any) -> list[Any]:
    """Fixed-seed samples with the current adapter, saved under ``validation/``."""
    import torch

    unet.eval()
    pipe = _sampling_pipeline(comps, unet, text_encoder)
    images = []
    folder = out / VALIDATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(config.num_validation_images):
        g = torch.Generator(device="cpu").manual_seed(config.seed + i)
        with torch.no_grad(), accelerator.autocast():
            image = pipe(prompt, height=resolution, width=resolution, generator=g,
                         num_inference_steps=config.validation_inference_steps).images[0]
        atomic_write(folder / f"step{step:06d}_{i}.png", lambda tmp, im=image: im.save(tmp, format="PNG"),
                     overwrite=True)
        images.append(image)
    return images


def _save_checkpoint(out: Path, step: int, identity: dict, config: LoraTrainingConfig, accelerator: Any,
                     unet: Any, text_encoder: Any, optimizer: Any, lr_scheduler: Any,
                     history: list, elapsed: float) -> Path | None:
    """Write ``checkpoints/checkpoint-STEP`` as a whole: build it under a temp name, then rename."""
    import torch
    from safetensors.torch import save_file

    from .lora import adapter_state, write_diffusers_lora

    final = out / CHECKPOINT_DIR / f"checkpoint-{step:06d}"
    if accelerator.is_main_process:
        # 1. Everything goes into a temp folder first; a crash leaves only that behind.
        root = final.parent
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            unet_sd, te_sd, configs = adapter_state(unet, text_encoder if config.train_text_encoder else None,
                                                    ADAPTER_NAME)
            write_diffusers_lora(tmp / "pytorch_lora_weights.safetensors", unet_sd, te_sd, configs)
            tensors, meta = flatten_optimizer(optimizer.state_dict())
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "optimizer.json").write_text(json.dumps(_json_safe(meta)), encoding="utf-8")
            rng = {"torch_cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
            save_file(rng, str(tmp / "rng.safetensors"))
            state = {"step": step, "elapsed": elapsed, "history": history, "identity": identity,
                     "num_processes": accelerator.num_processes, "batch_size": config.batch_size,
                     "gradient_accumulation_steps": config.gradient_accumulation_steps,
                     "lr_scheduler": _json_safe(lr_scheduler.state_dict())}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
            # 2. Swap into place. A checkpoint of the same step (a repeated resume) is replaced whole.
            if final.exists():
                old = root / f".old-{final.name}-{os.getpid()}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # 3. Prune old checkpoints only after the new one is complete.
        _write_loss_csv(out / "loss.csv", history)
        if config.checkpoints_total_limit:
            for old_ckpt in list_checkpoints(out)[: -config.checkpoints_total_limit]:
                shutil.rmtree(old_ckpt, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final if final.is_dir() else None


def _load_checkpoint(path: Path, identity: dict, config: LoraTrainingConfig, accelerator: Any, unet: Any,
                     text_encoder: Any, optimizer: Any, lr_scheduler: Any) -> tuple[int, float, list]:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from .lora import read_lora_file

    state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    # 1. Refuse checkpoints of another base model or adapter shape: they cannot continue this run.
    saved = state.get("identity", {})
    # Checkpoints written before an identity field existed were made with its old behaviour; the
    # prompts were not recorded then, so those checkpoints are not checked on them.
    before = {"pose_conditioning": False, "lora_layers": "attention"}
    for key in ("model_fingerprint", "rank", "alpha", "train_text_encoder", "pose_conditioning", "lora_layers",
                "trigger_word", "instance_prompt"):
        if key not in saved and key not in before:
            continue
        if saved.get(key, before.get(key)) != identity[key]:
            what = {"model_fingerprint": "base model"}.get(key, key)
            raise ConfigError("resume", str(path),
                              f"the checkpoint was made with a different {what} "
                              f"({key}={saved.get(key)!r}, this run has {identity[key]!r}; "
                              f"checkpoint model={saved.get('model')!r}, this run model={identity['model']!r}); "
                              "resume with the same settings, or pass overwrite=True without resume to start over")
    if (state.get("num_processes"), state.get("batch_size"), state.get("gradient_accumulation_steps")) != (
            accelerator.num_processes, config.batch_size, config.gradient_accumulation_steps):
        log.warning("resuming with a different number of processes, batch size or accumulation: "
                    "the data order will differ from an uninterrupted run")
    # 2. Adapter weights, exactly as saved.
    tensors, _ = read_lora_file(path / "pytorch_lora_weights.safetensors")
    for comp, model in (("unet", unet), ("text_encoder", text_encoder)):
        sd = {k[len(comp) + 1:]: v for k, v in tensors.items() if k.startswith(comp + ".")}
        if not sd:
            continue
        if comp == "text_encoder" and not hasattr(model, "text_model"):
            sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
        result = set_peft_model_state_dict(model, sd, adapter_name=ADAPTER_NAME)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if unexpected:
            raise ConfigError("resume", str(path), f"its adapter does not fit this model ({unexpected[0]}, ...)")
    # 3. Optimizer, scheduler and global RNG.
    opt_tensors = load_file(str(path / "optimizer.safetensors"))
    opt_meta = json.loads((path / "optimizer.json").read_text(encoding="utf-8"))
    optimizer.load_state_dict(unflatten_optimizer(opt_tensors, opt_meta))
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda_states = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda_"))]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    history = [tuple(row) for row in state.get("history", [])]
    return int(state["step"]), float(state.get("elapsed", 0.0)), history


def _save_final(output: _OutputPlan, config: LoraTrainingConfig, unet: Any, text_encoder: Any, history: list,
                resolution: int) -> dict[str, Path]:
    """Write the LoRA in both formats and the loss log; a staged overwrite then replaces the old folder."""
    from .lora import save_lora

    out = output.work

    files = save_lora(unet, text_encoder if config.train_text_encoder else None, out, config.name,
                      adapter_name=ADAPTER_NAME, overwrite=True,
                      kohya_metadata={"ss_sd_model_name": config.model, "ss_resolution": f"({resolution}, {resolution})",
                                      "ss_steps": str(config.max_train_steps),
                                      "ss_learning_rate": str(config.learning_rate),
                                      "ss_seed": str(config.seed), "ss_trigger_word": config.trigger_word})
    files["loss_csv"] = _write_loss_csv(out / "loss.csv", history)
    files["config"] = out / "training_config.json"
    if output.staged:
        # The new LoRA is complete: only now does it replace the old one.
        _swap_into_place(output.work, output.final, config.name)
        files = {k: output.final / p.relative_to(output.work) for k, p in files.items()}
    log.info("saved LoRA %r to %s", config.name, output.final)
    return files
