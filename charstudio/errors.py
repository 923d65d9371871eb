"""Exceptions with messages a user can act on.

Every error raised for bad input names the field, the value it got, and what would work,
so the CLI can print it as one line and the notebooks can show it as-is.
"""

from __future__ import annotations


class CharstudioError(Exception):
    """Base class for errors charstudio raises on purpose (bad input, missing files, ...)."""


class ConfigError(CharstudioError, ValueError):
    """A setting has a value that cannot work.

    The message names the field and the value and says what would work.
    """

    def __init__(self, field: str, value: object, expected: str):
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{field}={value!r} is not valid: {expected}")


class ModelLoadError(CharstudioError):
    """A model could not be found or loaded (unknown preset, missing path, offline hub id, ...)."""


class CardError(CharstudioError, ValueError):
    """A character card or style file is malformed; the message names the file and the field."""


class GenerationCancelled(CharstudioError):
    """Raised out of a run when its cancel event was set; partial work is discarded."""


class OutputError(CharstudioError):
    """Results could not be written where asked (a file in the way, no permission, ...)."""
