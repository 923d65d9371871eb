"""mini's own identity scorer: a small CNN that embeds a 64 px picture of a `charstudio.mini.world`
character, trained (`charstudio.identity.train`) so that the same character in other poses and
backgrounds lands close and other characters far (1 - cosine of the embeddings).

Its weights ship with mini in ``charstudio/data/mini/identity/``: ``model.safetensors`` (read with
safetensors only, never unpickled) and ``identity.json`` (the architecture, the same-character
threshold chosen on a validation set, the measured ROC AUCs and the recipe that trained it).

Its numbers mean something on mini-world pictures only (mini's renders and mini's own generated
pictures); `charstudio.identity.select` warns when it has to stand in for another model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, ModelLoadError
from .base import Scorer

log = logging.getLogger(__name__)

DEFAULT_FOLDER = Path(__file__).resolve().parent.parent / "data" / "mini" / "identity"
WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "identity.json"
DEFAULT_ARCHITECTURE: dict[str, Any] = {"size": 64, "channels": [32, 48, 96, 192], "dim": 128}


def build_embedder(architecture: dict[str, Any] | None = None) -> Any:
    """The embedder network (torch): a 3x3 stem, then per width one stride-2 block and one plain
    block (conv, batch norm, SiLU), global average and max pooling, and a linear head to ``dim``.
    Max pooling keeps small features (eyes, glasses) that an average over the picture would wash out."""
    import torch
    from torch import nn

    arch = {**DEFAULT_ARCHITECTURE, **(architecture or {})}
    widths = [int(c) for c in arch["channels"]]

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU()]

    layers = block(3, widths[0], 1)
    for cin, cout in zip(widths, widths[1:]):
        layers += block(cin, cout, 2) + block(cout, cout, 1)

    class Embedder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(2 * widths[-1], int(arch["dim"]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.features(x)
            pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
            return nn.functional.normalize(self.head(pooled), dim=-1)

    return Embedder()


def to_rgb(image: Any) -> Any:
    """A PIL picture as RGB; transparency is laid over white (as CCIP's reader does)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def pictures_to_array(images: Sequence[Any], size: int) -> np.ndarray:
    """(N, 3, size, size) float32 in [-1, 1]: each picture as RGB, resized with a box filter when it
    is not ``size`` px square (a 512 px picture keeps its colours, as a 64 px one)."""
    from PIL import Image

    out = np.zeros((len(images), 3, size, size), np.float32)
    for i, image in enumerate(images):
        if not hasattr(image, "convert"):
            raise ConfigError("images", type(image).__name__, "PIL images")
        rgb = to_rgb(image)
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.BOX)
        out[i] = np.asarray(rgb, np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    return out


def read_info(folder: str | Path = DEFAULT_FOLDER) -> dict[str, Any]:
    """identity.json of a scorer folder (architecture, threshold, measured figures, recipe)."""
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        raise ModelLoadError(f"scorer='mini': {str(path)!r} does not exist: reinstall charstudio (the file ships "
                             "with it) or rebuild it with python -m charstudio.identity.train")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"scorer='mini': {str(path)!r} cannot be read as JSON ({exc}): rebuild it with "
                             "python -m charstudio.identity.train") from None
    if not isinstance(info, dict) or not isinstance(info.get("threshold"), (int, float)):
        raise ModelLoadError(f"scorer='mini': {str(path)!r} has no number under 'threshold': rebuild it with "
                             "python -m charstudio.identity.train")
    return info


class MiniScorer(Scorer):
    """Identity on mini-world pictures: 1 - cosine of the shipped embedder's embeddings.

    ``folder``: a folder holding model.safetensors and identity.json (default: the one shipped in
    the package). ``threshold``: override the one in identity.json (native scale, 1 - cosine)."""

    name = "mini"

    def __init__(self, folder: str | Path | None = None, threshold: float | None = None, device: Any = None):
        self.folder = Path(folder) if folder is not None else DEFAULT_FOLDER
        self.info = read_info(self.folder)
        self.threshold = float(self.info["threshold"] if threshold is None else threshold)
        self.architecture = {**DEFAULT_ARCHITECTURE, **self.info.get("architecture", {})}
        self.size = int(self.architecture["size"])
        self.device = device
        self._net: Any = None

    @property
    def net(self) -> Any:
        """The embedder, loaded on first use (safetensors only) and kept in eval mode."""
        if self._net is None:
            self._net = load_embedder(self.folder, self.architecture, self.device)
        return self._net

    def embed(self, images: Sequence[Any]) -> np.ndarray:
        import torch

        images = list(images)
        if not images:
            return np.zeros((0, int(self.architecture["dim"])), np.float32)
        net = self.net
        param = next(net.parameters())
        x = torch.from_numpy(pictures_to_array(images, self.size)).to(param.device)
        with torch.no_grad():
            return net(x).float().cpu().numpy()


def load_embedder(folder: str | Path, architecture: dict[str, Any], device: Any = None) -> Any:
    """The embedder with the weights in ``folder``/model.safetensors; a `ModelLoadError` naming the
    file when it is missing or its tensors do not fit the architecture in identity.json."""
    from ..weights import read_tensors

    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise ModelLoadError(f"scorer='mini': {str(path)!r} does not exist: reinstall charstudio (the file ships "
                             "with it) or rebuild it with python -m charstudio.identity.train")
    net = build_embedder(architecture)
    tensors = read_tensors(path, "scorer", what="mini scorer weight file",
                           advice="reinstall charstudio or rebuild it with python -m charstudio.identity.train")
    try:
        net.load_state_dict(tensors)
    except Exception as exc:  # RuntimeError (missing keys, shape mismatch)
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ModelLoadError(f"scorer='mini': {str(path)!r} does not fit the architecture in {INFO_FILE} "
                             f"({type(exc).__name__}: {first}): rebuild it with python -m "
                             "charstudio.identity.train") from None
    net.eval()
    return net.to(device) if device is not None else net
