"""--compare-full: a draft sheet's identity next to the same sheet at full quality (charstudio.speed.guard)."""

from __future__ import annotations

import argparse


def add_compare_arg(p: argparse.ArgumentParser) -> None:
    """--compare-full, for the sheet command with --draft."""
    p.add_argument("--compare-full", action="store_true",
                   help="with --draft: also re-draw the sheet at full quality (same seeds; not saved) and print each "
                        "picture's identity score, draft next to full, with the threshold and pass/fail")


def check_compare_arg(args: argparse.Namespace) -> None:
    """--compare-full without --draft is refused before the model loads."""
    if getattr(args, "compare_full", False) and not (getattr(args, "draft", False) or getattr(args, "draft_preset", None)):
        from charstudio.errors import ConfigError

        raise ConfigError("--compare-full", True, "needs --draft (or --draft-preset): it compares a draft sheet "
                                                  "with the same sheet at full quality")


def print_comparison(studio, result, args: argparse.Namespace) -> None:
    """Print the guard's table (`charstudio.speed.guard.compare`) when --compare-full was given."""
    if getattr(args, "compare_full", False):
        from charstudio.speed.guard import compare

        print(compare(studio, result).table())
