"""An IP-Adapter reference per region: each region's ``reference`` picture acts only inside its box
(regional prompts, see `charstudio.workflows.regions`; the field: `charstudio.recipe.regions`).

How: one IP-Adapter is loaded (`charstudio.sheets.ip_adapter`, the regions' ``ip_adapter`` or the
family's) with every region's reference as one image each, so the UNet's ``encoder_hid_proj``
projects them once per step into (batch, references, tokens, width). The regional attention already
runs every cross-attention layer once for the scene prompt and once per region, and mixes the passes
by the regions' masks: the scene's pass runs at IP-Adapter scale 0 (no image tokens act, so the
scene and background stay unreferenced), region k's pass with only region k's image tokens at its
``reference_scale`` (a region without a reference: scale 0). No extra UNet pass; the cost is the
image-token attention inside the region passes.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import ConfigError, InputFileError, ModelLoadError

if TYPE_CHECKING:
    from ..recipe.config import GenerationConfig
    from ..studio import Studio

log = logging.getLogger(__name__)


def has_regional_references(config: GenerationConfig) -> bool:
    return any(region.get("reference") for region in config.regions or [])


def load_reference(name: str, recorded: dict) -> Any:
    """The recorded reference picture, refused when its pixels are not the recorded ones."""
    from PIL import Image

    from .masks import picture_sha256

    path = Path(recorded["path"])
    try:
        with Image.open(path) as image:
            picture = image.convert("RGB")
    except (OSError, ValueError) as err:
        raise InputFileError(f"{name}.path={str(path)!r}: the region's reference picture cannot be read "
                             f"({type(err).__name__}); give the picture again") from None
    if picture_sha256(picture) != recorded["sha256"]:
        raise InputFileError(f"{name}.sha256={recorded['sha256'][:12]}...: {path} is not the picture this recipe "
                             "was drawn with (its pixels changed); give the original picture")
    return picture


class RegionalReferences:
    """The regions' reference pictures, and which image tokens (and scale) each cross-attention pass gets."""

    def __init__(self, studio: Studio, config: GenerationConfig):
        self.studio = studio
        self.index: dict[int, int] = {}  # region -> its image's position among the references
        self.scales: dict[int, float] = {}
        self.images: list[Any] = []
        self.weights: str | None = None
        for k, region in enumerate(config.regions):
            if not region.get("reference"):
                continue
            self.index[k], self.scales[k] = len(self.images), float(region.get("reference_scale", 0.6))
            self.images.append(load_reference(f"regions[{k}].reference", region["reference"]))
            self.weights = region.get("ip_adapter") or self.weights
        self.first = min(self.index)
        self.reference = config.regions[self.first]["reference"]["path"]

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The IP-Adapter loaded with every reference (at scale 0 outside the region passes); unloaded,
        and the UNet's processors as before, on exit, even after an error."""
        from ..sheets.ip_adapter import ip_adapter

        with ExitStack() as stack:
            try:
                stack.enter_context(ip_adapter(self.studio, self.weights, [self.images], 0.0))
            except (ModelLoadError, ConfigError) as err:
                raise ConfigError(f"regions[{self.first}].reference", self.reference,
                                  f"an IP-Adapter for this model, none could be loaded ({err}); give the "
                                  "region's 'ip_adapter' weights, or leave the reference out") from None
            log.info("regional references: %d pictures, regions %s", len(self.images), sorted(self.index))
            yield

    @contextmanager
    def passing(self, base: Any, k: int | None) -> Iterator[None]:
        """Region k's scale on the wrapped IP-Adapter processor (None, the scene's pass: 0)."""
        scale = getattr(base, "scale", None)
        if not isinstance(scale, list):
            raise ConfigError("regions", "reference", "an IP-Adapter processor in every cross-attention layer "
                              f"(found {type(base).__name__})")
        base.scale = [self.scales.get(k, 0.0) if k is not None else 0.0] * len(scale)
        try:
            yield
        finally:
            base.scale = scale

    def tokens(self, k: int, encoder_hidden_states: Any) -> Any:
        """The layer's encoder states with only region k's image tokens (its own picture's)."""
        if not isinstance(encoder_hidden_states, tuple):
            return encoder_hidden_states
        j = self.index.get(k, 0)
        text, *rest = encoder_hidden_states
        return (text, *[[r[:, j:j + 1] for r in part] if isinstance(part, list) else part for part in rest])
