"""Writing frames: grids, contact sheets, GIF and MP4, each written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import ConfigError


def to_array(img: Any) -> Any:
    import numpy as np

    if hasattr(img, "convert"):  # PIL
        return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    arr = np.asarray(img, dtype=np.float64)
    return arr / 255.0 if arr.max(initial=0) > 1.0 else arr


def to_pil(frame: Any) -> Any:
    import numpy as np
    from PIL import Image

    if hasattr(frame, "convert"):
        return frame.convert("RGB")
    arr = to_array(frame)
    return Image.fromarray(np.uint8(np.clip(arr, 0, 1) * 255 + 0.5))


def frame_grid(frames: Sequence[Any], cols: int | None = None, labels: Sequence[str] | None = None,
               pad: int = 2, background: tuple[int, int, int] = (255, 255, 255)) -> Any:
    """Frames tiled left to right, top to bottom; optional text label under each one."""
    from .imaging import image_grid

    if not frames:
        raise ConfigError("frames", 0, "need at least 1 frame")
    images = [to_pil(f) for f in frames]
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
    arrs = [np.asarray(to_pil(f)) for f in frames]
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
    arrs = [np.asarray(to_pil(f)) for f in frames]
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
