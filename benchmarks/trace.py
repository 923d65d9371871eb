"""Benchmark: the cost of live previews and of tracing, relative to plain generation.

    python benchmarks/trace.py                       # tiny on CPU (offline)
    python benchmarks/trace.py --model sd15          # real model; on a GPU, 512x512, fp16

Variants, all with the same recipe, run in rotation so drift (other load, clocks) hits each
equally; the median time per image is reported with its ratio to plain generation:
  plain               Studio.generate
  preview/5 approx    + a live preview every 5 steps, linear latent->RGB (free)
  preview/5 taesd     + a live preview every 5 steps through an AutoencoderTiny (a random tiny one
                        on `tiny`; pass --taesd FOLDER for real TAESD weights)
  preview/5 vae       + a live preview every 5 steps through the full VAE
  trace               Studio.trace(attention=False): x_t, predicted x0, sigma, noise norm per step
  trace+attention     Studio.trace(attention=True): plus per-token cross-attention maps
Targets (issue 5): previews <= 1.10x, tracing without attention maps <= 1.25x.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--scheduler", default="dpm++2m-karras")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--taesd", default=None, help="folder or hub id of TAESD weights (AutoencoderTiny)")
    args = ap.parse_args()

    import torch

    from charstudio import Studio
    from charstudio.trace import LivePreview

    if args.threads:
        torch.set_num_threads(args.threads)
    studio = Studio.from_pretrained(args.model, device=args.device)
    sync = torch.cuda.synchronize if studio.device.type == "cuda" else (lambda: None)
    settings = dict(seed=1, num_inference_steps=args.steps, scheduler=args.scheduler,
                    negative_prompt="blurry, lowres")
    prompt = "a girl with long silver hair, violet eyes, sailor jacket"

    from diffusers import AutoencoderTiny

    from charstudio.models.loading import dtype_kwarg

    if args.taesd:
        taesd = AutoencoderTiny.from_pretrained(args.taesd, **dtype_kwarg(studio.dtype)).to(studio.device)
    else:
        torch.manual_seed(0)  # shape-compatible stand-in; its speed is what matters here
        taesd = AutoencoderTiny(latent_channels=studio.components["unet"].config.in_channels)
        taesd = taesd.to(studio.device, studio.dtype).eval()
    previews = {"approx": 0, "taesd": 0, "vae": 0}

    def preview(kind: str, decoder: object) -> LivePreview:
        def seen(step: int, image: object) -> None:
            previews[kind] += 1

        return LivePreview(seen, every=5, decoder=decoder)

    variants = {
        "plain": lambda: studio.generate(prompt, **settings),
        "preview/5 approx": lambda: studio.generate(prompt, callbacks=[preview("approx", "approx")], **settings),
        "preview/5 taesd": lambda: studio.generate(prompt, callbacks=[preview("taesd", taesd)], **settings),
        "preview/5 vae": lambda: studio.generate(
            prompt, callbacks=[preview("vae", studio.components["vae"])], **settings),
        "trace": lambda: studio.trace(prompt, attention=False, **settings),
        "trace+attention": lambda: studio.trace(prompt, attention=True, **settings),
    }
    for fn in variants.values():  # warm-up: first calls build pipelines and allocate
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)

    base, base_min = statistics.median(times["plain"]), min(times["plain"])
    base_cpu = statistics.median(cpu["plain"])
    print(f"model={args.model} device={studio.device} dtype={studio.dtype} steps={args.steps} "
          f"scheduler={args.scheduler} repeats={args.repeats} threads={torch.get_num_threads()}")
    # On a shared CPU, wall time swings with other load; the minimum and the process CPU time
    # are steadier. On CUDA, CPU time means little: read the wall-time columns.
    print(f"{'variant':<18} {'median s':>9} {'ratio':>7} {'min s':>8} {'ratio':>7} {'cpu s':>8} {'ratio':>7}")
    for name, ts in times.items():
        med, lo, c = statistics.median(ts), min(ts), statistics.median(cpu[name])
        print(f"{name:<18} {med:9.3f} {med / base:6.3f}x {lo:8.3f} {lo / base_min:6.3f}x {c:8.3f} {c / base_cpu:6.3f}x")
    per_run = {k: v // (args.repeats + 1) for k, v in previews.items()}
    print(f"previews per image: {per_run} (expected {args.steps // 5})")


if __name__ == "__main__":
    main()
