"""The session: one loaded model's parts on one device, and the diffusers pipelines built over them.

It owns loading (`from_pretrained`), the device and dtype, low-VRAM offload, the fast path, the
lazily loaded ControlNet and the VAE codec. It knows nothing of recipes, adapters or workflows.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from ..errors import ConfigError
from ..models import vae as vae_codec
from ..models.device import choose_low_vram, configure_attention, pick_device
from ..models.family import PIPELINE_KINDS, detect_family
from ..models.loading import load_components, load_controlnet, resolve_model
from ..models.presets import PRESETS
from ..models.vae import native_size
from ..validation import check_int

log = logging.getLogger(__name__)

PipelineKind = Literal["txt2img", "controlnet", "img2img", "controlnet_img2img", "inpaint"]


def torch_parts(components: dict[str, Any], family: Any) -> list[str]:
    """The family's parts that are torch modules (what moves between devices), ControlNet included."""
    import torch

    return [n for n in (*family.component_names, "controlnet") if isinstance(components.get(n), torch.nn.Module)]


class Session:
    """One set of components shared by the txt2img, ControlNet, img2img and inpainting pipelines
    of its family (SD 1.x or SDXL, read from the parts themselves)."""

    def __init__(self, components: dict[str, Any], *, model_id: str, device: Any, dtype: Any,
                 controlnet_source: str | None = None, default_size: int = 512, default_steps: int = 25,
                 default_guidance: float = 7.0, attention: str = "sdpa"):
        self.components = dict(components)
        self.components.setdefault("controlnet", None)
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.default_size = default_size
        self.default_steps = default_steps
        self.default_guidance = default_guidance
        self.attention = attention
        # Pictures beyond `limits.max_side(default_size)` a side need this opt-in (CLI: --allow-large).
        self.allow_large = False
        self.allow_pickle = False
        self.base_scheduler_config = dict(self.components["scheduler"].config)
        # SD 1.x or SDXL, read from the parts themselves: it owns everything family-specific.
        self.family = detect_family(self.components)
        self.encoder = self.family.make_encoder(self.components)
        self.controlnet_source = controlnet_source or self.family.openpose_controlnet
        self._pipelines: dict[str, Any] = {}
        self.max_batch = 8  # see the max_batch property
        self.low_vram = False  # see enable_low_vram
        self.speed = "default"  # see set_speed: "default" or "max" (the fast path)
        self.quantize: str | None = None  # None, or "int8": the UNet's and ControlNet's weights (from_pretrained)
        self._offloaded: str | None = None  # the pipeline kind whose offload hooks are installed

    @property
    def max_batch(self) -> int:
        """The most images one UNet call draws (a recipe's num_images, a sheet's poses); 1 draws
        each image in its own call. Low-VRAM mode sets 1. Checked when set: a whole number >= 1."""
        return self._max_batch

    @max_batch.setter
    def max_batch(self, value: Any) -> None:
        self._max_batch = check_int("max_batch", value, lo=1)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str = "mini", *, device: str | None = None, dtype: str | None = None,
                        controlnet: str | None = None, allow_pickle: bool = False,
                        attention: str = "auto", config: str | None = None,
                        prediction_type: str | None = None, low_vram: bool | None = None,
                        speed: str = "default", quantize: str | None = None) -> Any:
        """Load a model by preset name (`mini`, `tiny`, `sd15`), hub id, diffusers folder or `.safetensors` file.

        `controlnet` overrides the OpenPose ControlNet (hub id or folder); it loads on first use.
        Pickled `.ckpt` files load only with `allow_pickle=True`.
        `config` (single files only): diffusers folder or hub id of the base model whose configs,
        tokenizer and scheduler describe the file; needed offline unless SD 1.5's are cached.
        `prediction_type` ("epsilon" or "v_prediction") overrides what the model says; a
        v-prediction model also gets zero-terminal-SNR betas, trailing timesteps and, by
        default, CFG rescale 0.7 in its recipes.
        `low_vram`: keep the parts in CPU memory, move each to the GPU only while it runs (model CPU
        offload) and decode in tiles; None chooses it when the GPU has too little memory for the
        model (SDXL with a ControlNet on a 12 GB card). Same pictures, slower.
        `speed`: "default", or "max" for the fast path on a GPU (see `set_speed`).
        `quantize`: None (full precision) or "int8": the UNet's and ControlNet's weights in int8,
        about a quarter of fp32's memory (half of fp16's), pictures a level or two off; LoRAs load
        and unload as usual but cannot be fused (charstudio.speed.quantize).
        """
        from ..models.speed import check_speed
        from ..speed.quantize import check_quantize, quantize_parts

        check_speed(speed)
        quantize = check_quantize(quantize)
        source = resolve_model(model, allow_pickle=allow_pickle)
        dev, dt = pick_device(device, dtype)
        log.info("loading %s (%s) on %s as %s", model, source.kind, dev, dt)
        components = load_components(source, dtype=dt, config=config, prediction_type=prediction_type)
        if controlnet is not None:  # the caller's ControlNet replaces a built-in model's own
            components.pop("controlnet", None)
        quantize_parts(components, quantize)  # before the parts move: the GPU only ever holds int8
        preset = PRESETS.get(model)
        offload = choose_low_vram(low_vram, dev, components, native_size(components))
        if not offload:
            for name in torch_parts(components, detect_family(components)):
                components[name].to(dev)
        session = cls(components, model_id=source.name, device=dev, dtype=dt,
                      controlnet_source=controlnet or source.controlnet,
                      default_size=native_size(components),
                      default_steps=preset.default_steps if preset else 25,
                      default_guidance=preset.default_guidance if preset else 7.0)
        session.allow_pickle = allow_pickle  # the ControlNet, loaded later, follows the model's opt-in
        session.quantize = quantize  # and its weights, the model's quantization
        if offload:
            session.enable_low_vram()
        session.attention = configure_attention(session.pipeline("txt2img"), attention)
        if speed != "default":
            session.set_speed(speed)
        return session

    def enable_low_vram(self) -> None:
        """Low-VRAM mode: the parts stay in CPU memory and diffusers' model CPU offload moves each
        to `self.device` only while it runs (hooks re-installed for whichever pipeline runs), and
        the VAE decodes in tiles. Pictures are the same; runs are slower."""
        for name in torch_parts(self.components, self.family):
            self.components[name].to("cpu")
        self.components["vae"].enable_tiling()
        self.low_vram = True
        self.max_batch = 1
        self._offloaded = None
        log.info("low-VRAM mode: model CPU offload to %s, tiled VAE decoding", self.device)

    def set_speed(self, speed: str = "max", *, compile_backend: str | None = None, compile_mode: str | None = None,
                  channels_last: bool | None = None, fused_qkv: bool | None = None,
                  max_compiles: int | None = None) -> list[str]:
        """The fast path: "max" switches on SDPA, fused QKV projections, channels_last and
        torch.compile of the UNet, ControlNet and VAE decoder (on CUDA; on the CPU only fused QKV,
        and compile when `compile_backend` or $CHARSTUDIO_COMPILE_BACKEND names a backend);
        "default" undoes it all. `compile_mode` is inductor's ("reduce-overhead": CUDA graphs,
        CUDA only); `channels_last`/`fused_qkv` None: the device's default; `max_compiles`: per
        part, after which it runs uncompiled. Returns what was done (also logged); see
        charstudio.models.speed."""
        from ..models.speed import MAX_COMPILES, apply_speed, plan_speed

        if self.quantize and fused_qkv is None:
            fused_qkv = False  # a fused copy of q/k/v would be full precision again: int8 keeps them apart
        plan = plan_speed(speed, self.device, low_vram=self.low_vram, compile_backend=compile_backend,
                          compile_mode=compile_mode, channels_last=channels_last, fused_qkv=fused_qkv,
                          max_compiles=MAX_COMPILES if max_compiles is None else max_compiles)
        done = apply_speed(self, plan)
        self.speed = plan.speed
        return done

    # -- pipelines -------------------------------------------------------------------------------
    def offload_for(self, pipe: Any, kind: str) -> None:
        """Install `pipe`'s offload hooks on the shared parts (low-VRAM mode only)."""
        if self.low_vram and self._offloaded != kind:
            pipe.enable_model_cpu_offload(device=self.device)
            self._offloaded = kind

    def drop_offload_hooks(self) -> None:
        """Take the offload hooks off (low-VRAM mode), e.g. before diffusers' loaders change a part:
        they would re-install them on the part's current device (the CPU). The next run puts them back."""
        if self.low_vram and self._offloaded is not None:
            self._pipelines[self._offloaded].remove_all_hooks()
            self._offloaded = None

    @property
    def controlnet(self) -> Any:
        """The OpenPose ControlNet, loaded on first use for downloaded models."""
        if self.components.get("controlnet") is None:
            from ..speed.quantize import quantize_parts

            net = load_controlnet(self.controlnet_source, dtype=self.dtype, allow_pickle=self.allow_pickle,
                                  family=self.family)
            quantize_parts({"controlnet": net}, self.quantize)
            net = net.to("cpu" if self.low_vram else self.device)
            self.components["controlnet"] = net
            self._pipelines = {k: v for k, v in self._pipelines.items() if "controlnet" not in k}
            self._offloaded = None
        return self.components["controlnet"]

    def pipeline(self, kind: PipelineKind = "txt2img") -> Any:
        """The diffusers pipeline of `kind`, built once over the shared components."""
        if kind not in PIPELINE_KINDS:
            raise ConfigError("kind", kind, f"choose one of {', '.join(PIPELINE_KINDS)}")
        if kind not in self._pipelines:
            parts = {k: self.components[k] for k in self.family.component_names}
            if "controlnet" in kind:
                parts["controlnet"] = self.controlnet
            pipe = self.family.build_pipeline(kind, parts)
            pipe.set_progress_bar_config(disable=True)  # progress goes through our callbacks
            self._pipelines[kind] = pipe
        return self._pipelines[kind]

    @property
    def pose_lines(self) -> str:
        """How poses are drawn for this studio's ControlNet: "thick" for xinsir's SDXL ones, which
        were trained on thicker limbs, else "standard" (a recipe can say otherwise)."""
        from ..pose.drawing import THICK_LINE_CONTROLNETS

        return "thick" if str(self.controlnet_source).startswith(THICK_LINE_CONTROLNETS) else "standard"

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: "epsilon" (most models) or "v_prediction" (NoobAI v-pred, ...)."""
        return str(self.base_scheduler_config.get("prediction_type") or "epsilon")

    # -- the VAE codec ---------------------------------------------------------------------------
    def encode(self, images: Any) -> Any:
        """PIL image(s) -> latents scaled as the UNet sees them (the VAE's mean); `decode` inverts it."""
        return vae_codec.encode(self.components["vae"], self.pipeline("txt2img").image_processor, images)

    def decode(self, latents: Any) -> list[Any]:
        """Latents -> PIL images with the VAE. NaNs (fp16 overflow) trigger an fp32 retry and a warning."""
        return vae_codec.decode(self.components["vae"], self.pipeline("txt2img").image_processor, latents)
