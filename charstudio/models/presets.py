"""Named models.

`tiny` (random weights, built in code) is the test fixture; `mini` (trained here, shipped in the
package) is the offline default; `sd15` is the real thing. Anything that is not a preset is a hub id, a diffusers folder or a single file."""

from __future__ import annotations

from dataclasses import dataclass

MINI_GUIDANCE = 3.0
# SDXL's VAE with its weights scaled so that its activations fit fp16 (same latents, near-equal pictures)
SDXL_FP16_VAE = "madebyollin/sdxl-vae-fp16-fix"


@dataclass(frozen=True)
class ModelPreset:
    name: str
    description: str
    repo: str | None  # hub id of the diffusers-format base model; None for built-in models
    controlnet: str | None  # hub id of the OpenPose ControlNet that matches it
    default_steps: int = 25
    default_guidance: float = 7.0  # classifier-free guidance scale when the caller gives none
    builtin: bool = False
    family: str = "sd1"  # "sd1" or "sdxl" (charstudio.models.family); presets on the hub are not opened to check
    prediction_type: str | None = None  # "v_prediction" for v-prediction models; None: what the model says
    folder: str | None = None  # a diffusers folder shipped inside the package (under charstudio/data/)
    # A VAE to use in fp16 instead of the model's own (SDXL's overflows to NaN in fp16)
    fp16_vae: str | None = None
    # What the apps start with: two cards and a prompt written in words the model knows.
    example_cards: tuple[str, str] = ("aiko", "bram")
    example_prompt: str = "a knight in silver armour, portrait"


def _anime_sdxl(name: str, what: str, repo: str, **options: str) -> ModelPreset:
    """An anime SDXL fine-tune from the hub, paired with xinsir's OpenPose ControlNet."""
    return ModelPreset(name, f"{what}, with xinsir's OpenPose ControlNet", repo=repo,
                       controlnet="xinsir/controlnet-openpose-sdxl-1.0", default_steps=28, default_guidance=5.0,
                       family="sdxl", fp16_vae=SDXL_FP16_VAE, **options)


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            "tiny",
            "built-in SD-architecture model with random weights; offline, instant, draws noise (for tests and CI)",
            repo=None, controlnet=None, default_steps=20, builtin=True,
        ),
        ModelPreset(
            "tiny-sdxl",
            "built-in SDXL-architecture model with random weights (two text encoders, text-time UNet); "
            "offline, instant, draws noise (for tests and CI)",
            repo=None, controlnet=None, default_steps=20, builtin=True, family="sdxl",
        ),
        # SD 1.5's and SDXL's exact architectures (UNet, VAE, text encoders, OpenPose ControlNet,
        # real CLIP tokenizers) with seeded random weights: real shapes and real speed, no download.
        ModelPreset(
            "sd15-arch",
            "built-in SD 1.5 architecture (860M UNet, OpenPose ControlNet) with random weights; offline, draws "
            "noise at real speed (for shape tests and GPU benchmarks)",
            repo=None, controlnet=None, builtin=True,
        ),
        ModelPreset(
            "sdxl-arch",
            "built-in SDXL architecture (2.6B UNet, OpenPose ControlNet) with random weights; offline, draws "
            "noise at real speed (for GPU benchmarks; about 14 GB in fp32)",
            repo=None, controlnet=None, builtin=True, family="sdxl", default_steps=30,
        ),
        ModelPreset(
            "mini",
            "built-in 64 px model trained by charstudio on its procedural character world; offline, "
            "draws real characters in seconds on a CPU, with its own OpenPose ControlNet",
            repo=None, controlnet=None, default_steps=20, builtin=True, folder="mini",
            # A 3M-parameter UNet: SD's 7 over-saturates it into one-colour silhouettes.
            default_guidance=MINI_GUIDANCE, example_cards=("rin", "kai"),
            example_prompt="a girl with long red hair and green eyes, wearing a blue dress, yellow background",
        ),
        ModelPreset(
            "sd15",
            "Stable Diffusion 1.5 with the OpenPose ControlNet v1.1 (needs a download; best on a GPU)",
            repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
            controlnet="lllyasviel/control_v11p_sd15_openpose",
        ),
        ModelPreset(
            "sdxl",
            "Stable Diffusion XL base 1.0 with xinsir's OpenPose ControlNet (needs a download and a GPU)",
            repo="stabilityai/stable-diffusion-xl-base-1.0",
            controlnet="xinsir/controlnet-openpose-sdxl-1.0", default_steps=30, default_guidance=6.0, family="sdxl",
            fp16_vae=SDXL_FP16_VAE,
        ),
        # The anime SDXL families, as diffusers folders on the hub (checked there: each is a
        # StableDiffusionXLPipeline repo). Steps and CFG follow their cards' usual advice.
        _anime_sdxl("illustrious", "Illustrious XL (early release v0), the base of most anime SDXL merges",
                    "OnomaAIResearch/Illustrious-xl-early-release-v0"),
        _anime_sdxl("noobai-vpred", "NoobAI XL v-prediction (0.9r); v-prediction, CFG rescale 0.7",
                    "Laxhar/noobai-XL-Vpred-0.9r", prediction_type="v_prediction"),
        _anime_sdxl("animagine", "Animagine XL 4.0", "cagliostrolab/animagine-xl-4.0"),
    )
}

# ControlNet to pair with any SD 1.x checkpoint that is not a preset (anime fine-tunes included).
SD15_OPENPOSE_CONTROLNET = "lllyasviel/control_v11p_sd15_openpose"


def preset_examples(model: str) -> tuple[tuple[str, str], str]:
    """(two card names, a prompt) to start an app with: a preset's own, else SD 1.5's (the cards
    aiko and bram are written for SD 1.5 models, rin and kai in mini's words)."""
    preset = PRESETS.get(model) or PRESETS["sd15"]
    return preset.example_cards, preset.example_prompt
