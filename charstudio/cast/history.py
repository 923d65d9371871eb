"""A card's identity history: the scores of its sheets, appended to the card file on request.

`record_identity` adds one entry ({date, sheet, scorer, mean, min}) to the card's
``identity_history`` and writes the card back through the round-trip writer (`yaml_io`), so the
author's comments and own keys stay. It is opt-in (``charstudio sheet ... --record-identity``):
a sheet never edits a card behind the user's back. The mean and the minimum leave out the anchor
(the first picture, scored against itself), so one view is enough to drift the record.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .library import load_character
from .yaml_io import write_card

log = logging.getLogger(__name__)


def history_entry(report: Any, sheet: str | os.PathLike, *, date: str | None = None) -> dict[str, Any]:
    """The history entry for an `IdentityReport` of a sheet saved at `sheet`."""
    scores = [float(s) for i, s in enumerate(report.scores) if i != report.anchor]
    if not scores:
        raise ConfigError("identity", f"{len(report.scores)} picture(s)", "a sheet of at least two pictures to record")
    return {"date": date or datetime.date.today().isoformat(), "sheet": str(sheet), "scorer": str(report.scorer),
            "mean": round(sum(scores) / len(scores), 4), "min": round(min(scores), 4)}


def record_identity(card: Any, report: Any, sheet: str | os.PathLike, *, date: str | None = None) -> Path:
    """Append the sheet's identity scores to the card's ``identity_history`` and write the card file
    back (comments kept). `card`: a card name, a path, or a Character read from a file. Returns the
    card's path."""
    if report is None:
        raise ConfigError("identity", None, "a sheet with identity scores (a scorer was available); "
                          "pass scorer='mini' or another scorer")
    character = load_character(card)
    if not character.source:
        raise ConfigError("card", getattr(character, "name", card), "a card read from a file, whose history can be written")
    entry = history_entry(report, sheet, date=date)
    character.identity_history = [*character.identity_history, entry]
    path = write_card(character, character.source, overwrite=True)
    log.info("card %s: identity history +%s", path, entry)
    return path
