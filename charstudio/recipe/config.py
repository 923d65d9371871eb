"""Settings as typed dataclasses, validated on construction.

A `GenerationConfig` is also the *recipe* of an image: it is stored as JSON in every PNG we
write, and running it again rebuilds the image. Everything here is plain data (no torch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import ConfigError
from ..limits import check_count
from ..schedulers import DEFAULT_SCHEDULER, scheduler_spec
from ..validation import check_choice, check_float, check_int
from .speed import check_speed_fields
from .workflow_fields import check_workflow_fields

# 2: `watermark` joined (a recipe of version 1, written before, reads as watermark=False).
RECIPE_VERSION = 2
MAX_SEED = 2**32 - 1


def check_size(name: str, value: Any) -> int:
    value = check_int(name, value, 8, 8192)
    if value % 8:
        lower, upper = value - value % 8, value - value % 8 + 8
        raise ConfigError(name, value, f"must be a multiple of 8 (the VAE works on 8x8 blocks), e.g. {lower} or {upper}")
    return value


@dataclass
class GenerationConfig:
    """Everything that determines one generated image (or a batch of `num_images`).

    `prompt` and `negative_prompt` are the final texts sent to the text encoder, after a
    character card and a style were composed; `character` and `style` only record where they
    came from, so re-running a recipe never depends on a card that may have changed since.
    Image i of a batch uses seed `seed + i`.
    """

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    num_inference_steps: int = 25
    guidance_scale: float = 7.0
    # CFG rescale (diffusers' guidance_rescale, "phi" in the paper): 0 off; about 0.7 for
    # v-prediction models with zero-terminal SNR (NoobAI v-pred), whose CFG over-exposes otherwise.
    guidance_rescale: float = 0.0
    width: int = 512
    height: int = 512
    scheduler: str = DEFAULT_SCHEDULER
    num_images: int = 1
    clip_skip: int | None = None
    model: str | None = None
    character: str | None = None
    style: str | None = None
    loras: dict[str, float] = field(default_factory=dict)
    # OpenPose ControlNet: the pose in pose-editor JSON form (see charstudio.pose), fitted to width x height.
    pose: dict | None = None
    controlnet_conditioning_scale: float = 1.0
    control_guidance_start: float = 0.0
    control_guidance_end: float = 1.0
    # How the pose's control image is drawn: "standard" (controlnet-aux's widths) or "thick"
    # (xinsir's SDXL ControlNets: wider with the picture's size); see charstudio.pose.drawing.
    pose_lines: str = "standard"
    # SDXL's micro-conditioning, in diffusers' (height, width) / (top, left) order: the size the
    # model is told the source picture had, the crop's top-left corner, and the target size.
    # None on SD 1.x models, which have none; Studio.make_config fills them in for SDXL.
    original_size: tuple[int, int] | None = None
    crops_coords_top_left: tuple[int, int] | None = None
    target_size: tuple[int, int] | None = None
    # A style mix (Studio.mix_styles): each style's full prompt and negative with its weight
    # (normalised); the run conditions on the weighted mean of their embeddings. `prompt` and
    # `negative_prompt` then hold the heaviest style's, for readers that know no mixes.
    style_mix: list[dict] = field(default_factory=list)
    # Textual-inversion embeddings the prompts write: word -> the file it was loaded from
    # (Studio.load_embedding). A re-run loads each from there (or by file name from the studio's
    # embeddings folder) unless the word is loaded already.
    embeddings: dict[str, str] = field(default_factory=dict)
    # The cards a prompt's `@name`s were expanded from (charstudio.cast.expand): per card its name,
    # the words used, outfit, expression, family and payload. `prompt` already holds the words, so
    # a re-run needs no card; this records where they came from (A1111 text: "Cast: rin, kai").
    cast: list[dict] = field(default_factory=list)
    # Character workflows (charstudio.workflows), each off when empty. `regions`: regional
    # prompts (two characters in one picture, masked cross-attention); `hires`: the hires fix's
    # upscale and second pass; `detail`: the detail pass over body parts; `inpaint`: redraw a
    # masked part of a source picture. Each field's schema (charstudio.recipe.<field>, registered
    # in recipe.workflow_fields) validates and normalises it.
    regions: list[dict] = field(default_factory=list)
    hires: dict | None = None
    detail: dict | None = None
    inpaint: dict | None = None
    # The invisible watermark (charstudio.provenance.watermark) on the recipe's final picture.
    watermark: bool = True
    # Speed (draft mode; charstudio.recipe.speed checks them): the exact timesteps of a few-step
    # schedule, the UNet feature cache, the draft record (preset, few-step LoRA, licence, and the
    # settings a full-quality "finish" restores), and the weight quantization drawn with.
    timesteps: list[int] | None = None
    feature_cache: dict | None = None
    draft: dict | None = None
    quantize: str | None = None

    def __post_init__(self) -> None:
        # Each group in the order its fields are declared, so the first bad field is the one named.
        self._check_texts()
        self._check_numbers()
        self._check_loras()
        self._check_control()
        self._check_micro_conditioning()
        self._check_style_mix()
        self._check_embeddings()
        self._check_cast()
        check_workflow_fields(self)
        check_speed_fields(self)
        if not isinstance(self.watermark, bool):
            raise ConfigError("watermark", self.watermark, "True or False")

    def _check_texts(self) -> None:
        if not isinstance(self.prompt, str):
            raise ConfigError("prompt", self.prompt, "expected text")
        if not self.prompt.strip():
            raise ConfigError("prompt", self.prompt, "give a prompt or a character card (see `charstudio cards`)")
        if not isinstance(self.negative_prompt, str):
            raise ConfigError("negative_prompt", self.negative_prompt, "expected text")

    def _check_numbers(self) -> None:
        self.seed = check_int("seed", self.seed, 0, MAX_SEED)
        self.num_inference_steps = check_int("num_inference_steps", self.num_inference_steps, 1, 1000)
        self.guidance_scale = check_float("guidance_scale", self.guidance_scale, 0.0, 50.0)
        self.guidance_rescale = check_float("guidance_rescale", self.guidance_rescale, 0.0, 1.0)
        self.width = check_size("width", self.width)
        self.height = check_size("height", self.height)
        self.scheduler = scheduler_spec(self.scheduler).name
        self.num_images = check_int("num_images", self.num_images, 1, 64)
        if self.seed + self.num_images - 1 > MAX_SEED:
            raise ConfigError("seed", self.seed, f"seed + num_images - 1 must stay <= {MAX_SEED}")
        if self.clip_skip is not None:
            self.clip_skip = check_int("clip_skip", self.clip_skip, 1, 12)

    def _check_loras(self) -> None:
        if not isinstance(self.loras, dict):
            raise ConfigError("loras", self.loras, "expected a mapping of adapter name to weight")
        check_count("loras", len(self.loras), what="LoRAs")
        self.loras = {str(k): check_float(f"loras[{k!r}]", v, -10.0, 10.0) for k, v in self.loras.items()}

    def _check_control(self) -> None:
        if self.pose is not None and not isinstance(self.pose, dict):
            raise ConfigError("pose", type(self.pose).__name__, "expected pose-editor JSON (a dict); use Pose.to_dict()")
        self.controlnet_conditioning_scale = check_float(
            "controlnet_conditioning_scale", self.controlnet_conditioning_scale, 0.0, 5.0)
        self.control_guidance_start = check_float("control_guidance_start", self.control_guidance_start, 0.0, 1.0)
        self.control_guidance_end = check_float("control_guidance_end", self.control_guidance_end, 0.0, 1.0)
        from ..pose.drawing import POSE_LINES

        self.pose_lines = check_choice("pose_lines", self.pose_lines, POSE_LINES)
        if self.control_guidance_start >= self.control_guidance_end:
            raise ConfigError("control_guidance_start", self.control_guidance_start,
                              f"must be below control_guidance_end ({self.control_guidance_end})")

    def _check_micro_conditioning(self) -> None:
        for name, lo in (("original_size", 8), ("crops_coords_top_left", 0), ("target_size", 8)):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise ConfigError(name, value, "a pair of whole numbers, (height, width) or (top, left)")
            setattr(self, name, tuple(check_int(f"{name}[{i}]", v, lo, 16384) for i, v in enumerate(value)))

    def _check_style_mix(self) -> None:
        if not isinstance(self.style_mix, list):
            raise ConfigError("style_mix", self.style_mix, "expected a list of {style, weight, prompt, negative_prompt}")
        check_count("style_mix", len(self.style_mix), what="styles")
        mix = []
        for i, part in enumerate(self.style_mix):
            if not isinstance(part, dict) or not isinstance(part.get("prompt"), str) or not isinstance(
                    part.get("negative_prompt", ""), str):
                raise ConfigError(f"style_mix[{i}]", part, "expected {style, weight, prompt, negative_prompt}")
            mix.append({"style": part.get("style"), "weight": check_float(f"style_mix[{i}].weight", part.get("weight"),
                                                                          0.0, 1.0),
                        "prompt": part["prompt"], "negative_prompt": part.get("negative_prompt", "")})
        if mix and sum(p["weight"] for p in mix) <= 0:
            raise ConfigError("style_mix", self.style_mix, "at least one weight must be > 0")
        self.style_mix = mix

    def _check_embeddings(self) -> None:
        if isinstance(self.embeddings, dict):
            check_count("embeddings", len(self.embeddings), what="embeddings")
        if not isinstance(self.embeddings, dict) or not all(
                isinstance(k, str) and k.strip() and isinstance(v, str) and v.strip() for k, v in self.embeddings.items()):
            raise ConfigError("embeddings", self.embeddings, "expected a mapping of embedding word to its file, "
                              "e.g. {'easynegative': 'embeddings/easynegative.safetensors'}")
        self.embeddings = dict(self.embeddings)

    def _check_cast(self) -> None:
        if self.cast is None:
            self.cast = []
        if not isinstance(self.cast, list) or not all(
                isinstance(c, dict) and isinstance(c.get("name"), str) and c["name"].strip() for c in self.cast):
            raise ConfigError("cast", self.cast, "expected a list of {name, words, outfit, expression, payload}, "
                              "one per @name card (charstudio.cast.expand_prompt's record)")
        check_count("cast", len(self.cast), what="characters")
        self.cast = [dict(c) for c in self.cast]

    def replace(self, **changes: Any) -> "GenerationConfig":
        """A copy with some fields changed (validated again)."""
        data = self.to_dict()
        data.pop("recipe_version", None)
        data.update(changes)
        return GenerationConfig(**data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["recipe_version"] = RECIPE_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationConfig":
        """Rebuild from `to_dict()` output; unknown keys from newer versions are ignored. A recipe
        without `watermark` (version 1, from before it) had none, so it re-runs without one."""
        if not isinstance(data, dict):
            raise ConfigError("recipe", type(data).__name__, "expected a JSON object")
        known = {f.name for f in fields(cls)}
        if "prompt" not in data:
            raise ConfigError("recipe.prompt", "missing", "a recipe needs its prompt (the text the model was given)")
        values = {k: v for k, v in data.items() if k in known}
        # A recipe without the key was written before the watermark (version 1): it had none, and
        # re-running it must give its pixels.
        values.setdefault("watermark", False)
        return cls(**values)
