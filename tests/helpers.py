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


# --- IP-Adapters in h94/IP-Adapter's layout --------------------------------------------------------
# Random adapters for a tiny UNet, in the files diffusers' load_ip_adapter reads: SD 1.x's plain one
# (models/, an image_proj.proj linear projection) and SDXL's "plus" one (sdxl_models/, a Resampler).

def ip_adapter_layers(unet: Any, cross: int) -> dict[str, Any]:
    """Random ip_adapter.<k>.to_{k,v}_ip weights, k = 1, 3, 5, ... over the cross-attention
    layers in processor order (h94's numbering)."""
    import torch

    state, key = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            inner = unet.get_submodule(name[: -len(".processor")]).to_k.weight.shape[0]
            state[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(inner, cross) * 0.5
            state[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(inner, cross) * 0.5
            key += 2
    return state


def _save_image_encoder(folder: Any) -> None:
    """A tiny random CLIP vision tower with projection (hidden 32, projection 16) in ``folder``."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    CLIPVisionModelWithProjection(CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=16)).save_pretrained(folder)


def tiny_ip_adapter(unet: Any, folder: Any, weight_name: str = "ip-adapter_tiny.safetensors") -> Any:
    """A random IP-Adapter for the tiny UNet in h94/IP-Adapter's layout: models/image_encoder/
    (a CLIP vision tower) and models/<weight_name> with image_proj.* and ip_adapter.<k>.to_{k,v}_ip.*,
    where k = 1, 3, 5, ... counts the cross-attention layers in processor order. Returns the file."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    _save_image_encoder(folder / "models" / "image_encoder")
    cross, tokens = unet.config.cross_attention_dim, 4
    state = {"image_proj.proj.weight": torch.randn(tokens * cross, 16) * 0.2,
             "image_proj.proj.bias": torch.zeros(tokens * cross),
             "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    state.update(ip_adapter_layers(unet, cross))
    save_file(state, str(folder / "models" / weight_name))
    return folder / "models" / weight_name


PLUS_SDXL = "ip-adapter-plus_sdxl_vit-h.safetensors"  # SDXL's default IP-Adapter, in sdxl_models/


def tiny_plus_ip_adapter(unet: Any, folder: Any, weight_name: str = PLUS_SDXL, seed: int = 0,
                         encoder: bool = True) -> Any:
    """A random "plus" IP-Adapter for ``unet`` in h94/IP-Adapter's SDXL layout: the CLIP image
    encoder in models/image_encoder/, and sdxl_models/<weight_name> with the original Resampler's
    keys (image_proj.latents, proj_in, proj_out, norm_out, layers.<i>.0.{norm1,norm2,to_q,to_kv,
    to_out}, layers.<i>.1.{0,1,3}, as diffusers' `_convert_ip_adapter_image_proj_to_diffusers`
    reads them) and ip_adapter.<k>.to_{k,v}_ip for each cross-attention layer, k = 1, 3, 5, ...
    in processor order. Returns the weight file."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    if encoder:
        _save_image_encoder(folder / "models" / "image_encoder")
    # diffusers builds the resampler with 4 blocks and heads = to_q rows / 64: one 64-wide head.
    cross, features, hidden, queries = unet.config.cross_attention_dim, 32, 64, 4
    state = {"image_proj.latents": torch.randn(1, queries, hidden) / hidden ** 0.5,
             "image_proj.proj_in.weight": torch.randn(hidden, features) * 0.2,
             "image_proj.proj_in.bias": torch.zeros(hidden),
             "image_proj.proj_out.weight": torch.randn(cross, hidden) * 0.2,
             "image_proj.proj_out.bias": torch.zeros(cross),
             "image_proj.norm_out.weight": torch.ones(cross), "image_proj.norm_out.bias": torch.zeros(cross)}
    for i in range(4):
        block = f"image_proj.layers.{i}."
        for norm in ("0.norm1", "0.norm2", "1.0"):
            state[f"{block}{norm}.weight"], state[f"{block}{norm}.bias"] = torch.ones(hidden), torch.zeros(hidden)
        state[f"{block}0.to_q.weight"] = torch.randn(hidden, hidden) * 0.1
        state[f"{block}0.to_kv.weight"] = torch.randn(2 * hidden, hidden) * 0.1
        state[f"{block}0.to_out.weight"] = torch.randn(hidden, hidden) * 0.1
        state[f"{block}1.1.weight"] = torch.randn(4 * hidden, hidden) * 0.1
        state[f"{block}1.3.weight"] = torch.randn(hidden, 4 * hidden) * 0.1
    state.update(ip_adapter_layers(unet, cross))
    (folder / "sdxl_models").mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "sdxl_models" / weight_name))
    return folder / "sdxl_models" / weight_name


def family_ip_adapter(family: TinyFamily, unet: Any, folder: Any) -> Any:
    """The family's kind of tiny IP-Adapter, written where the family's defaults look for it in a
    folder laid out like h94/IP-Adapter (SD 1.x: models/ip-adapter_sd15.safetensors, a plain one;
    SDXL: sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors, a "plus" one). Returns the file."""
    if family.is_sdxl:
        return tiny_plus_ip_adapter(unet, folder, family.family.ip_adapter.weight_name)
    return tiny_ip_adapter(unet, folder, family.family.ip_adapter.weight_name)


def real_width_adapter(path: Any, cross: int, layers: int = 2) -> Any:
    """A weight file whose to_k_ip layers are as wide as a real family's UNet (SD 1.5: 768,
    SDXL: 2048), with few rows: only its header is ever read."""
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"image_proj.proj.weight": torch.zeros(4 * cross, 8, dtype=torch.float16)}
    for i in range(layers):
        for proj in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{2 * i + 1}.{proj}.weight"] = torch.zeros(8, cross, dtype=torch.float16)
    save_file(state, str(path))
    return path


# --- a stand-in pose detector -------------------------------------------------------------------
# Pictures with body joints painted as one-pixel dots of known colours, and a detector that reads them.

def dot_colour(joint: int, person: int = 0) -> tuple[int, int, int]:
    """The colour of body joint ``joint`` (COCO-18) of person ``person`` in a picture `Detector` reads."""
    return (250 - 7 * joint, 19 + 97 * person, 3 + 11 * joint)


def paint_pose(picture, pose, person: int = 0, drop: tuple[int, ...] = ()):
    """``picture`` with ``pose``'s body joints (all but ``drop``) painted as one-pixel dots of
    person ``person``'s colours, and the pose `Detector` must read from it: those joints at
    their dots' pixels, the dropped and absent ones missing."""
    from PIL import Image

    from charstudio.pose import Pose

    arr = np.array(picture.convert("RGB"))
    body = np.zeros((18, 3))
    for j, (x, y, c) in enumerate(pose.body):
        if c > 0 and j not in drop:
            body[j] = (min(int(round(x)), arr.shape[1] - 1), min(int(round(y)), arr.shape[0] - 1), 1.0)
            arr[int(body[j, 1]), int(body[j, 0])] = dot_colour(j, person)
    dots = [tuple(p[:2]) for p in body if p[2] > 0]
    assert len(set(dots)) == len(dots), "two joints on one pixel: use a larger picture"
    return Image.fromarray(arr), Pose(body, arr.shape[1], arr.shape[0])


class Detector:
    """Stands in for controlnet-aux's OpenposeDetector (its weights cannot be downloaded here)
    and answers from the picture it is given, in the detector's own result types: joint j of
    person p is the centroid of the pixels of colour ``dot_colour(j, p)``, as a fraction of the
    picture's width and height (OpenposeDetector's normalised coordinates); a joint whose
    colour is absent is missing (None). People come in the order of p, each scored by the number
    of joints found (OpenPose sums its joints' scores), so it is charstudio that must pick the
    most confident one. ``seen`` records the shape of each array it was given."""

    def __init__(self, people: int = 2):
        self.people = people
        self.seen: list[tuple[int, ...]] = []

    def detect_poses(self, image, include_hand=False, include_face=False):
        from controlnet_aux.open_pose import PoseResult
        from controlnet_aux.open_pose.body import BodyResult, Keypoint

        self.seen.append(image.shape)
        h, w = image.shape[:2]
        results = []
        for person in range(self.people):
            keypoints = []
            for joint in range(18):
                ys, xs = np.nonzero((image == np.array(dot_colour(joint, person))).all(axis=-1))
                keypoints.append(Keypoint(xs.mean() / w, ys.mean() / h) if len(xs) else None)
            found = sum(k is not None for k in keypoints)
            if found:
                results.append(PoseResult(BodyResult(keypoints, float(found), found), None, None, None))
        return results
