"""The `mini` model's architecture: SD 1.x classes, sized to train on a laptop CPU.

`mini` draws the procedural world of `charstudio.mini.world` at 64x64 pixels. Its parts are the same
diffusers/transformers classes as Stable Diffusion 1.x:

- a word-level tokenizer (every word of the world's captions is one token; other words fall
  back to letters, so any prompt, a LoRA trigger word included, can be encoded);
- CLIPTextModel (4 layers, width 64);
- AutoencoderKL with a 4x factor (64 px -> 16x16x4 latents);
- UNet2DConditionModel (~3M parameters);
- an OpenPose ControlNetModel reading our own skeleton renderings, copied from the UNet's
  encoder when built (`ControlNetModel.from_unet`), as in the ControlNet paper.

`build_mini_components` gives the untrained model; `charstudio.mini.train` trains it and
writes a diffusers folder that `Studio.from_pretrained` loads like any checkpoint.
"""

from __future__ import annotations

import string
from typing import Any

MINI_SIZE = 64
TEXT_HIDDEN = 64
BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<|pad|>", "<|unk|>"
# The text window. The world's captions are at most 30 tokens; CLIP's 77 would make padding
# two thirds of every cross-attention, which slowed learning to read the words right down.
WINDOW = 40
POOL_HEADS = 4  # heads of the UNet's text pooling (diffusers' default, 64, would leave 1 channel per head)


def build_tokenizer():
    """A word-level WordPiece tokenizer over the world's caption words, with letter fallback."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    from .world import vocabulary

    symbols = list(string.ascii_lowercase + string.digits)
    punctuation = list(",.:;!?()[]{}<>'\"-_/+=*&%$#@|~`^\\")
    tokens = [BOS, EOS, PAD, UNK] + vocabulary() + symbols + punctuation + ["##" + c for c in symbols]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    tok = Tokenizer(WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=40))
    tok.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, model_max_length=WINDOW)


def unet_config() -> dict[str, Any]:
    return dict(
        sample_size=MINI_SIZE // 4, in_channels=4, out_channels=4,
        block_out_channels=(48, 96, 96), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8, norm_num_groups=16,
        # A pooled copy of the caption (attention pooling over its tokens) is added to the time
        # embedding, so every ResNet block hears the prompt, not only the cross-attention layers.
        # Colours are global facts of a picture; this path learns them far sooner.
        addition_embed_type="text", addition_embed_type_num_heads=POOL_HEADS,
    )


def _match_pool_heads(controlnet: Any) -> None:
    """`ControlNetModel.from_unet` copies the text pooling's weights but not its head count; give
    it the UNet's, in the module and in the saved config, so the copy computes what the UNet does."""
    pool = getattr(getattr(controlnet, "add_embedding", None), "pool", None)
    if pool is None:
        return
    pool.num_heads, pool.dim_per_head = POOL_HEADS, TEXT_HIDDEN // POOL_HEADS
    controlnet.register_to_config(addition_embed_type_num_heads=POOL_HEADS)


def build_mini_components(seed: int = 0) -> dict[str, Any]:
    """The untrained `mini` model (the starting point of `charstudio.mini.train`)."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=4 * TEXT_HIDDEN,
        num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=77, projection_dim=TEXT_HIDDEN,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**unet_config())
    torch.manual_seed(seed + 2)
    # Three conditioning blocks = two stride-2 convs = the VAE's 4x factor.
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64))
    _match_pool_heads(controlnet)
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4, norm_num_groups=16,
        sample_size=MINI_SIZE,
    )
    # v-prediction (as SD 2.x): at high noise the network states the picture itself, where with
    # epsilon it would state the noise and leave the colours a tiny, poorly trained remainder.
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
    )
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "unet": unet, "vae": vae,
            "controlnet": controlnet, "scheduler": scheduler}
