"""Interpolation and blending: noise, text embeddings, styles, poses, and measured smoothness.

Two pictures are "between" each other when both their starting noise and their conditioning
are between. Starting noise is a Gaussian sample, so it is blended with spherical linear
interpolation (slerp): a straight-line mix of two independent Gaussians has a smaller norm
(about 0.71x at t=0.5), and the sampler turns that low-energy noise into a flat, washed-out
image. Text embeddings are blended per token, with slerp or lerp.

Frame spacing: equal steps in t rarely give equal visual change. `smoothness` measures the
change between adjacent frames and scores its evenness as 1 - Gini (as in AID, Attention
Interpolation for Diffusion); `respace` re-spaces t by bisecting where change is largest.

Everything here takes tensors/arrays/PIL images; `Studio.interpolate` wires it to generation.
Heavy imports (torch, numpy, PIL, imageio) happen inside functions.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

from .errors import ConfigError

log = logging.getLogger(__name__)

Method = Literal["slerp", "lerp"]

# Below this angle (radians) two vectors are treated as parallel: sin(theta) is tiny there and
# slerp's division loses precision, while lerp is already the same curve to first order.
_PARALLEL_ANGLE = 1e-4


# --------------------------------------------------------------------------------------------
# slerp / lerp
# --------------------------------------------------------------------------------------------
def _check_t(t: float, name: str = "t") -> float:
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
    t = _check_t(t)
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

    t = _check_t(t)
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


# --------------------------------------------------------------------------------------------
# noise and embeddings
# --------------------------------------------------------------------------------------------
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
    values = list(weights.values()) if isinstance(weights, Mapping) else list(weights)
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
    from .validation import check_int

    frames = check_int("frames", frames, 2)  # the two endpoints at least
    return [i / (frames - 1) for i in range(frames)]


# --------------------------------------------------------------------------------------------
# pose keypoints
# --------------------------------------------------------------------------------------------
def _keypoint_array(kp: Any, name: str) -> Any:
    """A (K, 3) float array [x, y, confidence] from a (K, 2)/(K, 3) array or OpenPose's flat list."""
    import numpy as np

    arr = np.asarray(kp, dtype=np.float64)
    if arr.ndim == 1 and arr.size % 3 == 0:
        arr = arr.reshape(-1, 3)  # OpenPose's flat [x, y, c, x, y, c, ...]
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise ConfigError(name, tuple(arr.shape), "keypoints as (K, 2) or (K, 3) [x, y, confidence]")
    if arr.shape[1] == 2:
        arr = np.concatenate([arr, np.ones((arr.shape[0], 1))], axis=1)
    return arr


def _missing(kp: Any) -> Any:
    import numpy as np

    return ~np.isfinite(kp[:, 0]) | ~np.isfinite(kp[:, 1]) | ~(kp[:, 2] > 0)


def interpolate_keypoints(a: Any, b: Any, t: float) -> Any:
    """Keypoints between two poses, as a (K, 3) array [x, y, confidence].

    Points present in both move in a straight line. A point missing in one pose (confidence 0
    or NaN) has nowhere sensible to move from, so it stays where it is known and is shown only
    on its own half of the sequence: it disappears (or appears) at t=0.5. Missing in both
    stays missing (all zeros).
    """
    import numpy as np

    t = _check_t(t)
    ka, kb = _keypoint_array(a, "a"), _keypoint_array(b, "b")
    if ka.shape != kb.shape:
        raise ConfigError("b", tuple(kb.shape), f"must have as many keypoints as a {tuple(ka.shape)}")
    out = np.zeros_like(ka)
    ma, mb = _missing(ka), _missing(kb)
    both = ~ma & ~mb
    out[both] = (1.0 - t) * ka[both] + t * kb[both]
    if t < 0.5:
        out[~ma & mb] = ka[~ma & mb]
    else:
        out[ma & ~mb] = kb[ma & ~mb]
    return out


_POSE_PARTS = ("body", "hand_left", "hand_right", "face")


def interpolate_pose(a: Any, b: Any, t: float) -> Any:
    """A `charstudio.pose.Pose` between two Poses (body, hands and face), on a's canvas.

    b is fitted to a's canvas first when the canvases differ. A part (a hand, the face) that
    only one pose has follows the same rule as a single missing point.
    """
    from .pose import Pose, load_pose

    t = _check_t(t)
    pa = a if isinstance(a, Pose) else load_pose(a)
    pb = b if isinstance(b, Pose) else load_pose(b)
    if (pb.canvas_width, pb.canvas_height) != (pa.canvas_width, pa.canvas_height):
        pb = pb.fit(pa.canvas_width, pa.canvas_height)
    parts: dict[str, Any] = {}
    for name in _POSE_PARTS:
        xa, xb = getattr(pa, name), getattr(pb, name)
        if xa is None and xb is None:
            parts[name] = None
        elif xb is None:
            parts[name] = xa.copy() if t < 0.5 else None
        elif xa is None:
            parts[name] = xb.copy() if t >= 0.5 else None
        else:
            parts[name] = interpolate_keypoints(xa, xb, t)
    return Pose(canvas_width=pa.canvas_width, canvas_height=pa.canvas_height, **parts)


def pose_sequence(a: Any, b: Any, frames: int) -> list[Any]:
    """`frames` poses from a to b inclusive, keypoints interpolated linearly.

    Keypoint arrays give arrays; anything else (Pose, pose name, pose-editor dict, JSON path)
    gives `charstudio.pose.Pose` objects.
    """
    ts = frame_ts(frames)
    import numpy as np

    if isinstance(a, (np.ndarray, list, tuple)) and isinstance(b, (np.ndarray, list, tuple)):
        return [interpolate_keypoints(a, b, t) for t in ts]
    return [interpolate_pose(a, b, t) for t in ts]


# --------------------------------------------------------------------------------------------
# smoothness and re-spacing
# --------------------------------------------------------------------------------------------
@dataclass
class Smoothness:
    """Change between adjacent frames: mean, max, and evenness = 1 - Gini of the distances."""

    distances: list[float]
    mean: float
    max: float
    evenness: float
    space: str  # "pixels" or the embedder's name

    def to_dict(self) -> dict[str, Any]:
        return {"distances": self.distances, "mean": self.mean, "max": self.max,
                "evenness": self.evenness, "space": self.space}


def gini(values: Sequence[float]) -> float:
    """Gini coefficient of non-negative values (0 = all equal; all-zero counts as equal)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return 0.0
    mean = v.mean()
    if mean <= 0:
        return 0.0
    diff = np.abs(v[:, None] - v[None, :]).sum()
    return float(diff / (2.0 * v.size ** 2 * mean))


def _to_array(img: Any) -> Any:
    import numpy as np

    if hasattr(img, "convert"):  # PIL
        return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    arr = np.asarray(img, dtype=np.float64)
    return arr / 255.0 if arr.max(initial=0) > 1.0 else arr


def pixel_embedder(frames: Sequence[Any]) -> Any:
    """Frames as flat pixel vectors in [0, 1], scaled so distance is the RMS pixel change."""
    import numpy as np

    arrs = [_to_array(f) for f in frames]
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1:
        raise ConfigError("frames", sorted(shapes), "all frames must have the same size")
    flat = np.stack([a.reshape(-1) for a in arrs])
    return flat / np.sqrt(flat.shape[1])


def clip_image_embedder(model: Any, processor: Any = None) -> Callable[[Sequence[Any]], Any]:
    """An embedder from a CLIP vision model (CLIPVisionModelWithProjection or CLIPModel).

    Distances are then between unit image embeddings, i.e. semantic change rather than pixel
    change. `processor` is a CLIPImageProcessor; without one, images are resized to the
    model's input size and normalised with CLIP's published mean/std.
    """

    def embed(frames: Sequence[Any]) -> Any:
        import numpy as np
        import torch

        size = int(model.config.vision_config.image_size if hasattr(model.config, "vision_config")
                   else model.config.image_size)
        if processor is not None:
            pixel_values = processor(images=list(frames), return_tensors="pt").pixel_values
        else:
            mean = np.array([0.48145466, 0.4578275, 0.40821073])
            std = np.array([0.26862954, 0.26130258, 0.27577711])
            batch = []
            for f in frames:
                from PIL import Image

                im = f if hasattr(f, "convert") else Image.fromarray(np.uint8(np.clip(_to_array(f), 0, 1) * 255))
                arr = np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float64) / 255.0
                batch.append(((arr - mean) / std).transpose(2, 0, 1))
            pixel_values = torch.tensor(np.stack(batch), dtype=torch.float32)
        param = next(model.parameters())
        with torch.no_grad():
            if hasattr(model, "get_image_features"):
                feats = model.get_image_features(pixel_values=pixel_values.to(param.device, param.dtype))
            else:
                feats = model(pixel_values=pixel_values.to(param.device, param.dtype)).image_embeds
        if not torch.is_tensor(feats):  # some versions return an output object
            feats = getattr(feats, "pooler_output", feats[0])
        feats = feats.float()
        feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return feats.cpu().numpy()

    embed.__name__ = "clip"
    return embed


def smoothness(frames: Sequence[Any], embedder: Callable[[Sequence[Any]], Any] | None = None) -> Smoothness:
    """Mean and max distance between adjacent frames, and evenness (1 - Gini of the distances).

    `embedder` maps a list of frames to an (N, D) array (e.g. `clip_image_embedder(model)`);
    without one, distances are RMS pixel differences in [0, 1].
    """
    import numpy as np

    if len(frames) < 2:
        raise ConfigError("frames", len(frames), "need at least 2 frames to measure change between them")
    emb = np.asarray((embedder or pixel_embedder)(list(frames)), dtype=np.float64)
    d = np.linalg.norm(np.diff(emb, axis=0), axis=1)
    name = "pixels" if embedder is None else getattr(embedder, "__name__", "embedding")
    return Smoothness([float(x) for x in d], float(d.mean()), float(d.max()), 1.0 - gini(d), name)


@dataclass
class Respaced:
    """Result of `respace`: the chosen t values with their frames, and evenness before/after."""

    ts: list[float]
    frames: list[Any]
    before: Smoothness  # the uniform spacing
    after: Smoothness  # the returned spacing (the uniform one again if re-spacing did not help)
    renders: int  # how many frames were rendered in all
    samples: dict[float, Any] = field(default_factory=dict, repr=False)


def respace(render: Callable[[float], Any], frames: int,
            embedder: Callable[[Sequence[Any]], Any] | None = None,
            max_renders: int | None = None) -> Respaced:
    """Choose t values so adjacent frames differ by about the same amount.

    1. Render the uniform spacing and measure it ("before").
    2. Bisect the interval with the largest measured change, rendering its midpoint, until the
       render budget is spent (default 3 * frames): this samples the path densely where it
       moves fast.
    3. Treat the cumulative measured distance as arc length and pick t at equal arc lengths
       (piecewise-linear inverse), render those t, and measure again ("after").
    Rendered frames are cached by t, so the endpoints and any reused t cost nothing more.
    """
    import numpy as np

    ts0 = frame_ts(frames)
    budget = max_renders if max_renders is not None else 3 * frames
    embed = embedder or pixel_embedder
    cache: dict[float, Any] = {}
    vectors: dict[float, Any] = {}

    def get(t: float) -> Any:
        t = round(float(t), 9)  # float noise must not defeat the cache
        if t not in cache:
            cache[t] = render(t)
            vectors[t] = np.asarray(embed([cache[t]]), dtype=np.float64)[0]
        return cache[t]

    # 1. uniform spacing
    before_frames = [get(t) for t in ts0]
    before = smoothness(before_frames, embedder)

    # 2. bisect where the path moves most
    def dist(t1: float, t2: float) -> float:
        return float(np.linalg.norm(vectors[round(t1, 9)] - vectors[round(t2, 9)]))

    while len(cache) < budget:
        grid = sorted(cache)
        gaps = [(dist(grid[i], grid[i + 1]), grid[i], grid[i + 1]) for i in range(len(grid) - 1)]
        gap, lo, hi = max(gaps)
        if gap <= 0 or hi - lo < 1e-6:
            break
        get((lo + hi) / 2)

    # 3. equal arc length
    grid = sorted(cache)
    seg = np.array([dist(grid[i], grid[i + 1]) for i in range(len(grid) - 1)])
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if arc[-1] <= 0:
        new_ts = ts0
    else:
        targets = np.linspace(0.0, arc[-1], frames)
        new_ts = [float(np.interp(x, arc, grid)) for x in targets]
        new_ts[0], new_ts[-1] = 0.0, 1.0
    after_frames = [get(t) for t in new_ts]
    after = smoothness(after_frames, embedder)
    log.info("respace: evenness %.3f -> %.3f with %d renders", before.evenness, after.evenness, len(cache))
    if after.evenness < before.evenness:
        # The arc-length estimate can be off on a jumpy path; never hand back a worse spacing.
        log.info("respace: keeping the uniform spacing, which was more even")
        return Respaced(list(ts0), before_frames, before, before, len(cache), dict(cache))
    return Respaced([float(t) for t in new_ts], after_frames, before, after, len(cache), dict(cache))


# --------------------------------------------------------------------------------------------
# output: grids, contact sheets, GIF, MP4
# --------------------------------------------------------------------------------------------
def _to_pil(frame: Any) -> Any:
    from PIL import Image
    import numpy as np

    if hasattr(frame, "convert"):
        return frame.convert("RGB")
    arr = _to_array(frame)
    return Image.fromarray(np.uint8(np.clip(arr, 0, 1) * 255 + 0.5))


def frame_grid(frames: Sequence[Any], cols: int | None = None, labels: Sequence[str] | None = None,
               pad: int = 2, background: tuple[int, int, int] = (255, 255, 255)) -> Any:
    """Frames tiled left to right, top to bottom; optional text label under each one."""
    from .imaging import image_grid

    if not frames:
        raise ConfigError("frames", 0, "need at least 1 frame")
    images = [_to_pil(f) for f in frames]
    if len({im.size for im in images}) > 1:
        raise ConfigError("frames", sorted({im.size for im in images}), "all frames must have the same size")
    if labels is not None and len(labels) != len(images):
        raise ConfigError("labels", len(labels), f"expected one label per frame ({len(images)})")
    return image_grid(images, cols=cols or min(len(images), 8), labels=labels, pad=pad, background=background)


def contact_sheet(frames: Sequence[Any], ts: Sequence[float], cols: int | None = None) -> Any:
    """A frame grid labelled with each frame's t, so uneven spacing is visible at a glance."""
    if len(ts) != len(frames):
        raise ConfigError("ts", len(ts), f"expected one t per frame ({len(frames)})")
    return frame_grid(frames, cols=cols, labels=[f"t={t:.3f}" for t in ts])


def _write_atomic(path: str | os.PathLike, write: Callable[[Path], None], overwrite: bool) -> Path:
    from .io_utils import atomic_write

    return atomic_write(path, write, overwrite=overwrite)


def save_gif(frames: Sequence[Any], path: str | os.PathLike, fps: float = 8.0, loop: int = 0,
             boomerang: bool = False, overwrite: bool = False) -> Path:
    """Write an animated GIF (imageio). `boomerang` plays forward then back, for seamless loops."""
    import imageio.v3 as iio
    import numpy as np

    if len(frames) < 2:
        raise ConfigError("frames", len(frames), "an animation needs at least 2 frames")
    arrs = [np.asarray(_to_pil(f)) for f in frames]
    if boomerang:
        arrs = arrs + arrs[-2:0:-1]
    duration_ms = 1000.0 / fps

    def write(tmp: Path) -> None:
        iio.imwrite(tmp, np.stack(arrs), extension=".gif", duration=duration_ms, loop=loop)

    return _write_atomic(path, write, overwrite)


def save_mp4(frames: Sequence[Any], path: str | os.PathLike, fps: float = 8.0,
             overwrite: bool = False) -> Path:
    """Write an H.264 MP4 (imageio + ffmpeg). Odd sizes are padded to even, as yuv420p needs."""
    import imageio.v2 as imageio
    import numpy as np

    if len(frames) < 2:
        raise ConfigError("frames", len(frames), "an animation needs at least 2 frames")
    arrs = [np.asarray(_to_pil(f)) for f in frames]
    h, w = arrs[0].shape[:2]
    ph, pw = h % 2, w % 2
    if ph or pw:
        arrs = [np.pad(a, ((0, ph), (0, pw), (0, 0)), mode="edge") for a in arrs]

    def write(tmp: Path) -> None:
        # ffmpeg picks the container from the file name, so write under .mp4 and move onto tmp.
        named = tmp.with_name(tmp.name + ".mp4")
        try:
            writer = imageio.get_writer(named, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                        pixelformat="yuv420p", macro_block_size=1)
            try:
                for a in arrs:
                    writer.append_data(a)
            finally:
                writer.close()
            os.replace(named, tmp)
        finally:
            named.unlink(missing_ok=True)

    return _write_atomic(path, write, overwrite)


# --------------------------------------------------------------------------------------------
# with a Studio: design interpolation, style mixes, pose animations, LoRA sweeps
# --------------------------------------------------------------------------------------------
@dataclass
class FrameRecipe:
    """How one in-between frame was made: the two endpoint recipes and t.

    `run_frame(studio, recipe)` rebuilds the frame. At t=0 and t=1 it is the endpoint's own
    recipe (up to the prompt being padded to the other's 75-token chunk count).
    """

    a: Any  # GenerationConfig
    b: Any  # GenerationConfig
    t: float
    method: str = "slerp"  # text embeddings
    noise_method: str = "slerp"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "interpolation", "a": self.a.to_dict(), "b": self.b.to_dict(), "t": self.t,
                "method": self.method, "noise_method": self.noise_method,
                "loras": blend_loras(self.a.loras, self.b.loras, self.t)}  # the frame's own (read-only)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FrameRecipe":
        from .config import GenerationConfig

        return cls(GenerationConfig.from_dict(dict(data["a"])), GenerationConfig.from_dict(dict(data["b"])),
                   float(data["t"]), data.get("method", "slerp"), data.get("noise_method", "slerp"))


@dataclass
class Interpolation:
    """Frames from a to b with their t values, recipes and measured smoothness."""

    frames: list[Any]
    ts: list[float]
    recipes: list[Any]  # FrameRecipe per frame
    smoothness: Smoothness
    before: Smoothness | None = None  # uniform spacing, when re-spaced with uniform=True
    renders: int = 0

    def contact_sheet(self, cols: int | None = None) -> Any:
        return contact_sheet(self.frames, self.ts, cols)

    def save_gif(self, path: str | os.PathLike, fps: float = 8.0, boomerang: bool = True,
                 overwrite: bool = False) -> Path:
        return save_gif(self.frames, path, fps=fps, boomerang=boomerang, overwrite=overwrite)

    def save_mp4(self, path: str | os.PathLike, fps: float = 8.0, overwrite: bool = False) -> Path:
        return save_mp4(self.frames, path, fps=fps, overwrite=overwrite)

    def save(self, directory: str | os.PathLike, prefix: str = "frame", overwrite: bool = False) -> list[Path]:
        """Frames as PNGs, each carrying its FrameRecipe as JSON (`load_frame_recipe` reads it),
        plus `<prefix>s.json` with every t, recipe and the smoothness figures."""
        import json

        from PIL.PngImagePlugin import PngInfo

        from .io_utils import atomic_write, ensure_dir

        out = ensure_dir(directory, "directory")
        paths = [out / f"{prefix}_{i:03d}.png" for i in range(len(self.frames))]
        index = out / f"{prefix}s.json"
        taken = [str(p) for p in [*paths, index] if p.exists()]
        if taken and not overwrite:
            from .errors import OutputError

            raise OutputError(f"{taken[0]!r} already exists: pass overwrite=True or choose another directory")
        for path, frame, recipe in zip(paths, self.frames, self.recipes):
            info = PngInfo()
            info.add_text(FRAME_RECIPE_KEY, json.dumps(recipe.to_dict()))
            img = _to_pil(frame)
            atomic_write(path, lambda tmp, img=img, info=info: img.save(tmp, format="PNG", pnginfo=info),
                         overwrite=overwrite)
        summary = {"ts": self.ts, "recipes": [r.to_dict() for r in self.recipes],
                   "smoothness": self.smoothness.to_dict(),
                   "before": self.before.to_dict() if self.before is not None else None, "renders": self.renders}
        atomic_write(index, lambda tmp: tmp.write_text(json.dumps(summary, indent=1)), overwrite=overwrite)
        return paths


FRAME_RECIPE_KEY = "charstudio_interpolation"


def load_frame_recipe(path: str | os.PathLike) -> FrameRecipe:
    """The FrameRecipe stored in a frame PNG written by `Interpolation.save`."""
    import json

    from PIL import Image

    with Image.open(path) as im:
        text = im.text.get(FRAME_RECIPE_KEY) if hasattr(im, "text") else None
    if text is None:
        raise ConfigError("path", str(path), "a frame PNG written by Interpolation.save (it has no frame recipe)")
    return FrameRecipe.from_dict(json.loads(text))


def _as_recipe(studio: Any, x: Any, name: str, settings: Mapping[str, Any]) -> Any:
    """A GenerationConfig from a recipe, a Result, a FrameRecipe-free card/prompt."""
    from .config import GenerationConfig

    if isinstance(x, GenerationConfig):
        return x.replace(num_images=1)
    if hasattr(x, "recipes") and getattr(x, "recipes", None):
        return x.recipes[0]
    from .character import Character

    if not isinstance(x, (str, Character)):
        raise ConfigError(name, x, "a character card, a prompt, a recipe (GenerationConfig) or a Result, got "
                          + type(x).__name__)
    return studio.make_config(x, **{**dict(settings), "num_images": 1})


def _check_pair(studio: Any, a: Any, b: Any) -> None:
    models = {m for m in (a.model, b.model) if m}
    if len(models) > 1 or (models and studio.model_id not in models):
        raise ConfigError("b.model", b.model, f"both ends must come from the loaded model {studio.model_id!r} "
                          f"(a: {a.model!r}); interpolating across models has no shared latent space")
    if (a.width, a.height) != (b.width, b.height):
        raise ConfigError("b.size", f"{b.width}x{b.height}",
                          f"must equal a's {a.width}x{a.height}: noise of different shapes cannot be blended")
    if a.pose is not None or b.pose is not None:
        if a.pose != b.pose:
            raise ConfigError("b.pose", "differs", "use pose_animation() to move between poses")
    for f in ("num_inference_steps", "scheduler", "clip_skip"):
        if getattr(a, f) != getattr(b, f):
            log.warning("interpolation uses a's %s=%r (b has %r)", f, getattr(a, f), getattr(b, f))


def _encode_to_one_length(encoder: Any, groups: Sequence[Sequence[str]], clip_skip: int | None,
                          contexts: Sequence[Any] | None = None) -> list[Any]:
    """Embeddings of every text, all padded to the chunk count of the longest, so they blend.

    Texts come in groups; group i is encoded inside ``contexts[i]`` (a LoRA setting, say).
    """
    import contextlib

    from .prompt_syntax import parse_weighted

    pieces = [[parse_weighted(x or "") for x in group] for group in groups]
    chunks = max(max(1, -(-sum(encoder.count_tokens(t) for t, _ in p) // encoder.chunk_len))
                 for group in pieces for p in group)
    out = []
    for i, group in enumerate(pieces):
        with contexts[i] if contexts is not None else contextlib.nullcontext():
            out += [encoder.encode_pieces(p, chunks, clip_skip)[0] for p in group]
    return out


def _encode_pair(studio: Any, a: Any, b: Any) -> tuple[Any, Any, Any, Any]:
    """Prompt and negative embeddings of a and b, all padded to one chunk count; each end's
    under its own LoRA weights (a text-encoder LoRA changes them)."""
    groups = [[a.prompt, a.negative_prompt], [b.prompt, b.negative_prompt]]
    contexts = [studio.using_loras(a.loras), studio.using_loras(b.loras)]
    return tuple(_encode_to_one_length(studio.encoder, groups, a.clip_skip, contexts))  # type: ignore[return-value]


def blend_loras(a: Mapping[str, float], b: Mapping[str, float], t: float) -> dict[str, float]:
    """The LoRA weights of the frame at t: each adapter's weight moves linearly from a's to b's
    (an adapter only one end uses goes from or to 0)."""
    names = list(dict.fromkeys([*a, *b]))
    return {n: (1 - t) * a.get(n, 0.0) + t * b.get(n, 0.0) for n in names}


def _latent_shape(studio: Any, cfg: Any) -> tuple[int, ...]:
    unet, vae = studio.components["unet"], studio.components["vae"]
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return noise_shape(cfg.width, cfg.height, int(unet.config.in_channels), factor)


def _is_ancestral(name: str) -> bool:
    from .schedulers import scheduler_spec

    return "Ancestral" in scheduler_spec(name).class_name


class _FrameRenderer:
    """Renders frames between two recipes; noise and embeddings are computed once."""

    def __init__(self, studio: Any, a: Any, b: Any, method: str, noise_method: str):
        self.studio, self.a, self.b = studio, a, b
        self.method, self.noise_method = method, noise_method
        self.pos_a, self.neg_a, self.pos_b, self.neg_b = _encode_pair(studio, a, b)
        shape = _latent_shape(studio, a)
        dtype = self.pos_a.dtype
        self.noise_a = seed_noise(a.seed, shape, dtype)
        self.noise_b = seed_noise(b.seed, shape, dtype)
        if _is_ancestral(a.scheduler):
            log.warning("scheduler %r adds fresh noise every step: in-between frames use one end's seed for "
                        "it and will not change smoothly; a deterministic scheduler (ddim, dpm++2m) works better",
                        a.scheduler)

    def recipe(self, t: float) -> FrameRecipe:
        return FrameRecipe(self.a, self.b, float(t), self.method, self.noise_method)

    def __call__(self, t: float) -> Any:
        t = _check_t(t)
        noise = blend(self.noise_a, self.noise_b, t, self.noise_method)
        pos = blend_embeddings(self.pos_a, self.pos_b, t, self.method)  # type: ignore[arg-type]
        neg = blend_embeddings(self.neg_a, self.neg_b, t, self.method)  # type: ignore[arg-type]
        end = self.a if t < 0.5 else self.b
        cfg = self.a.replace(
            guidance_scale=(1 - t) * self.a.guidance_scale + t * self.b.guidance_scale,
            seed=end.seed,  # only ancestral samplers draw from the generator after the start
            loras=blend_loras(self.a.loras, self.b.loras, t),  # run() applies them; the UNet's share moves with t
        )
        result = self.studio.run(cfg, latents=noise, embeddings=(pos, neg))
        return result.images[0]


def interpolate(studio: Any, a: Any, b: Any, frames: int = 8, method: Method = "slerp",
                uniform: bool = False, *, noise_method: Method = "slerp",
                embedder: Callable[[Sequence[Any]], Any] | None = None, max_renders: int | None = None,
                **settings: Any) -> Interpolation:
    """Frames morphing design a into design b: starting noise and text embeddings together.

    `a` and `b` are character cards (names or objects), prompts, recipes or Results;
    `settings` (steps, size, scheduler, guidance_scale, ...) apply to cards and prompts.
    `uniform=True` re-spaces t so adjacent frames change by similar amounts and reports
    evenness before and after; it costs `max_renders` (default 3 x `frames`) renders to map
    the path plus up to `frames` - 2 for the re-spaced frames.
    """
    # 1. Resolve and check the two ends.
    frame_ts(frames)
    if method not in ("slerp", "lerp") or noise_method not in ("slerp", "lerp"):
        raise ConfigError("method", method if method not in ("slerp", "lerp") else noise_method,
                          "choose 'slerp' or 'lerp'")
    ra, rb = _as_recipe(studio, a, "a", settings), _as_recipe(studio, b, "b", settings)
    _check_pair(studio, ra, rb)
    render = _FrameRenderer(studio, ra, rb, method, noise_method)
    # 2. Render: uniform t, or adaptively re-spaced.
    if uniform:
        res = respace(render, frames, embedder, max_renders)
        return Interpolation(res.frames, res.ts, [render.recipe(t) for t in res.ts], res.after,
                             res.before, res.renders)
    ts = frame_ts(frames)
    images = [render(t) for t in ts]
    return Interpolation(images, ts, [render.recipe(t) for t in ts], smoothness(images, embedder), None, len(ts))


def run_frame(studio: Any, recipe: FrameRecipe | Mapping[str, Any]) -> Any:
    """Rebuild one interpolation frame from its recipe."""
    r = recipe if isinstance(recipe, FrameRecipe) else FrameRecipe.from_dict(recipe)
    _check_pair(studio, r.a, r.b)
    return _FrameRenderer(studio, r.a, r.b, r.method, r.noise_method)(r.t)


@dataclass
class StyleMix:
    """Images of one design under a weighted mix of styles, with what made them."""

    images: list[Any]
    recipe: Any  # the GenerationConfig of the heaviest style (seed, size, steps, ...)
    weights: dict[str, float]  # normalised


def mix_styles(studio: Any, character_or_prompt: Any, styles: Mapping[str, float], **settings: Any) -> StyleMix:
    """Generate a design under an N-way weighted mix of style presets, mixed in embedding space.

    Each style's full prompt (and negative) is encoded, and the embeddings are averaged with
    the normalised weights. Weights must be >= 0 and not all zero; a weight-0 style has no
    effect at all, so {"anime": 1, "watercolor": 0} equals the anime style alone.
    """
    if not isinstance(styles, Mapping) or not styles:
        raise ConfigError("styles", styles, "a mapping of style name to weight, e.g. {'anime': 0.7, 'ink': 0.3}")
    weights = check_weights(styles, field_name="styles")
    names = list(styles)
    configs = [studio.make_config(character_or_prompt, style=s, **{**settings, "num_images": 1}) for s in names]
    main = configs[max(range(len(names)), key=lambda i: weights[i])]
    # The recipe carries every style's texts and weight, so it re-runs as the same mix.
    recipe = main.replace(style_mix=[{"style": s, "weight": w, "prompt": c.prompt, "negative_prompt": c.negative_prompt}
                                     for s, w, c in zip(names, weights, configs)])
    result = studio.run(recipe.replace(num_images=int(settings.get("num_images", 1) or 1)))
    return StyleMix(result.images, result.recipes[0], dict(zip(names, weights)))


def style_mix_embeddings(encoder: Any, style_mix: Sequence[Mapping[str, Any]], clip_skip: int | None) -> tuple[Any, Any]:
    """(prompt, negative) embeddings of a recipe's style mix: each style's texts encoded to one
    chunk count, then averaged with the weights."""
    embeds = _encode_to_one_length(encoder, [[part["prompt"], part["negative_prompt"]] for part in style_mix],
                                   clip_skip)
    weights = [part["weight"] for part in style_mix]
    return mix_embeddings(embeds[0::2], weights), mix_embeddings(embeds[1::2], weights)


def pose_animation(studio: Any, character_or_prompt: Any, pose_a: Any, pose_b: Any, frames: int = 8,
                   *, seed: int | None = None, reference_strength: float = 0.0, **settings: Any) -> Any:
    """One character moving from pose A to pose B, held fixed by the same noise for every frame.

    The keypoints are interpolated (`pose_sequence`) and rendered through the OpenPose
    ControlNet with one seed. `reference_strength` > 0 also shares the first frame's
    self-attention with the others (reference attention, charstudio.consistency), which holds
    clothes and colours more tightly. Returns a Result (a consistency SheetResult) whose
    recipes rebuild each frame; `extras["ts"]` holds each frame's t.
    """
    from .consistency import make_sheet

    ts = frame_ts(frames)
    poses = pose_sequence(pose_a, pose_b, frames)
    result = make_sheet(studio, character_or_prompt, poses, seed=seed, same_noise=True,
                        reference_strength=reference_strength, compute_score=False,
                        labels=[f"t={t:.2f}" for t in ts], **settings)
    result.extras["ts"] = ts
    result.extras["poses"] = poses
    return result


def lora_sweep(studio: Any, character_or_prompt: Any, adapter: str, weights: Sequence[float],
               **settings: Any) -> Any:
    """The same design at several weights of one loaded LoRA adapter (same seed throughout).

    Returns a Result whose recipes record each weight. Each frame is a recipe with its own
    LoRA weights, which `Studio.run` applies for that run only, so the studio's weights are
    untouched afterwards.
    """
    if not weights:
        raise ConfigError("weights", weights, "give at least one LoRA weight")
    before = dict(studio.active_loras)
    if adapter not in before:
        raise ConfigError("adapter", adapter, f"load it first; loaded adapters: {sorted(before)}")
    base = studio.make_config(character_or_prompt, **{**settings, "num_images": 1})
    images, recipes = [], []
    for w in weights:
        res = studio.run(base.replace(loras={**before, adapter: float(w)}))
        images.extend(res.images)
        recipes.extend(res.recipes)
    from .result import Result

    return Result(images, recipes, {"adapter": adapter, "weights": [float(w) for w in weights]})
