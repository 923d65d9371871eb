"""A LoRA per region: each region's ``loras`` act only inside its box (regional prompts, see
`charstudio.workflows.regions`; the field's rules: `charstudio.recipe.regions`).

How: the region adapters are switched on (beside the recipe's own ``loras``) at weight 1, and a
forward hook on every peft ``lora_B[adapter]`` module of the UNet multiplies that adapter's
contribution by where it may act:

- in layers that work on the picture (self-attention, feed-forward, projections, convolutions),
  by the adapter's mask, the regions' boxes times the region's weight, shrunk by area to that
  layer's token grid or feature map;
- in the cross-attention layers (``attn2``), by pass: the regional attention already runs once for
  the scene prompt and once per region, and mixes the results by the boxes; the scene's pass runs
  with every region adapter off, region k's pass with region k's adapters on (its key/value
  projections read the text, which has no pixels to mask);
- in layers with no picture grid (the resnets' time-embedding projections), nowhere (logged).

The text encoders' LoRA layers: each region's prompt (and its negative) is encoded with its own
adapters on at the region's weights, the scene prompt with them off.

Why masking at each layer and not peft's per-sample adapter batches (``adapter_names``): those
draw the UNet batch once per adapter set (scene, each region's) and blend the noise predictions by
mask, a whole extra UNet pass per character, and the adapters' features meet only in the blended
prediction. Masking costs the adapters' own layers and a multiply. Measured on mini
(benchmarks/regional_lora.py; 128x64, 20 steps, 2-core CPU under load): a LoRA per region costs
1.27x the same regional picture without adapters (both LoRAs unmasked on the whole picture: 1.14x),
3x the UNet rows cost 2.46x; the cape LoRA stays on
its character in 10/10 seeds and on the other in 0/10, the boots 9/10 and 0/10, where the cape
LoRA on the whole picture also lands on the other character in 3/10, and both LoRAs on the whole
picture lose the cape altogether (0/10: their text-encoder layers fight).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..recipe.config import GenerationConfig
    from ..studio import Studio

log = logging.getLogger(__name__)


def has_regional_loras(config: GenerationConfig) -> bool:
    return any(region.get("loras") for region in config.regions or [])


class RegionalLoras:
    """The region adapters of one drawing: their names in the studio, where each may act, and the
    cross-attention pass now running (`pass_index`: None for the scene's, k for region k's)."""

    def __init__(self, studio: Studio, config: GenerationConfig, box_masks: Any):
        """``box_masks``: (R, h, w) float tensor, each region's box on the latent grid (area-resized)."""
        self.studio = studio
        self.config = config
        self.names: list[dict[str, float]] = []  # per region: adapter name -> weight
        for i, region in enumerate(config.regions):
            self.names.append({self._resolve(i, key): float(w) for key, w in (region.get("loras") or {}).items()})
        adapters = sorted({n for per in self.names for n in per})
        both = sorted(set(adapters) & set(config.loras))
        if both:
            raise ConfigError("regions", both, "adapters in a region's loras and not also in the recipe's loras")
        # adapter -> (h, w) mask: sum over the regions that use it of weight x box
        self.masks = {a: sum(per[a] * box_masks[k] for k, per in enumerate(self.names) if a in per) for a in adapters}
        self.adapters = adapters
        self.pass_index: int | None = None
        self._sized: dict[tuple, Any] = {}
        self.unmasked = 0  # calls of adapted layers without a picture grid (they get no adapter)

    def _resolve(self, i: int, key: str) -> str:
        """The adapter name of a region's ``loras`` key: a loaded adapter, else loaded (off) from lora/ or a file."""
        if key in self.studio.lora_set.records:
            return key
        try:
            return self.studio.lora_set.load_off(key)
        except ConfigError as err:
            raise ConfigError(f"regions[{i}].loras", key, f"a loaded adapter's name, a LoRA under lora/ or a LoRA "
                              f"file ({err})") from None

    # -- the text: each region's prompt under its own adapters -------------------------------------
    @contextmanager
    def encoding(self, k: int) -> Iterator[None]:
        """Region k's adapters on (at its weights) beside the recipe's, for encoding its prompt."""
        with self.studio.lora_set.using({**self.config.loras, **self.names[k]}):
            yield

    # -- the UNet: every adapter's contribution masked -------------------------------------------
    @contextmanager
    def applied(self) -> Iterator[None]:
        """The region adapters on at weight 1 (the weights live in the masks) with a hook on each of
        their UNet ``lora_B`` modules; hooks removed and the adapters as before on exit, even after an error."""
        from ..lora import fused_loras

        unet = self.studio.components["unet"]
        pipe = self.studio.pipeline("txt2img")
        if fused_loras(pipe):
            raise ConfigError("regions", "loras", "no fused adapters (their weights are in the base weights, so "
                              "nothing could be masked): studio.unfuse_loras() first")
        with ExitStack() as stack:
            stack.enter_context(self.studio.lora_set.using({**self.config.loras, **{a: 1.0 for a in self.adapters}}))
            handles = []
            stack.callback(lambda: [h.remove() for h in handles])
            for module_name, module in unet.named_modules():
                lora_b = getattr(module, "lora_B", None)
                if lora_b is None or not hasattr(lora_b, "keys"):
                    continue
                for adapter in self.adapters:
                    if adapter not in lora_b:
                        continue
                    if adapter in (getattr(module, "lora_variant", None) or {}):
                        raise ConfigError("regions", adapter, "a plain LoRA in a region (DoRA and other variants "
                                          "change the weights beyond the adapter's output, which cannot be masked)")
                    cross = ".attn2." in f".{module_name}."
                    handles.append(lora_b[adapter].register_forward_hook(self._hook(adapter, cross)))
            log.info("regional LoRAs %s: %d adapted layers masked", self.names, len(handles))
            yield
        if self.unmasked:
            log.info("regional LoRAs: %d calls of layers without a picture grid got no adapter", self.unmasked)

    def _hook(self, adapter: str, cross: bool) -> Any:
        def hook(module: Any, inputs: Any, output: Any) -> Any:
            if cross:
                k = self.pass_index
                return output * (self.names[k].get(adapter, 0.0) if k is not None else 0.0)
            return output * self.mask_for(adapter, output)
        return hook

    def mask_for(self, adapter: str, output: Any) -> Any:
        """The adapter's mask shaped to broadcast over ``output``: (1, L, 1) for a token sequence on the
        latent grid (halved as the UNet's stride-2 convolutions do), (1, 1, H, W) for a feature map,
        0 for anything else."""
        import torch.nn.functional as F

        if output.ndim == 4:
            size: tuple = tuple(output.shape[-2:])
        elif output.ndim == 3:
            size = (output.shape[1],)
        else:
            self.unmasked += 1
            return 0.0
        key = (adapter, output.ndim, size, output.device, output.dtype)
        if key not in self._sized:
            mask = self.masks[adapter]
            if output.ndim == 4:
                shaped = F.interpolate(mask[None, None], size=size, mode="area")
            else:
                h, w = mask.shape[-2:]
                while h * w > size[0] and (h > 1 or w > 1):
                    h, w = -(-h // 2), -(-w // 2)
                if h * w != size[0]:
                    raise ConfigError("regions", f"a LoRA layer of {size[0]} positions",
                                      f"a UNet whose layers work on the latent grid {tuple(mask.shape)} halved")
                shaped = F.interpolate(mask[None, None], size=(h, w), mode="area").reshape(1, h * w, 1)
            self._sized[key] = shaped.to(output.device, output.dtype)
        return self._sized[key]
