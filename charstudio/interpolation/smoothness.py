"""How even a sequence of frames is (1 - Gini of the adjacent changes) and re-spacing t
where change is largest."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from ..media import to_array
from .maths import frame_ts

log = logging.getLogger(__name__)


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


def pixel_embedder(frames: Sequence[Any]) -> Any:
    """Frames as flat pixel vectors in [0, 1], scaled so distance is the RMS pixel change."""
    import numpy as np

    arrs = [to_array(f) for f in frames]
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

                im = f if hasattr(f, "convert") else Image.fromarray(np.uint8(np.clip(to_array(f), 0, 1) * 255))
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
