"""`verify_picture`: what a picture says about where it came from (`charstudio verify` prints it).

Three independent witnesses, each reported on its own:

- the recipe in the PNG's text chunks (ours, or A1111's ``parameters``), and with ``rerun`` whether
  running it again on its model gives the same pixels;
- the invisible watermark in the pixels (`provenance.watermark`): found or not, its payload, and
  whether the payload is the recipe's (`watermark.payload_for`);
- the C2PA manifest (`credentials.read_manifest`): present, signature valid, signer trusted, its
  actions and ingredients.

`VerifyReport.ok` is the verdict the CLI's exit code follows: provenance was found (the watermark,
or a manifest whose signature is valid) and, when ``rerun`` was asked, the picture was reproduced.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import CharstudioError
from .credentials import ManifestReading, read_manifest

log = logging.getLogger(__name__)

# A re-run counts as reproducing the picture when its pixels differ from the file's by at most this
# much (levels of 0..255): 0 on the machine that drew it; a GPU of another kind may differ by a few.
RERUN_MAX_DIFF = 2


@dataclass
class RerunCheck:
    """The recipe run again and compared with the file's pixels (``max_diff``, ``mean_diff`` in
    levels); ``error`` when it could not run (the model or a LoRA missing, a source file gone)."""

    reproduced: bool
    max_diff: int | None = None
    mean_diff: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"reproduced": self.reproduced, "max_diff": self.max_diff, "mean_diff": self.mean_diff,
                "error": self.error}


@dataclass
class VerifyReport:
    """What one picture carries (see the module docstring)."""

    path: str
    recipe: Any = None  # GenerationConfig, or None
    recipe_note: str | None = None  # why there is none
    watermark: Any = None  # watermark.WatermarkReading, or None when it could not be read
    watermark_note: str | None = None
    payload_matches: bool | None = None  # the watermark's payload is the recipe's (None: nothing to compare)
    manifest: ManifestReading = field(default_factory=lambda: ManifestReading(present=False))
    rerun: RerunCheck | None = None

    @property
    def watermark_found(self) -> bool:
        return bool(getattr(self.watermark, "found", False))

    @property
    def ok(self) -> bool:
        """Provenance found (the watermark, or a validly signed manifest), and reproduced if re-run."""
        found = self.watermark_found or (self.manifest.present and self.manifest.signature_valid)
        return found and (self.rerun is None or self.rerun.reproduced)

    def lines(self) -> list[str]:
        """The report for people, one fact per line."""
        from .credentials import summary

        out = [str(self.path)]
        if self.recipe is not None:
            r = self.recipe
            out.append(f"  recipe: {r.prompt[:60]!r}, seed {r.seed}, model {r.model or 'unknown'}")
        else:
            out.append(f"  recipe: none ({self.recipe_note})")
        if self.watermark_found:
            payload = self.watermark.payload.hex() if self.watermark.payload else "?"
            match = {True: ", matches the recipe", False: ", does NOT match the recipe", None: ""}[self.payload_matches]
            ber = getattr(self.watermark, "bit_error_rate", None)
            out.append(f"  watermark: found, payload {payload}{match}"
                       + (f" (bit error rate {ber:.3f})" if isinstance(ber, float) else ""))
        else:
            out.append(f"  watermark: none{f' ({self.watermark_note})' if self.watermark_note else ''}")
        out.append(f"  {summary(self.manifest)}")
        if self.manifest.present:
            if self.manifest.model:
                out.append(f"    model: {self.manifest.model}; generator: {self.manifest.generator}; "
                           f"signed by: {self.manifest.signer}")
            for ing in self.manifest.ingredients:
                chain = ", with its own manifest" if ing.get("has_manifest") else ""
                out.append(f"    ingredient: {ing.get('title')!r} ({ing.get('relationship')}{chain})")
        if self.rerun is not None:
            rr = self.rerun
            if rr.error:
                out.append(f"  rerun: could not run ({rr.error})")
            else:
                verdict = "reproduced" if rr.reproduced else "NOT reproduced"
                out.append(f"  rerun: {verdict} (max difference {rr.max_diff} levels, mean {rr.mean_diff:.3f})")
        if not self.watermark_found and not self.manifest.present:
            out.append("  no watermark, no manifest")
        return out

    def to_dict(self) -> dict[str, Any]:
        wm = self.watermark
        return {"path": str(self.path), "ok": self.ok,
                "recipe": self.recipe.to_dict() if self.recipe is not None else None, "recipe_note": self.recipe_note,
                "watermark": {"found": self.watermark_found,
                              "payload": wm.payload.hex() if self.watermark_found and wm.payload else None,
                              "matches_recipe": self.payload_matches,
                              "bit_error_rate": getattr(wm, "bit_error_rate", None), "note": self.watermark_note},
                "manifest": self.manifest.to_dict(),
                "rerun": self.rerun.to_dict() if self.rerun is not None else None}


def verify_picture(path: str | os.PathLike, rerun: bool = False, *, studio_for: Callable[[str], Any] | None = None,
                   trust_anchors: str | None = None) -> VerifyReport:
    """Check one picture file: its recipe, watermark and C2PA manifest, and with ``rerun`` whether
    its recipe reproduces it. ``studio_for(model_name)`` gives the Studio to re-run on (default:
    `Studio.from_pretrained`); ``trust_anchors``: PEM roots to trust (see `read_manifest`)."""
    from ..io_utils import open_image

    p = Path(path)
    picture = open_image(p, "picture").convert("RGB")  # a missing or broken file fails here, naming it
    report = VerifyReport(str(p))
    # 1. The recipe.
    try:
        from ..recipe.metadata import read_recipe

        report.recipe = read_recipe(p)[1]
    except CharstudioError as exc:
        report.recipe_note = str(exc)
    # 2. The watermark.
    _read_watermark(report, picture)
    # 3. The C2PA manifest.
    report.manifest = read_manifest(p, trust_anchors)
    # 4. The re-run.
    if rerun:
        report.rerun = _rerun(report.recipe, picture, studio_for)
    return report


def _read_watermark(report: VerifyReport, picture: Any) -> None:
    try:
        from . import watermark
    except ImportError as exc:  # the reader's own dependency missing
        report.watermark_note = f"the watermark reader is not available: {exc}"
        return
    expected = watermark.payload_for(report.recipe) if report.recipe is not None else None
    report.watermark = watermark.read(picture, expected)
    if report.watermark_found and expected is not None:
        report.payload_matches = report.watermark.payload == expected


def _rerun(recipe: Any, picture: Any, studio_for: Callable[[str], Any] | None) -> RerunCheck:
    import numpy as np

    if recipe is None:
        return RerunCheck(False, error="the picture carries no recipe to re-run")
    if not recipe.model:
        return RerunCheck(False, error="the recipe names no model")
    try:
        if studio_for is None:
            from ..studio import Studio

            studio = Studio.from_pretrained(recipe.model)
        else:
            studio = studio_for(recipe.model)
        again = studio.run(recipe).images[0].convert("RGB")
    except (CharstudioError, OSError) as exc:
        return RerunCheck(False, error=str(exc))
    if again.size != picture.size:
        return RerunCheck(False, error=f"the re-run is {again.width}x{again.height}, the file "
                                       f"{picture.width}x{picture.height}")
    diff = np.abs(np.asarray(again, dtype=np.int16) - np.asarray(picture, dtype=np.int16))
    return RerunCheck(int(diff.max()) <= RERUN_MAX_DIFF, int(diff.max()), float(diff.mean()))

