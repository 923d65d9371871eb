"""Model families: what differs between SD 1.x and SDXL, in one place.

A `Studio` knows its family and asks it for everything family-specific: the diffusers pipeline
classes, the parts a model is made of, the prompt encoder and the extra pipeline arguments it
produces, the native size and the sizes the models were trained at, and the default OpenPose
ControlNet. The family is detected from the model or file itself, never from its name, and only
here: every detector (`family_of_unet`, `family_of_keys`, `family_of_lora`, `family_of_width`,
`detect_family`, `family_of_folder`) asks each family in `FAMILIES` whether it matches
(`ModelFamily.matches_unet`, `ModelFamily.matches_keys`), so a third family is one more entry.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping

from ..errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)

FamilyName = Literal["sd1", "sdxl"]
# "inpaint": diffusers' inpainting pipeline, for a 9-channel inpainting UNet (charstudio.workflows.inpaint)
PIPELINE_KINDS = ("txt2img", "controlnet", "img2img", "controlnet_img2img", "inpaint")


@dataclass(frozen=True)
class IPAdapterFiles:
    """Where a family's default IP-Adapter lives, in diffusers' `load_ip_adapter` terms."""

    repo: str  # hub id (or a local folder laid out like it)
    subfolder: str
    weight_name: str
    # the CLIP image encoder: a folder name inside `subfolder`, or a path from the repo root (has a "/")
    image_encoder_folder: str


@dataclass(frozen=True)
class ModelFamily:
    """Everything charstudio does differently for one family of Stable Diffusion models."""

    name: FamilyName
    label: str  # for messages: "SD 1.x", "SDXL"
    pipelines: Mapping[str, str]  # pipeline kind -> diffusers class name
    text_parts: tuple[tuple[str, str], ...]  # (tokenizer, text encoder) component names, in order
    native_size: int  # what the family's base models were trained at (pixels a side)
    sizes: tuple[tuple[int, int], ...]  # (width, height) the base models were trained at
    openpose_controlnet: str  # hub id of the default OpenPose ControlNet
    single_file_parts: Mapping[str, str]  # part -> key prefix in an A1111 / civitai single file
    base_model: str  # hub id of the family's base model (its configs are the ones shipped in the package)
    packaged_config: str  # charstudio/data/configs/<this>: the base model's configs, for single files
    tokenizer_pads: tuple[str, ...]  # each tokenizer's pad token, in text_parts order
    ip_adapter: IPAdapterFiles  # the default IP-Adapter for sheets
    # A1111's "Clip skip" number of the layer this family's prompts use by default (counted from the
    # last layer as 1): SD 1.x the last layer (1), SDXL the penultimate (2: Pony's "clip skip 2").
    # A recipe's clip_skip=N (diffusers' meaning, N layers further back) is A1111's N + this.
    a1111_clip_skip: int = 1
    # Previews without the VAE: a linear map from the 4 latent channels to RGB (plus a bias), and
    # the tiny autoencoder (TAESD) that decodes this family's latents cheaply, used when cached.
    latent_rgb: tuple[tuple[float, float, float], ...] = ()
    latent_rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    preview_vae: str | None = None
    # Pipelines for a union ControlNet (one model, several control types; xinsir's union for SDXL),
    # run in its OpenPose mode; kinds not listed have none.
    union_pipelines: Mapping[str, str] = field(default_factory=dict)
    union_openpose_mode: int = 0
    # The LoRA key layout: kohya's prefix per component, whether kohya names the UNet's blocks the
    # SGM way (SDXL: kohya trains on the original SDXL UNet) or the diffusers way, the kohya
    # `ss_base_model_version`, and the diffusers loader mixin whose key conversion reads them.
    kohya_prefixes: Mapping[str, str] = field(default_factory=lambda: {"unet": "lora_unet_",
                                                                       "text_encoder": "lora_te_"})
    kohya_sgm_unet: bool = False
    kohya_base_model: str = "sd_v1"
    lora_loader: str = "StableDiffusionLoraLoaderMixin"
    pipeline_options: Mapping[str, Any] = field(default_factory=dict)  # extra constructor arguments
    # Below this share of the native size a side the family's models draw poorly (SDXL under
    # about 768 px); None: no warning.
    small_size_share: float | None = None
    micro_conditioning: bool = False  # SDXL: original size, crop and target size condition the UNet
    # Detection (the detectors below): the UNet's cross-attention width in the family's base models,
    # the UNet addition_embed_types its pipelines drive (SDXL's "text_time": pooled text and size
    # ids; SD 1.x: none, or "text", a pooling of the prompt's own hidden states, as mini has), and
    # key prefixes only this family's files have, in single-file checkpoints, LoRA files and
    # textual-inversion embeddings.
    cross_attention_dim: int = 768
    unet_addition_embed_types: tuple[str | None, ...] = (None, "text")
    key_marks: tuple[str, ...] = ()
    # A textual-inversion file's tensor per text encoder, in text_parts order (A1111's names).
    embedding_keys: tuple[str, ...] = ("emb_params",)
    # Per text encoder, the single-file tensor whose last dimension diffusers matches to its
    # hidden_size (diffusers' CHECKPOINT_KEY_NAMES "clip", "clip_sdxl", "open_clip_sdxl").
    single_file_text_width_keys: Mapping[str, str] = field(default_factory=dict)

    @property
    def component_names(self) -> tuple[str, ...]:
        """The parts every pipeline of this family is built from."""
        names = [n for pair in self.text_parts for n in pair]
        return ("vae", *names, "unet", "scheduler")

    def matches_unet(self, unet_config: Any) -> bool:
        """Whether a UNet (or ControlNet) config has this family's conditioning inputs."""
        return _config_value(unet_config, "addition_embed_type") in self.unet_addition_embed_types

    def matches_keys(self, keys: Iterable[str]) -> bool:
        """Whether a file's tensor names carry one of this family's own marks (a single-file
        checkpoint's text encoder, a LoRA's second text encoder or SGM block names, an SDXL
        embedding's clip_g)."""
        return bool(self.key_marks) and any(str(k).startswith(self.key_marks) for k in keys)

    def make_encoder(self, components: Mapping[str, Any]) -> Any:
        """The prompt encoder over this family's tokenizers and text encoders."""
        from ..conditioning import PromptEncoder, SDXLPromptEncoder

        if len(self.text_parts) == 2:  # SDXL: two encoders, penultimate layers, pooled from the second
            (t1, e1), (t2, e2) = self.text_parts
            return SDXLPromptEncoder(PromptEncoder(components[t1], components[e1], layer="penultimate"),
                                     PromptEncoder(components[t2], components[e2], layer="penultimate"),
                                     force_zeros_for_empty_prompt=True)
        (tok, enc), = self.text_parts
        return PromptEncoder(components[tok], components[enc])

    def size_warning(self, width: int, height: int, native: int, model: str) -> str | None:
        """A warning for a picture far below the sizes this family was trained at, else None."""
        if self.small_size_share is None or max(width, height) >= self.small_size_share * native:
            return None
        scale = native / self.native_size
        sizes = ", ".join(f"{round(w * scale)}x{round(h * scale)}" for w, h in self.sizes[:5])
        return (f"{model} is an {self.label} model trained at {sizes}: {width}x{height} gives poor pictures; "
                f"use one of those sizes")

    def check_controlnet(self, config: Mapping[str, Any], source: str) -> None:
        """Refuse a ControlNet of the other family (from its config, before its weights load)."""
        theirs = family_of_unet(config, f"controlnet={source!r}")
        if theirs is not self:
            raise ModelLoadError(f"controlnet={source!r} is an {theirs.label} ControlNet and the model is "
                                 f"{self.label}: use an {self.label} OpenPose ControlNet, e.g. "
                                 f"{self.openpose_controlnet!r}")

    def conditioning_defaults(self, width: int, height: int) -> dict[str, Any]:
        """Recipe fields this family adds for a picture of width x height (SDXL: a full,
        uncropped picture of that size, as diffusers assumes)."""
        if not self.micro_conditioning:
            return {}
        return {"original_size": (height, width), "crops_coords_top_left": (0, 0), "target_size": (height, width)}

    def call_arguments(self, config: Any) -> dict[str, Any]:
        """Pipeline arguments that come from this family's recipe fields."""
        if not self.micro_conditioning:
            return {}
        defaults = self.conditioning_defaults(config.width, config.height)
        return {k: tuple(getattr(config, k) or defaults[k]) for k in defaults}

    def config_folder(self) -> Path:
        """The base model's configs shipped in the package (a diffusers folder without weights):
        what a single-file checkpoint of this family is read with, offline."""
        from importlib import resources

        return Path(str(resources.files("charstudio").joinpath("data", "configs", self.packaged_config)))

    def real_tokenizers(self) -> dict[str, Any]:
        """The family's CLIP tokenizers, built offline from open_clip_torch's vocabulary."""
        from .tokenizers import clip_tokenizer

        return {tok: clip_tokenizer(pad) for (tok, _), pad in zip(self.text_parts, self.tokenizer_pads)}

    def build_pipeline(self, kind: str, parts: Mapping[str, Any]) -> Any:
        """The diffusers pipeline of ``kind`` over shared ``parts``."""
        import diffusers

        name = self.pipelines[kind]
        if is_union_controlnet(parts.get("controlnet")):
            if kind not in self.union_pipelines:
                raise ModelLoadError(f"controlnet={type(parts['controlnet']).__name__}: a union ControlNet has no "
                                     f"{self.label} {kind} pipeline in diffusers; use an OpenPose ControlNet, e.g. "
                                     f"{self.openpose_controlnet!r}")
            name = self.union_pipelines[kind]
        cls: Callable[..., Any] = getattr(diffusers, name)
        return cls(**parts, **self.pipeline_options)


SD1 = ModelFamily(
    name="sd1", label="SD 1.x",
    pipelines={"txt2img": "StableDiffusionPipeline", "controlnet": "StableDiffusionControlNetPipeline",
               "img2img": "StableDiffusionImg2ImgPipeline",
               "controlnet_img2img": "StableDiffusionControlNetImg2ImgPipeline",
               "inpaint": "StableDiffusionInpaintPipeline"},
    text_parts=(("tokenizer", "text_encoder"),),
    native_size=512, sizes=((512, 512), (512, 768), (768, 512)),
    openpose_controlnet="lllyasviel/control_v11p_sd15_openpose",
    single_file_parts={"UNet": "model.diffusion_model.", "VAE": "first_stage_model.",
                       "CLIP text encoder": "cond_stage_model.transformer."},
    base_model="stable-diffusion-v1-5/stable-diffusion-v1-5", packaged_config="sd15",
    tokenizer_pads=("<|endoftext|>",),
    ip_adapter=IPAdapterFiles("h94/IP-Adapter", "models", "ip-adapter_sd15.safetensors", "image_encoder"),
    # A1111's "approx cheap" factors for SD 1.x latents
    latent_rgb=((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)),
    preview_vae="madebyollin/taesd",
    pipeline_options={"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False},
    cross_attention_dim=768,
    # a kohya file's lora_te_ and a diffusers SD 1.x LoRA's keys are SDXL's too (less text_encoder_2):
    # a LoRA with no family's marks is read as DEFAULT_FAMILY's, which is this one
    key_marks=("cond_stage_model.transformer.", "emb_params"),
    single_file_text_width_keys={
        "text_encoder": "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"},
)

SDXL = ModelFamily(
    name="sdxl", label="SDXL",
    pipelines={"txt2img": "StableDiffusionXLPipeline", "controlnet": "StableDiffusionXLControlNetPipeline",
               "img2img": "StableDiffusionXLImg2ImgPipeline",
               "controlnet_img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
               "inpaint": "StableDiffusionXLInpaintPipeline"},
    text_parts=(("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")),
    # The buckets SDXL and its anime fine-tunes (Illustrious, NoobAI, Pony, Animagine) train at.
    native_size=1024, sizes=((1024, 1024), (832, 1216), (1216, 832), (896, 1152), (1152, 896), (768, 1344),
                             (1344, 768)),
    openpose_controlnet="xinsir/controlnet-openpose-sdxl-1.0",
    single_file_parts={"UNet": "model.diffusion_model.", "VAE": "first_stage_model.",
                       "CLIP ViT-L text encoder": "conditioner.embedders.0.",
                       "OpenCLIP bigG text encoder": "conditioner.embedders.1."},
    base_model="stabilityai/stable-diffusion-xl-base-1.0", packaged_config="sdxl",
    tokenizer_pads=("<|endoftext|>", "!"),  # OpenCLIP bigG's tokenizer pads with "!"
    # The "plus" adapter (a resampler over the image encoder's patch features) with the ViT-H
    # encoder of models/image_encoder; insightface Face-ID adapters fail on anime faces.
    ip_adapter=IPAdapterFiles("h94/IP-Adapter", "sdxl_models", "ip-adapter-plus_sdxl_vit-h.safetensors",
                              "models/image_encoder"),
    # No invisible watermark: it changes pixels after decoding, so a recipe would not re-run exactly.
    pipeline_options={"add_watermarker": False},
    small_size_share=0.75,
    micro_conditioning=True,
    a1111_clip_skip=2,
    # SDXL's VAE was retrained: its latents need their own factors (ComfyUI's latent_formats.SDXL)
    latent_rgb=((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
                (-0.3165, -0.2492, -0.2188)),
    latent_rgb_bias=(0.1084, -0.0175, -0.0011),
    preview_vae="madebyollin/taesdxl",
    union_pipelines={"controlnet": "StableDiffusionXLControlNetUnionPipeline",
                     "controlnet_img2img": "StableDiffusionXLControlNetUnionImg2ImgPipeline"},
    union_openpose_mode=0,  # xinsir's union: openpose 0, depth 1, hed/scribble 2, canny/lineart 3, ...
    kohya_prefixes={"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
    kohya_sgm_unet=True,
    kohya_base_model="sdxl_base_v1-0",
    lora_loader="StableDiffusionXLLoraLoaderMixin",
    cross_attention_dim=2048,  # CLIP ViT-L's 768 and OpenCLIP bigG's 1280 side by side
    unet_addition_embed_types=("text_time",),
    key_marks=("conditioner.embedders.",  # single files
               # LoRA files: kohya's second text encoder and SGM block names, diffusers' second encoder
               "lora_te1_", "lora_te2_", "text_encoder_2.", "lora_unet_input_blocks_", "lora_unet_output_blocks_",
               "lora_unet_middle_block_",
               "clip_g"),  # embeddings
    embedding_keys=("clip_l", "clip_g"),
    single_file_text_width_keys={
        "text_encoder": "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
        "text_encoder_2": "conditioner.embedders.1.model.positional_embedding"},
)

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (SD1, SDXL)}


def is_union_controlnet(controlnet: Any) -> bool:
    """Whether a ControlNet is a union one (several control types, chosen by a mode number)."""
    return type(controlnet).__name__ == "ControlNetUnionModel"


# The family assumed where nothing tells (a hub id without a preset, a file with no family's
# marks): SD 1.x, whose layouts are the ones the later family extends.
DEFAULT_FAMILY = SD1
# Cross-attention widths of base models of architectures charstudio does not run, to name them in messages.
OTHER_WIDTHS = {1024: "SD 2.x"}


def _config_value(config: Any, key: str) -> Any:
    """A config entry, whether the config is a dict, diffusers' FrozenDict or a config object."""
    if config is None:
        return None
    return config.get(key) if hasattr(config, "get") else getattr(config, key, None)


def family_of_recipe(fields: Mapping[str, Any]) -> ModelFamily:
    """The family a recipe (GenerationConfig fields, or parsed A1111 text) was drawn with: SDXL's
    recipes carry micro-conditioning (target size), SD 1.x's never do."""
    sized = fields.get("target_size") is not None or fields.get("original_size") is not None
    return next((f for f in FAMILIES.values() if f.micro_conditioning == sized), DEFAULT_FAMILY)


def family_of_unet(unet_config: Any, what: str = "model") -> ModelFamily:
    """The family whose conditioning inputs a UNet (or ControlNet) config has; a ModelLoadError
    naming ``what`` when it has none of theirs."""
    for family in FAMILIES.values():
        if family.matches_unet(unet_config):
            return family
    kind = _config_value(unet_config, "addition_embed_type")
    raise ModelLoadError(f"{what}: its UNet has addition_embed_type={kind!r}, which no family charstudio runs has "
                         f"({'; '.join(f'{f.label}: ' + ' or '.join(map(repr, f.unet_addition_embed_types)) for f in FAMILIES.values())}): "
                         "use an SD 1.x or SDXL model")


def family_of_keys(keys: Iterable[str], field: str = "model", source: str = "file") -> ModelFamily | None:
    """The family whose marks a file's tensor names carry (`ModelFamily.matches_keys`), None when
    no family's do; a file with two families' marks is refused (ConfigError naming ``field``)."""
    keys = list(keys)
    found = [f for f in FAMILIES.values() if f.matches_keys(keys)]
    if len(found) > 1:
        examples = ", ".join(f"{next(k for k in keys if k.startswith(f.key_marks))} ({f.label})" for f in found)
        raise ConfigError(field, source, f"its tensors carry the marks of {' and of '.join(f.label for f in found)} "
                          f"({examples}); the file is inconsistent")
    return found[0] if found else None


def family_of_lora(keys: Iterable[str], unet_config: Any = None, source: str = "state dict") -> ModelFamily:
    """The family whose key layout a LoRA is read in: the model's (from its UNet config) when
    there is one, else the file's marks (SDXL's second text encoder or SGM block names), else
    DEFAULT_FAMILY's."""
    if unet_config is not None:
        return family_of_unet(unet_config)
    return family_of_keys(keys, "lora", source) or DEFAULT_FAMILY


def family_of_width(width: int, components: Mapping[str, Any] | None = None) -> ModelFamily | None:
    """The family whose base UNet takes ``width``-wide text features, else None.

    With a loaded model's ``components``, also the one-encoder family whose text encoder is as
    wide as that model's first one: SDXL's first encoder is SD 1.x's (CLIP ViT-L), so an SD 1.x
    part of a toy model is as wide as tiny-sdxl's first encoder."""
    for family in FAMILIES.values():
        if family.cross_attention_dim == width:
            return family
    if components is not None:
        model = detect_family(components)
        (_, first), *others = model.text_parts
        hidden = getattr(getattr(components.get(first), "config", None), "hidden_size", None)
        if others and hidden == width:
            return next((f for f in FAMILIES.values() if f.text_parts == model.text_parts[:1]), None)
    return None


def architecture_of_width(width: Any) -> str | None:
    """How messages name the architecture a cross-attention width belongs to: a family's base
    models, or another known architecture (SD 2.x), else None."""
    family = family_of_width(width) if isinstance(width, int) else None
    return family.label if family is not None else OTHER_WIDTHS.get(width)


def architecture_of_unet(unet_config: Any) -> str:
    """'SDXL (cross-attention width 2048)', for messages: a UNet whose family has inputs of its
    own (SDXL's text-time, whatever its width: tiny-sdxl is 64 wide) is named by them; other
    UNets by their width (SD 1.x 768, SD 2.x 1024), else 'this model'."""
    width = _config_value(unet_config, "cross_attention_dim")
    marked = next((f for f in FAMILIES.values() if None not in f.unet_addition_embed_types
                   and f.matches_unet(unet_config)), None)
    name = marked.label if marked is not None else architecture_of_width(width) or "this model"
    return f"{name} (cross-attention width {width})"


def detect_family(components: Mapping[str, Any]) -> ModelFamily:
    """The family of loaded components: the one their UNet's inputs match, with exactly that
    family's text encoders (SDXL: a second text encoder and a text-time UNet)."""
    unet = components.get("unet")
    config = getattr(unet, "config", None)
    labels = " nor ".join(f.label for f in FAMILIES.values())
    try:
        family = family_of_unet(config)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{exc}: it is neither {labels}") from None
    # Compared beyond the encoders every family has: SD 1.x's one is SDXL's first.
    shared = set.intersection(*({enc for _, enc in f.text_parts} for f in FAMILIES.values()))
    encoders = {enc for f in FAMILIES.values() for _, enc in f.text_parts} - shared
    have = sorted(e for e in encoders if components.get(e) is not None)
    need = sorted(enc for _, enc in family.text_parts if enc not in shared)
    if have != need:
        raise ModelLoadError(f"the model's parts are of two families: its UNet is {family.label}'s "
                             f"(addition_embed_type={_config_value(config, 'addition_embed_type')!r}), which takes "
                             f"{'the text encoders ' + ', '.join(need) if need else 'no ' + ', '.join(encoders)}, "
                             f"and it has {', '.join(have) or 'none'}: it is neither {labels}")
    return family


def family_of_folder(folder: str | Path) -> ModelFamily:
    """A diffusers folder's family, read from its model_index.json pipeline class (the family
    whose txt2img class name is the longest start of it: StableDiffusionXL... is SDXL's)."""
    index = Path(folder) / "model_index.json"
    try:
        name = str(json.loads(index.read_text(encoding="utf-8")).get("_class_name", ""))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model={str(folder)!r}: its model_index.json cannot be read ({exc})") from exc
    stems = [(f.pipelines["txt2img"].removesuffix("Pipeline"), f) for f in FAMILIES.values()]
    found = [(len(stem), f) for stem, f in stems if name.startswith(stem)]
    return max(found, key=lambda pair: pair[0])[1] if found else DEFAULT_FAMILY


def is_v_prediction_file(keys: list[str]) -> bool:
    """Whether a single file marks itself as v-prediction (NoobAI v-pred carries a ``v_pred`` key)."""
    return "v_pred" in keys


PredictionType = Literal["epsilon", "v_prediction"]
V_PREDICTION_GUIDANCE_RESCALE = 0.7  # the CFG rescale v-prediction + zero-terminal-SNR models are used with


def prediction_scheduler_config(base: Mapping[str, Any], prediction_type: PredictionType) -> dict[str, Any]:
    """A scheduler config for ``prediction_type``. v-prediction models of this kind (NoobAI
    v-pred) are trained with zero terminal SNR, so they also get rescaled betas and trailing
    timesteps (the schedule must reach pure noise at the first step)."""
    # diffusers' from_config resets the keys listed in `_use_default_values` to the class
    # defaults; every key here is meant as given.
    config = {k: v for k, v in dict(base).items() if k != "_use_default_values"}
    config["prediction_type"] = prediction_type
    if prediction_type == "v_prediction":
        config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return config
