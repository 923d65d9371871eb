"""Few-step LoRAs as presets: each with the scheduler, timesteps, CFG and step count its model card
gives, and its licence (logged when it loads; WARNING for non-commercial ones).

Where each fact comes from (model cards read 2026-12 through the search tool; the URLs are in
each preset's ``licence`` and ``card``):
- DMD2 (huggingface.co/tianweiy/DMD2, README "4-step generation" / "4-step LoRA"): SDXL, LCMScheduler,
  ``timesteps=[999, 749, 499, 249]`` ("LCMScheduler's default timesteps are different from the one we
  used for training"), ``guidance_scale=0``, licence cc-by-nc-4.0 (the repo's licence tag). The file
  ``dmd2_sdxl_4step_lora_fp16.safetensors`` holds diffusers/peft keys (``unet.*.lora_A/lora_B``),
  which diffusers' ``load_lora_weights`` reads as they are.
- SDXL-Lightning (huggingface.co/ByteDance/SDXL-Lightning, README "2-Step, 4-Step, 8-Step LoRA"):
  ``EulerDiscreteScheduler.from_config(..., timestep_spacing="trailing")``, ``guidance_scale=0``,
  "Please always use the correct checkpoint for the corresponding inference steps"; ComfyUI: "Euler
  sampler with sgm_uniform scheduler"; licence openrail++. Files ``sdxl_lightning_{N}step_lora.safetensors``
  (kohya keys ``lora_unet_*`` with alpha).
- Hyper-SD (huggingface.co/ByteDance/Hyper-SD, README): the N-step LoRAs with
  ``DDIMScheduler.from_config(..., timestep_spacing="trailing")`` and ``guidance_scale=0`` ("Ensure ddim
  scheduler timestep spacing set as trailing"); TCDScheduler is the card's choice for the 1-step
  unified LoRA. Files ``Hyper-SD15-{N}steps-lora.safetensors`` / ``Hyper-SDXL-{N}steps-lora.safetensors``
  (kohya keys); licence openrail++ (the repo's licence tag in 2024; its LICENSE.md).
- LCM-LoRA (huggingface.co/latent-consistency/lcm-lora-sdv1-5 and lcm-lora-sdxl, README "Text-to-Image"):
  LCMScheduler, "2 to 8 steps", "either disable guidance_scale or use values between 1.0 and 2.0" (the
  card's example: 4 steps, guidance 1.0 for SD 1.5, 4 steps, 1.0 for SDXL); licence openrail++. File
  ``pytorch_lora_weights.safetensors`` (diffusers keys).
- mini-lcm: charstudio's own 4-step LCM-LoRA for mini (consistency distillation with mini as the
  teacher), shipped in charstudio/data/mini/loras/lcm; the project's licence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigError, InputFileError

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)

Family = Literal["sd1", "sdxl", "any"]
MINI_LCM_FILE = Path(__file__).resolve().parent.parent / "data" / "mini" / "loras" / "lcm" / "pytorch_lora_weights.safetensors"
PROJECT_LICENCE = "Apache-2.0 (charstudio's own licence, pyproject.toml)"
NON_COMMERCIAL = ("nc",)  # SPDX parts that mark a non-commercial licence (CC-BY-NC-4.0 and the like)


def is_non_commercial(licence: str | None) -> bool:
    """Whether a licence ("CC-BY-NC-4.0 https://...") forbids commercial use."""
    spdx = (licence or "").split()[0].lower() if (licence or "").strip() else ""
    return any(part in spdx.split("-") for part in NON_COMMERCIAL)


@dataclass(frozen=True)
class FewStepPreset:
    """One few-step LoRA: where it lives, how its card says to sample with it, and its licence."""

    name: str
    family: Family  # the model family it was distilled for ("any": not checked)
    repo: str | None  # hub repository (None: shipped with charstudio)
    filename: str  # file name in the repo (or the shipped file's path)
    steps: int
    scheduler: str  # our scheduler name (charstudio.schedulers)
    timesteps: tuple[int, ...] | None  # exact timesteps, or None for the scheduler's spacing
    guidance_scale: float  # diffusers' guidance_scale (0 or 1: no CFG)
    licence: str  # SPDX-ish id, then the URL it was read from
    card: str  # what the model card says, in short
    note: str = ""
    weight: float = 1.0  # the LoRA's weight in the recipe

    @property
    def adapter(self) -> str:
        """The adapter name the LoRA loads under."""
        return "draft-" + self.name

    @property
    def non_commercial(self) -> bool:
        return is_non_commercial(self.licence)

    @property
    def download_command(self) -> str:
        return f"huggingface-cli download {self.repo} {self.filename}" if self.repo else ""

    def as_record(self) -> dict[str, Any]:
        """What a draft recipe records about the preset's LoRA."""
        return {"repo": self.repo, "file": self.filename, "licence": self.licence}


def _lightning(steps: int) -> FewStepPreset:
    return FewStepPreset(
        f"sdxl-lightning-{steps}step", "sdxl", "ByteDance/SDXL-Lightning", f"sdxl_lightning_{steps}step_lora.safetensors",
        steps, "euler-trailing", None, 0.0, "openrail++ https://huggingface.co/ByteDance/SDXL-Lightning",
        f"Euler with trailing timesteps (ComfyUI: euler, sgm_uniform), guidance_scale=0, {steps} steps: "
        "the checkpoint must match the step count",
        "the card prefers its full UNet on SDXL base; the LoRA is for other SDXL models (Illustrious, Pony...)")


def _hyper(family: Family, tag: str, steps: int) -> FewStepPreset:
    return FewStepPreset(
        f"hyper-{tag.lower()}-{steps}step", family, "ByteDance/Hyper-SD",
        f"Hyper-{tag}-{steps}step{'s' if steps > 1 else ''}-lora.safetensors", steps,
        "tcd" if steps == 1 else "ddim-trailing", None, 0.0, "openrail++ https://huggingface.co/ByteDance/Hyper-SD",
        "TCD, guidance_scale=0, 1 step (the card's eta 1.0; diffusers' pipelines pass eta 0 unless told)" if steps == 1
        else f"DDIM with trailing timesteps, guidance_scale=0, {steps} steps",
        "the -CFG- variants (8 and 12 steps) keep CFG 5-8 and negatives; not listed here")


PRESETS: dict[str, FewStepPreset] = {p.name: p for p in (
    FewStepPreset(
        "dmd2", "sdxl", "tianweiy/DMD2", "dmd2_sdxl_4step_lora_fp16.safetensors", 4, "lcm", (999, 749, 499, 249),
        0.0, "CC-BY-NC-4.0 https://huggingface.co/tianweiy/DMD2",
        "LCMScheduler with timesteps [999, 749, 499, 249] (not LCM's default spacing), guidance_scale=0, 4 steps",
        "non-commercial: keep it for drafts you do not sell"),
    *(_lightning(n) for n in (2, 4, 8)),
    *(_hyper(family, tag, n) for family, tag in (("sd1", "SD15"), ("sdxl", "SDXL")) for n in (1, 2, 4, 8)),
    FewStepPreset(
        "lcm-sd15", "sd1", "latent-consistency/lcm-lora-sdv1-5", "pytorch_lora_weights.safetensors", 4, "lcm", None,
        1.0, "openrail++ https://huggingface.co/latent-consistency/lcm-lora-sdv1-5",
        "LCMScheduler, 2 to 8 steps, guidance off or 1.0-2.0 (the card's example: 4 steps, guidance 1.0)"),
    FewStepPreset(
        "lcm-sdxl", "sdxl", "latent-consistency/lcm-lora-sdxl", "pytorch_lora_weights.safetensors", 4, "lcm", None,
        1.0, "openrail++ https://huggingface.co/latent-consistency/lcm-lora-sdxl",
        "LCMScheduler, 2 to 8 steps, guidance off or 1.0-2.0 (the card's example: 4 steps, guidance 1.0)"),
    FewStepPreset(
        "mini-lcm", "sd1", None, str(MINI_LCM_FILE), 4, "lcm", None, 1.0, PROJECT_LICENCE,
        "charstudio's own: LCMScheduler, 4 steps, CFG 1 (distilled from mini at 20 steps)",
        "for the built-in mini model only"),
)}


def get_preset(name: str, field: str = "draft_preset") -> FewStepPreset:
    preset = PRESETS.get(str(name).strip().lower()) if isinstance(name, str) else None
    if preset is None:
        raise ConfigError(field, name, f"one of {', '.join(PRESETS)} (see `charstudio presets`)")
    return preset


def check_family(studio: Studio, preset: FewStepPreset) -> None:
    """Refuse a preset distilled for the other model family."""
    family = studio.family.name
    if preset.family != "any" and preset.family != family:
        others = [p.name for p in PRESETS.values() if p.family in (family, "any")]
        raise ConfigError("draft_preset", preset.name, f"is a {preset.family} LoRA but {studio.model_id!r} is "
                          f"{family}: use one of {', '.join(others)}")


def preset_file(preset: FewStepPreset, path: Any = None) -> Path:
    """The preset's file: the given path (a file or a folder holding the file), the shipped file, or
    the hub cache (nothing is downloaded)."""
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / preset.filename
        if not p.is_file():
            raise InputFileError(f"path={str(p)!r}: no such file for the {preset.name!r} preset "
                                 f"(its file is {preset.filename!r})")
        return p
    if preset.repo is None:
        p = Path(preset.filename)
        if not p.is_file():
            raise InputFileError(f"the {preset.name!r} preset's LoRA is not there yet ({str(p)!r}); "
                                 "draft mode falls back to feature caching without it")
        return p
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(preset.repo, preset.filename, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - not cached (or no hub client): one clear message
        raise InputFileError(
            f"the {preset.name!r} preset's LoRA {preset.repo}/{preset.filename} is not in the hub cache and nothing "
            f"is downloaded here ({type(exc).__name__}): run `{preset.download_command}` on a machine with "
            "access, or pass its path") from None


def cached(preset: FewStepPreset) -> bool:
    """Whether the preset's file is here (shipped, or in the hub cache)."""
    try:
        preset_file(preset)
    except InputFileError:
        return False
    return True


def load_preset(studio: Studio, name: str, path: Any = None, *, on: bool = True) -> str:
    """Load a few-step preset's LoRA (from ``path``, the shipped file or the hub cache) through the
    studio's LoRA loader and return its adapter name; ``on``: switch it on at the preset's weight
    (as ``studio.load_lora`` does), else leave what is on as it was. Its licence is logged: WARNING
    for a non-commercial one, else INFO."""
    preset = get_preset(name)
    check_family(studio, preset)
    file = preset_file(preset, path)
    adapter = studio.lora_set.load_off(file, preset.adapter)
    if on:
        studio.set_loras({**studio.active_loras, adapter: preset.weight})
    log_licence(preset, file)
    return adapter


def log_licence(preset: FewStepPreset, file: Path) -> None:
    """Say a preset's licence as its LoRA loads: WARNING for a non-commercial one, else INFO."""
    log.log(logging.WARNING if preset.non_commercial else logging.INFO, "few-step LoRA %r (%s) loaded: licence %s%s",
            preset.name, Path(file).name, preset.licence, " - non-commercial use only" if preset.non_commercial else "")


def loaded_preset(studio: Studio) -> FewStepPreset | None:
    """The preset whose LoRA the studio has loaded (by adapter name or by its file), if any."""
    for adapter, rec in studio.loaded_loras.items():
        for preset in PRESETS.values():
            if adapter == preset.adapter or same_file(rec.source, preset):
                return preset
    return None


def same_file(source: Any, preset: FewStepPreset) -> bool:
    """Whether ``source`` is the preset's file (shipped, or its hub file)."""
    if preset.repo is None:
        return Path(source).resolve() == Path(preset.filename).resolve()
    if Path(source).name != preset.filename:
        return False
    # A generic file name (LCM-LoRA's pytorch_lora_weights.safetensors) counts only inside the repo's cache folder.
    return preset.filename != "pytorch_lora_weights.safetensors" or f"models--{preset.repo.replace('/', '--')}" in str(source)
