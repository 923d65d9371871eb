"""LoRA training speed: charstudio.training.train_lora against a plain diffusers + peft loop.

Both train the same LoRA (UNet attention projections, same rank, batch, resolution, AdamW,
VAE encoding every step, text embeddings computed once) on the same model, so the ratio of
their times per step is the cost of train_lora's machinery (accelerate, per-step generators,
bookkeeping, records). Each measurement runs in a fresh subprocess, so peak memory is its own.
On an SDXL model (`--model tiny-sdxl`, or any SDXL model) the plain loop is the one of diffusers'
train_text_to_image_lora_sdxl.py: both encoders' penultimate states and the pooled embedding from
the pipeline's own `encode_prompt`, and each sample's time ids from its `_get_add_time_ids`.

    python benchmarks/train.py                      # tiny on CPU: ratio, samples/s, peak memory
    python benchmarks/train.py --model tiny-sdxl    # the same on the SDXL architecture
    python benchmarks/train.py --gpu-matrix         # CUDA: SD 1.5 at 512 px, with/without
                                                    # gradient checkpointing and latent caching

On a GPU the SD 1.5 rows use `--model sd15` when its weights are in the local cache; otherwise
(`--arch sd15-random`, the default there) the built-in `sd15-arch`, SD 1.5 with random weights, which
costs exactly the same compute per step. This is a benchmark, not a test: nothing asserts times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# ---- models -------------------------------------------------------------------------------------


def load_components(arch: str, model: str, dtype):
    """The model's parts; `sd15-random` is the built-in `sd15-arch` (SD 1.5's exact architecture
    with seeded random weights), which costs exactly the same compute per step."""
    from charstudio.models.loading import load_components as load, resolve_model

    return load(resolve_model("sd15-arch" if arch == "sd15-random" else model), dtype=dtype)


def make_dataset(folder: Path, n: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")).save(folder / f"img{i}.png")
    return folder


# ---- the two contestants --------------------------------------------------------------------------


def run_ours(args, data: Path, out: Path) -> dict:
    import torch

    from charstudio.training import LoraTrainingConfig, train_lora

    dtype = torch.float16 if torch.cuda.is_available() else torch.float32
    comps = load_components(args.arch, args.model, dtype)
    cfg = LoraTrainingConfig(data_dir=str(data), name="bench", output_dir=str(out), model=args.model,
                             max_train_steps=args.warmup + args.steps, rank=args.rank, alpha=float(args.rank),
                             batch_size=args.batch_size, resolution=args.resolution, validation_steps=0,
                             num_validation_images=0, checkpointing_steps=10**6, optimizer="adamw",
                             cache_latents=args.cache_latents, gradient_checkpointing=args.gradient_checkpointing,
                             mixed_precision="fp16" if torch.cuda.is_available() else "no")
    marks = {}
    for record in train_lora(cfg, components=comps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        marks[record.step] = (time.perf_counter(), time.process_time())
        if record.step == args.warmup and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    # The last step also writes the final files; time the steps before it.
    last = args.warmup + args.steps - 1
    return _summarise([marks[s] for s in range(args.warmup, last + 1)])


def _summarise(marks: list[tuple[float, float]]) -> dict:
    """Median wall and CPU seconds per step: medians shrug off the odd step slowed by other work."""
    import statistics

    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    return {"per_step_s": statistics.median(wall), "cpu_per_step_s": statistics.median(cpu),
            "mean_per_step_s": sum(wall) / len(wall)}


def run_baseline(args, data: Path) -> dict:
    """The loop from diffusers' LoRA training examples, reduced to its essentials."""
    import numpy as np
    import torch
    from diffusers import DDPMScheduler
    from peft import LoraConfig
    from PIL import Image

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    comps = load_components(args.arch, args.model, dtype)
    tok, te, unet, vae = comps["tokenizer"], comps["text_encoder"], comps["unet"], comps["vae"]
    for m in (te, unet, vae):
        m.requires_grad_(False)
    unet.to(device)
    te.to(device)
    vae.to(device, dtype=torch.float32)
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    scheduler = DDPMScheduler.from_config(comps["scheduler"].config)
    res = args.resolution or int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
    images = []
    for p in sorted(data.glob("*.png")):
        im = Image.open(p).convert("RGB").resize((res, res), Image.Resampling.BICUBIC)
        images.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
    pixels = torch.stack(images)
    prompt = "a picture of sks person"
    added = None
    if "text_encoder_2" in comps:  # SDXL: two encoders, pooled embedding and time ids, as diffusers' SDXL example
        from diffusers import StableDiffusionXLPipeline

        parts = {k: comps[k] for k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet",
                                       "scheduler")}
        comps["text_encoder_2"].to(device)
        pipe = StableDiffusionXLPipeline(**parts)
        with torch.no_grad():
            hidden, _, pooled, _ = pipe.encode_prompt(prompt, device=device, do_classifier_free_guidance=False)
        # every picture is square and resized whole: original = its file size, no crop, target = res
        time_ids = pipe._get_add_time_ids((args.image_size, args.image_size), (0, 0), (res, res), dtype=dtype,
                                          text_encoder_projection_dim=comps["text_encoder_2"].config.projection_dim)
        added = {"text_embeds": pooled.expand(args.batch_size, -1).to(dtype),
                 "time_ids": time_ids.to(device).expand(args.batch_size, -1)}
    else:
        ids = tok([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            hidden = te(ids.to(device))[0]
    cached = None
    if args.cache_latents:
        with torch.no_grad():
            cached = vae.encode(pixels.to(device)).latent_dist
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                      enabled=False)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    unet.train()
    marks = []
    for step in range(args.warmup + args.steps - 1):
        idx = torch.randint(0, len(pixels), (args.batch_size,))
        with torch.no_grad():
            if cached is not None:
                latents = (cached.mean[idx] + cached.std[idx] * torch.randn_like(cached.mean[idx]))
            else:
                latents = vae.encode(pixels[idx].to(device)).latent_dist.sample()
            latents = latents * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch_size,), device=device)
        noisy = scheduler.add_noise(latents, noise, t)
        with autocast:
            pred = unet(noisy.to(dtype), t, hidden.expand(args.batch_size, -1, -1).to(dtype),
                        **({"added_cond_kwargs": added} if added else {})).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # both loops read the loss every step
        if device.type == "cuda":
            torch.cuda.synchronize()
        marks.append((time.perf_counter(), time.process_time()))
        if step + 1 == args.warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
    return _summarise(marks[args.warmup - 1:])


def worker(args) -> None:
    import resource

    import torch

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", args.images, args.image_size)
        result = run_ours(args, data, Path(tmp) / "lora") if args.worker == "ours" else run_baseline(args, data)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result))


def measure(who: str, args, **overrides) -> dict:
    argv = [sys.executable, __file__, "--worker", who]
    settings = {**vars(args), **overrides}
    for key in ("model", "arch", "steps", "warmup", "rank", "batch_size", "images", "image_size", "resolution"):
        if settings.get(key) is not None:
            argv += [f"--{key.replace('_', '-')}", str(settings[key])]
    for flag in ("cache_latents", "gradient_checkpointing"):
        if settings.get(flag):
            argv.append(f"--{flag.replace('_', '-')}")
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{who} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    p.add_argument("--model", default="tiny")
    p.add_argument("--arch", choices=["preset", "sd15-random"], default="preset",
                   help="sd15-random: SD 1.5-shaped random weights (no download)")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--cache-latents", action="store_true")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs per contestant; the best is kept")
    p.add_argument("--gpu-matrix", action="store_true", help="SD 1.5 at 512 px on CUDA, 4 settings")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    if args.gpu_matrix:
        if not torch.cuda.is_available():
            sys.exit("--gpu-matrix needs a CUDA GPU")
        arch = "preset" if args.model != "tiny" else "sd15-random"
        print(f"SD 1.5 ({'random weights' if arch == 'sd15-random' else args.model}), 512 px, batch "
              f"{args.batch_size}, rank {args.rank}, fp16, {torch.cuda.get_device_name()}")
        print(f"{'grad ckpt':>9} {'cache':>5} {'ours it/s':>10} {'plain it/s':>11} {'ratio':>6} {'peak GiB':>9}")
        for ckpt in (False, True):
            for cache in (False, True):
                kw = dict(arch=arch, resolution=512, image_size=512, gradient_checkpointing=ckpt, cache_latents=cache)
                ours = measure("ours", args, **kw)
                base = measure("baseline", args, **kw)
                print(f"{str(ckpt):>9} {str(cache):>5} {1 / ours['per_step_s']:10.2f} {1 / base['per_step_s']:11.2f} "
                      f"{ours['per_step_s'] / base['per_step_s']:6.3f} {ours['peak_cuda_mb'] / 1024:9.2f}")
        return

    # Alternate the contestants so a busy machine slows both alike; keep each one's best run.
    ours_runs, base_runs = [], []
    for _ in range(args.repeats):
        ours_runs.append(measure("ours", args))
        base_runs.append(measure("baseline", args))
    ours = min(ours_runs, key=lambda r: r["per_step_s"])
    base = min(base_runs, key=lambda r: r["per_step_s"])
    ours["cpu_per_step_s"] = min(r["cpu_per_step_s"] for r in ours_runs)
    base["cpu_per_step_s"] = min(r["cpu_per_step_s"] for r in base_runs)
    bs = args.batch_size
    print(f"model {args.model}, batch {bs}, rank {args.rank}, cache_latents={args.cache_latents}, "
          f"{args.steps} timed steps, best of {args.repeats}, {torch.get_num_threads()} threads")
    print(f"{'':12} {'s/step':>9} {'CPU s/step':>11} {'samples/s':>10} {'peak RSS MB':>12}   (medians)")
    for name, r in (("train_lora", ours), ("plain loop", base)):
        print(f"{name:12} {r['per_step_s']:9.4f} {r['cpu_per_step_s']:11.4f} {bs / r['per_step_s']:10.2f} "
              f"{r['peak_rss_mb']:12.0f}")
    print(f"time per step, train_lora / plain loop: {ours['per_step_s'] / base['per_step_s']:.3f}x wall, "
          f"{ours['cpu_per_step_s'] / base['cpu_per_step_s']:.3f}x CPU (target <= 1.05); "
          f"peak RSS {ours['peak_rss_mb'] / base['peak_rss_mb']:.3f}x")
    if "peak_cuda_mb" in ours:
        print(f"peak CUDA memory: train_lora {ours['peak_cuda_mb']:.0f} MB, plain loop {base['peak_cuda_mb']:.0f} MB")


if __name__ == "__main__":
    main()
