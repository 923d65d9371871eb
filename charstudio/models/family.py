"""Model families: what differs between SD 1.x and SDXL, in one place.

A `Studio` knows its family and asks it for everything family-specific: the diffusers pipeline
classes, the parts a model is made of, the prompt encoder and the extra pipeline arguments it
produces, the native size and the sizes the models were trained at, and the default OpenPose
ControlNet. The family is detected from the model itself (`detect_family`,
`family_of_folder`, `loading.check_single_file_layout`), never from its name.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from ..errors import ModelLoadError

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
    single_file_marker: str  # a key prefix only this family's single files have
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

    @property
    def component_names(self) -> tuple[str, ...]:
        """The parts every pipeline of this family is built from."""
        names = [n for pair in self.text_parts for n in pair]
        return ("vae", *names, "unet", "scheduler")

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
        theirs = SDXL if config.get("addition_embed_type") == "text_time" else SD1
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
    single_file_marker="cond_stage_model.transformer.",
    single_file_parts={"UNet": "model.diffusion_model.", "VAE": "first_stage_model.",
                       "CLIP text encoder": "cond_stage_model.transformer."},
    base_model="stable-diffusion-v1-5/stable-diffusion-v1-5", packaged_config="sd15",
    tokenizer_pads=("<|endoftext|>",),
    ip_adapter=IPAdapterFiles("h94/IP-Adapter", "models", "ip-adapter_sd15.safetensors", "image_encoder"),
    # A1111's "approx cheap" factors for SD 1.x latents
    latent_rgb=((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)),
    preview_vae="madebyollin/taesd",
    pipeline_options={"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False},
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
    single_file_marker="conditioner.embedders.",
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
)

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (SD1, SDXL)}


def is_union_controlnet(controlnet: Any) -> bool:
    """Whether a ControlNet is a union one (several control types, chosen by a mode number)."""
    return type(controlnet).__name__ == "ControlNetUnionModel"


def family_of_recipe(fields: Mapping[str, Any]) -> ModelFamily:
    """The family a recipe (GenerationConfig fields, or parsed A1111 text) was drawn with: SDXL's
    recipes carry micro-conditioning (target size), SD 1.x's never do."""
    return SDXL if fields.get("target_size") is not None or fields.get("original_size") is not None else SD1


def detect_family(components: Mapping[str, Any]) -> ModelFamily:
    """The family of loaded components: SDXL has a second text encoder and a text-time UNet."""
    unet = components.get("unet")
    time_conditioned = getattr(getattr(unet, "config", None), "addition_embed_type", None) == "text_time"
    if components.get("text_encoder_2") is not None or time_conditioned:
        if not time_conditioned or components.get("text_encoder_2") is None:
            raise ModelLoadError("the model has half of SDXL's parts (a second text encoder xor a UNet with "
                                 "addition_embed_type='text_time'): it is neither SD 1.x nor SDXL")
        return SDXL
    return SD1


def family_of_folder(folder: str | Path) -> ModelFamily:
    """A diffusers folder's family, read from its model_index.json pipeline class."""
    index = Path(folder) / "model_index.json"
    try:
        name = str(json.loads(index.read_text(encoding="utf-8")).get("_class_name", ""))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model={str(folder)!r}: its model_index.json cannot be read ({exc})") from exc
    return SDXL if "XL" in name else SD1


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
