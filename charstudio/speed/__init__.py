"""Draft mode and the other ways to trade a little quality for a lot of speed (issue 38).

- `presets`: few-step LoRAs (LCM-LoRA, SDXL-Lightning, Hyper-SD, DMD2, mini's own) with the
  scheduler, timesteps, CFG and step count each one's model card gives, and its licence;
- `draft`: ``speed="draft"`` on a recipe (the fastest setting the loaded model supports) and
  ``finish`` (the same seed and recipe re-drawn at full quality);
- `cache`: DeepCache-style reuse of the UNet's deep features between steps;
- `quantize`: int8 weight-only quantization of the UNet and ControlNet;
- `guard`: the identity scores of draft pictures next to their full-quality ones.

The fast path that keeps pixels (SDPA, fused QKV, channels_last, torch.compile) is
`charstudio.models.speed` (``Studio.set_speed("max")``); it combines with all of these.
"""
