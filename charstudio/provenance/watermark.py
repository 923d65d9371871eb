"""The invisible watermark: a short ID of the recipe hidden in a picture's brightness.

Method ("charstudio-qim", version 1; our own, no model weights, numpy only):

- The payload is 4 bytes: the charstudio tag byte ``0xC5`` and the first 3 bytes of the SHA-256 of
  the recipe (`payload_for`). A CRC-16 follows it: 48 message bits.
- The picture is cut into a 16 x 16 grid of cells, in coordinates relative to its size, so a
  resized picture has the same cells. Each cell carries one message bit (each bit ~5 cells,
  scattered by a fixed key) in the mean brightness (luma, Y of JPEG) of the cell: dithered
  quantization index modulation (QIM) moves the mean onto the lattice for 0 or the one half a step
  away for 1. A cell's mean is what JPEG keeps best (its DC) and what resizing keeps, and QIM
  ignores what the picture itself holds (no interference from its content).
- Every channel of a pixel moves by the same whole number, dithered (a 4 x 4 Bayer pattern), so
  colours keep their hue and the cell's mean lands where it should.
- The reader soft-decodes (the cosine of each cell's distance to the lattices, summed over the
  cells of a bit) and accepts a reading only when the tag and the CRC hold. A picture cropped from
  one side has lost part of its grid: the reader tries crops of up to 25% from each side, a pixel
  at a time (cell means from a summed-area table: cheap), and keeps the most confident hypothesis
  whose message checks.

`embed` is deterministic: the same picture and payload give the same pixels.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from PIL import Image

    from ..recipe.config import GenerationConfig

log = logging.getLogger(__name__)

WATERMARK_VERSION = 1
METHOD = "charstudio-qim"
TAG = b"\xc5"  # "charstudio": the first payload byte of every charstudio watermark
PAYLOAD_BYTES = 4  # the tag and 3 bytes (24 bits) of the recipe's hash
GRID = 16  # cells a side
STEP = 4.0  # the QIM lattice step, in levels of luma (a 0 and a 1 lattice, STEP / 2 apart)
STRENGTH = 0.8  # how far a cell's mean moves towards its lattice point (distortion-compensated QIM)
EASE = 0.1  # levels before the half-way mark between lattice points over which a cell's move eases to 0
MAX_CHANGE = 8  # no pixel channel moves further, in levels
MIN_SIDE = 2 * GRID  # smaller pictures are left as they are (a cell must hold a few pixels)
MAX_CROP = 0.25  # the largest crop from one side the reader looks for
_KEY = int.from_bytes(hashlib.sha256(f"{METHOD}-{WATERMARK_VERSION}".encode()).digest()[:8], "big")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_BAYER = np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]]) / 16 + 1 / 32
_MESSAGE_BITS = 8 * PAYLOAD_BYTES + 16
_NOT_HASHED = ("watermark", "recipe_version", "embeddings")


@dataclass
class WatermarkReading:
    """What `read` found in a picture.

    `found`: the message decoded with its tag and CRC-16 intact; `payload` is then its 4 bytes (tag
    first), else None. `bit_error_rate`: the share of the grid's cells whose own bit disagrees with
    the reference message (the expected payload's when `read` was given one, else the decoded one;
    None when there is neither): how much of the mark survived before the soft decoding corrects
    it. `crop`: the crop the reader found, e.g. ("left", 0.1), or None. `confidence`: the mean
    |soft value| of the message bits, 0 (noise) to 1 (untouched).
    """

    found: bool
    payload: bytes | None
    tag_ok: bool
    crc_ok: bool
    bit_error_rate: float | None
    confidence: float
    crop: tuple[str, float] | None = None
    method: str = f"{METHOD}-{WATERMARK_VERSION}"

    @property
    def recipe_hash(self) -> str | None:
        """The recipe hash the payload carries (6 hex digits), when found."""
        return self.payload[len(TAG):].hex() if self.payload else None


def payload_for(config: GenerationConfig) -> bytes:
    """The watermark's payload for a recipe: the tag byte and 3 bytes of the SHA-256 of the recipe's
    canonical JSON (its `to_dict()`, keys sorted, without `watermark`, `recipe_version` and the
    embeddings' file paths: where a file lives is not what was drawn, and a re-run that finds an
    embedding elsewhere records the new path; the words are in the prompts)."""
    data = {k: v for k, v in config.to_dict().items() if k not in _NOT_HASHED}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return TAG + hashlib.sha256(text.encode("utf-8")).digest()[:PAYLOAD_BYTES - len(TAG)]


def embed(image: Image.Image, payload: bytes) -> Image.Image:
    """`image` (as RGB) with `payload` (4 bytes) hidden in it. A picture under 32 px a side is
    returned unchanged (logged): its cells would hold too few pixels."""
    from PIL import Image

    if not isinstance(payload, (bytes, bytearray)) or len(payload) != PAYLOAD_BYTES:
        raise ConfigError("payload", payload, f"{PAYLOAD_BYTES} bytes, as watermark.payload_for(recipe) gives")
    rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    if min(width, height) < MIN_SIDE:
        log.info("picture of %dx%d px is under %d px a side: no watermark", width, height, MIN_SIDE)
        return image.convert("RGB")
    # 1. Where each cell's mean must go: the lattice point of its bit nearest its mean (the other
    #    neighbour when that one is out of the cell's reach), STRENGTH of the way there.
    frame = _Frame(height, width, 0.0, 1.0, 0.0, 1.0)
    offsets = _DITHER + _message_bits(bytes(payload))[_OWNER] * STEP / 2
    luma = _luma(rgb)
    mean = frame.means(luma)
    nearest = offsets + STEP * np.round((mean - offsets) / STEP)
    darkest, brightest = rgb.min(axis=2), rgb.max(axis=2)
    low = frame.means(luma - np.minimum(darkest, MAX_CHANGE - 1))
    high = frame.means(luma + np.minimum(255 - brightest, MAX_CHANGE - 1))
    target = np.where(nearest > high, nearest - STEP, np.where(nearest < low, nearest + STEP, nearest))
    # A mean half-way between two lattice points moves less, down to nothing at the half-way mark:
    # the change is then continuous in the picture, so two pictures a level apart here and there
    # (a batched run and a single one) stay about that close once marked.
    ease = np.where(target == nearest, np.clip((STEP / 2 - np.abs(nearest - mean)) / EASE, 0, 1), 1.0)
    goal = mean + STRENGTH * ease * (target - mean)
    # 2. Shift every channel of a pixel by one whole number (dithered so the cell's mean moves by
    #    the fraction asked), clip, and correct what clipping took back (up to three rounds).
    threshold = np.tile(_BAYER, (height // 4 + 1, width // 4 + 1))[:height, :width].astype(np.float32)
    cells = frame.pixel_cells()
    shift = goal - mean
    for _ in range(3):
        change = np.floor(shift.astype(np.float32)[cells] + threshold).clip(-MAX_CHANGE, MAX_CHANGE).astype(np.int16)
        out = (rgb + change[..., None]).clip(0, 255).astype(np.uint8)
        if not ((darkest + change < 0) | (brightest + change > 255)).any():
            break
        shift = (shift + goal - frame.means(_luma(out))).clip(-MAX_CHANGE + 1, MAX_CHANGE - 1)
    return Image.fromarray(out, "RGB")


def mark(images: list[Image.Image], recipes: list[GenerationConfig]) -> list[Image.Image]:
    """Each picture watermarked with its own recipe's payload where the recipe asks for it (its
    `watermark`), else as it is."""
    return [embed(image, payload_for(recipe)) if recipe.watermark else image for image, recipe in zip(images, recipes)]


def read(image: Image.Image, expected: bytes | None = None) -> WatermarkReading:
    """Look for a charstudio watermark in `image`: as it was written, resized, or cropped from one
    side (up to 25%). `expected` (a payload) makes `bit_error_rate` measure against it."""
    luma = _luma(np.asarray(image.convert("RGB"))).astype(np.float64)
    if min(luma.shape) < GRID:
        return WatermarkReading(False, None, False, False, None, 0.0)
    table = np.pad(luma.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    # Every hypothesis is tried; the most confident one whose message checks wins (stopping at the
    # first would take a neighbouring crop that decodes too, with a worse error rate).
    best: tuple[bool, float, np.ndarray, np.ndarray, Any] | None = None
    for crop, frame in _hypotheses(*luma.shape):
        soft, cell_soft = _soft(table, frame)
        bits = (soft < 0).astype(np.uint8)
        candidate = (all(_checks(bits)), float(np.abs(soft).mean()), bits, cell_soft, crop)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
        if candidate[0] and candidate[1] > 0.9:  # as clean as an untouched picture: no need to look further
            break
    _, confidence, bits, cell_soft, crop = best
    return _reading(bits, cell_soft, confidence, crop, expected)


def bit_error_rate(reading_bits: np.ndarray, payload: bytes) -> float:
    """The share of message bits (payload and CRC) in `reading_bits` that differ from `payload`'s."""
    return float(np.mean(reading_bits != _message_bits(payload)))


# --- the code ----------------------------------------------------------------------------------

def _make_key() -> tuple[np.ndarray, np.ndarray]:
    """Each cell's lattice offset (in levels) and the message bit it carries (every bit about
    equally often, scattered), both fixed by the key."""
    rng = np.random.default_rng(_KEY)
    dither = rng.uniform(0, STEP, GRID * GRID)
    owner = np.empty(GRID * GRID, dtype=np.int64)
    owner[rng.permutation(GRID * GRID)] = np.arange(GRID * GRID) % _MESSAGE_BITS
    dither.flags.writeable = owner.flags.writeable = False
    return dither, owner


_DITHER, _OWNER = _make_key()
_PER_BIT = np.bincount(_OWNER, minlength=_MESSAGE_BITS)


def _crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def _message_bits(payload: bytes) -> np.ndarray:
    message = payload + _crc16(payload).to_bytes(2, "big")
    return np.unpackbits(np.frombuffer(message, dtype=np.uint8)).astype(np.int64)


def _checks(bits: np.ndarray) -> tuple[bool, bool]:
    """(tag_ok, crc_ok) of decoded message bits."""
    data = np.packbits(bits.astype(np.uint8)).tobytes()
    payload, crc = data[:PAYLOAD_BYTES], int.from_bytes(data[PAYLOAD_BYTES:], "big")
    return payload.startswith(TAG), _crc16(payload) == crc


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Luma (JPEG's Y) of an RGB array, as float32."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


class _Frame:
    """The grid's cells on a picture of height x width pixels that shows the part [left, right] x
    [top, bottom] of the marked picture (fractions of its sides): a pixel belongs to the cell its
    centre falls in."""

    def __init__(self, height: int, width: int, left: float, right: float, top: float, bottom: float) -> None:
        self.ys, self.xs = _edges(height, top, bottom), _edges(width, left, right)
        # The share of each cell the picture holds (a cell cut by the crop reads wrong: left out).
        full_y, full_x = height / (bottom - top) / GRID, width / (right - left) / GRID
        share = np.outer(np.diff(self.ys) / full_y, np.diff(self.xs) / full_x).ravel()
        self.counts = np.outer(np.diff(self.ys), np.diff(self.xs)).ravel().astype(np.float64)
        self.present = share >= 0.75

    def sums(self, table: np.ndarray) -> np.ndarray:
        """Each cell's sum, from a summed-area table (zero row and column first)."""
        y0, y1, x0, x1 = self.ys[:-1], self.ys[1:], self.xs[:-1], self.xs[1:]
        return (table[np.ix_(y1, x1)] - table[np.ix_(y0, x1)] - table[np.ix_(y1, x0)] + table[np.ix_(y0, x0)]).ravel()

    def means(self, values: np.ndarray) -> np.ndarray:
        """Each cell's mean of `values` (the full grid: every cell holds pixels)."""
        rows = np.add.reduceat(values.astype(np.float64), self.ys[:-1], axis=0)
        return np.add.reduceat(rows, self.xs[:-1], axis=1).ravel() / self.counts

    def pixel_cells(self) -> np.ndarray:
        """Each pixel's cell (the full grid: the embedder's frame)."""
        cy = np.searchsorted(self.ys, np.arange(self.ys[-1]), side="right") - 1
        cx = np.searchsorted(self.xs, np.arange(self.xs[-1]), side="right") - 1
        return cy[:, None] * GRID + cx[None, :]


def _edges(n: int, lo: float, hi: float) -> np.ndarray:
    """The first pixel of each cell along a side of n pixels showing [lo, hi] (G + 1 edges, clipped)."""
    start = (np.arange(GRID + 1) / GRID - lo) / (hi - lo) * n - 0.5
    return np.ceil(start - 1e-9).clip(0, n).astype(np.int64)


def _hypotheses(height: int, width: int):
    """(crop, frame) pairs the reader tries: no crop, then 1 to MAX_CROP of the marked side cut
    from each side, a pixel at a time."""
    yield None, _Frame(height, width, 0.0, 1.0, 0.0, 1.0)
    for side, n in (("left", width), ("right", width), ("top", height), ("bottom", height)):
        for k in range(1, int(n * MAX_CROP / (1 - MAX_CROP)) + 1):
            f = k / (n + k)
            frame = {"left": (f, 1.0, 0.0, 1.0), "right": (0.0, 1.0 - f, 0.0, 1.0),
                     "top": (0.0, 1.0, f, 1.0), "bottom": (0.0, 1.0, 0.0, 1.0 - f)}[side]
            yield (side, round(f, 4)), _Frame(height, width, *frame)


def _soft(table: np.ndarray, frame: _Frame) -> tuple[np.ndarray, np.ndarray]:
    """Each message bit's soft value (> 0: a 0 bit), and each cell's (0 where the cell is missing)."""
    mean = frame.sums(table) / np.maximum(frame.counts, 1)
    cell_soft = np.where(frame.present, np.cos(2 * np.pi * (mean - _DITHER) / STEP), 0.0)
    return np.bincount(_OWNER, weights=cell_soft, minlength=_MESSAGE_BITS) / _PER_BIT, cell_soft


def _reading(bits: np.ndarray, cell_soft: np.ndarray, confidence: float, crop: Any,
             expected: bytes | None) -> WatermarkReading:
    tag_ok, crc_ok = _checks(bits)
    found = tag_ok and crc_ok
    payload = np.packbits(bits.astype(np.uint8)).tobytes()[:PAYLOAD_BYTES] if found else None
    reference = expected if expected is not None else payload
    ber = None
    if reference is not None:
        present = cell_soft != 0
        wanted = _message_bits(bytes(reference))[_OWNER]
        ber = float(np.mean((cell_soft[present] < 0) != wanted[present])) if present.any() else 1.0
    return WatermarkReading(found, payload, tag_ok, crc_ok, ber, confidence, crop)
