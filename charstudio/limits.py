"""How big one job may be: picture sizes per model, list lengths, frame counts, pose canvases.

A size is bounded by what the model was trained at and by the memory the machine has, not by
what the arithmetic allows: SD 1.5 at 8192x8192 is an hours-long run that gives no usable
picture, and a pose canvas of 100000x100000 is a 28 GiB array. Each check raises a one-line
`ConfigError` naming the field, the value and what works, before anything heavy starts.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .errors import ConfigError
from .validation import check_int

log = logging.getLogger(__name__)

# A picture may be up to this many times the model's native size per side without opt-in
# (4x the pixels: room for hires-fix passes and wide formats). Beyond it models repeat their
# subject and time grows with the square of the pixel count.
LARGE_FACTOR = 2
# Items in any one list a user gives (sheet poses, turnaround views, expressions, regions,
# frames, LoRAs, embeddings, sweep weights): the one bound every list shares (`check_list`).
# Real requests stay far below it: an expression pack is 20-60 expressions, a turnaround 4-8
# views, a sheet a few dozen poses, a recipe a handful of LoRAs and embeddings, an animation
# 10 s at 24 fps (240 frames). Past it a job is hours of drawing, and the work done per item
# before the first picture appears (a recipe, a pose and a prompt encoding each) grows with
# it: 10,000 expressions spent minutes on that before drawing anything.
MAX_ITEMS = 240
# Frames of one interpolation or pose animation: the shared list bound (10 s at 24 fps). An
# uneven (`uniform`) run renders up to 3x as many pictures to map its path.
MAX_FRAMES = MAX_ITEMS
# The largest side of a drawn pose (a control image larger than any model's output).
MAX_CANVAS = 8192
# Share of the free memory one decode may plan to use.
MEMORY_SHARE = 0.8


def max_side(native: int) -> int:
    """The largest width or height a model of native size `native` draws without opt-in."""
    return int(native) * LARGE_FACTOR


def check_picture_size(width: int, height: int, native: int, *, allow_large: bool = False,
                       memory_bytes: int | None = None, model: str = "this model") -> None:
    """Refuse a picture far beyond the model's native size unless `allow_large`, and one whose
    decode would not fit in `memory_bytes` (the free memory; measured when None) in any case."""
    limit = max_side(native)
    if not allow_large:
        for name, value in (("width", width), ("height", height)):
            if value > limit:
                raise ConfigError(name, value, f"{model} was trained at {native}x{native}; up to {limit} px a side "
                                  "works without opt-in: draw smaller (then upscale), or opt in with allow_large=True "
                                  "(CLI: --allow-large)")
    need = decode_bytes(width, height)
    free = available_memory() if memory_bytes is None else memory_bytes
    if free is not None and need > MEMORY_SHARE * free:
        raise ConfigError("width x height", f"{width}x{height}", f"decoding it needs about {need / 2**30:.1f} GiB and "
                          f"{free / 2**30:.1f} GiB is free: draw smaller")


def decode_bytes(width: int, height: int, channels: int = 128, itemsize: int = 4) -> int:
    """A conservative estimate of the VAE decode's peak memory: three full-resolution
    activations of its last block (128 channels in SD's and SDXL's VAEs) in float32."""
    return int(width) * int(height) * channels * itemsize * 3


def available_memory(device: Any = None) -> int | None:
    """Free bytes on `device` (a CUDA device) or in RAM; None when it cannot be told."""
    try:
        if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
            import torch

            return int(torch.cuda.mem_get_info(device)[0])
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, RuntimeError) as exc:
        log.debug("free memory unknown: %s", exc)
    if hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


SHARED = f"the bound every list shares, charstudio.limits.MAX_ITEMS = {MAX_ITEMS}"


SPLIT = "split it into several runs"


def check_count(name: str, count: int, limit: int = MAX_ITEMS, what: str = "items", why: str = SHARED,
                advice: str = SPLIT) -> int:
    """Refuse `count` items in the list `name` beyond `limit` (default `MAX_ITEMS`), in one line
    that names the field, the count, the bound (and `why`) and what to do instead."""
    if count > limit:
        raise ConfigError(name, f"{count} {what}", f"at most {limit} {what} in one run ({why}); {advice}")
    return count


def check_list(name: str, items: Any, limit: int = MAX_ITEMS, what: str = "items", why: str = SHARED,
               advice: str = SPLIT) -> list:
    """`items` as a list, refused by `check_count` when longer than `limit`. Call it before any
    per-item work (checking, composing, drawing), so an oversized list costs nothing.

    A string or a dict stays one item; an iterable without a length is read at most `limit` + 1
    items deep, so an endless generator is refused rather than expanded."""
    if isinstance(items, (str, bytes, dict)):
        return [items]
    if not hasattr(items, "__len__"):
        import itertools

        try:
            items = list(itertools.islice(iter(items), limit + 1))
        except TypeError:
            raise ConfigError(name, type(items).__name__, f"a list of {what}") from None
        if len(items) > limit:
            check_count(name, len(items), limit, what, why, advice)  # "241 items": at least that many
        return items
    check_count(name, len(items), limit, what, why, advice)
    return list(items)


def named_items(field: str, value: Any, defaults: Any, what: str, expected: str,
                singles: tuple[type, ...] = ()) -> list:
    """The items of a list a user names things with (views, expressions): None gives `defaults`,
    one comma-separated string its parts, an instance of `singles` (or a dict, when `singles`
    says so) is one item; then `check_list`'s bound, and at least one item."""
    if value is None:
        value = list(defaults)
    elif isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    elif singles and isinstance(value, singles):
        value = [value]
    if not hasattr(value, "__iter__"):
        raise ConfigError(field, value, expected)
    items = check_list(field, value, what=what)  # before any per-item work
    if not items:
        raise ConfigError(field, value, f"at least one {what.removesuffix('s')}: {expected}")
    return items


def check_unique(field: str, labels: list[str], what: str) -> None:
    """Refuse a label asked for twice (the sheet's pictures are named by their labels)."""
    from collections import Counter

    twice = sorted(x for x, n in Counter(labels).items() if n > 1)
    if twice:
        raise ConfigError(field, labels, f"each {what} once; {', '.join(twice)} is asked for twice")


def check_frames(frames: Any, name: str = "frames") -> int:
    """A frame count between 2 (the two ends) and `MAX_FRAMES` (the shared list bound)."""
    return check_count(name, check_int(name, frames, 2), MAX_FRAMES, "frames")


def check_canvas(width: Any, height: Any) -> tuple[int, int]:
    """A pose canvas of 1..MAX_CANVAS pixels a side."""
    return (check_int("width", width, 1, MAX_CANVAS), check_int("height", height, 1, MAX_CANVAS))
