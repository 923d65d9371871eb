"""Interpolation and blending: noise, text embeddings, styles, poses, and measured smoothness.

Two pictures are "between" each other when both their starting noise and their conditioning
are between. Starting noise is a Gaussian sample, so it is blended with spherical linear
interpolation (slerp): a straight-line mix of two independent Gaussians has a smaller norm
(about 0.71x at t=0.5), and the sampler turns that low-energy noise into a flat, washed-out
image. Text embeddings are blended per token, with slerp or lerp.

Frame spacing: equal steps in t rarely give equal visual change. `smoothness` measures the
change between adjacent frames and scores its evenness as 1 - Gini (as in AID, Attention
Interpolation for Diffusion); `respace` re-spaces t by bisecting where change is largest.

Where things live: ``maths`` (slerp/lerp, noise, embeddings, weights), ``poses`` (keypoints),
``smoothness`` (the evenness score and respacing), ``render`` (frames of a Studio, their
recipes), ``styles`` (style mixes) and ``sweeps`` (pose animations and LoRA sweeps). GIF, MP4
and grids are in `charstudio.media`.

The maths takes tensors/arrays/PIL images; `Studio.interpolate` wires it to generation.
Heavy imports (torch, numpy, PIL, imageio) happen inside functions.
"""

from .maths import (
    Method,
    blend,
    blend_embeddings,
    blend_loras,
    check_t,
    check_weights,
    frame_ts,
    lerp,
    mix_embeddings,
    noise_shape,
    seed_noise,
    slerp,
)
from .poses import interpolate_keypoints, interpolate_pose, pose_sequence
from .render import (
    FRAME_RECIPE_KEY,
    FrameRecipe,
    Interpolation,
    encode_to_one_length,
    interpolate,
    load_frame_recipe,
    run_frame,
)
from .smoothness import Respaced, Smoothness, clip_image_embedder, gini, pixel_embedder, respace, smoothness
from .styles import StyleMix, mix_styles, style_mix_embeddings
from .sweeps import lora_sweep, pose_animation

__all__ = [
    "FRAME_RECIPE_KEY",
    "FrameRecipe",
    "Interpolation",
    "Method",
    "Respaced",
    "Smoothness",
    "StyleMix",
    "blend",
    "blend_embeddings",
    "blend_loras",
    "check_t",
    "check_weights",
    "clip_image_embedder",
    "encode_to_one_length",
    "frame_ts",
    "gini",
    "interpolate",
    "interpolate_keypoints",
    "interpolate_pose",
    "lerp",
    "load_frame_recipe",
    "lora_sweep",
    "mix_embeddings",
    "mix_styles",
    "noise_shape",
    "pixel_embedder",
    "pose_animation",
    "pose_sequence",
    "respace",
    "run_frame",
    "seed_noise",
    "slerp",
    "smoothness",
    "style_mix_embeddings",
]
