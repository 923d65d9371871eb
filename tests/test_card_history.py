"""A card's identity history (#37): a sheet's scores appended to the card on request, comments kept."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from charstudio.cast.history import history_entry, record_identity
from charstudio.character import load_character
from charstudio.cli import main
from charstudio.errors import ConfigError
from charstudio.identity.base import IdentityReport

PROMPTS = Path(__file__).resolve().parents[1] / "prompts" / "characters"


def _report(scores):
    return IdentityReport(scorer="mini", threshold=0.817, anchor=0, scores=list(scores), matrix=[],
                          labels=[f"v{i}" for i in range(len(scores))])


def test_record_identity_appends_the_sheet_scores_without_the_anchor_and_keeps_comments(tmp_path):
    card = tmp_path / "rin.yaml"
    shutil.copy(PROMPTS / "rin.yaml", card)
    comments = [line for line in card.read_text(encoding="utf-8").splitlines() if line.lstrip().startswith("#")]
    assert comments  # the shipped card carries comments to keep
    record_identity(card, _report([1.0, 0.9, 0.7]), "out/rin", date="2026-12-07")
    record_identity(card, _report([1.0, 0.95]), "out/rin2", date="2026-12-08")
    history = load_character(card).identity_history
    # The anchor's 1.0 (scored against itself) is left out of the mean and the minimum.
    assert history == [{"date": "2026-12-07", "sheet": "out/rin", "scorer": "mini", "mean": 0.8, "min": 0.7},
                       {"date": "2026-12-08", "sheet": "out/rin2", "scorer": "mini", "mean": 0.95, "min": 0.95}]
    text = card.read_text(encoding="utf-8")
    assert all(c in text for c in comments)


def test_record_identity_refuses_a_sheet_without_scores_or_of_one_picture(tmp_path):
    with pytest.raises(ConfigError, match="identity"):
        record_identity(PROMPTS / "rin.yaml", None, "out")
    with pytest.raises(ConfigError, match="at least two pictures"):
        history_entry(_report([1.0]), "out")


def test_sheet_command_records_identity_into_the_card_file(tmp_path, capsys):
    card = tmp_path / "rin.yaml"
    shutil.copy(PROMPTS / "rin.yaml", card)
    before = card.read_text(encoding="utf-8")
    out = tmp_path / "sheet"
    code = main(["sheet", str(card), "--poses", "standing_front,walking", "--steps", "4", "--scorer", "mini",
                 "--out", str(out), "--record-identity"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    history = load_character(card).identity_history
    assert len(history) == 1 and history[0]["sheet"] == str(out) and history[0]["scorer"] == "mini"
    assert -1.0 <= history[0]["min"] == history[0]["mean"] <= 1.0  # one view besides the anchor
    assert card.read_text(encoding="utf-8").startswith(before.split("identity_history")[0][:40])
    assert "identity history recorded in" in printed.out
