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
        self.value = value  # whole; the message shows a long one shortened (`short_repr`)
        self.expected = expected
        super().__init__(f"{field}={short_repr(value)} is not valid: {expected}")


MAX_VALUE_REPR = 120  # characters of a value's repr a message shows


def short_repr(value: object, limit: int = MAX_VALUE_REPR) -> str:
    """``repr(value)``, cut to about ``limit`` characters with an ellipsis and the whole length
    (a list of 241 LoRAs would otherwise fill the screen)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit].rstrip()}… ({len(text)} characters)"


class ModelLoadError(CharstudioError):
    """A model could not be found or loaded (unknown preset, missing path, offline hub id, ...)."""


class InputFileError(CharstudioError, ValueError):
    """A file the user gave (card, style list, pose, PNG recipe, picture, caption, LoRA) cannot be
    read as what it should be. Every reader raises this type; the message names the file, the
    field when one is at fault, and what was expected."""


class CardError(InputFileError):
    """A character card or style file is malformed; the message names the file and the field."""


class FileFieldError(ConfigError, InputFileError):
    """One field inside a user's file has a value that cannot work (``field`` names the file too)."""


class GenerationCancelled(CharstudioError):
    """Raised out of a run when its cancel event was set; partial work is discarded."""


class OutputError(CharstudioError):
    """Results could not be written where asked (a file in the way, no permission, ...)."""


# Errors a user caused and can fix, shown as written; anything else also shows its type.
_USER_ERRORS: tuple[type[BaseException], ...] = (CharstudioError, ValueError, FileNotFoundError, PermissionError)
MAX_MESSAGE = 300  # characters a one-line message keeps; the rest goes to the log


def describe(exc: BaseException, limit: int = MAX_MESSAGE) -> str:
    """The one line the CLI and the apps show for ``exc``: its first line, prefixed with the
    exception's type unless it is an error the user can fix (ours, ValueError, missing file,
    permission). Our own messages are written as one line and kept whole, advice included;
    another library's text is cut at ``limit`` characters (peft's can run to 20,000), and the
    whole of it goes to the ``charstudio`` log at debug level."""
    import logging

    full = str(exc).strip()
    text = full.splitlines()[0].strip() if full else ""
    if len(text) > limit and not isinstance(exc, CharstudioError):
        text = text[: limit - 1].rstrip() + "…"
    if text != full:
        logging.getLogger("charstudio").debug("full message of %s: %s", type(exc).__name__, full)
    if isinstance(exc, _USER_ERRORS) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is bad input the user can fix (no traceback is worth showing)."""
    return isinstance(exc, _USER_ERRORS)
