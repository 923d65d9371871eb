"""The recipe's ``regions`` field: regional prompts (several characters in one picture), checked
and normalised (no torch). The masked cross-attention that draws them is
`charstudio.workflows.regions`.

A recipe's ``regions`` is a list of regions, each a prompt (or a character card) and the part of
the picture it owns::

    [{"prompt": "a girl with red hair", "box": "left"},
     {"character": "aiko", "box": [64, 0, 128, 64]}]

Each region:

- ``prompt`` (text) or ``character`` (a card name: its subject becomes the region's prompt,
  resolved once when the recipe is made and recorded, so a re-run never depends on the card);
- ``box``: ``"left"``, ``"right"``, ``"top"``, ``"bottom"`` (halves of the picture) or
  ``[x0, y0, x1, y1]`` in pixels, x1/y1 exclusive, inside the picture; a pixel box is recorded
  with the picture size it was given for (``canvas``: [width, height]), so that a pass at another
  size (the hires fix) scales it with the picture;
- ``negative_prompt`` (optional): used for the region's unconditional rows;
- ``weight`` (optional, 0..1, default 1): how much the region's prompt replaces the scene's
  inside its box (0.7 keeps 30% of the scene prompt there);
- ``overlap`` (optional, default False): boxes may not overlap unless one of the two says
  ``"overlap": True``; where they do, their prompts share the pixels by weight;
- ``loras`` (optional): ``{adapter: weight}``, LoRAs that act only inside the region's box. An
  adapter is a loaded adapter's name, a LoRA's name under ``lora/`` or a file; it is loaded (off)
  when the picture is drawn, recorded as given. The region's prompt is encoded with them on, the
  scene prompt and the background stay without them; the recipe's own ``loras`` keep acting on the
  whole picture, and an adapter may not be in both. How they are kept inside the box:
  `charstudio.workflows.regional_loras`.
- ``reference`` (optional): a picture (a path; recorded as ``{"path": ..., "sha256": ...}``, the
  digest of its pixels, so that a re-run refuses another picture under the same name) whose
  IP-Adapter image tokens act only inside the region's box, at ``reference_scale`` (0..2, default
  0.6); ``ip_adapter`` (optional) names the IP-Adapter weights (a folder laid out like
  h94/IP-Adapter, a hub id or a weight file; default the model family's), one for all regions.
  How: `charstudio.workflows.regional_references`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..errors import ConfigError
from ..limits import check_count, check_list
from ..validation import check_float

log = logging.getLogger(__name__)

HALVES = ("left", "right", "top", "bottom")
REGION_KEYS = ("prompt", "negative_prompt", "character", "box", "canvas", "weight", "overlap", "loras", "reference",
               "reference_scale", "ip_adapter")
# Tighter than the bound every other list shares (limits.MAX_ITEMS): each region costs one more
# cross-attention pass in every layer at every step, and two to four characters is the use.
MAX_REGIONS = 8
EXAMPLE = '[{"prompt": "a girl with red hair", "box": "left"}, {"prompt": "a boy with blue hair", "box": "right"}]'


# -- the recipe field ------------------------------------------------------------------------------
def check_region_list(regions: Any, name: str = "regions") -> list:
    """The regions as a list, at most `MAX_REGIONS` (`limits.check_list`, before any per-region work)."""
    return check_list(name, regions, MAX_REGIONS, "regions", why="each region adds a cross-attention pass to "
                      "every layer at every step", advice="merge regions that share a prompt")


def check(value: Any, config: Any) -> list[dict]:
    """Validate and normalise a recipe's ``regions`` (see the module docstring).

    A region naming a ``character`` card without a ``prompt`` gets the card's subject as its
    prompt here, so the recipe records the text it was drawn with. Raises `ConfigError` naming
    the region and the field."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError("regions", value, f"a list of regions, each a prompt and a box, e.g. {EXAMPLE}")
    value = check_region_list(value)
    regions = [_check_region(i, spec, config) for i, spec in enumerate(value)]
    _check_overlaps(regions, config)
    weights = {r["ip_adapter"] for r in regions if r.get("ip_adapter")}
    if len(weights) > 1:
        i = next(i for i, r in enumerate(regions) if r.get("ip_adapter"))
        raise ConfigError(f"regions[{i}].ip_adapter", sorted(weights), "one IP-Adapter for every region's reference")
    return regions


def _check_region(i: int, spec: Any, config: Any) -> dict:
    name = f"regions[{i}]"
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(name, spec, f"a dict with a prompt (or character) and a box, e.g. {EXAMPLE}")
    unknown = sorted(set(spec) - set(REGION_KEYS))
    if any(k in ("lora", "lora_weight") for k in unknown):
        key = next(k for k in ("lora", "lora_weight") if k in unknown)
        raise ConfigError(f"{name}.{key}", spec[key], "the region's 'loras': {adapter name or file: weight}, "
                          "e.g. {\"zorbi\": 1.0}")
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", spec[unknown[0]], f"not a region field; use {', '.join(REGION_KEYS)}")
    region: dict[str, Any] = {}
    prompt, card = spec.get("prompt"), spec.get("character")
    if card is not None and (not isinstance(card, str) or not card.strip()):
        raise ConfigError(f"{name}.character", card, "a character card's name (see `charstudio cards`)")
    if prompt is None and card is not None:
        prompt = _card_prompt(name, card)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(f"{name}.prompt", prompt, "the region's prompt (text), or a character card's name as "
                          "'character'")
    region["prompt"] = prompt.strip()
    negative = spec.get("negative_prompt", "")
    if not isinstance(negative, str):
        raise ConfigError(f"{name}.negative_prompt", negative, "text (or leave it out: the recipe's negative is used)")
    if negative.strip():
        region["negative_prompt"] = negative.strip()
    if card is not None:
        region["character"] = card.strip()
    region["box"] = _check_box(f"{name}.box", spec.get("box"), spec.get("canvas"), config)
    if not isinstance(region["box"], str):
        # Pixel boxes keep the size they were given for, so that a pass at another size (the
        # hires fix's second pass) scales them with the picture.
        region["canvas"] = list(spec.get("canvas") or (config.width, config.height))
    region["weight"] = check_float(f"{name}.weight", spec.get("weight", 1.0), 0.0, 1.0)
    if region["weight"] == 0.0:
        raise ConfigError(f"{name}.weight", 0, "a weight above 0 up to 1 (0 would leave the region's prompt unused)")
    overlap = spec.get("overlap", False)
    if not isinstance(overlap, bool):
        raise ConfigError(f"{name}.overlap", overlap, "True or False")
    if overlap:
        region["overlap"] = True
    loras = _check_loras(f"{name}.loras", spec.get("loras"), config)
    if loras:
        region["loras"] = loras
    region.update(_check_reference(name, spec))
    return region


def _check_reference(name: str, spec: dict) -> dict:
    """A region's ``reference`` (path, or the recorded {path, sha256}), ``reference_scale`` and ``ip_adapter``."""
    ref = spec.get("reference")
    if ref is None:
        for key in ("reference_scale", "ip_adapter"):
            if spec.get(key) is not None:
                raise ConfigError(f"{name}.{key}", spec[key], f"a region's {key} only with its 'reference' picture")
        return {}
    ref = os.fspath(ref) if isinstance(ref, os.PathLike) else ref
    if isinstance(ref, dict) and set(ref) == {"path", "sha256"} and all(isinstance(v, str) for v in ref.values()):
        recorded = dict(ref)
    elif isinstance(ref, str) and ref.strip():
        recorded = {"path": os.path.abspath(os.path.expanduser(ref.strip())), "sha256": picture_digest(name, ref)}
    else:
        raise ConfigError(f"{name}.reference", ref, "a picture's path (or the recorded {'path': ..., 'sha256': ...})")
    out: dict[str, Any] = {"reference": recorded,
                           "reference_scale": check_float(f"{name}.reference_scale", spec.get("reference_scale", 0.6),
                                                          0.0, 2.0)}
    weights = spec.get("ip_adapter")
    weights = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    if weights is not None:
        if not isinstance(weights, str) or not weights.strip():
            raise ConfigError(f"{name}.ip_adapter", weights, "IP-Adapter weights: a folder, hub id or weight file")
        out["ip_adapter"] = weights.strip()
    return out


def picture_digest(name: str, path: str) -> str:
    """The sha256 of a picture file's size and RGB pixels (`workflows.masks.picture_sha256`'s rule)."""
    import hashlib

    from PIL import Image

    try:
        with Image.open(os.path.expanduser(path.strip())) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError) as err:
        raise ConfigError(f"{name}.reference", path, f"a picture file that can be read ({type(err).__name__})") from None
    return hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()


def _check_loras(name: str, loras: Any, config: Any) -> dict[str, float]:
    """A region's ``loras``: {adapter name or file: weight}, none of them also in the recipe's ``loras``."""
    if loras is None:
        return {}
    if not isinstance(loras, dict):
        raise ConfigError(name, loras, "{adapter name or file: weight}, e.g. {\"zorbi\": 1.0}")
    check_count(name, len(loras), what="LoRAs")
    out: dict[str, float] = {}
    for key, weight in loras.items():
        key = os.fspath(key) if isinstance(key, os.PathLike) else key
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(name, key, "an adapter's name (loaded, or under lora/) or a LoRA file's path")
        out[key.strip()] = check_float(f"{name}[{key.strip()!r}]", weight, -10.0, 10.0)
    both = sorted(set(out) & set(getattr(config, "loras", None) or {}))
    if both:
        raise ConfigError(name, {k: out[k] for k in both}, "an adapter either in one region's loras or in the "
                          "recipe's loras (the whole picture), not both")
    return out


def _card_prompt(name: str, card: str) -> str:
    from ..character import load_character

    # A card that is not there is refused under the region's own field, e.g. regions[1].character.
    character = load_character(card, field=f"{name}.character")
    if character.lora:
        log.warning("%s: card %r names the LoRA %r, which a region's character does not load by itself; add it "
                    "to the region's loras to apply it inside the region", name, card, character.lora)
    return character.subject


def _check_box(name: str, box: Any, canvas: Any, config: Any) -> Any:
    if isinstance(box, str):
        if box.strip().lower() not in HALVES:
            raise ConfigError(name, box, f"one of {', '.join(HALVES)} or [x0, y0, x1, y1] in pixels")
        return box.strip().lower()
    width, height = config.width, config.height
    if canvas is not None:  # the picture size the box was given for (recorded with pixel boxes)
        if not isinstance(canvas, (list, tuple)) or len(canvas) != 2:
            raise ConfigError(name.replace(".box", ".canvas"), canvas, "[width, height] in pixels")
        width, height = (_whole(name.replace(".box", ".canvas"), v) for v in canvas)
        if width < 8 or height < 8:
            raise ConfigError(name.replace(".box", ".canvas"), canvas, "[width, height], at least 8 pixels each")
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise ConfigError(name, box, f"'left', 'right', 'top', 'bottom' or [x0, y0, x1, y1] in pixels of the "
                          f"{width}x{height} picture, e.g. [0, 0, {width // 2}, {height}]")
    x0, y0, x1, y1 = (_whole(name, v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ConfigError(name, list(box), f"a box inside the {width}x{height} picture with x0 < x1 <= {width} "
                          f"and y0 < y1 <= {height}")
    return [x0, y0, x1, y1]


def _whole(name: str, v: Any) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(name, v, "whole numbers of pixels [x0, y0, x1, y1]")
    return v


def box_pixels(region: dict, width: int, height: int) -> tuple[int, int, int, int]:
    """A region's box as (x0, y0, x1, y1) pixels of a width x height picture (a pixel box given
    for another picture size, its ``canvas``, is scaled to this one)."""
    box = region["box"]
    if isinstance(box, str):
        return {"left": (0, 0, width // 2, height), "right": (width // 2, 0, width, height),
                "top": (0, 0, width, height // 2), "bottom": (0, height // 2, width, height)}[box]
    cw, ch = region.get("canvas") or (width, height)
    x0, y0, x1, y1 = box
    return (round(x0 * width / cw), round(y0 * height / ch), round(x1 * width / cw), round(y1 * height / ch))


def _check_overlaps(regions: list[dict], config: Any) -> None:
    boxes = [box_pixels(r, config.width, config.height) for r in regions]
    for i in range(len(boxes)):
        for j in range(i):
            a, b = boxes[i], boxes[j]
            if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3] and not (
                    regions[i].get("overlap") or regions[j].get("overlap")):
                raise ConfigError(f"regions[{i}].box", regions[i]["box"],
                                  f"overlaps regions[{j}]'s box {regions[j]['box']}: move it, or allow it with "
                                  "\"overlap\": True")


def parse_region(text: str, field_name: str = "--region") -> dict:
    """A region from the command line's form: ``BOX:PROMPT`` where BOX is left, right, top, bottom
    or ``x0,y0,x1,y1`` (pixels), and PROMPT is text or ``@card`` (a character card), e.g.
    ``left:a girl with red hair``, ``64,0,128,64:a boy with blue hair``, ``right:@aiko``."""
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(field_name, text, "BOX:PROMPT, e.g. 'left:a girl with red hair', "
                          "'64,0,128,64:a boy with blue hair' or 'right:@aiko' (a card)")
    box_text, prompt = (part.strip() for part in text.split(":", 1))
    if box_text.lower() in HALVES:
        box: Any = box_text.lower()
    else:
        try:
            box = [int(v) for v in box_text.split(",")]
        except ValueError:
            box = None
        if box is None or len(box) != 4:
            raise ConfigError(field_name, text, f"a box before ':' that is one of {', '.join(HALVES)} or x0,y0,x1,y1 "
                              "in whole pixels")
    if not prompt or prompt == "@":
        raise ConfigError(field_name, text, "a prompt (or @card) after ':'")
    if prompt.startswith("@"):
        return {"character": prompt[1:].strip(), "box": box}
    return {"prompt": prompt, "box": box}
