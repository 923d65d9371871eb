"""Regional prompts: several characters in one picture, each drawn from its own prompt.

A recipe's ``regions`` is a list of regions, each a prompt (or a character card) and the part of
the picture it owns::

    [{"prompt": "a girl with red hair", "box": "left"},
     {"character": "aiko", "box": [64, 0, 128, 64]}]

The recipe's own prompt is the shared scene prompt. While the picture is drawn, every
cross-attention layer of the UNet (``attn2``) computes its output for the scene prompt and for
each region's prompt, and mixes them pixel by pixel with the regions' masks, shrunk to that
layer's resolution: inside a box the region's prompt rules, outside every box the scene prompt.
This is done for the conditional rows of the classifier-free-guidance batch only; the
unconditional rows keep the negative prompt, unless a region gives its own ``negative_prompt``.

The field (each region's keys: prompt or character, box, negative_prompt, weight, overlap, loras) is
checked and normalised by `charstudio.recipe.regions`, whose docstring gives the rules; its names
stay importable from here. A region's ``loras`` act only inside its box: every adapted layer's
LoRA output is masked (`charstudio.workflows.regional_loras`, which says how and why). A region's
``reference`` picture's IP-Adapter tokens act only in its own cross-attention pass
(`charstudio.workflows.regional_references`).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import ConfigError
from ..recipe.regions import (  # noqa: F401 - the field's names, importable from here as before
    EXAMPLE,
    HALVES,
    MAX_REGIONS,
    REGION_KEYS,
    box_pixels,
    check,
    check_region_list,
    parse_region,
)

if TYPE_CHECKING:
    from ..recipe.config import GenerationConfig
    from ..studio import Studio

log = logging.getLogger(__name__)


# -- drawing -------------------------------------------------------------------------------------
def region_masks(regions: list[dict], width: int, height: int) -> Any:
    """The regions' weights per pixel, a float tensor (R, height, width): each region's weight in its
    box, shared by weight where boxes overlap, so that no pixel sums to more than 1 (the scene
    prompt gets the rest)."""
    import torch

    masks = torch.zeros(len(regions), height, width)
    for k, region in enumerate(regions):
        x0, y0, x1, y1 = box_pixels(region, width, height)
        masks[k, y0:y1, x0:x1] = float(region["weight"])
    total = masks.sum(0, keepdim=True)
    return torch.where(total > 1, masks / total.clamp(min=1e-8), masks)


def box_masks(regions: list[dict], width: int, height: int) -> Any:
    """Each region's box as 1 inside, 0 outside: a float tensor (R, height, width) (where its LoRAs act)."""
    import torch

    masks = torch.zeros(len(regions), height, width)
    for k, region in enumerate(regions):
        x0, y0, x1, y1 = box_pixels(region, width, height)
        masks[k, y0:y1, x0:x1] = 1.0
    return masks


class _RegionState:
    """What every wrapped cross-attention layer shares: the prompts' embeddings, the masks at the
    latent resolution, the CFG layout and a cache of masks per layer size."""

    def __init__(self, cond: list[Any], uncond: list[Any | None], masks: Any, cfg: bool, loras: Any = None,
                 references: Any = None):
        self.cond, self.uncond, self.cfg = cond, uncond, cfg
        self.references = references  # a RegionalReferences when regions have reference pictures
        self.loras = loras  # a RegionalLoras when regions have their own adapters (it tracks the pass running)
        self.masks = masks  # (R, h, w) at the latent resolution
        self._sized: dict[tuple, Any] = {}

    def masks_for(self, length: int, device: Any, dtype: Any) -> Any:
        """The masks as (R, 1, length, 1) for a layer whose sequence has `length` positions: the
        latent grid halved (rounding up, as the UNet's stride-2 convolutions do) until it fits."""
        import torch.nn.functional as F

        key = (length, device, dtype)
        if key not in self._sized:
            h, w = self.masks.shape[-2:]
            while h * w > length and (h > 1 or w > 1):
                h, w = -(-h // 2), -(-w // 2)
            if h * w != length:
                raise ConfigError("regions", f"a layer of {length} positions",
                                  f"a UNet whose attention layers work on the latent grid {tuple(self.masks.shape[-2:])} "
                                  "halved; this one does not, so regions cannot be placed")
            small = F.interpolate(self.masks[:, None], size=(h, w), mode="area")
            self._sized[key] = small.reshape(len(self.masks), 1, h * w, 1).to(device, dtype)
        return self._sized[key]


class RegionalAttnProcessor:
    """Wraps a UNet cross-attention processor: the wrapped one runs for the batch as it came (the
    scene prompt), then once per region on the rows that region changes, and the outputs are
    mixed per pixel by the regions' masks. Wrapping keeps whatever the processor does (SDPA,
    fused projections, IP-Adapter, attention recording)."""

    def __init__(self, base: Any, state: _RegionState):
        self.base = base
        self.state = state

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None,
                 attention_mask: Any = None, temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        refs = self.state.references
        with refs.passing(self.base, None) if refs is not None else nullcontext():  # the scene: no reference
            out = self.base(attn, hidden_states, *args, encoder_hidden_states=encoder_hidden_states,
                            attention_mask=attention_mask, temb=temb, **kwargs)
        if encoder_hidden_states is None or hidden_states.ndim != 3:
            return out
        state = self.state
        batch = hidden_states.shape[0]
        half = batch // 2 if state.cfg and batch % 2 == 0 else 0  # CFG batches are [uncond x n, cond x n]
        masks = state.masks_for(hidden_states.shape[1], out.device, out.dtype)
        cond_rows, uncond_rows = slice(half, batch), slice(0, half)
        share = 1.0 - masks.sum(0)  # (1, L, 1): where no region covers, the scene prompt
        out = out.clone()
        mixed_cond = out[cond_rows] * share
        mixed_uncond = out[uncond_rows] * share if half and any(e is not None for e in state.uncond) else None
        for k, (cond, uncond) in enumerate(zip(state.cond, state.uncond)):
            m = masks[k]
            if mixed_uncond is not None and uncond is not None and uncond.shape == cond.shape:
                # one pass over both halves (the rows are independent): half the calls
                both = self._region_pass(k, attn, hidden_states, slice(0, batch), encoder_hidden_states,
                                         [(half, uncond), (batch - half, cond)], temb, args, kwargs)
                mixed_uncond = mixed_uncond + both[:half] * m
                mixed_cond = mixed_cond + both[half:] * m
                continue
            region_out = self._region_pass(k, attn, hidden_states, cond_rows, encoder_hidden_states,
                                           [(batch - half, cond)], temb, args, kwargs)
            mixed_cond = mixed_cond + region_out * m
            if mixed_uncond is not None:
                if uncond is None:  # this region keeps the scene's negative: the scene's output
                    mixed_uncond = mixed_uncond + out[uncond_rows] * m
                else:
                    region_out = self._region_pass(k, attn, hidden_states, uncond_rows, encoder_hidden_states,
                                                   [(half, uncond)], temb, args, kwargs)
                    mixed_uncond = mixed_uncond + region_out * m
        out[cond_rows] = mixed_cond
        if mixed_uncond is not None:
            out[uncond_rows] = mixed_uncond
        return out

    def _region_pass(self, k: int, attn: Any, hidden_states: Any, rows: slice, encoder_hidden_states: Any,
                     texts: list[tuple[int, Any]], temb: Any, args: tuple, kwargs: dict) -> Any:
        """The wrapped processor on ``rows`` with region k's text (``texts``: (row count, embedding)
        in row order), with region k's adapters on and its reference's image tokens when it has some."""
        loras, refs = self.state.loras, self.state.references
        if loras is not None:
            loras.pass_index = k  # region k's adapters in this cross-attention pass
        try:
            states = _replace_text(encoder_hidden_states, rows, texts)
            with refs.passing(self.base, k) if refs is not None else nullcontext():
                return self.base(attn, hidden_states[rows], *args,
                                 encoder_hidden_states=refs.tokens(k, states) if refs is not None else states,
                                 attention_mask=None, temb=None if temb is None else temb[rows], **kwargs)
        finally:
            if loras is not None:
                loras.pass_index = None


def _replace_text(encoder_hidden_states: Any, rows: slice, texts: list[tuple[int, Any]]) -> Any:
    """The layer's encoder states for `rows` with the text part replaced by `texts` ((row count,
    one-row embedding) each, expanded, in row order); other parts (IP-Adapter image tokens in a
    tuple) are kept."""
    import torch

    if isinstance(encoder_hidden_states, tuple):
        text, *rest = encoder_hidden_states
        return (_replace_text(text, rows, texts), *[[r[rows] for r in part] if isinstance(part, list) else part[rows]
                                                    for part in rest])
    like = encoder_hidden_states
    parts = [emb.to(like.device, like.dtype).expand(n, *emb.shape[1:]) for n, emb in texts if n]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


@contextmanager
def regional_attention(studio: Studio, config: GenerationConfig) -> Iterator[None]:
    """While inside, the studio's UNet draws the recipe's regions (see the module docstring).

    Every cross-attention processor (attn2) is wrapped, not replaced, and the originals come
    back on exit, even after an error. Works for any UNet batch (CFG rows [uncond x n, cond x n])
    and on both families (SDXL's pooled and time conditioning stay the scene prompt's). Regions'
    own ``loras`` are switched on and masked to their boxes inside, as before on exit."""
    import torch

    from ..models.vae import vae_factor
    from .regional_loras import RegionalLoras, has_regional_loras
    from .regional_references import RegionalReferences, has_regional_references

    regions = config.regions
    if not regions:
        yield
        return
    unet = studio.components["unet"]
    # 1. The masks on the latent grid; each layer shrinks them to its own size.
    factor = vae_factor(studio.components["vae"])
    grid = (config.height // factor, config.width // factor)

    def on_grid(pixels: Any) -> Any:
        return torch.nn.functional.interpolate(pixels[:, None], size=grid, mode="area")[:, 0]

    latent = on_grid(region_masks(regions, config.width, config.height))
    # Regions' own adapters (loaded now when they are not), masked to their boxes (weight 1 inside).
    loras = RegionalLoras(studio, config, on_grid(box_masks(regions, config.width, config.height))) \
        if has_regional_loras(config) else None
    refs = RegionalReferences(studio, config) if has_regional_references(config) else None
    # 2. Each region's prompt (and negative, when it has one) as the encoder makes the scene's; a
    #    region with adapters is encoded with them on, its negative (or the scene's) too, so its
    #    unconditional rows see them as a LoRA on the whole picture would.
    cond, uncond = [], []
    for k, region in enumerate(regions):
        negative = region.get("negative_prompt", "")
        own_loras = loras is not None and bool(loras.names[k])
        own = own_loras or (refs is not None and k in refs.index)  # its own pass on the unconditional rows too
        if own and not negative:
            negative = config.negative_prompt
        with loras.encoding(k) if own_loras else nullcontext():
            encoded = studio.encoder.encode(region["prompt"], negative, clip_skip=config.clip_skip)
        cond.append(encoded.prompt_embeds.detach())
        uncond.append(encoded.negative_prompt_embeds.detach() if negative or own else None)
    cfg = config.guidance_scale > 1 and getattr(unet.config, "time_cond_proj_dim", None) is None
    state = _RegionState(cond, uncond, latent, cfg, loras, refs)
    # 3. Wrap the cross-attention processors (the IP-Adapter's, when regions have references); put
    #    the originals back whatever happens.
    with ExitStack() as stack:
        if refs is not None:
            stack.enter_context(refs.applied())
        original = unet.attn_processors
        wrapped = {name: RegionalAttnProcessor(proc, state) if name.endswith("attn2.processor") else proc
                   for name, proc in original.items()}
        if not any(isinstance(p, RegionalAttnProcessor) for p in wrapped.values()):
            raise ConfigError("regions", f"{len(regions)} regions", "a UNet with cross-attention layers (attn2)")
        log.info("regional prompts: %d regions over the scene prompt", len(regions))
        if loras is not None:
            stack.enter_context(loras.applied())
        unet.set_attn_processor(wrapped)
        try:
            yield
        finally:
            unet.set_attn_processor(dict(original))  # diffusers pops from the dict it is given
