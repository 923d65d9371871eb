"""CCIP (deepghs, "contrastive anime character image pre-training") read with onnxruntime.

The hub repo ``deepghs/ccip_onnx`` holds one folder per model (default
``ccip-caformer-24-randaug-pruned``) with three files:

- ``model_feat.onnx``: input ``input`` (N, 3, 384, 384) float32, output ``output`` (N, 768): the
  picture as RGB (transparency over white), resized to 384x384 with bilinear resampling, scaled
  to [0, 1] and normalised with CLIP's mean and std, channels first;
- ``model_metrics.onnx``: input ``input`` (N, 768) features, output ``output`` (N, N): the
  pairwise difference (0 = same picture; the same character at or below the threshold);
- ``metrics.json``: the measured figures, with ``threshold`` (about 0.18 for the default model).

These are the facts of deepghs/imgutils' ``imgutils/metrics/ccip.py``; this is our own reader, so the
package needs neither imgutils (it pins numpy<2 and pulls in opencv, pandas and gradio) nor a
download: the files come from a folder given by path or from the local Hugging Face cache, and
nothing is ever downloaded implicitly (``huggingface-cli download deepghs/ccip_onnx --include
"ccip-caformer-24-randaug-pruned/*"`` fetches them once).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, ModelLoadError
from .base import Scorer
from .mini_scorer import to_rgb

log = logging.getLogger(__name__)

REPO = "deepghs/ccip_onnx"
DEFAULT_MODEL = "ccip-caformer-24-randaug-pruned"
FEATURE_FILE, METRICS_MODEL_FILE, METRICS_FILE = "model_feat.onnx", "model_metrics.onnx", "metrics.json"
FILES = (FEATURE_FILE, METRICS_MODEL_FILE, METRICS_FILE)
SIZE = 384  # when the feature graph does not fix its input size
MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's, as CCIP was trained with
STD = (0.26862954, 0.26130258, 0.27577711)
SETUP = (f"download {REPO}'s '{{model}}' folder once (huggingface-cli download {REPO} --include "
         f"'{{model}}/*') or give a folder holding {', '.join(FILES)}")


def cached_folder(model: str = DEFAULT_MODEL) -> Path | None:
    """The local hub cache's folder of ``model`` when all three files are in it, else None.
    Looks only; never downloads."""
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(REPO, f"{model}/{name}") for name in FILES]
    if not all(isinstance(p, str) for p in found):
        return None
    folders = {Path(p).parent for p in found}
    return folders.pop() if len(folders) == 1 else None


def model_folder(path: str | Path, model: str = DEFAULT_MODEL) -> Path | None:
    """The folder under ``path`` that holds CCIP's files: ``path`` itself, or its ``model``
    subfolder (a download of the whole repo); None when neither does."""
    path = Path(path).expanduser()
    for folder in (path, path / model):
        if folder.is_dir() and all((folder / name).is_file() for name in FILES):
            return folder
    return None


def preprocess(images: Sequence[Any], size: int = SIZE) -> np.ndarray:
    """(N, 3, size, size) float32: RGB, bilinear resize, [0, 1], CLIP mean/std, channels first."""
    from PIL import Image

    out = np.zeros((len(images), 3, size, size), np.float32)
    mean, std = np.asarray(MEAN, np.float32)[:, None, None], np.asarray(STD, np.float32)[:, None, None]
    for i, image in enumerate(images):
        if not hasattr(image, "convert"):
            raise ConfigError("images", type(image).__name__, "PIL images")
        rgb = to_rgb(image).resize((size, size), resample=Image.BILINEAR)
        out[i] = (np.asarray(rgb, np.float32).transpose(2, 0, 1) / 255.0 - mean) / std
    return out


class CcipScorer(Scorer):
    """CCIP's difference (its metrics model on CCIP features) with the threshold in metrics.json.

    ``folder``: a folder holding model_feat.onnx, model_metrics.onnx and metrics.json (or one with
    a ``model`` subfolder holding them); None looks in the local hub cache of deepghs/ccip_onnx.
    ``threshold``: override the one in metrics.json. ``providers``: onnxruntime's execution
    providers (default: CPU). ``field``: the setting named in errors (the caller's name for it)."""

    name = "ccip"

    def __init__(self, folder: str | Path | None = None, model: str = DEFAULT_MODEL, threshold: float | None = None,
                 providers: Sequence[str] | None = None, field: str = "folder"):
        self.model, self.field, self.providers = model, field, list(providers or ["CPUExecutionProvider"])
        if folder is None:
            found = cached_folder(model)
            if found is None:
                raise ModelLoadError(f"{field}=None: CCIP's {model!r} files are not in the local hub cache "
                                     f"(nothing is downloaded implicitly): {SETUP.format(model=model)}")
        else:
            found = model_folder(folder, model)
            if found is None:
                raise ModelLoadError(f"{field}={str(folder)!r}: {self._missing(Path(folder))}: "
                                     f"{SETUP.format(model=model)}")
        self.folder = found
        self.info = self._read_metrics(found / METRICS_FILE)
        self.threshold = float(self.info["threshold"] if threshold is None else threshold)
        self._feature: Any = None
        self._metrics: Any = None
        self.size = SIZE

    def _missing(self, folder: Path) -> str:
        if not folder.exists():
            return "no such folder"
        if not folder.is_dir():
            return "is a file, not a folder"
        absent = [name for name in FILES if not (folder / name).is_file()]
        return f"the folder has no {', '.join(absent)}"

    def _read_metrics(self, path: Path) -> dict[str, Any]:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelLoadError(f"{self.field}={str(path)!r}: cannot be read as JSON ({exc}): "
                                 f"{SETUP.format(model=self.model)}") from None
        value = info.get("threshold") if isinstance(info, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 2:
            raise ModelLoadError(f"{self.field}={str(path)!r}: its 'threshold' is {value!r}, and CCIP's "
                                 f"metrics.json gives a number (about 0.18): {SETUP.format(model=self.model)}")
        return info

    def _session(self, name: str, rank: int) -> Any:
        """An onnxruntime session of ``name`` whose one input is ``input`` of rank ``rank`` and
        whose output is ``output`` (CCIP's names), or a `ModelLoadError` saying what it has instead."""
        import onnxruntime as ort

        path = self.folder / name
        try:
            session = ort.InferenceSession(str(path), providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            raise ModelLoadError(f"{self.field}={str(path)!r}: onnxruntime cannot load it "
                                 f"({type(exc).__name__}: {first}): {SETUP.format(model=self.model)}") from None
        inputs, outputs = session.get_inputs(), session.get_outputs()
        got = ", ".join(f"{i.name!r} {tuple(i.shape)}" for i in inputs)
        if len(inputs) != 1 or inputs[0].name != "input" or len(inputs[0].shape) != rank:
            want = "(N, 3, H, W) pictures" if rank == 4 else "(N, D) features"
            raise ModelLoadError(f"{self.field}={str(path)!r}: the graph takes {got}, and CCIP's takes one "
                                 f"'input' of {want}: {SETUP.format(model=self.model)}")
        if rank == 4 and isinstance(inputs[0].shape[1], int) and inputs[0].shape[1] != 3:
            raise ModelLoadError(f"{self.field}={str(path)!r}: the graph takes {got}, and CCIP's takes 3 "
                                 f"colour channels: {SETUP.format(model=self.model)}")
        if "output" not in [o.name for o in outputs]:
            raise ModelLoadError(f"{self.field}={str(path)!r}: the graph gives {[o.name for o in outputs]}, and "
                                 f"CCIP's gives 'output': {SETUP.format(model=self.model)}")
        return session

    @property
    def feature_session(self) -> Any:
        if self._feature is None:
            self._feature = self._session(FEATURE_FILE, 4)
            height, width = self._feature.get_inputs()[0].shape[2:]
            if isinstance(height, int) and isinstance(width, int) and height == width:
                self.size = height
        return self._feature

    @property
    def metrics_session(self) -> Any:
        if self._metrics is None:
            self._metrics = self._session(METRICS_MODEL_FILE, 2)
        return self._metrics

    def embed(self, images: Sequence[Any]) -> np.ndarray:
        images = list(images)
        session = self.feature_session
        if not images:
            return np.zeros((0, 0), np.float32)
        rows = [session.run(["output"], {"input": preprocess(images[i:i + 8], self.size)})[0]
                for i in range(0, len(images), 8)]
        return np.concatenate(rows).astype(np.float32)

    def difference(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """CCIP's metrics model on the stacked features: rows of ``a`` against rows of ``b``."""
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        both = np.concatenate([a, b])
        matrix = self.metrics_session.run(["output"], {"input": both})[0]
        return np.asarray(matrix, np.float64)[: len(a), len(a):]
