"""The one set of value checks every settings class, the CLI and the apps share.

Each raises `ConfigError` naming the field and the value and saying what would work, and
returns the value in its canonical type. Whole numbers may arrive as integral floats (``5.0``
from JSON or a widget): they are accepted as ints; ``3.7`` is refused.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from .errors import ConfigError


def _range_text(lo: float | None, hi: float | None, above: float | None) -> str:
    if above is not None:
        return f"> {above}" + ("" if hi is None else f" and <= {hi}")
    return f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"between {lo} and {hi}")


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """A whole number in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(name, value, "expected a whole number" + (
                "" if lo is None and hi is None else f" {_range_text(lo, hi, None)}"))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(name, value, f"must be {_range_text(lo, hi, None)}")
    return value


def check_float(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                above: float | None = None) -> float:
    """A finite number in [lo, hi] (or > `above`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, value, "expected a number")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ConfigError(name, value, "expected a finite number")
    if (lo is not None and value < lo) or (hi is not None and value > hi) or (above is not None and value <= above):
        raise ConfigError(name, value, f"must be {_range_text(lo, hi, above)}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """One of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(name, value, "use one of " + ", ".join(repr(c) for c in choices))
    return value


def check_text(name: str, value: Any, expected: str = "text", *, optional: bool = False) -> str | None:
    """A string (or None when `optional`); other types are named in the error, not crashed on later."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ConfigError(name, value, f"expected {expected} (a string), got {type(value).__name__}")
    return value
