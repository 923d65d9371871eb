"""A1111 prompt syntax: attention weights and prompt editing.

Grammar (as A1111's wiki documents it):
  (text)           weight x 1.1; nesting multiplies: ((text)) = x 1.21
  (text:1.3)       weight x 1.3
  [text]           weight / 1.1
  [from:to:when]   `from` until step `when`, then `to`; when < 1 is a fraction of the steps
  [to:when]        nothing, then `to` from step `when`
  [from::when]     `from` until step `when`, then nothing
  [a|b|c]          alternation: a on step 0, b on step 1, ...
  \\( \\) \\[ \\] \\:  literal characters

Why A1111 and not compel: compel 2.5.1 works with transformers 5.23, but its syntax is a
different language (`(word)1.3`, `word++`), so prompts copied from civitai and the A1111
"parameters" text in PNG metadata would be silently misread; it has no step-scheduled prompt
editing; and it encodes text itself, bypassing `conditioning.PromptEncoder`'s A1111 chunking.

`parse_weighted(text)` gives `(text, weight)` pieces for `PromptEncoder.encode`;
`prompt_schedule(text, steps)` gives the plain prompt for each range of steps, and
`PromptScheduleCallback` swaps the embeddings between them during sampling.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Union

from .errors import ConfigError

log = logging.getLogger(__name__)

EMPHASIS = 1.1
_WEIGHT_SUFFIX = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*$")
_NUMBER = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*$")


# --------------------------------------------------------------------------------------------
# syntax tree
# --------------------------------------------------------------------------------------------
@dataclass
class Text:
    text: str


@dataclass
class Weighted:
    children: list["Node"]
    weight: float


@dataclass
class Edit:
    before: list["Node"]
    after: list["Node"]
    when: float  # < 1: fraction of steps; >= 1: step number


@dataclass
class Alternate:
    options: list[list["Node"]] = field(default_factory=list)


Node = Union[Text, Weighted, Edit, Alternate]


class _Parser:
    def __init__(self, text: str):
        self.s = text
        self.i = 0

    def parse(self) -> list[Node]:
        nodes, _ = self.seq(stops="")
        return nodes

    def seq(self, stops: str) -> tuple[list[Node], str | None]:
        """Parse until one of `stops` (returned, consumed) or the end (None)."""
        nodes: list[Node] = []
        buf: list[str] = []

        def flush() -> None:
            if buf:
                nodes.append(Text("".join(buf)))
                buf.clear()

        while self.i < len(self.s):
            c = self.s[self.i]
            if c == "\\" and self.i + 1 < len(self.s):
                buf.append(self.s[self.i + 1])
                self.i += 2
                continue
            if c in stops:
                self.i += 1
                flush()
                return nodes, c
            if c == "(":
                self.i += 1
                flush()
                nodes.append(self.round())
                continue
            if c == "[":
                self.i += 1
                flush()
                nodes.extend(self.square())
                continue
            buf.append(c)
            self.i += 1
        flush()
        return nodes, None

    def round(self) -> Node:
        children, end = self.seq(stops=")")
        if end is None:
            log.warning("unclosed '(' in prompt: emphasis applies to the rest of it (as in A1111)")
        weight = EMPHASIS
        if children and isinstance(children[-1], Text):
            m = _WEIGHT_SUFFIX.search(children[-1].text)
            if m:
                weight = float(m.group(1))
                rest = children[-1].text[: m.start()]
                children = children[:-1] + ([Text(rest)] if rest else [])
        return Weighted(children, weight)

    def square(self) -> list[Node]:
        start = self.i - 1
        parts: list[list[Node]] = []
        seps: list[str] = []
        while True:
            nodes, end = self.seq(stops=":|]")
            parts.append(nodes)
            if end in (":", "|"):
                seps.append(end)
                continue
            break
        closed = end == "]"
        if not closed:
            log.warning("unclosed '[' in prompt: de-emphasis applies to the rest of it (as in A1111)")
        if not seps:
            return [Weighted(parts[0], 1.0 / EMPHASIS)]
        if closed and all(s == "|" for s in seps):
            return [Alternate(parts)]
        if closed and all(s == ":" for s in seps) and len(parts) in (2, 3):
            when = _plain(parts[-1])
            m = _NUMBER.match(when) if when is not None else None
            if m:
                w = float(m.group(1))
                if w < 0:
                    raise ConfigError("prompt", self.s[start:self.i], "the step in [from:to:when] must be >= 0")
                before = parts[0] if len(parts) == 3 else []
                after = parts[1] if len(parts) == 3 else parts[0]
                return [Edit(before, after, w)]
        # Not editing syntax after all (e.g. "[a:b]"): keep the text literally.
        return [Text(self.s[start:self.i])]


def _plain(nodes: list[Node]) -> str | None:
    if all(isinstance(n, Text) for n in nodes):
        return "".join(n.text for n in nodes)  # type: ignore[union-attr]
    return None


def parse(text: str) -> list[Node]:
    """Parse A1111 prompt syntax into a small tree."""
    if not isinstance(text, str):
        raise ConfigError("prompt", text, "expected text")
    return _Parser(text).parse()


# --------------------------------------------------------------------------------------------
# resolving the tree
# --------------------------------------------------------------------------------------------
def _switch_step(when: float, steps: int | None) -> int:
    if steps is None:  # no step count known: the prompt as it starts
        return 0 if when == 0 else 1
    return int(when * steps) if when < 1 else int(when)


def _resolve(nodes: list[Node], step: int, steps: int | None, weight: float, out: list[tuple[str, float]]) -> None:
    for n in nodes:
        if isinstance(n, Text):
            if n.text:
                out.append((n.text, weight))
        elif isinstance(n, Weighted):
            _resolve(n.children, step, steps, weight * n.weight, out)
        elif isinstance(n, Edit):
            _resolve(n.before if step < _switch_step(n.when, steps) else n.after, step, steps, weight, out)
        elif isinstance(n, Alternate):
            _resolve(n.options[step % len(n.options)], step, steps, weight, out)


def _merge(pieces: list[tuple[str, float]]) -> list[tuple[str, float]]:
    merged: list[tuple[str, float]] = []
    for text, w in pieces:
        if merged and abs(merged[-1][1] - w) < 1e-12:
            merged[-1] = (merged[-1][0] + text, merged[-1][1])
        else:
            merged.append((text, w))
    return merged


def parse_weighted(text: str | list[Node], step: int = 0, steps: int | None = None) -> list[tuple[str, float]]:
    """`(text, weight)` pieces of a prompt as seen at `step` of `steps` (editing resolved).

    Without `steps`, editing resolves to the prompt's first step. Adjacent pieces with equal
    weight are merged; the joined texts give the plain prompt.
    """
    pieces: list[tuple[str, float]] = []
    nodes = parse(text) if isinstance(text, str) else text
    _resolve(nodes, step, steps, 1.0, pieces)
    return _merge(pieces) or [("", 1.0)]


def to_syntax(pieces: list[tuple[str, float]]) -> str:
    """Pieces back to A1111 text (weights other than 1 written as `(text:w)`)."""
    out = []
    for text, w in pieces:
        esc = re.sub(r"([\\()\[\]:|])", r"\\\1", text)
        out.append(esc if abs(w - 1.0) < 1e-9 else f"({esc}:{w:.4g})")
    return "".join(out)


def has_schedule(text: str) -> bool:
    """True when the prompt uses [from:to:when] or [a|b] (so it changes during sampling)."""
    def walk(nodes: list[Node]) -> bool:
        for n in nodes:
            if isinstance(n, (Edit, Alternate)):
                return True
            if isinstance(n, Weighted) and walk(n.children):
                return True
        return False

    return walk(parse(text))


def prompt_schedule(text: str, steps: int) -> list[tuple[int, str]]:
    """[(end_step_exclusive, prompt_with_weights_only), ...] covering steps 0..steps-1.

    Consecutive steps with the same resolved prompt share one entry, so a prompt without
    editing gives a single entry.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError("num_inference_steps", steps, "must be >= 1")
    nodes = parse(text)
    out: list[tuple[int, str]] = []
    for i in range(steps):
        resolved = to_syntax(parse_weighted(nodes, i, steps))
        if out and out[-1][1] == resolved:
            out[-1] = (i + 1, resolved)
        else:
            out.append((i + 1, resolved))
    return out


class PromptScheduleCallback:
    """Step callback that swaps the positive prompt embeddings as a prompt schedule says.

    `embeddings[k]` are the embeddings (1, seq, dim) for `schedule[k]`; all must have the same
    sequence length (encode with a common number of chunks). The pipeline hands callbacks the
    CFG batch [negative, positive], so only the positive half is replaced.
    """

    tensor_inputs = ("prompt_embeds",)

    def __init__(self, schedule: list[tuple[int, str]], embeddings: list[Any]):
        if len(schedule) != len(embeddings):
            raise ConfigError("embeddings", len(embeddings), f"expected one per schedule entry ({len(schedule)})")
        self.ends = [end for end, _ in schedule]
        self.embeddings = embeddings

    def _index_for(self, step: int) -> int:
        for k, end in enumerate(self.ends):
            if step < end:
                return k
        return len(self.ends) - 1

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        nxt = step_index + 1  # the callback runs after step i; set up step i + 1
        if nxt >= self.ends[-1] or self._index_for(nxt) == self._index_for(step_index):
            return {}
        current = callback_kwargs["prompt_embeds"]
        new = self.embeddings[self._index_for(nxt)].to(current.device, current.dtype)
        n = new.shape[0]
        if current.shape[0] == 2 * n:  # [negative, positive] under classifier-free guidance
            replaced = current.clone()
            replaced[n:] = new
        else:
            replaced = new.expand_as(current).clone()
        log.debug("prompt edit at step %d", nxt)
        return {"prompt_embeds": replaced}


def schedule_callback(encoder: Any, text: str, steps: int, num_chunks: int,
                      clip_skip: int | None = None) -> PromptScheduleCallback | None:
    """Encode every prompt of `text`'s schedule with `encoder` (a conditioning.PromptEncoder).

    Returns None when the prompt has no editing, so normal runs pay nothing.
    """
    if not has_schedule(text):
        return None
    schedule = prompt_schedule(text, steps)
    embeds = []
    for _, resolved in schedule:
        emb, _ = encoder.encode_pieces(parse_weighted(resolved), num_chunks, clip_skip)
        embeds.append(emb)
    n = max(e.shape[1] for e in embeds)
    if any(e.shape[1] != n for e in embeds):
        raise ConfigError("prompt", text, "every edited version must fit the same number of 75-token chunks")
    return PromptScheduleCallback(schedule, embeds)

