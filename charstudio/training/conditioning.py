"""What conditions the UNet in a training step, made as generation makes it.

A `TrainingConditioner` is built on the family's own prompt encoder
(`ModelFamily.make_encoder`), so a caption conditions training exactly as the same words condition
a picture: SD 1.x's one encoder (last layer), or SDXL's two (penultimate layers, concatenated)
with the pooled projection of the second, in the same 75-token chunks (a caption over 77 tokens
is never cut). For a family with size conditioning (SDXL) it adds each sample's time ids and the
pooled embedding as the UNet's ``added_cond_kwargs``.

A frozen encoder's output for each caption is computed once and kept (``cache``); a trained one
runs every step with gradients, so its adapter learns.
"""

from __future__ import annotations

from typing import Any, Collection, Mapping, Sequence


def prompt_parts(encoder: Any) -> list[Any]:
    """The single-encoder `PromptEncoder` parts of a family's prompt encoder, in text_parts order."""
    parts = [getattr(encoder, name) for name in ("first", "second") if hasattr(encoder, name)]
    return parts or [encoder]


class TrainingConditioner:
    """Captions -> (encoder hidden states, pooled embedding), and the UNet's extra arguments.

    ``part_names`` are the text encoders' component names, in the order of the encoder's parts;
    ``trained`` names those whose adapters train (encoded every step with gradients).
    """

    def __init__(self, encoder: Any, part_names: Sequence[str], trained: Collection[str] = (), *,
                 cache: bool = True, micro_conditioning: bool = False):
        parts = prompt_parts(encoder)
        if len(parts) != len(part_names):
            raise ValueError(f"{len(part_names)} text encoder names for {len(parts)} encoder parts")
        self.parts = list(zip(part_names, parts))
        self.trained = set(trained)
        self.cache = cache
        self.micro_conditioning = micro_conditioning
        self._kept: dict[tuple[str, str], tuple[Any, Any]] = {}

    @classmethod
    def for_family(cls, family: Any, components: Mapping[str, Any], trained: Collection[str] = (), *,
                   cache: bool = True) -> "TrainingConditioner":
        """The conditioner of ``family``'s model made of ``components``."""
        return cls(family.make_encoder(components), [enc for _, enc in family.text_parts], trained, cache=cache,
                   micro_conditioning=family.micro_conditioning)

    @property
    def idle_parts(self) -> list[str]:
        """Text encoders that never run once `prepare` has cached their outputs."""
        return [name for name, _ in self.parts if self.cache and name not in self.trained]

    def _chunks(self, texts: Sequence[str]) -> int:
        first = self.parts[0][1]
        return max(1, max(-(-len(first.tokenize(t)) // first.chunk_len) for t in texts))

    @staticmethod
    def _frozen(part: Any, text: str, chunks: int) -> tuple[Any, Any]:
        """A frozen encoder's (77 * chunks, width) states and pooled projection (or None) of one
        text: generation's own encoding of it as an unweighted prompt."""
        hidden, _, pooled = part.encode_pieces_pooled([(text, 1.0)], chunks)
        return hidden[0], None if pooled is None else pooled[0]

    @staticmethod
    def _trained(part: Any, texts: Sequence[str], chunks: int) -> tuple[Any, Any]:
        """A trained encoder over a batch, with gradients: the same token windows, layer and
        pooled projection as generation's encoding."""
        return part.encode_texts(texts, grad=True, min_chunks=chunks)

    def prepare(self, texts: Sequence[str]) -> None:
        """Encode every caption once with each frozen encoder (when caching), plus the empty
        caption whose chunks pad a short caption batched with a long one."""
        if not self.cache:
            return
        for text in dict.fromkeys([*texts, ""]):
            for name, part in self.parts:
                if name not in self.trained and (name, text) not in self._kept:
                    self._kept[(name, text)] = self._frozen(part, text, self._chunks([text]))

    def _from_cache(self, name: str, texts: Sequence[str], chunks: int) -> tuple[Any, Any]:
        import torch

        self.prepare(texts)
        empty = self._kept[(name, "")][0]
        hidden, pooled = [], []
        for text in texts:
            h, p = self._kept[(name, text)]
            if h.shape[0] < chunks * empty.shape[0]:
                h = torch.cat([h] + [empty] * ((chunks * empty.shape[0] - h.shape[0]) // empty.shape[0]))
            hidden.append(h)
            pooled.append(p)
        return torch.stack(hidden), (None if pooled[0] is None else torch.stack(pooled))

    def encode(self, texts: Sequence[str]) -> tuple[Any, Any]:
        """A batch of captions as (hidden states (B, 77k, total width), pooled (B, width) or None)."""
        import torch

        chunks = self._chunks(texts)
        states, pooled = [], None
        for name, part in self.parts:
            if name in self.trained:
                hidden, p = self._trained(part, texts, chunks)
            elif self.cache:
                hidden, p = self._from_cache(name, texts, chunks)
            else:
                encoded = [self._frozen(part, t, chunks) for t in texts]
                hidden = torch.stack([h for h, _ in encoded])
                p = None if encoded[0][1] is None else torch.stack([q for _, q in encoded])
            states.append(hidden)
            pooled = p if p is not None else pooled
        if len(states) == 1:
            return states[0], pooled
        return torch.cat([s.to(states[0].dtype) for s in states], dim=-1), pooled

    def unet_kwargs(self, pooled: Any, time_ids: Sequence[Sequence[int]], dtype: Any, device: Any) -> dict[str, Any]:
        """Extra UNet (and ControlNet) arguments: SDXL's ``added_cond_kwargs`` (the pooled embedding
        and each sample's six size-conditioning numbers); nothing for a family without them."""
        import torch

        if not self.micro_conditioning:
            return {}
        if pooled is None:
            raise ValueError("a size-conditioned UNet needs a pooled text embedding; no text encoder gave one")
        ids = torch.tensor([list(t) for t in time_ids], dtype=dtype, device=device)
        return {"added_cond_kwargs": {"text_embeds": pooled.to(device, dtype), "time_ids": ids}}
