"""The Hugging Face hub as charstudio meets it: whether downloads are allowed, whether a load
failed for lack of hub files, and other libraries' error texts cut to what a user can act on."""

from __future__ import annotations

import os


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` forbids downloads (the one place charstudio reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_hub_error(exc: BaseException) -> bool:
    """Whether a load failed for lack of hub files (offline, not cached, no network)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__module__.split(".")[0] in ("huggingface_hub", "requests", "httpx", "urllib3"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def without_internal_advice(text: str) -> str:
    """diffusers' message without its advice about its own loading options (`low_cpu_mem_usage`,
    `ignore_mismatched_sizes`), which a charstudio user cannot pass, and its issue links."""
    import re

    sentences = re.split(r"(?<=\.)\s+", text)
    kept = [s for s in sentences if not re.search(r"low_cpu_mem_usage|ignore_mismatched_sizes|see also|https?://", s)]
    return " ".join(kept).strip() or "its weights do not fit the configs it is read with"
