"""The settings of a LoRA training run and the record each step yields."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from ..lora import UNET_TARGET_MODULES
from ..validation import check_choice, check_float, check_int
from .data import DatasetReport

# The UNet modules each `lora_layers` choice adapts (peft target_modules).
UNET_LORA_LAYERS = {
    "attention": list(UNET_TARGET_MODULES),
    "transformer": [*UNET_TARGET_MODULES, "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"],
}
ADAPTER_NAME = "charstudio_train"  # unlikely to clash with adapters a Studio has loaded
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


@dataclass
class LoraTrainingConfig:
    """Settings for one LoRA training run; saved as ``training_config.json`` beside the LoRA.

    Data: ``data_dir`` holds 5-50 images of one character. A ``.txt`` file beside an image is
    its caption (kohya convention); images without one use ``instance_prompt``, which defaults
    to "a picture of {trigger_word} {class_word}" (DreamBooth style).

    Defaults follow common practice for SD 1.5 character LoRAs: rank 16, alpha 16, lr 1e-4,
    AdamW (8-bit when bitsandbytes works on a CUDA GPU), batch 1, and the model's native
    resolution (512 for SD 1.5, 128 for ``tiny``). SDXL models train the same way at their native
    1024 px, on the UNet only unless a text encoder is asked for, with aspect buckets at SDXL's
    trained sizes and each picture's original size and crop as its size conditioning (time ids).

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
        train_text_encoder: Also train LoRA on the text encoder's attention projections (on SDXL:
            the first, CLIP ViT-L). Off by default: UNet-only training is the usual choice.
        train_text_encoder_2: SDXL only: also train LoRA on the second text encoder (OpenCLIP bigG).
        learning_rate: Peak learning rate for the UNet adapter.
        text_encoder_lr: Learning rate for the text-encoder adapter (None = learning_rate).
        text_encoder_2_lr: Learning rate for the second text encoder's adapter (None = text_encoder_lr,
            else learning_rate).
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
        cache_text_embeddings: Encode every caption once with each frozen text encoder (both of
            SDXL's, and its pooled embedding) instead of at each step. On a GPU, a part that the
            caches leave idle (the VAE with ``cache_latents``, frozen text encoders) moves to CPU
            memory while training and comes back only for validation images: with gradient
            checkpointing and 8-bit AdamW, what lets SDXL train at 1024 px on a 12 GB GPU.
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
        identity_scorer: Scores the validation pictures' identity against the training pictures, at
            the trained weight and at weight 0, into ``identity.json`` and each step's record:
            "auto" (CCIP if cached, else CLIP-I if cached, else mini's scorer), "ccip", "clip",
            "mini", a CCIP folder, or "off".
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
    train_text_encoder_2: bool = False
    learning_rate: float = 1e-4
    text_encoder_lr: float | None = None
    text_encoder_2_lr: float | None = None
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
    cache_text_embeddings: bool = True
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
    identity_scorer: str = "auto"
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        self._check_names_and_paths()
        self._check_choices()
        self._check_sizes_and_steps()
        self._check_optimizer()
        self._check_extras()

    def _check_names_and_paths(self) -> None:
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

    def _check_choices(self) -> None:
        check_choice("crop", self.crop, ("center", "buckets"))
        check_choice("lora_layers", self.lora_layers, tuple(UNET_LORA_LAYERS))
        check_choice("lr_scheduler", self.lr_scheduler, ("constant", "constant_with_warmup", "linear", "cosine"))
        check_choice("optimizer", self.optimizer, ("auto", "adamw", "adamw8bit"))
        check_choice("mixed_precision", self.mixed_precision, (None, "no", "fp16", "bf16"))

    def _check_sizes_and_steps(self) -> None:
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

    def _check_optimizer(self) -> None:
        self.learning_rate = check_float("learning_rate", self.learning_rate, above=0)
        for name in ("text_encoder_lr", "text_encoder_2_lr"):
            if getattr(self, name) is not None:
                setattr(self, name, check_float(name, getattr(self, name), above=0))
        for name in ("train_text_encoder_2", "cache_text_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, getattr(self, name), "use True or False")
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

    def _check_extras(self) -> None:
        """Pose conditioning, prior preservation, validation and checkpoints."""
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
        if not isinstance(self.identity_scorer, str) or not self.identity_scorer.strip():
            raise ConfigError("identity_scorer", self.identity_scorer,
                              "'auto', 'ccip', 'clip', 'mini', a CCIP folder, or 'off'")

    def trains(self, component: str) -> bool:
        """Whether this run trains an adapter on ``component`` ("unet", "text_encoder", "text_encoder_2")."""
        return {"unet": True, "text_encoder": self.train_text_encoder,
                "text_encoder_2": self.train_text_encoder_2}[component]

    def trained_parts(self) -> list[str]:
        """The components this run trains an adapter on (the UNet, and the text encoders asked for)."""
        return [name for name in ("unet", "text_encoder", "text_encoder_2") if self.trains(name)]

    def learning_rate_of(self, component: str) -> float:
        """The peak learning rate of ``component``'s adapter."""
        te = self.text_encoder_lr or self.learning_rate
        return {"unet": self.learning_rate, "text_encoder": te, "text_encoder_2": self.text_encoder_2_lr or te}[component]

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
    # on validation steps: the pictures' identity score against the training pictures, with the
    # LoRA ("trained") and at weight 0 ("base"), their "change", the "scorer" and its "threshold"
    identity: dict[str, Any] | None = None
