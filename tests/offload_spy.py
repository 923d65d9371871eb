"""Counting diffusers' model-offload hooks: which parts' hooks ran, how often, for which device."""

from __future__ import annotations

from collections import Counter
from typing import Any


def count_offload_hooks(monkeypatch: Any, components: dict[str, Any]) -> Counter:
    """Count, per part name, every call of accelerate's CpuOffload.pre_forward (the hook that moves
    a part to its execution device before it runs); the counter's `devices` holds the devices the
    hooks moved to."""
    from accelerate.hooks import CpuOffload

    names = {id(m): n for n, m in components.items() if m is not None}
    counts: Counter = Counter()
    counts.devices = set()  # type: ignore[attr-defined]
    real = CpuOffload.pre_forward

    def pre_forward(self, module, *args, **kwargs):
        counts[names.get(id(module), type(module).__name__)] += 1
        counts.devices.add(str(self.execution_device))  # type: ignore[attr-defined]
        return real(self, module, *args, **kwargs)

    monkeypatch.setattr(CpuOffload, "pre_forward", pre_forward)
    return counts


def count_tiled_decodes(monkeypatch: Any, vae: Any) -> list:
    """Record the latent shape of every tiled VAE decode."""
    seen: list = []
    real = vae.tiled_decode

    def tiled_decode(z, *args, **kwargs):
        seen.append(tuple(z.shape))
        return real(z, *args, **kwargs)

    monkeypatch.setattr(vae, "tiled_decode", tiled_decode)
    return seen
