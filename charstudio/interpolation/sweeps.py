"""Sweeps through a design: one character across interpolated poses, and a LoRA weight sweep."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ConfigError
from .maths import frame_ts
from .poses import pose_sequence

if TYPE_CHECKING:
    from ..studio import Studio


def pose_animation(studio: Studio, character_or_prompt: Any, pose_a: Any, pose_b: Any, frames: int = 8,
                   *, seed: int | None = None, reference_strength: float = 0.0, **settings: Any) -> Any:
    """One character moving from pose A to pose B, held fixed by the same noise for every frame.

    The keypoints are interpolated (`pose_sequence`) and rendered through the OpenPose
    ControlNet with one seed. `reference_strength` > 0 also shares the first frame's
    self-attention with the others (reference attention, charstudio.sheets), which holds
    clothes and colours more tightly. Returns a Result (a SheetResult) whose
    recipes rebuild each frame; `extras["ts"]` holds each frame's t.
    """
    from ..sheets import make_sheet

    ts = frame_ts(frames)
    poses = pose_sequence(pose_a, pose_b, frames)
    result = make_sheet(studio, character_or_prompt, poses, seed=seed, same_noise=True,
                        reference_strength=reference_strength, compute_score=False,
                        labels=[f"t={t:.2f}" for t in ts], **settings)
    result.extras["ts"] = ts
    result.extras["poses"] = poses
    return result


def lora_sweep(studio: Studio, character_or_prompt: Any, adapter: str, weights: Sequence[float], *,
               scorer: Any = None, **settings: Any) -> Any:
    """The same design at several weights of one loaded LoRA adapter (same seed throughout).

    Returns a `SheetResult` (a Result) labelled by weight, whose recipes record each weight. Each
    frame is a recipe with its own LoRA weights, which `Studio.run` applies for that run only, so
    the studio's weights are untouched afterwards. Each picture gets its identity score against
    the first weight's (``scorer``: see `charstudio.sheets.identity.resolve_scorer`; a sweep
    starting at weight 0 measures the LoRA's effect, as LoRA trainers report CCIP-I); ``extras``
    holds the adapter and weights.
    """
    from ..limits import check_list
    from ..sheets.identity import measure, resolve_scorer

    weights = check_list("weights", weights, what="LoRA weights")  # before any drawing
    if not weights:
        raise ConfigError("weights", weights, "give at least one LoRA weight")
    before = dict(studio.active_loras)
    if adapter not in before:
        raise ConfigError("adapter", adapter, f"load it first; loaded adapters: {sorted(before)}")
    the_scorer = resolve_scorer(scorer, model=studio.model_id)
    base = studio.make_config(character_or_prompt, **{**settings, "num_images": 1})
    images, recipes = [], []
    for w in weights:
        res = studio.run(base.replace(loras={**before, adapter: float(w)}))
        images.extend(res.images)
        recipes.extend(res.recipes)
    from ..sheets.sheet import SheetResult

    labels = [f"{adapter} {float(w):g}" for w in weights]
    record = measure(images, recipes, labels, the_scorer)
    sweep_settings = {"workflow": "lora_sweep", "adapter": adapter, "weights": [float(w) for w in weights],
                      "prompt": base.prompt, "seed": base.seed, "model": studio.model_id,
                      "identity": record.settings()}
    return SheetResult(images, recipes, {"adapter": adapter, "weights": [float(w) for w in weights]}, labels=labels,
                       settings=sweep_settings, identity_record=record)
