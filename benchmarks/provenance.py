"""Benchmark: provenance (issue #39). The invisible watermark's survival, pixel change and cost.

    python benchmarks/provenance.py                  # mini 64 px pictures and a 512 px tiny picture (CPU)
    python benchmarks/provenance.py --json out.json  # the rows as JSON too
    python benchmarks/provenance.py --no-imwatermark # skip the invisible-watermark (DWT-DCT) comparison

Rows:
  watermark   each picture x each transform of the issue's "Measured" list (the saved PNG, JPEG at
              quality 80, a 0.75x resize, a 10% crop from one side, the metadata stripped) and a
              few harder ones (JPEG 70, a 0.5x resize, a 20% crop): found or not, and the raw bit
              error rate (the share of the grid's cells whose bit is wrong, before soft decoding)
  change      the mean and largest change of a pixel channel, in levels (target: <= 1 and <= 8)
  cost        a mini picture drawn with the watermark and without, in rotation (median of
              --repeats), and `embed` alone; target: the watermark costs <= 5% of the picture
  imwatermark the same transforms on `invisible-watermark`'s DWT-DCT (what diffusers' SDXL
              pipeline uses), 32 bits, where it runs at all (it refuses pictures under 256x256)
  c2pa+watermark cost  the same mini picture: `embed` plus the extra time of writing its PNG signed
              (C2PA manifest, a throwaway test certificate) over plain, and the manifest's bytes;
              target: both together <= 5% of the picture

Other provenance rows (C2PA) join through `report(rows)`: each row is a dict with a "kind" key.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from typing import Any, Callable

import numpy as np
from PIL import Image


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _png(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _crop(image: Image.Image, side: str, share: float) -> Image.Image:
    w, h = image.size
    k = round(share * (w if side in ("left", "right") else h))
    return image.crop({"left": (k, 0, w, h), "right": (0, 0, w - k, h), "top": (0, k, w, h),
                       "bottom": (0, 0, w, h - k)}[side])


def _resize(image: Image.Image, factor: float) -> Image.Image:
    return image.resize((round(image.width * factor), round(image.height * factor)))


# The list first, then harder ones (reported, not required).
TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "png": _png,
    "jpeg q80": lambda im: _jpeg(im, 80),
    "resize 0.75x": lambda im: _resize(im, 0.75),
    "crop 10% left": lambda im: _crop(im, "left", 0.1),
    "crop 10% right": lambda im: _crop(im, "right", 0.1),
    "crop 10% top": lambda im: _crop(im, "top", 0.1),
    "crop 10% bottom": lambda im: _crop(im, "bottom", 0.1),
    "metadata stripped": lambda im: Image.fromarray(np.asarray(im.convert("RGB"))),
    "jpeg q70": lambda im: _jpeg(im, 70),
    "resize 0.5x": lambda im: _resize(im, 0.5),
    "crop 20% left": lambda im: _crop(im, "left", 0.2),
}
REQUIRED = ("png", "jpeg q80", "resize 0.75x", "crop 10% left", "crop 10% right", "crop 10% top",
            "crop 10% bottom", "metadata stripped")


def watermark_rows(pictures: dict[str, tuple[Image.Image, bytes]]) -> list[dict[str, Any]]:
    """For each unmarked picture (name -> (picture, payload)): the pixel change of `embed`, then
    each transform of the marked picture read back."""
    from charstudio.provenance import watermark

    rows = []
    for name, (plain, payload) in pictures.items():
        marked = watermark.embed(plain, payload)
        change = np.abs(np.asarray(marked, dtype=np.int16) - np.asarray(plain.convert("RGB"), dtype=np.int16))
        rows.append({"kind": "change", "picture": name, "size": f"{plain.width}x{plain.height}",
                     "mean": round(float(change.mean()), 3), "max": int(change.max())})
        for transform, apply in TRANSFORMS.items():
            changed = apply(marked)
            start = time.perf_counter()
            reading = watermark.read(changed, expected=payload)
            rows.append({"kind": "watermark", "picture": name, "transform": transform,
                         "required": transform in REQUIRED, "found": reading.found and reading.payload == payload,
                         "bit_error_rate": round(reading.bit_error_rate, 3), "read_ms": round(
                             1000 * (time.perf_counter() - start), 1)})
        rows.append({"kind": "watermark", "picture": name, "transform": "unmarked picture", "required": True,
                     "found": watermark.read(plain).found, "bit_error_rate": None, "read_ms": None})
    return rows


def imwatermark_rows(pictures: dict[str, tuple[Image.Image, bytes]]) -> list[dict[str, Any]]:
    """invisible-watermark's DWT-DCT on the same pictures and transforms (32 bits: the payload)."""
    try:
        from imwatermark import WatermarkDecoder, WatermarkEncoder
    except ImportError as exc:  # (needs opencv; not a charstudio dependency)
        return [{"kind": "imwatermark", "picture": "-", "transform": "-", "error": f"not importable: {exc}"}]
    rows = []
    for name, (plain, payload) in pictures.items():
        encoder = WatermarkEncoder()
        encoder.set_watermark("bytes", payload)
        bgr = np.ascontiguousarray(np.asarray(plain.convert("RGB"))[:, :, ::-1])
        try:
            marked_bgr = encoder.encode(bgr, "dwtDct")
        except Exception as exc:  # it refuses small pictures
            rows.append({"kind": "imwatermark", "picture": name, "transform": "embed", "error": str(exc)})
            continue
        marked = Image.fromarray(np.clip(marked_bgr, 0, 255).astype(np.uint8)[:, :, ::-1])
        change = np.abs(np.asarray(marked, dtype=np.int16) - np.asarray(plain.convert("RGB"), dtype=np.int16))
        rows.append({"kind": "imwatermark-change", "picture": name, "mean": round(float(change.mean()), 3),
                     "max": int(change.max())})
        want = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
        for transform, apply in TRANSFORMS.items():
            changed = np.ascontiguousarray(np.asarray(apply(marked).convert("RGB"))[:, :, ::-1])
            try:
                got = WatermarkDecoder("bytes", 8 * len(payload)).decode(changed, "dwtDct")
                bits = np.unpackbits(np.frombuffer(bytes(got), dtype=np.uint8))[:want.size]
                rows.append({"kind": "imwatermark", "picture": name, "transform": transform,
                             "found": bytes(got) == payload, "bit_error_rate": round(float(np.mean(bits != want)), 3)})
            except Exception as exc:
                rows.append({"kind": "imwatermark", "picture": name, "transform": transform, "error": str(exc)})
    return rows


def cost_rows(studio: Any, config: Any, repeats: int = 5) -> list[dict[str, Any]]:
    """A picture of `config` drawn with the watermark and without (in rotation, medians), and
    `embed` alone on it."""
    from charstudio.provenance import watermark

    studio.run(config)  # warm-up
    times: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(repeats):
        for label, recipe in (("on", config.replace(watermark=True)), ("off", config.replace(watermark=False))):
            start = time.perf_counter()
            result = studio.run(recipe)
            times[label].append(time.perf_counter() - start)
    payload = watermark.payload_for(result.recipe)
    embeds = []
    for _ in range(max(repeats, 20)):
        start = time.perf_counter()
        watermark.embed(result.image, payload)
        embeds.append(time.perf_counter() - start)
    on, off, embed = (statistics.median(v) for v in (times["on"], times["off"], embeds))
    return [{"kind": "cost", "model": studio.model_id, "size": f"{config.width}x{config.height}",
             "steps": config.num_inference_steps, "picture_on_s": round(on, 4), "picture_off_s": round(off, 4),
             "embed_ms": round(1000 * embed, 2), "embed_share": round(embed / off, 4)}]


def report(rows: list[dict[str, Any]]) -> str:
    """The rows as text, one line each, grouped by kind."""
    lines = []
    for row in rows:
        lines.append("  ".join(f"{k}={v}" for k, v in row.items()))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cards", default="rin,aiko,bram,kai,mira,pip", help="mini cards to draw (one picture each)")
    ap.add_argument("--repeats", type=int, default=5, help="rounds of the cost rotation")
    ap.add_argument("--json", default=None, help="write the rows here too")
    ap.add_argument("--no-imwatermark", action="store_true", help="skip invisible-watermark's rows")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()

    import torch

    from charstudio import Studio
    from charstudio.provenance import watermark

    if args.threads:
        torch.set_num_threads(args.threads)
    mini = Studio.from_pretrained("mini")
    pictures = {}
    for i, card in enumerate(c for c in args.cards.split(",") if c):
        result = mini.run(mini.make_config(card, seed=i, watermark=False))
        pictures[f"mini {card}"] = (result.image, watermark.payload_for(result.recipe.replace(watermark=True)))
    tiny = Studio.from_pretrained("tiny")
    tiny.allow_large = True
    result = tiny.run(tiny.make_config("a girl", seed=2, width=512, height=512, num_inference_steps=2,
                                       watermark=False))
    pictures["tiny 512"] = (result.image, watermark.payload_for(result.recipe.replace(watermark=True)))
    rows = watermark_rows(pictures)
    if not args.no_imwatermark:
        rows += imwatermark_rows(pictures)
    rows += cost_rows(mini, mini.make_config("rin", seed=1), args.repeats)
    rows += c2pa_cost_rows(mini, mini.make_config("rin", seed=1), args.repeats)
    print(report(rows))
    required = [r for r in rows if r["kind"] == "watermark" and r["required"] and r["transform"] != "unmarked picture"]
    print(f"\nrequired transforms read back: {sum(r['found'] for r in required)}/{len(required)}; "
          f"worst raw bit error rate {max(r['bit_error_rate'] for r in required):.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def c2pa_cost_rows(studio: Any, config: Any, repeats: int = 5) -> list[dict[str, Any]]:
    """Row "C2PA + watermark cost on a mini picture": a picture of `config` drawn without the
    watermark, then `embed`, then its PNG written plain and signed (a throwaway test certificate,
    `provenance.testcert`), every part in each round (medians). The cost is embed + the signing's
    extra write time, as a share of the picture's drawing time."""
    import tempfile
    from pathlib import Path

    from charstudio.provenance import credentials, watermark
    from charstudio.provenance.png import write_png
    from charstudio.provenance.testcert import make_test_certificate

    plain_config = config.replace(watermark=False)
    studio.run(plain_config)  # warm-up
    times: dict[str, list[float]] = {"draw": [], "embed": [], "plain": [], "signed": []}
    sizes = {}
    with tempfile.TemporaryDirectory() as folder:
        cert = make_test_certificate(Path(folder) / "cert")
        for i in range(repeats):
            start = time.perf_counter()
            result = studio.run(plain_config)
            times["draw"].append(time.perf_counter() - start)
            start = time.perf_counter()
            marked = watermark.embed(result.image, watermark.payload_for(result.recipe.replace(watermark=True)))
            times["embed"].append(time.perf_counter() - start)
            for label, pair in (("plain", (None, None)), ("signed", (cert.cert, cert.key))):
                credentials.use_certificate(*pair)
                start = time.perf_counter()
                path = write_png(Path(folder) / f"{label}{i}.png", marked, result.recipe, credentials=label == "signed")
                times[label].append(time.perf_counter() - start)
                sizes[label] = path.stat().st_size
        credentials.use_certificate(None, None)
    draw, embed, plain, signed = (statistics.median(times[k]) for k in ("draw", "embed", "plain", "signed"))
    cost = embed + signed - plain
    return [{"kind": "c2pa+watermark cost", "model": studio.model_id, "size": f"{config.width}x{config.height}",
             "steps": config.num_inference_steps, "picture_s": round(draw, 4), "embed_ms": round(1000 * embed, 2),
             "sign_ms": round(1000 * (signed - plain), 2), "manifest_bytes": sizes["signed"] - sizes["plain"],
             "cost_ms": round(1000 * cost, 2), "cost_share": round(cost / draw, 4)}]


if __name__ == "__main__":
    main()
