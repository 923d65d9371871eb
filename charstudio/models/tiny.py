"""The `tiny` model: an SD 1.x-shaped pipeline with random weights, built offline in code.

It has every part a real Stable Diffusion 1.x checkpoint has (CLIP text encoder, tokenizer,
UNet, VAE with an 8x factor, OpenPose ControlNet), so every code path in charstudio runs on
any machine without downloading weights. Its pictures are noise. Building it takes well under
a second and is deterministic: the same `seed` gives bit-identical weights.
"""

from __future__ import annotations

from typing import Any

from .tokenizers import byte_level_tokenizer

TINY_SIZE = 128  # default output size in pixels; latents are 16x16
TEXT_HIDDEN = 32  # CLIP hidden size == UNet cross-attention dim
# tiny-sdxl's second (OpenCLIP bigG's role) encoder is wider than its first, as in SDXL (768 and
# 1280): single-file loaders tell the two apart by width.
TEXT_HIDDEN_2 = 48


def _text_encoder(tokenizer: Any, seed: int, projection: bool = False, width: int = TEXT_HIDDEN) -> Any:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=64,
                            num_hidden_layers=3 if projection else 2, num_attention_heads=4,
                            max_position_embeddings=77, projection_dim=width,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def build_tiny_components(seed: int = 0) -> dict[str, Any]:
    """Build the tiny model's components, ready to hand to a diffusers pipeline."""
    tokenizer = byte_level_tokenizer()
    # Each module gets its own seed so that adding a module never changes the others.
    text_encoder = _text_encoder(tokenizer, seed)
    unet_blocks = dict(
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    return {"tokenizer": tokenizer, "text_encoder": text_encoder,
            **_unet_controlnet_vae(seed, unet_blocks), "scheduler": _sd_scheduler()}


def build_tiny_sdxl_components(seed: int = 0) -> dict[str, Any]:
    """The SDXL architecture at toy size: CLIP ViT-L's role (`text_encoder`) and OpenCLIP bigG's
    with its projection (`text_encoder_2`, pad token ``!`` as SDXL's second tokenizer has), their
    penultimate states concatenated (32 + 48 wide), and a UNet and ControlNet conditioned on the
    pooled embedding plus six size/crop ids (``addition_embed_type="text_time"``)."""
    tokenizer, tokenizer_2 = byte_level_tokenizer(), byte_level_tokenizer(pad_token="!")
    text_encoder = _text_encoder(tokenizer, seed + 10)
    text_encoder_2 = _text_encoder(tokenizer_2, seed + 11, projection=True, width=TEXT_HIDDEN_2)
    time_dim = 8
    unet_blocks = dict(
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=TEXT_HIDDEN + TEXT_HIDDEN_2,
        attention_head_dim=(2, 4),
        norm_num_groups=16,
        transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # the UNet's own check: six time ids of time_dim each, plus the pooled embedding
        projection_class_embeddings_input_dim=6 * time_dim + TEXT_HIDDEN_2,
        use_linear_projection=True,
    )
    return {"tokenizer": tokenizer, "tokenizer_2": tokenizer_2, "text_encoder": text_encoder,
            "text_encoder_2": text_encoder_2, **_unet_controlnet_vae(seed + 20, unet_blocks),
            "scheduler": _sd_scheduler()}


def _unet_controlnet_vae(seed: int, unet_blocks: dict[str, Any]) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    up = tuple({"DownBlock2D": "UpBlock2D", "CrossAttnDownBlock2D": "CrossAttnUpBlock2D"}[b]
               for b in reversed(unet_blocks["down_block_types"]))
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=TINY_SIZE // 8,
        in_channels=4,
        out_channels=4,
        up_block_types=up,
        **unet_blocks,
    ).eval()

    torch.manual_seed(seed + 2)
    # ControlNet's conditioning embedding downsamples by 8 (three stride-2 convs), so the VAE
    # below must also have an 8x factor (four blocks).
    controlnet = ControlNetModel(
        in_channels=4,
        conditioning_embedding_out_channels=(8, 16, 32, 32),
        **unet_blocks,
    )
    # A new ControlNet starts with zero convolutions so it cannot disturb the UNet before
    # training. A random stand-in must have an effect, so those layers get small random weights.
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                  controlnet.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zero_convs:
            torch.nn.init.normal_(conv.weight, std=0.05)
            torch.nn.init.normal_(conv.bias, std=0.05)
    controlnet.eval()

    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=TINY_SIZE,
    ).eval()
    return {"unet": unet, "vae": vae, "controlnet": controlnet}


def _sd_scheduler() -> Any:
    """The same noise schedule as SD 1.x and SDXL, so schedulers behave as on real models."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
