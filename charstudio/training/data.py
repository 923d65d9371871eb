"""The training dataset: listing and checking it, aspect buckets, pixels and pose controls,
and the seeded plan of which images each optimizer step sees."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CharstudioError, ConfigError
from ..io_utils import read_text
from ..pose import pose_file

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class TrainingExample:
    """One usable training image and its caption."""

    path: Path
    caption: str
    width: int
    height: int
    caption_from_file: bool = False


@dataclass
class DatasetReport:
    """What ``scan_dataset`` found: usable examples and skipped files with the reason."""

    examples: list[TrainingExample]
    skipped: list[tuple[Path, str]]


def list_dataset(data_dir: str | os.PathLike) -> tuple[list[Path], dict[str, Path]]:
    """Image files and caption files in ``data_dir``, checked for the mistakes that need a person.

    Raises for a missing or empty folder and for a caption file with no image beside it.
    """
    folder = Path(data_dir).expanduser()
    if not folder.exists():
        raise ConfigError("data_dir", str(data_dir), "no such folder; point it at a folder of 5-50 images")
    if not folder.is_dir():
        raise ConfigError("data_dir", str(data_dir), "is a file; point it at a folder of 5-50 images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    captions = {p.stem: p for p in files if p.suffix.lower() == ".txt"}
    if not images:
        raise ConfigError("data_dir", str(data_dir), "holds no images (" + ", ".join(IMAGE_SUFFIXES)
                          + "); add 5-50 pictures of the character")
    stems = {p.stem for p in images}
    orphans = sorted(p.name for stem, p in captions.items() if stem not in stems)
    if orphans:
        raise ConfigError("data_dir", str(data_dir), f"caption file {orphans[0]} has no image beside it "
                          f"(expected {Path(orphans[0]).stem}.png or .jpg); add the image or remove the caption"
                          + (f" ({len(orphans) - 1} more)" if len(orphans) > 1 else ""))
    return images, captions


def check_pose_files(images: list[Path]) -> None:
    """Raise when ``pose_conditioning`` cannot run: an image without its ``NAME.pose.json``."""
    missing = [p.name for p in images if not pose_file(p).is_file()]
    if missing:
        raise ConfigError("pose_conditioning", True,
                          f"a pose file beside every image; {len(missing)} of {len(images)} have none "
                          f"(e.g. {pose_file(Path(missing[0])).name} for {missing[0]}): save each with "
                          "Pose.save, detect one with Pose.from_image(image).save(...), or turn pose_conditioning off")


def scan_dataset(data_dir: str | os.PathLike, *, instance_prompt: str, min_size: int) -> DatasetReport:
    """Read every image once; skip unreadable, corrupt and too-small ones with a warning.

    Raises when no usable image remains. Captions come from ``NAME.txt`` beside ``NAME.png``;
    an image without one (or with an empty one) gets ``instance_prompt``.
    """
    from PIL import Image, UnidentifiedImageError

    images, captions = list_dataset(data_dir)
    examples: list[TrainingExample] = []
    skipped: list[tuple[Path, str]] = []
    for path in images:
        try:
            with Image.open(path) as im:
                im.load()  # decodes fully: catches truncated files that open() alone accepts
                width, height = im.size
        except Image.DecompressionBombError as exc:  # a picture built to exhaust memory when decoded
            skipped.append((path, f"too large to decode safely ({str(exc).split('.')[0]})"))
            continue
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            skipped.append((path, f"unreadable ({type(exc).__name__}: {exc})"))
            continue
        if min(width, height) < min_size:
            skipped.append((path, f"too small ({width}x{height}; the shorter side must be >= {min_size})"))
            continue
        text = ""
        if path.stem in captions:
            try:
                text = " ".join(read_text(captions[path.stem], "its caption").split())
            except CharstudioError as exc:  # binary garbage would train the model on replacement characters
                skipped.append((path, str(exc)))
                continue
        examples.append(TrainingExample(path, text or instance_prompt, width, height, bool(text)))
    for path, why in skipped:
        log.warning("skipping %s: %s", path.name, why)
    if skipped:
        log.warning("skipped %d of %d images in %s", len(skipped), len(images), data_dir)
    if not examples:
        reasons = "; ".join(f"{p.name}: {why}" for p, why in skipped[:3])
        raise ConfigError("data_dir", str(data_dir), f"none of its {len(images)} images is usable ({reasons}); "
                          f"add readable images at least {min_size} px on the shorter side")
    if len(examples) < 5:
        log.warning("only %d usable image(s) in %s: a character LoRA usually needs 5-50 varied images "
                    "(poses, angles, backgrounds) to generalise instead of copying them", len(examples), data_dir)
    return DatasetReport(examples, skipped)


def bucket_sizes(resolution: int, divisor: int, mode: str, family: Any = None) -> list[tuple[int, int]]:
    """(width, height) training sizes: one square, or aspect-ratio buckets of about resolution**2 pixels.

    With ``family``, a family whose trained sizes are a set of buckets (several sizes of its native
    area, as SDXL's 1024x1024, 832x1216, 1216x832, ...) buckets at those sizes, scaled to
    ``resolution`` and rounded to ``divisor``; otherwise (SD 1.x) the buckets step the width by
    ``divisor`` at about the same area.
    """
    if mode == "center":
        return [(resolution, resolution)]
    native = getattr(family, "native_size", None)
    trained = [(w, h) for w, h in getattr(family, "sizes", ()) if abs(w * h / native ** 2 - 1) < 0.1] if native else []
    if len(trained) >= 3:
        def fit(side: int) -> int:
            return max(divisor, round(side * resolution / native / divisor) * divisor)

        return sorted({(fit(w), fit(h)) for w, h in trained} | {(resolution, resolution)})
    sizes = set()
    area = resolution * resolution
    w = max(divisor, (resolution // 2) // divisor * divisor)
    while w <= resolution * 2:
        h = (area // w) // divisor * divisor
        if h >= divisor and 0.5 <= w / h <= 2.0:
            sizes.add((w, h))
        w += divisor
    sizes.add((resolution, resolution))
    return sorted(sizes)


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> int:
    ratio = math.log(width / height)
    return min(range(len(buckets)), key=lambda i: (abs(math.log(buckets[i][0] / buckets[i][1]) - ratio), i))


def cover_crop_box(width: int, height: int, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """How a ``width`` x ``height`` picture is fitted to ``size`` (width, height): the size it is
    resized to so that it covers ``size``, and the (left, top) corner of the centred crop."""
    bw, bh = size
    scale = max(bw / width, bh / height)
    new = (max(bw, round(width * scale)), max(bh, round(height * scale)))
    return new, ((new[0] - bw) // 2, (new[1] - bh) // 2)


def size_conditioning(width: int, height: int, bucket: tuple[int, int], *,
                      flipped: bool = False) -> tuple[int, int, int, int, int, int]:
    """SDXL's six size-conditioning numbers (its UNet's ``time_ids``) for a ``width`` x ``height``
    picture trained at ``bucket`` (width, height), in diffusers' layout: original size (height,
    width, as the picture is on disk), the crop's top-left corner (top, left) in the resized
    picture, and the target size (the bucket's height, width). A mirrored sample was cut from
    the mirrored picture, so its crop's left edge is counted from the other side.
    """
    (new_w, _), (left, top) = cover_crop_box(width, height, bucket)
    bw, bh = bucket
    if flipped:
        left = new_w - bw - left
    return (height, width, top, left, bh, bw)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def _cover_crop(im: Any, size: tuple[int, int]) -> Any:
    """A PIL image resized to cover ``size`` and centre-cropped to it."""
    from PIL import Image

    bw, bh = size
    new, (left, top) = cover_crop_box(im.width, im.height, size)
    im = im.resize(new, Image.Resampling.BICUBIC)
    return im.crop((left, top, left + bw, top + bh))


def _to_chw(im: Any, low: float) -> Any:
    """A PIL RGB image as a float CHW tensor in [low, 1]."""
    import numpy as np
    import torch

    arr = np.asarray(im, dtype=np.float32) / 255.0 * (1.0 - low) + low
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def load_pixels(path: Path, size: tuple[int, int]):
    """The image resized to cover ``size`` and centre-cropped to it, as a CHW tensor in [-1, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        return _to_chw(_cover_crop(im.convert("RGB"), size), -1.0)


def load_controls(path: Path, size: tuple[int, int], flip: bool) -> dict[bool, Any]:
    """The OpenPose control images (CHW in [0, 1], as the pipelines feed them) of training image
    ``path`` cropped exactly as its pixels are, unflipped and, with ``flip``, mirrored."""
    from PIL import Image

    from ..pose import Pose

    with Image.open(path) as im:
        width, height = im.size
    pose = Pose.from_json(pose_file(path))
    if (pose.canvas_width, pose.canvas_height) != (width, height):
        pose = pose.resize(width, height)  # a pose saved for the same picture at another size
    # The mirrored pose (left and right swapped), not a mirrored drawing: OpenPose colours differ by side.
    return {mirrored: _to_chw(_cover_crop((pose.mirror() if mirrored else pose).render(), size), 0.0)
            for mirrored in ((False, True) if flip else (False,))}


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from several integers and tags (stable across runs and machines)."""
    h = hashlib.sha256(",".join(p if isinstance(p, str) else str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


# Every random draw of a run comes from a generator seeded in one of three domains. Step
# generators are keyed by (seed, counter, process); the other two carry a tag, so they cannot
# coincide with a step's (the batch plan's salt was once the number 7: process 7's stream).
def step_seed(seed: int, counter: int, process: int) -> int:
    """The seed of micro-batch ``counter``'s draws (flips, noise, timesteps) on ``process``."""
    return mix_seed(seed, counter, process)


def plan_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s shuffle of the batch plan."""
    return mix_seed(seed, "plan", epoch)


def class_image_seed(seed: int, index: int) -> int:
    """The seed of prior-preservation class image ``index``."""
    return mix_seed(seed, "class", index)


class BatchPlan:
    """Which examples form each global batch, as a pure function of (seed, epoch).

    Batches never mix buckets; a bucket smaller than a batch repeats its images. Because the
    plan is recomputed from the seed, a resumed run sees the same batches as an unbroken one.
    """

    def __init__(self, bucket_of: list[int], global_batch: int, seed: int):
        self.members: dict[int, list[int]] = {}
        for i, b in enumerate(bucket_of):
            self.members.setdefault(b, []).append(i)
        self.global_batch = global_batch
        self.seed = seed
        self.batches_per_epoch = sum(math.ceil(len(m) / global_batch) for m in self.members.values())
        self._cache: tuple[int, list[list[int]]] | None = None

    def _plan(self, epoch: int) -> list[list[int]]:
        import torch

        if self._cache and self._cache[0] == epoch:
            return self._cache[1]
        g = torch.Generator().manual_seed(plan_seed(self.seed, epoch))
        chunks: list[list[int]] = []
        for b in sorted(self.members):
            idx = self.members[b]
            perm = [idx[i] for i in torch.randperm(len(idx), generator=g).tolist()]
            n = math.ceil(len(perm) / self.global_batch)
            padded = (perm * math.ceil(n * self.global_batch / len(perm)))[: n * self.global_batch]
            chunks += [padded[i * self.global_batch:(i + 1) * self.global_batch] for i in range(n)]
        order = torch.randperm(len(chunks), generator=g).tolist()
        plan = [chunks[i] for i in order]
        self._cache = (epoch, plan)
        return plan

    def batch(self, counter: int) -> tuple[list[int], int]:
        epoch, pos = divmod(counter, self.batches_per_epoch)
        return self._plan(epoch)[pos], epoch
