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
    # A1111's "Schedule type" beside the sampler ("SGM Uniform": trailing timesteps), None for its default;
    # a spec with one is looked up as "<a1111> <schedule>" (e.g. "Euler SGM Uniform"), so labels stay unique.
    a1111_schedule: str | None = None

    @property
    def label(self) -> str:
        """A1111's sampler with its schedule type, as people read it ("Euler SGM Uniform", "DPM++ 2M Karras")."""
        return f"{self.a1111} {self.a1111_schedule}" if self.a1111_schedule else self.a1111

    @property
    def labels(self) -> tuple[str, ...]:
        """The names this scheduler is found by (lower case): ours and A1111's."""
        return self.name, self.label.lower()


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
        # Few-step samplers (charstudio.speed.presets): trailing timesteps (SDXL-Lightning: Euler; Hyper-SD: DDIM)
        # are A1111's and ComfyUI's "SGM Uniform" schedule; TCD is Hyper-SD's (A1111 forks and SD.Next call it TCD).
        SchedulerSpec("euler-trailing", "EulerDiscreteScheduler", "Euler", {"timestep_spacing": "trailing"},
                      "SGM Uniform"),
        SchedulerSpec("ddim-trailing", "DDIMScheduler", "DDIM", {"timestep_spacing": "trailing"}, "SGM Uniform"),
        SchedulerSpec("tcd", "TCDScheduler", "TCD"),
    )
}
DEFAULT_SCHEDULER = "dpm++2m-karras"


def scheduler_spec(name: str, field_name: str = "scheduler") -> SchedulerSpec:
    """Look up a scheduler by our name or by its A1111 label (case-insensitive)."""
    key = str(name).strip().lower()
    for spec in SCHEDULERS.values():
        if key in spec.labels:
            return spec
    raise ConfigError(field_name, name, f"choose one of {', '.join(SCHEDULERS)}")


def make_scheduler(name: str, base_config: Any):
    """Build the named scheduler from the model's scheduler config (its noise schedule)."""
    import diffusers

    spec = scheduler_spec(name)
    cls = getattr(diffusers, spec.class_name)
    # Options that other scheduler classes stored (e.g. karras sigmas) must not leak across; the model's own
    # timestep spacing stays unless the spec sets one.
    config = {k: v for k, v in dict(base_config).items() if k != "use_karras_sigmas"}
    return cls.from_config(config, **spec.options)
