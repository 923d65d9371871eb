"""Schedulers (samplers) by name, with the labels A1111 and civitai use for them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class SchedulerSpec:
    name: str  # our name, used in configs and on the CLI
    class_name: str  # diffusers class
    a1111: str  # the sampler label A1111 writes into PNG metadata
    options: dict[str, Any] = field(default_factory=dict)


SCHEDULERS: dict[str, SchedulerSpec] = {
    s.name: s
    for s in (
        SchedulerSpec("euler-a", "EulerAncestralDiscreteScheduler", "Euler a"),
        SchedulerSpec("euler", "EulerDiscreteScheduler", "Euler"),
        SchedulerSpec("dpm++2m", "DPMSolverMultistepScheduler", "DPM++ 2M"),
        SchedulerSpec("dpm++2m-karras", "DPMSolverMultistepScheduler", "DPM++ 2M Karras", {"use_karras_sigmas": True}),
        SchedulerSpec("ddim", "DDIMScheduler", "DDIM"),
        SchedulerSpec("unipc", "UniPCMultistepScheduler", "UniPC"),
        SchedulerSpec("lcm", "LCMScheduler", "LCM"),
        SchedulerSpec("pndm", "PNDMScheduler", "PLMS", {"skip_prk_steps": True}),
        SchedulerSpec("heun", "HeunDiscreteScheduler", "Heun"),
        SchedulerSpec("lms", "LMSDiscreteScheduler", "LMS"),
    )
}
DEFAULT_SCHEDULER = "dpm++2m-karras"


def scheduler_spec(name: str, field_name: str = "scheduler") -> SchedulerSpec:
    """Look up a scheduler by our name or by its A1111 label (case-insensitive)."""
    key = str(name).strip().lower()
    for spec in SCHEDULERS.values():
        if key in (spec.name, spec.a1111.lower()):
            return spec
    raise ConfigError(field_name, name, f"choose one of {', '.join(SCHEDULERS)}")


def make_scheduler(name: str, base_config: Any):
    """Build the named scheduler from the model's scheduler config (its noise schedule)."""
    import diffusers

    spec = scheduler_spec(name)
    cls = getattr(diffusers, spec.class_name)
    # Options that other scheduler classes stored (e.g. karras sigmas) must not leak across.
    config = {k: v for k, v in dict(base_config).items() if k != "use_karras_sigmas"}
    return cls.from_config(config, **spec.options)
