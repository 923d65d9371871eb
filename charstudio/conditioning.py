"""CLIP text conditioning: the one place prompts become embeddings.

Prompts longer than CLIP's window (77 tokens: BOS + 75 + EOS) are never cut. As A1111 does,
the tokens are split into chunks of 75, each chunk is wrapped in BOS/EOS and padded to 77,
encoded on its own, and the chunk embeddings are concatenated along the sequence axis. The
UNet's cross-attention takes any sequence length, so a 150-token prompt conditions on all of
it. A prompt and its negative are padded to the same number of chunks so they can be
batched for classifier-free guidance.

Per-token weights (A1111's `(word:1.3)`) scale the token embeddings, then the chunk is
rescaled so its mean matches the unweighted one, which keeps the overall magnitude the UNet
was trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from .embedding_tokens import expand_token_ids

log = logging.getLogger(__name__)


@dataclass
class EncodedPrompt:
    """Embeddings for a prompt (and its negative), ready for `prompt_embeds=`."""

    prompt_embeds: Any  # (1, 77*k, hidden)
    negative_prompt_embeds: Any  # (1, 77*k, hidden)
    num_tokens: int  # tokens in the prompt, without BOS/EOS
    num_chunks: int
    pooled_prompt_embeds: Any = None  # SDXL: (1, 1280) from the second encoder; None for SD 1.x
    negative_pooled_prompt_embeds: Any = None

    def map(self, fn: Any, *others: "EncodedPrompt") -> "EncodedPrompt":
        """A new EncodedPrompt whose tensors are ``fn(mine, theirs...)`` field by field (blends,
        mixes); pooled fields stay None where this family has none."""
        def field_of(name: str) -> Any:
            mine = getattr(self, name)
            return None if mine is None else fn(mine, *(getattr(o, name) for o in others))

        return EncodedPrompt(field_of("prompt_embeds"), field_of("negative_prompt_embeds"), self.num_tokens,
                             self.num_chunks, field_of("pooled_prompt_embeds"),
                             field_of("negative_pooled_prompt_embeds"))

    def pipeline_kwargs(self) -> dict[str, Any]:
        """The embedding arguments of a diffusers pipeline call (pooled ones only where they exist)."""
        kwargs = {"prompt_embeds": self.prompt_embeds, "negative_prompt_embeds": self.negative_prompt_embeds}
        if self.pooled_prompt_embeds is not None:
            kwargs.update(pooled_prompt_embeds=self.pooled_prompt_embeds,
                          negative_pooled_prompt_embeds=self.negative_pooled_prompt_embeds)
        return kwargs


class PromptEncoder:
    """Encode text with a CLIP tokenizer + text encoder, in 75-token chunks.

    ``layer`` is which hidden states condition the UNet: "last" (SD 1.x: the final layer after
    its norm; ``clip_skip=N`` goes N layers back and applies the norm) or "penultimate" (SDXL:
    the layer before last, without the norm; ``clip_skip=N`` goes N more layers back), as
    diffusers' pipelines define them.
    """

    def __init__(self, tokenizer: Any, text_encoder: Any, layer: Literal["last", "penultimate"] = "last"):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.layer = layer
        self.window = int(getattr(tokenizer, "model_max_length", 77) or 77)
        if self.window > 1000:  # some tokenizers report a huge sentinel; CLIP's window is 77
            self.window = 77
        self.chunk_len = self.window - 2

    # -- tokens -------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` without BOS/EOS, never truncated."""
        if not text:
            return []
        ids = self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        # A multi-vector textual-inversion word stands for all of its tokens (charstudio.embeddings).
        return expand_token_ids(self.tokenizer, list(ids))

    def token_strings(self, text: str) -> list[str]:
        """The prompt's tokens as strings (for picking attention maps, counting, ...)."""
        return self.tokenizer.convert_ids_to_tokens(self.tokenize(text))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    # -- encoding -----------------------------------------------------------------------------
    def encode_pieces(self, pieces: Sequence[tuple[str, float]], num_chunks: int = 1,
                      clip_skip: int | None = None) -> tuple[Any, int]:
        """Encode text pieces with weights, as (embeddings (1, 77*k, hidden), token count).

        The pieces are tokenized separately and joined, so each token keeps its piece's weight.
        At least `num_chunks` chunks are produced (for padding a negative to its prompt).
        """
        embeds, n, _ = self.encode_pieces_pooled(pieces, num_chunks, clip_skip)
        return embeds, n

    def encode_pieces_pooled(self, pieces: Sequence[tuple[str, float]], num_chunks: int = 1,
                             clip_skip: int | None = None) -> tuple[Any, int, Any]:
        """`encode_pieces` plus the pooled projection of the first chunk's forward (the encoder's
        ``text_embeds``, unweighted: weights scale the states after it), or None without one."""
        ids: list[int] = []
        weights: list[float] = []
        for text, weight in pieces:
            piece_ids = self.tokenize(text)
            ids.extend(piece_ids)
            weights.extend([float(weight)] * len(piece_ids))
        chunks = max(num_chunks, (len(ids) + self.chunk_len - 1) // self.chunk_len, 1)
        embeds, pooled = self._encode_ids(ids, weights, chunks, clip_skip)
        return embeds, len(ids), pooled

    def _chunk_row(self, ids: list[int], c: int) -> tuple[list[int], int]:
        """Chunk `c` of a token list as one CLIP window: BOS, up to 75 tokens, EOS, padding;
        and how many of the tokens it holds."""
        tok = self.tokenizer
        eos = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        part = ids[c * self.chunk_len:(c + 1) * self.chunk_len]
        return [tok.bos_token_id] + part + [eos] + [pad] * (self.chunk_len - len(part)), len(part)

    def _encode_ids(self, ids: list[int], weights: list[float], num_chunks: int, clip_skip: int | None):
        import torch

        device = self.text_encoder.device
        out, pooled = [], None
        for c in range(num_chunks):
            row, n = self._chunk_row(ids, c)
            part_w = weights[c * self.chunk_len:c * self.chunk_len + n]
            row_w = [1.0] + part_w + [1.0] * (self.chunk_len - n + 1)
            input_ids = torch.tensor([row], device=device)
            with torch.no_grad():
                hidden, chunk_pooled = self._forward(input_ids, clip_skip)
            if c == 0:
                pooled = chunk_pooled  # weights scale the states after the forward: this is unweighted
            if any(w != 1.0 for w in row_w):
                w = torch.tensor(row_w, device=device, dtype=hidden.dtype)[None, :, None]
                original_mean = hidden.float().mean()
                hidden = hidden * w
                hidden = hidden * (original_mean / hidden.float().mean()).to(hidden.dtype)
            out.append(hidden)
        return torch.cat(out, dim=1), pooled

    def _forward(self, input_ids: Any, clip_skip: int | None = None) -> tuple[Any, Any]:
        """The conditioning hidden states of token windows (see ``layer``), and the pooled
        projection when the encoder has one (SDXL's second: ``text_embeds``), else None."""
        if self.layer == "penultimate":
            out = self.text_encoder(input_ids, output_hidden_states=True)
            return out.hidden_states[-((clip_skip or 0) + 2)], (out[0] if out[0].ndim == 2 else None)
        if clip_skip is None:
            return self.text_encoder(input_ids)[0], None
        # diffusers' convention: clip_skip=1 uses the penultimate layer, then the final norm.
        states = self.text_encoder(input_ids, output_hidden_states=True).hidden_states
        return self._final_norm(states[-(clip_skip + 1)]), None

    def encode_texts(self, texts: Sequence[str], *, grad: bool = False, min_chunks: int = 1) -> tuple[Any, Any]:
        """Plain texts (no weight syntax, as captions are trained) as one batch: the conditioning
        states (B, 77*k, hidden) at this encoder's layer, and the pooled projection (B, width) when
        the encoder has one (SDXL's second), else None.

        The same chunks as `encode`: a caption over 75 tokens is not cut, and shorter ones in the
        batch get empty chunks to match, as a negative prompt is padded to its prompt. Each chunk
        is one text-encoder call over the batch; with `grad` the encoder's adapter gets gradients.
        The pooled projection is the first chunk's, as in `encode`.
        """
        import contextlib

        import torch

        ids = [self.tokenize(t) for t in texts]
        chunks = max(min_chunks, 1, max(-(-len(i) // self.chunk_len) for i in ids))
        out, pooled = [], None
        for c in range(chunks):
            rows = [self._chunk_row(i, c)[0] for i in ids]
            with contextlib.nullcontext() if grad else torch.no_grad():
                hidden, chunk_pooled = self._forward(torch.tensor(rows, device=self.text_encoder.device))
            out.append(hidden)
            if c == 0:
                pooled = chunk_pooled
        return (out[0] if chunks == 1 else torch.cat(out, dim=1)), pooled

    def _final_norm(self, hidden: Any) -> Any:
        # transformers 5 puts final_layer_norm on CLIPTextModel itself; 4.x had it under .text_model
        # (diffusers 0.42's own clip_skip still looks there and fails on transformers 5).
        te = self.text_encoder
        norm = getattr(te, "final_layer_norm", None) or te.text_model.final_layer_norm
        return norm(hidden)

    def encode(self, prompt: str, negative_prompt: str = "", *, clip_skip: int | None = None,
               parse_weights: bool = True, min_chunks: int = 1) -> EncodedPrompt:
        """Encode a prompt and its negative to equal-length embeddings.

        With `parse_weights`, A1111 emphasis syntax is honoured when the prompt-syntax module
        is available; otherwise the text is taken literally.
        """
        pos_pieces, neg_pieces, chunks = _split(self, prompt, negative_prompt, parse_weights, min_chunks)
        pos, n_tokens = self.encode_pieces(pos_pieces, chunks, clip_skip)
        neg, _ = self.encode_pieces(neg_pieces, chunks, clip_skip)
        if chunks > 1:
            log.debug("prompt of %d tokens encoded in %d chunks of %d", n_tokens, chunks, self.chunk_len)
        return EncodedPrompt(pos, neg, n_tokens, chunks)


class SDXLPromptEncoder:
    """SDXL's two encoders as one: CLIP ViT-L and OpenCLIP bigG each encode the prompt in the
    same 75-token chunks (penultimate layers), their embeddings are concatenated (768 + 1280 =
    2048 wide), and the pooled embedding comes from the second. An empty negative prompt is all
    zeros when the model asks for it (``force_zeros_for_empty_prompt``, as diffusers does).

    It offers the methods of `PromptEncoder` that the studio uses, so prompt editing, weights
    and long prompts work the same on both families.
    """

    def __init__(self, first: PromptEncoder, second: PromptEncoder, *, force_zeros_for_empty_prompt: bool = True):
        self.first, self.second = first, second
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.chunk_len = first.chunk_len
        self.tokenizer, self.text_encoder = first.tokenizer, first.text_encoder  # token views use the first

    def tokenize(self, text: str) -> list[int]:
        return self.first.tokenize(text)

    def token_strings(self, text: str) -> list[str]:
        return self.first.token_strings(text)

    def count_tokens(self, text: str) -> int:
        return self.first.count_tokens(text)

    def encode_pieces(self, pieces: Sequence[tuple[str, float]], num_chunks: int = 1,
                      clip_skip: int | None = None) -> tuple[Any, int]:
        embeds, n, _ = self.encode_pieces_pooled(pieces, num_chunks, clip_skip)
        return embeds, n

    def encode_pieces_pooled(self, pieces: Sequence[tuple[str, float]], num_chunks: int = 1,
                             clip_skip: int | None = None) -> tuple[Any, int, Any]:
        """Both encoders' states concatenated (the same chunks in each), and the second's pooled."""
        import torch

        a, n = self.first.encode_pieces(pieces, num_chunks, clip_skip)
        b, _, pooled = self.second.encode_pieces_pooled(pieces, a.shape[1] // self.first.window, clip_skip)
        return torch.cat([a, b.to(a.dtype)], dim=-1), n, pooled

    def encode(self, prompt: str, negative_prompt: str = "", *, clip_skip: int | None = None,
               parse_weights: bool = True, min_chunks: int = 1) -> EncodedPrompt:
        """Both encoders' embeddings of a prompt and its negative, with the pooled embeddings."""
        import torch

        pos_pieces, neg_pieces, chunks = _split(self, prompt, negative_prompt, parse_weights, min_chunks)
        pos, n_tokens, pooled = self.encode_pieces_pooled(pos_pieces, chunks, clip_skip)
        if self.force_zeros_for_empty_prompt and not negative_prompt.strip():
            neg, neg_pooled = torch.zeros_like(pos), torch.zeros_like(pooled)
        else:
            neg, _, neg_pooled = self.encode_pieces_pooled(neg_pieces, chunks, clip_skip)
        return EncodedPrompt(pos, neg, n_tokens, chunks, pooled, neg_pooled)


def _split(encoder: Any, prompt: str, negative_prompt: str, parse_weights: bool,
           min_chunks: int = 1) -> tuple[list, list, int]:
    """A prompt and its negative as weighted pieces, and the chunk count both are padded to
    (at least ``min_chunks``, so that several prompts can be blended)."""
    pos, neg = _pieces(prompt, parse_weights), _pieces(negative_prompt, parse_weights)
    return pos, neg, max(min_chunks, *(chunk_count(encoder, p) for p in (pos, neg)))


def chunk_count(encoder: Any, pieces: Sequence[tuple[str, float]]) -> int:
    """How many 75-token chunks the pieces' tokens fill (at least one)."""
    return max(1, -(-sum(len(encoder.tokenize(t)) for t, _ in pieces) // encoder.chunk_len))


def _pieces(text: str, parse_weights: bool) -> list[tuple[str, float]]:
    if parse_weights:
        try:
            from .prompt_syntax import parse_weighted  # weighting syntax lives there
        except ImportError:
            return [(text, 1.0)]
        return parse_weighted(text)
    return [(text, 1.0)]
