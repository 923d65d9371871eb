"""Blending maths: slerp and lerp, seeded noise, text-embedding blends and weighted mixes."""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

from ..errors import ConfigError

Method = Literal["slerp", "lerp"]

# Below this angle (radians) two vectors are treated as parallel: sin(theta) is tiny there and
# slerp's division loses precision, while lerp is already the same curve to first order.
_PARALLEL_ANGLE = 1e-4


def check_t(t: float, name: str = "t") -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise ConfigError(name, t, "expected a number between 0 and 1")
    t = float(t)
    if not 0.0 <= t <= 1.0:
        raise ConfigError(name, t, "must be between 0 and 1")
    return t


def _check_same_shape(a: Any, b: Any) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ConfigError("b", tuple(b.shape), f"must have the same shape as a {tuple(a.shape)}")


def lerp(a: Any, b: Any, t: float) -> Any:
    """Linear interpolation (1-t)*a + t*b of two tensors; exactly a at t=0 and b at t=1."""
    t = check_t(t)
    _check_same_shape(a, b)
    if t == 0.0:
        return a.clone()
    if t == 1.0:
        return b.clone()
    return a * (1.0 - t) + b * t


def slerp(a: Any, b: Any, t: float, dim: int | None = None) -> Any:
    """Spherical linear interpolation of two tensors.

    With `dim=None` each tensor is one vector (right for Gaussian noise); with `dim=-1` every
    vector along that axis is interpolated on its own (right for per-token embeddings).
    The angle is measured on the directions and the magnitudes are interpolated linearly,
    so two same-norm inputs give same-norm outputs. Nearly parallel vectors fall back to lerp.
    t=0 and t=1 return exact copies of the endpoints.
    """
    import torch

    t = check_t(t)
    _check_same_shape(a, b)
    if t == 0.0:
        return a.clone()
    if t == 1.0:
        return b.clone()
    # Compute in float64: the angle of two 16k-dim noise tensors is close to pi/2 and float32
    # dot products lose the digits that decide the norm.
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    if dim is None:
        af, bf = a64.reshape(1, -1), b64.reshape(1, -1)
    else:
        af, bf = a64.movedim(dim, -1), b64.movedim(dim, -1)
        shape = af.shape
        af, bf = af.reshape(-1, shape[-1]), bf.reshape(-1, shape[-1])
    na, nb = af.norm(dim=-1, keepdim=True), bf.norm(dim=-1, keepdim=True)
    ua, ub = af / na.clamp_min(1e-30), bf / nb.clamp_min(1e-30)
    cos = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    parallel = theta.abs() < _PARALLEL_ANGLE
    safe_sin = torch.where(parallel, torch.ones_like(sin), sin)
    wa = torch.where(parallel, torch.full_like(theta, 1.0 - t), torch.sin((1.0 - t) * theta) / safe_sin)
    wb = torch.where(parallel, torch.full_like(theta, t), torch.sin(t * theta) / safe_sin)
    direction = wa * ua + wb * ub
    # Lerp's chord between parallel unit vectors is slightly shorter than 1: renormalise.
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    out = direction * ((1.0 - t) * na + t * nb)
    if dim is None:
        out = out.reshape(a.shape)
    else:
        out = out.reshape(shape).movedim(-1, dim)
    return out.to(a.dtype)


def blend(a: Any, b: Any, t: float, method: Method = "slerp", dim: int | None = None) -> Any:
    """`slerp` or `lerp` by name."""
    if method == "slerp":
        return slerp(a, b, t, dim=dim)
    if method == "lerp":
        return lerp(a, b, t)
    raise ConfigError("method", method, "choose 'slerp' or 'lerp'")


def noise_shape(width: int, height: int, latent_channels: int = 4, vae_scale_factor: int = 8) -> tuple[int, ...]:
    """The shape of the initial latent noise for one image, as diffusers' prepare_latents makes it."""
    for name, v in (("width", width), ("height", height)):
        if v % vae_scale_factor:
            raise ConfigError(name, v, f"must be a multiple of {vae_scale_factor}")
    return (1, latent_channels, height // vae_scale_factor, width // vae_scale_factor)


def seed_noise(seed: int, shape: Sequence[int], dtype: Any = None) -> Any:
    """The Gaussian noise a CPU generator seeded with `seed` gives for `shape`.

    It matches what a pipeline draws with `generator=torch.Generator("cpu").manual_seed(seed)`,
    so a frame at t=0 reproduces the image generated from seed A alone.
    """
    import torch

    gen = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=gen, dtype=dtype or torch.float32)


def blend_embeddings(a: Any, b: Any, t: float, method: Method = "slerp") -> Any:
    """Blend two CLIP text embeddings: per token for (B, seq, dim), per vector for pooled (B, dim).

    The sequences must have equal length (same number of 77-token chunks); pad the shorter
    prompt's chunks when encoding.
    """
    if tuple(a.shape) != tuple(b.shape):
        raise ConfigError("b", tuple(b.shape),
                          f"embedding shape must equal a's {tuple(a.shape)}: encode both prompts "
                          "with the same number of chunks")
    return blend(a, b, t, method, dim=-1)


def mix_embeddings(embeddings: Sequence[Any], weights: Sequence[float]) -> Any:
    """N-way weighted mix of same-shape embeddings (a weighted mean, weights normalised to 1).

    Weights must be >= 0 and not all zero. A zero-weight component contributes exactly
    nothing, so [1, 0] gives the first embedding bit for bit.
    """
    w = check_weights(weights, n=len(embeddings))
    first = embeddings[0]
    for e in embeddings[1:]:
        if tuple(e.shape) != tuple(first.shape):
            raise ConfigError("embeddings", [tuple(x.shape) for x in embeddings],
                              "all embeddings must have the same shape")
    out = None
    for e, wi in zip(embeddings, w):
        if wi == 0.0:
            continue
        term = e * wi if wi != 1.0 else e.clone()
        out = term if out is None else out + term
    return out


def check_weights(weights: Sequence[float] | Mapping[str, float], n: int | None = None,
                  field_name: str = "weights") -> list[float]:
    """Validate blend weights and return them normalised to sum to 1."""
    from ..limits import check_list

    values = check_list(field_name, weights.values() if isinstance(weights, Mapping) else weights, what="weights")
    if n is not None and len(values) != n:
        raise ConfigError(field_name, values, f"expected {n} weights, one per component")
    if not values:
        raise ConfigError(field_name, values, "give at least one weight")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise ConfigError(field_name, values, "weights must be numbers")
    if any(v < 0 for v in values):
        raise ConfigError(field_name, weights, "weights must be >= 0 (a negative amount of a style is undefined)")
    total = float(sum(values))
    if total <= 0:
        raise ConfigError(field_name, weights, "at least one weight must be > 0")
    return [float(v) / total for v in values]


def frame_ts(frames: int) -> list[float]:
    """`frames` evenly spaced t values from 0 to 1 inclusive."""
    from ..limits import check_frames

    frames = check_frames(frames)  # the two endpoints at least, and a bounded run
    return [i / (frames - 1) for i in range(frames)]


def blend_loras(a: Mapping[str, float], b: Mapping[str, float], t: float) -> dict[str, float]:
    """The LoRA weights of the frame at t: each adapter's weight moves linearly from a's to b's
    (an adapter only one end uses goes from or to 0)."""
    names = list(dict.fromkeys([*a, *b]))
    return {n: (1 - t) * a.get(n, 0.0) + t * b.get(n, 0.0) for n in names}
