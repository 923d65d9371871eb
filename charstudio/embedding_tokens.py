"""How a loaded textual-inversion word stands in a prompt's token ids (a leaf: the prompt
encoder uses it, and it knows nothing of files or model families)."""

from __future__ import annotations

from typing import Any


def expand_token_ids(tokenizer: Any, ids: list[int]) -> list[int]:
    """Put a multi-vector embedding's extra tokens after its word: ``word`` -> ``word word_1 ...``,
    as diffusers' ``maybe_convert_prompt`` does to the text (but on ids, so that a word written
    in capitals, which the CLIP tokenizer lower-cases, is expanded too)."""
    added = getattr(tokenizer, "added_tokens_encoder", None)
    if not added or len(added) <= 2:  # CLIP's BOS and EOS only
        return ids
    by_id = {i: t for t, i in added.items()}
    if not any(i in by_id for i in ids):
        return ids
    out: list[int] = []
    for i in ids:
        out.append(i)
        word = by_id.get(i)
        k = 1
        while word is not None and f"{word}_{k}" in added:
            out.append(added[f"{word}_{k}"])
            k += 1
    return out
