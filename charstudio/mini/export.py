"""Writing a trained `mini` model: a diffusers folder (plus ``controlnet/``) of safetensors and
``mini_report.json`` with the recipe, the losses and the lineage of a fine-tuning stage.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .train import MiniRecipe, TrainState


def export(recipe: MiniRecipe, work: Path, out: Path, state: TrainState, comps: dict) -> Path:
    """Write the diffusers folder (atomically: a temporary folder, then a rename)."""
    from diffusers import StableDiffusionPipeline

    from ..models.vae import vae_factor

    comps["vae"].register_to_config(scaling_factor=float(state.scaling_factor), sample_size=recipe.size)
    # The configs carry the training size, so the studio's default size is the one trained at.
    comps["unet"].register_to_config(sample_size=recipe.size // vae_factor(comps["vae"]))
    pipe = StableDiffusionPipeline(
        vae=comps["vae"], text_encoder=comps["text_encoder"], tokenizer=comps["tokenizer"], unet=comps["unet"],
        scheduler=comps["scheduler"], safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    comps["controlnet"].save_pretrained(tmp / "controlnet", safe_serialization=True)
    report = {
        "recipe": asdict(recipe),
        "scaling_factor": state.scaling_factor,
        "train_seconds": {k: round(v, 1) for k, v in state.seconds.items()},
        "vae_loss": state.vae_losses,
        "unet_loss": state.unet_losses,
    }
    if (work / "init_report.json").exists():  # a fine-tuning stage: keep the lineage
        report["init"] = json.loads((work / "init_report.json").read_text())
    (tmp / "mini_report.json").write_text(json.dumps(report, indent=1) + "\n")
    mask = os.umask(0)
    os.umask(mask)
    for f in tmp.rglob("*"):  # safetensors writes 0600 files; a shipped model must be readable by all
        os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~mask)
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    return out
