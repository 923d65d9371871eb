"""Helpers the test modules share (plain functions, not fixtures: fixtures live in conftest.py,
which is pytest's and is never imported by a test). Import them as ``from helpers import pixels``;
pytest puts this folder on sys.path (rootdir conftest, the default "prepend" import mode)."""

from __future__ import annotations

from typing import Any

import numpy as np


def pixels(image: Any) -> np.ndarray:
    """A picture's RGB pixels as int16, so differences of two pictures do not wrap around."""
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# --- the model families the tests run on ---------------------------------------------------------
# Each family-parametrized test gets a TinyFamily through conftest's `family` fixture (ids sd1 and
# sdxl) and its session-scoped Studio through `family_studio`; the helpers below build what a test
# needs on either family (a plain diffusers pipeline, a LoRA file) the same way for both.

TINY_MODELS = {"sd1": "tiny", "sdxl": "tiny-sdxl"}


class TinyFamily:
    """One family's tiny model as the tests see it: `name` ("sd1" / "sdxl"), `model` (the model
    name a Studio loads), `family` (charstudio's ModelFamily), and builders of its parts."""

    def __init__(self, name: str) -> None:
        from charstudio.models.family import SD1, SDXL

        self.name = name
        self.model = TINY_MODELS[name]
        self.family = {"sd1": SD1, "sdxl": SDXL}[name]

    def __repr__(self) -> str:
        return f"TinyFamily({self.name!r})"

    @property
    def is_sdxl(self) -> bool:
        return self.name == "sdxl"

    @property
    def text_encoders(self) -> tuple[str, ...]:
        """The text encoders' component names, in order ("text_encoder", and SDXL's "text_encoder_2")."""
        return tuple(encoder for _, encoder in self.family.text_parts)

    def components(self, seed: int = 0) -> dict[str, Any]:
        """A fresh set of the tiny model's parts (the weights the family's Studio loads at seed 0)."""
        from charstudio.models.tiny import build_tiny_components, build_tiny_sdxl_components

        return (build_tiny_sdxl_components if self.is_sdxl else build_tiny_components)(seed)

    def plain_pipeline(self, kind: str = "txt2img", components: dict[str, Any] | None = None) -> Any:
        """The family's own diffusers pipeline on fresh tiny parts, built without charstudio's Studio."""
        c = components if components is not None else self.components()
        parts = {k: c[k] for k in self.family.component_names}
        if "controlnet" in kind:
            parts["controlnet"] = c["controlnet"]
        pipe = self.family.build_pipeline(kind, parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def studio(self, **kwargs: Any) -> Any:
        """A Studio of the test's own on this family's tiny model (CPU, fp32)."""
        from charstudio import Studio

        return Studio.from_pretrained(self.model, device="cpu", **kwargs)


def lora_model(family: TinyFamily, *, seed: int = 0, rank: int = 4, alpha: float = 2.0, dora: bool = False,
               text_encoders: bool = True) -> dict[str, Any]:
    """The family's tiny parts with a random (non-zero) LoRA on the UNet's attention and, unless
    text_encoders=False, on every text encoder's attention and MLP: the model that writes LoRA files."""
    import torch
    from peft import LoraConfig

    c = family.components()
    torch.manual_seed(seed)
    c["unet"].add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False, use_dora=dora,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    if text_encoders:
        for name in family.text_encoders:
            c[name].add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False, use_dora=dora,
                                           target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]))
    return c


def save_lora_model(family: TinyFamily, model: dict[str, Any], folder: Any, name: str) -> dict[str, Any]:
    """Write lora_model's adapters as charstudio writes trained ones: {"diffusers": path, "kohya": path}."""
    from charstudio import lora

    te = {name: model[name] if getattr(model[name], "peft_config", None) else None for name in family.text_encoders}
    return lora.save_lora(model["unet"], te["text_encoder"], folder, name, text_encoder_2=te.get("text_encoder_2"))
